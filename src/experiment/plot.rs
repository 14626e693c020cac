//! The experiment figures, each drawn once against plotters' `DrawingBackend` and written as SVG
//! and PNG:
//! - [`sweep_figure`]: a metric over a swept value (log-scaled learning rate or λ, or named model
//!   sizes), one line per variant, error bars (± one standard deviation over splits) where a point
//!   has several runs — the form of the paper's Figs. 6, 7 and 9;
//! - [`heatmap_figure`]: attention weights over `[user, item, <bos>, words…]` with token labels on
//!   both axes and a colour bar, one panel per model (Fig. 8: before and after training);
//! - [`loss_curve_figure`]: train and validation loss per epoch of one run.
//!
//! Text is laid out and rasterised by plotters' `ab_glyph` renderer from DejaVu Sans, embedded in
//! the binary ([`register_fonts`]), so a PNG looks the same on a machine without any system font.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::train::run_log::{write_atomic, EpochRecord};

/// The family every figure asks for; [`register_fonts`] maps it to the embedded font.
pub const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded DejaVu Sans as plotters' `sans-serif` (idempotent). Every drawing in the
/// crate needs it: with the `ab_glyph` feature plotters has no other source of glyphs.
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a fixed, valid TrueType file (a test draws with it), so this cannot fail at
        // run time; if it ever did, drawing text would report the missing font as an error.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// A drawing error from plotters, as an `anyhow` error.
fn de<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// One figure in both formats.
pub struct Figure {
    pub svg: String,
    pub png: Vec<u8>,
}

impl Figure {
    /// Writes `<stem>.svg` and `<stem>.png` (atomically); returns the two paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<[std::path::PathBuf; 2]> {
        let svg = dir.join(format!("{stem}.svg"));
        let png = dir.join(format!("{stem}.png"));
        write_atomic(&svg, self.svg.as_bytes())?;
        write_atomic(&png, &self.png)?;
        Ok([svg, png])
    }
}

/// Encodes 8-bit RGB pixels as PNG (the `image` crate's encoder, default compression: the same
/// pixels give the same bytes).
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, width, height, image::ColorType::Rgb8)
        .context("encoding a PNG")?;
    Ok(out)
}

/// Decodes a PNG into (width, height, RGB pixels): for tests and for checking written figures.
pub fn decode_png(png: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let img = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .context("reading a PNG")?
        .to_rgb8();
    Ok((img.width(), img.height(), img.into_raw()))
}

// ---------------------------------------------------------------------------------------------
// Sweeps

/// One line of a sweep figure: `(x, mean, std, n)` per grid point; `std` is drawn as an error bar
/// when `n > 1`.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64, usize)>,
}

/// The swept value.
#[derive(Clone, Debug)]
pub enum XAxis {
    /// A positive value on a log scale (learning rate, λ).
    Log { label: String },
    /// Named categories at x = 0, 1, … (model sizes).
    Categories { label: String, names: Vec<String> },
}

/// Colours of the variants, in order (readable on white, distinct in grey scale too).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0x75, 0x4c, 0xa8), // purple
    RGBColor(0x2c, 0x9c, 0x3f), // green
    RGBColor(0x9c, 0x5b, 0x25), // brown
    RGBColor(0x1f, 0x6f, 0xc0), // blue
    RGBColor(0xd6, 0x27, 0x28), // red
    RGBColor(0x11, 0x11, 0x11), // black
];

