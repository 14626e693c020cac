//! The one comparison helper: (actual, expected, tolerance) -> a report row with the max abs/rel
//! error, the worst element and pass/fail; and the table printer.

use std::fmt::Write as _;

use super::tolerances::Tolerance;

/// One checked tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub numel: usize,
    pub max_abs: f32,
    /// Max of `|a - e| / |e|` over elements with `e != 0`.
    pub max_rel: f32,
    /// Max over elements of `|a - e| / bound` (see `Tolerance::bound`): how much of the tolerance is used
    /// (<= 1 passes; infinite when an exact check fails).
    pub worst_ratio: f32,
    /// Flat index of the element with the largest `worst_ratio` (first failing one if any fail).
    pub worst_index: usize,
    pub tol: Tolerance,
    pub pass: bool,
    /// Set when the comparison could not be made (shape mismatch, missing tensor, NaN count...).
    pub note: Option<String>,
}

impl Row {
    /// A row that failed before any numbers could be compared.
    pub fn failed(name: &str, tol: Tolerance, why: String) -> Self {
        Row {
            name: name.to_string(),
            numel: 0,
            max_abs: f32::NAN,
            max_rel: f32::NAN,
            worst_ratio: f32::INFINITY,
            worst_index: 0,
            tol,
            pass: false,
            note: Some(why),
        }
    }
}

/// Compares `actual` with `expected` (same shape required). With `Tolerance::EXACT`, the bits
/// must be identical (so -0.0 vs 0.0 or a different NaN payload fails).
pub fn compare(
    name: &str,
    actual: &[f32],
    actual_shape: &[usize],
    expected: &[f32],
    expected_shape: &[usize],
    tol: Tolerance,
) -> Row {
    if actual_shape != expected_shape || actual.len() != expected.len() {
        return Row::failed(
            name,
            tol,
            format!("shape {actual_shape:?}, expected {expected_shape:?}"),
        );
    }
    let exact = tol == Tolerance::EXACT;
    let mut row = Row {
        name: name.to_string(),
        numel: actual.len(),
        max_abs: 0.0,
        max_rel: 0.0,
        worst_ratio: 0.0,
        worst_index: 0,
        tol,
        pass: true,
        note: None,
    };
    let max = expected
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f32, |m, x| m.max(x.abs()));
    let mut non_finite = 0usize;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let ok = if exact {
            a.to_bits() == e.to_bits()
        } else {
            tol.allows(a, e, max)
        };
        let d = (a - e).abs();
        if !a.is_finite() && e.is_finite() {
            non_finite += 1;
        }
        if d.is_finite() {
            row.max_abs = row.max_abs.max(d);
            if e != 0.0 {
                row.max_rel = row.max_rel.max(d / e.abs());
            }
        }
        let bound = tol.bound(e, max);
        let ratio = if a.to_bits() == e.to_bits() || (ok && d == 0.0) {
            0.0
        } else if bound > 0.0 && d.is_finite() {
            d / bound
        } else {
            f32::INFINITY
        };
        if !ok && row.pass {
            // Report the first failing element.
            row.pass = false;
            row.worst_index = i;
            row.worst_ratio = ratio;
        } else if row.pass && ratio > row.worst_ratio {
            row.worst_index = i;
            row.worst_ratio = ratio;
        } else if !row.pass {
            row.worst_ratio = row.worst_ratio.max(ratio);
        }
    }
    if non_finite > 0 {
        row.max_abs = f32::NAN;
        row.note = Some(format!("{non_finite} non-finite values"));
    }
    row
}

/// Formats rows as a fixed-width table with a summary line.
pub fn format_table(title: &str, rows: &[Row]) -> String {
    let w = rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .clamp(6, 64);
    let mut s = String::new();
    let _ = writeln!(s, "{title}");
    let _ = writeln!(
        s,
        "{:<w$}  {:>9}  {:>10}  {:>10}  {:>13}  {:>7}  result",
        "tensor", "numel", "max abs", "max rel", "tolerance", "used"
    );
    for r in rows {
        let used = if r.worst_ratio.is_finite() {
            format!("{:.3}", r.worst_ratio)
        } else {
            "inf".to_string()
        };
        let mut res = if r.pass {
            "ok".to_string()
        } else {
            format!("FAIL @{}", r.worst_index)
        };
        if let Some(n) = &r.note {
            res.push_str(&format!(" ({n})"));
        }
        let _ = writeln!(
            s,
            "{:<w$}  {:>9}  {:>10.3e}  {:>10.3e}  {:>13}  {:>7}  {}",
            r.name,
            r.numel,
            r.max_abs,
            r.max_rel,
            r.tol.to_string(),
            used,
            res
        );
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    let _ = writeln!(
        s,
        "{} rows, {} passed, {} failed",
        rows.len(),
        rows.len() - failed,
        failed
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_reports_max_errors_and_first_failure() {
        let tol = Tolerance {
            abs: 1e-3,
            rel: 0.0,
            rel_max: 0.0,
        };
        let r = compare("x", &[1.0, 2.0005, 3.0], &[3], &[1.0, 2.0, 3.0], &[3], tol);
        assert!(r.pass && (r.max_abs - 5e-4).abs() < 1e-6 && r.worst_index == 1);
        let r = compare(
            "x",
            &[1.0, 2.0, 3.1, 4.5],
            &[4],
            &[1.0, 2.0, 3.0, 4.0],
            &[4],
            tol,
        );
        assert!(!r.pass && r.worst_index == 2 && (r.max_abs - 0.5).abs() < 1e-6);
        let r = compare("x", &[f32::NAN], &[1], &[0.0], &[1], tol);
        assert!(!r.pass && r.note.is_some());
        let r = compare("x", &[1.0], &[1, 1], &[1.0], &[1], tol);
        assert!(!r.pass && r.note.unwrap().contains("shape"));
        let r = compare("x", &[-0.0], &[1], &[0.0], &[1], Tolerance::EXACT);
        assert!(!r.pass);
        let t = format_table("case", &[compare("x", &[1.0], &[1], &[1.0], &[1], tol)]);
        assert!(t.contains("1 rows, 1 passed, 0 failed"), "{t}");
    }
}