/// A metric over the swept value, one line per series (see the module docs).
pub fn sweep_figure(title: &str, x: &XAxis, y_label: &str, series: &[Series]) -> Result<Figure> {
    let finite: Vec<(f64, f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.1.is_finite())
        .map(|p| (p.0, p.1, if p.2.is_finite() { p.2 } else { 0.0 }))
        .collect();
    if finite.is_empty() {
        bail!("{title}: no finite values to draw");
    }
    let lo = finite
        .iter()
        .map(|p| p.1 - p.2)
        .fold(f64::INFINITY, f64::min);
    let hi = finite
        .iter()
        .map(|p| p.1 + p.2)
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-6);
    let y0 = (lo - pad).min(if lo >= 0.0 { 0.0 } else { lo - pad });
    // Headroom above the data for the legend box in the upper right corner.
    let y1 = hi + pad + (hi + pad - y0) * 0.06 * (series.len() as f64 + 1.0);
    let (xmin, xmax) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    if matches!(x, XAxis::Log { .. }) && (xmin.is_nan() || xmin <= 0.0) {
        bail!("{title}: a log-scaled axis needs positive values, got {xmin}");
    }
    // As many decimals as the y range needs (BLEU in the tens: 1; RMSE around 1: 3).
    let decimals = match y1 - y0 {
        r if r >= 20.0 => 0,
        r if r >= 2.0 => 1,
        r if r >= 0.2 => 2,
        _ => 3,
    };
    let yfmt = |v: &f64| format!("{v:.decimals$}");
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            root.fill(&WHITE).map_err(de)?;
            let mut cb = ChartBuilder::on(root);
            cb.caption(title, (FONT, 22))
                .margin(16)
                .x_label_area_size(52)
                .y_label_area_size(72);
            match x {
                XAxis::Log { label } => {
                    // log10 on a linear axis: labels only at powers of ten (1e-3, 1e-2, …),
                    // which reads better than plotters' log-scale ticks at every 2e-3, 3e-3, ….
                    let (a, b) = (xmin.log10() - 0.3, xmax.log10() + 0.3);
                    let mut chart = cb.build_cartesian_2d(a..b, y0..y1).map_err(de)?;
                    let fmt = |v: &f64| {
                        let r = v.round();
                        if (v - r).abs() < 1e-9 {
                            format!("1e{}", r as i64)
                        } else {
                            String::new()
                        }
                    };
                    chart
                        .configure_mesh()
                        .x_desc(format!("{label} (log scale)"))
                        .y_desc(y_label)
                        .x_labels(((b - a) * 4.0).ceil() as usize + 1)
                        .x_label_formatter(&fmt)
                        .y_label_formatter(&yfmt)
                        .label_style((FONT, 15))
                        .axis_desc_style((FONT, 17))
                        .light_line_style(RGBColor(238, 238, 238))
                        .draw()
                        .map_err(de)?;
                    let logged: Vec<Series> = series
                        .iter()
                        .map(|s| Series {
                            name: s.name.clone(),
                            points: s
                                .points
                                .iter()
                                .map(|p| (p.0.log10(), p.1, p.2, p.3))
                                .collect(),
                        })
                        .collect();
                    draw_series_lines(&mut chart, &logged)?;
                    legend(&mut chart)?;
                }
                XAxis::Categories { label, names } => {
                    let n = names.len().max(1) as f64;
                    let mut chart = cb.build_cartesian_2d(-0.5..n - 0.5, y0..y1).map_err(de)?;
                    let fmt = |v: &f64| {
                        let i = v.round();
                        if (v - i).abs() < 1e-6 && i >= 0.0 {
                            names.get(i as usize).cloned().unwrap_or_default()
                        } else {
                            String::new()
                        }
                    };
                    chart
                        .configure_mesh()
                        .x_desc(label.as_str())
                        .y_desc(y_label)
                        .x_labels(names.len() * 2 + 1)
                        .x_label_formatter(&fmt)
                        .y_label_formatter(&yfmt)
                        .label_style((FONT, 15))
                        .axis_desc_style((FONT, 17))
                        .light_line_style(RGBColor(238, 238, 238))
                        .disable_x_mesh()
                        .draw()
                        .map_err(de)?;
                    draw_series_lines(&mut chart, series)?;
                    legend(&mut chart)?;
                }
            }
            Ok(())
        }};
    }
    render_both((760, 460), |r| body!(r), |r| body!(r))
}

/// [`render`] with the drawing given once per backend type (plotters' backends are distinct types;
/// the figure functions expand one body for each through a macro).
fn render_both<S, P>(size: (u32, u32), svg_draw: S, png_draw: P) -> Result<Figure>
where
    S: FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
    P: FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
{
    register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        svg_draw(&root)?;
        root.present().map_err(de)?;
    }
    let mut rgb = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        png_draw(&root)?;
        root.present().map_err(de)?;
    }
    Ok(Figure {
        svg,
        png: encode_png(&rgb, size.0, size.1)?,
    })
}

fn draw_series_lines<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    series: &[Series],
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
{
    for (k, s) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let pts: Vec<(f64, f64, f64, usize)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                colour.stroke_width(2),
            ))
            .map_err(de)?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, p.1), 4, colour.filled())),
            )
            .map_err(de)?;
        chart
            .draw_series(pts.iter().filter(|p| p.3 > 1 && p.2 > 0.0).map(|p| {
                ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, colour.stroke_width(2), 10)
            }))
            .map_err(de)?;
    }
    Ok(())
}

fn legend<'a, DB, X>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 15))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(de)
}

// ---------------------------------------------------------------------------------------------
// Attention heatmap

/// One square attention map: `weights[q * n + k]` is query position `q`'s weight on key `k`,
/// `labels[i]` names position `i`.
#[derive(Clone, Debug)]
pub struct HeatPanel {
    pub title: String,
    pub labels: Vec<String>,
    pub weights: Vec<f32>,
}

/// The panels side by side (queries down, keys across, first position at the top left) and one
/// colour bar for all of them on a shared scale from 0 to the largest weight.
pub fn heatmap_figure(title: &str, panels: &[HeatPanel]) -> Result<Figure> {
    if panels.is_empty() {
        bail!("heatmap: no panels");
    }
    for p in panels {
        let n = p.labels.len();
        if n == 0 || p.weights.len() != n * n {
            bail!(
                "heatmap {}: {} weights for {} labels (need labels² > 0)",
                p.title,
                p.weights.len(),
                n
            );
        }
    }
    let vmax = panels
        .iter()
        .flat_map(|p| p.weights.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f32, f32::max)
        .max(1e-6) as f64;
    let nmax = panels.iter().map(|p| p.labels.len()).max().unwrap_or(1);
    let label_px = panels
        .iter()
        .flat_map(|p| p.labels.iter())
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 18) as u32
        * 8
        + 20;
    let cell = (560 / nmax as u32).clamp(14, 40);
    let side = cell * nmax as u32;
    let panel_w = side + label_px + 40;
    let bar_w = 110u32;
    let w = panel_w * panels.len() as u32 + bar_w;
    let h = side + label_px + 100;
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            root.fill(&WHITE).map_err(de)?;
            let root = root.titled(title, (FONT, 22)).map_err(de)?;
            let (maps, bar) = root.split_horizontally(w - bar_w);
            let areas = maps.split_evenly((1, panels.len()));
            for (area, p) in areas.iter().zip(panels) {
                draw_heat_panel(area, p, vmax, label_px)?;
            }
            draw_colour_bar(&bar, vmax, label_px)?;
            Ok(())
        }};
    }
    render_both((w, h), |r| body!(r), |r| body!(r))
}

fn heat_colour(v: f64, vmax: f64) -> RGBColor {
    ViridisRGB::get_color_normalized(v.clamp(0.0, vmax), 0.0, vmax)
}

fn draw_heat_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &HeatPanel,
    vmax: f64,
    label_px: u32,
) -> Result<()> {
    let n = p.labels.len();
    let labels = &p.labels;
    // Rows are drawn top-down: query 0 at the top, so y = n - 1 - q in chart coordinates.
    let mut chart = ChartBuilder::on(area)
        .caption(p.title.as_str(), (FONT, 18))
        .margin(8)
        .x_label_area_size(label_px)
        .y_label_area_size(label_px)
        .build_cartesian_2d(0f64..n as f64, 0f64..n as f64)
        .map_err(de)?;
    let yfmt = |v: &f64| cell_label(*v, labels, true);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * n + 1)
        .y_labels(2 * n + 1)
        // The key labels are drawn below (rotated); plotters would centre rotated labels on the
        // tick, pushing half of each word into the map.
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&yfmt)
        .y_label_style((FONT, 13))
        .x_desc("key (attended-to token)")
        .y_desc("query (attending token)")
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(de)?;
    let base = area.get_base_pixel();
    let style = TextStyle::from((FONT, 13).into_font())
        .transform(FontTransform::Rotate90)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for k in 0..n {
        let (px, py) = chart.backend_coord(&(k as f64 + 0.5, 0.0));
        let text = cell_label(k as f64 + 0.5, labels, false);
        area.draw(&Text::new(text, (px - base.0, py - base.1 + 8), &style))
            .map_err(de)?;
    }
    chart
        .draw_series((0..n).flat_map(|q| {
            (0..n).map(move |k| {
                let v = p.weights[q * n + k] as f64;
                let y = (n - 1 - q) as f64;
                Rectangle::new(
                    [(k as f64, y), (k as f64 + 1.0, y + 1.0)],
                    heat_colour(if v.is_finite() { v } else { 0.0 }, vmax).filled(),
                )
            })
        }))
        .map_err(de)?;
    Ok(())
}

/// The label of the cell whose centre is at `v` (cells span [i, i+1]); empty elsewhere, so only
/// centres carry a label.
fn cell_label(v: f64, labels: &[String], y_axis: bool) -> String {
    let c = v - 0.5;
    let i = c.round();
    if (c - i).abs() > 1e-6 || i < 0.0 || i as usize >= labels.len() {
        return String::new();
    }
    let idx = if y_axis {
        labels.len() - 1 - i as usize
    } else {
        i as usize
    };
    let l = &labels[idx];
    if l.chars().count() > 18 {
        format!("{}…", l.chars().take(17).collect::<String>())
    } else {
        l.clone()
    }
}

fn draw_colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    vmax: f64,
    label_px: u32,
) -> Result<()> {
    let steps = 100;
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(label_px + 8)
        .margin_right(8)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..1.0, 0f64..vmax)
        .map_err(de)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.2}"))
        .y_label_style((FONT, 13))
        .y_desc("attention weight")
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(de)?;
    chart
        .draw_series((0..steps).map(|s| {
            let a = vmax * s as f64 / steps as f64;
            let b = vmax * (s + 1) as f64 / steps as f64;
            Rectangle::new(
                [(0.0, a), (1.0, b)],
                heat_colour((a + b) / 2.0, vmax).filled(),
            )
        }))
        .map_err(de)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Loss curve

/// Train and validation loss against the epoch number across all stages (the PNG twin of the
/// `loss_curve.svg` every run writes).
pub fn loss_curve_figure(records: &[EpochRecord]) -> Result<Figure> {
    let vals = records
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .filter(|v| v.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo * 0.95, hi * 1.05 + 1e-9)
    } else {
        (0.0, 1.0)
    };
    let n = records.len().max(1) as f64;
    let series = |f: fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
        records
            .iter()
            .enumerate()
            .map(|(i, r)| ((i + 1) as f64, f(r)))
            .collect()
    };
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            root.fill(&WHITE).map_err(de)?;
            let mut chart = ChartBuilder::on(root)
                .caption("PEPLER training loss", (FONT, 20))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(0.5..n + 0.5, lo..hi)
                .map_err(de)?;
            chart
                .configure_mesh()
                .x_desc("epoch (all stages)")
                .y_desc("loss")
                .x_label_formatter(&|v| {
                    if (v - v.round()).abs() < 1e-9 {
                        format!("{v:.0}")
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|v| format!("{v:.2}"))
                .light_line_style(RGBColor(238, 238, 238))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .draw()
                .map_err(de)?;
            for (name, f, colour) in [
                (
                    "train",
                    (|r: &EpochRecord| r.train_loss) as fn(&EpochRecord) -> f64,
                    BLUE,
                ),
                ("validation", |r: &EpochRecord| r.val_loss, RED),
            ] {
                chart
                    .draw_series(LineSeries::new(series(f), colour.stroke_width(2)))
                    .map_err(de)?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()
                .map_err(de)?;
            Ok(())
        }};
    }
    render_both((720, 420), |r| body!(r), |r| body!(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips() {
        let (w, h) = (30u32, 20u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let png = encode_png(&rgb, w, h).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert_eq!(decode_png(&png).unwrap(), (w, h, rgb));
        assert!(decode_png(b"not a png").is_err());
    }

    #[test]
    fn embedded_font_draws_glyphs_into_the_bitmap() {
        // With no system font involved, text must still put dark pixels on a white canvas.
        register_fonts();
        let (w, h) = (200u32, 60u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            root.fill(&WHITE).unwrap();
            root.draw_text("BLEU-4", &(FONT, 30).into_font().color(&BLACK), (10, 10))
                .unwrap();
            root.present().unwrap();
        }
        let dark = rgb.chunks(3).filter(|p| p[0] < 100).count();
        assert!(
            dark > 100,
            "only {dark} dark pixels: the text did not render"
        );
    }
}
