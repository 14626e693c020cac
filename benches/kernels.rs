//! Cost per launch of the kernels, device-first names (`emu/layernorm_forward`), with the CPU
//! reference on the same shape in the same run as the baseline, and a napkin count of bytes moved
//! per launch (criterion prints GB/s). The emulated device runs the CUDA source on host threads
//! (tens of ms per launch: it is a correctness tool, and this bench keeps that cost visible); the
//! cuda rows appear only where a GPU is usable. With a GPU the misc kernels' groups run at PEPLER's
//! shapes (B 128, L 26 -> 3328 rows, C 768, V 50260) on cuda and the CPU; without one they run at
//! small shapes on the CPU and the emulated device, and say so.
//!
//! `cargo bench --bench kernels [-- <group filter>]`

use std::sync::OnceLock;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pepler_cuda::backend::{AdamWParams, AdamWVariant};
use pepler_cuda::device::{Device, DeviceBuffer};
use pepler_cuda::kernels::{
    adamw, classifier, dropout, embedding, gather, gelu, global_norm, layernorm, matmul, rating,
    residual,
};
use pepler_cuda::ops;
use pepler_cuda::ops::dropout::DropoutSite;
use pepler_cuda::ops::embedding::EmbedShape;
use pepler_cuda::ops::matmul::WeightLayout;
use pepler_cuda::precision::Act;

/// GPT-2 small's width, a small batch of rows.
const ROWS: usize = 64;
const C: usize = 768;
const EPS: f32 = 1e-5;

/// Device time of the work `f` queues (`Device::time`: CUDA events on a GPU, so the clock
/// measures the kernels, not the launch overhead of the host; the wall clock on emu).
fn device_time(dev: &Device, f: &mut dyn FnMut()) -> Duration {
    let secs = dev
        .time(&mut || {
            f();
            Ok(())
        })
        .unwrap();
    Duration::from_secs_f64(secs)
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

fn bench_device(c: &mut Criterion, group: &str, dev: &Device, inp: &[f32], w: &[f32], b: &[f32]) {
    let (x, dw, db) = (
        dev.upload(inp).unwrap(),
        dev.upload(w).unwrap(),
        dev.upload(b).unwrap(),
    );
    let mut out = dev.alloc::<f32>(ROWS * C).unwrap();
    let mut mean = dev.alloc::<f32>(ROWS).unwrap();
    let mut rstd = dev.alloc::<f32>(ROWS).unwrap();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(bytes_moved()));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.bench_function(format!("{}/layernorm_forward", dev.kind()), |bch| {
        bch.iter_custom(|iters| {
            // CUDA events on a GPU (launches are asynchronous), the wall clock on emu
            device_time(dev, &mut || {
                for _ in 0..iters {
                    layernorm::layernorm_forward(
                        dev,
                        out.view_mut(),
                        Some(mean.view_mut()),
                        Some(rstd.view_mut()),
                        x.view(),
                        dw.view(),
                        db.view(),
                        ROWS,
                        C,
                        EPS,
                    )
                    .unwrap();
                }
            })
        })
    });
    g.finish();
}

/// Napkin count: read inp, weight, bias; write out, mean, rstd.
fn bytes_moved() -> u64 {
    (4 * (2 * ROWS * C + 2 * C + 2 * ROWS)) as u64
}

fn layernorm_forward(c: &mut Criterion) {
    let group = format!("layernorm_forward_{ROWS}x{C}");
    let (inp, w, b) = (data(ROWS * C, 1), data(C, 2), data(C, 3));
    {
        let (mut out, mut mean, mut rstd) = (vec![0.0; ROWS * C], vec![0.0; ROWS], vec![0.0; ROWS]);
        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Bytes(bytes_moved()));
        g.bench_function("cpu/layernorm_forward", |bch| {
            bch.iter(|| {
                ops::layernorm::layernorm_forward(
                    &mut out, &mut mean, &mut rstd, &inp, &w, &b, ROWS, C, EPS,
                )
            })
        });
        g.finish();
    }
    bench_device(c, &group, &Device::emu().unwrap(), &inp, &w, &b);
    match Device::cuda() {
        Ok(dev) => bench_device(c, &group, &dev, &inp, &w, &b),
        Err(e) => eprintln!("cuda/layernorm_forward skipped: {e:#}"),
    }
}

// ------------------------------------------------------------------------------------------
// the misc kernels (issue 7, section 2): one group per kernel

/// Shapes of one run: PEPLER's with a GPU, small ones for the CPU-only machine.
#[derive(Clone, Copy)]
struct Shapes {
    /// B * L rows of activations.
    rows: usize,
    /// Batch (sequences).
    b: usize,
    c: usize,
    v: usize,
    /// Rows of the cross-entropy (the text positions of a batch).
    ce_rows: usize,
    /// Parameters of the flat AdamW / grad-norm buffers.
    params: usize,
}

const PEPLER: Shapes = Shapes {
    rows: 128 * 26,
    b: 128,
    c: 768,
    v: 50260,
    ce_rows: 128 * 22,
    params: 124_000_000,
};

const SMALL: Shapes = Shapes {
    rows: 2 * 26,
    b: 2,
    c: 768,
    v: 1031,
    ce_rows: 2 * 22,
    params: 100_000,
};

/// The devices to time and the shapes: cuda at PEPLER's shapes when a GPU is usable, else emu at
/// small shapes (said once on stderr).
fn devices() -> (Vec<Device>, Shapes) {
    static DEVICES: OnceLock<(Vec<Device>, Shapes)> = OnceLock::new();
    DEVICES
        .get_or_init(|| match Device::cuda() {
            Ok(d) => (vec![d], PEPLER),
            Err(e) => {
                eprintln!(
                    "no usable GPU ({e:#}): the misc kernels are benched on the CPU reference and \
                     the emulated device at small shapes (rows {}, V {}), not at PEPLER's",
                    SMALL.rows, SMALL.v
                );
                (vec![Device::emu().unwrap()], SMALL)
            }
        })
        .clone()
}

type Run = Box<dyn FnMut()>;

/// One group `name_<shape>`: `cpu` on the host, then `dev_run(device)` on each device, each timed
/// between device synchronisations, with `bytes` moved per call.
fn run_group(
    c: &mut Criterion,
    name: &str,
    shape: &str,
    bytes: u64,
    mut cpu: Run,
    dev_run: impl Fn(&Device) -> Run,
) {
    let (devs, _) = devices();
    let mut g = c.benchmark_group(format!("{name}_{shape}"));
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function(format!("cpu/{name}"), |bch| bch.iter(&mut cpu));
    for dev in devs {
        let mut f = dev_run(&dev);
        g.bench_function(format!("{}/{name}", dev.kind()), |bch| {
            bch.iter_custom(|iters| {
                device_time(&dev, &mut || {
                    for _ in 0..iters {
                        f();
                    }
                })
            })
        });
    }
    g.finish();
}

fn ids(n: usize, rows: usize) -> Vec<i32> {
    (0..n)
        .map(|i| ((i * 2_654_435_761) % rows) as i32)
        .collect()
}

fn f32_buf(dev: &Device, n: usize, seed: u32) -> DeviceBuffer<f32> {
    dev.upload(&data(n, seed)).unwrap()
}

fn embedding(c: &mut Criterion) {
    let s0 = devices().1;
    let (rows_t, cc) = (s0.v, s0.c);
    let s = EmbedShape {
        batch: s0.b,
        n: s0.rows / s0.b,
        seq: s0.rows / s0.b,
        offset: 0,
        pos0: 0,
        c: cc,
    };
    let shape = format!("{}x{}x{}", s.batch, s.n, cc);
    let bytes = (4 * (3 * s.batch * s.n * cc + s.batch * s.n)) as u64;
    let (table, wpe, id) = (
        data(rows_t * cc, 1),
        data(1024 * cc, 2),
        ids(s.batch * s.n, rows_t),
    );
    let (t2, w2, i2) = (table.clone(), wpe.clone(), id.clone());
    let mut out = vec![0.0; s.batch * s.seq * cc];
    run_group(
        c,
        "embedding_forward",
        &shape,
        bytes,
        Box::new(move || ops::embedding::embedding_forward(&mut out, &t2, &i2, Some(&w2), s)),
        |dev| {
            let (t, w, i) = (
                dev.upload(&table).unwrap(),
                dev.upload(&wpe).unwrap(),
                dev.upload(&id).unwrap(),
            );
            let mut o = dev.alloc::<f32>(s.batch * s.seq * cc).unwrap();
            let dev = dev.clone();
            Box::new(move || {
                embedding::embedding_forward(
                    &dev,
                    o.view_mut(),
                    t.view(),
                    i.view(),
                    Some(w.view()),
                    s,
                )
                .unwrap()
            })
        },
    );
    let dout = data(s.batch * s.seq * cc, 3);
    let (d2, i2) = (dout.clone(), id.clone());
    let (mut dt, mut dw) = (vec![0.0; rows_t * cc], vec![0.0; 1024 * cc]);
    run_group(
        c,
        "embedding_backward",
        &shape,
        (4 * (3 * s.batch * s.n * cc + 2 * s.n * cc)) as u64,
        Box::new(move || {
            ops::embedding::embedding_backward(Some(&mut dt), Some(&mut dw), &d2, &i2, s)
        }),
        |dev| {
            let (d, i) = (dev.upload(&dout).unwrap(), dev.upload(&id).unwrap());
            let mut dt = dev.alloc::<f32>(rows_t * cc).unwrap();
            let mut dw = dev.alloc::<f32>(1024 * cc).unwrap();
            let mut scratch = dev
                .alloc::<i32>(embedding::embedding_backward_scratch_len(&s))
                .unwrap();
            let dev = dev.clone();
            Box::new(move || {
                embedding::embedding_backward(
                    &dev,
                    Some(dt.view_mut()),
                    Some(dw.view_mut()),
                    scratch.view_mut(),
                    d.view(),
                    i.view(),
                    s,
                )
                .unwrap()
            })
        },
    );
}

fn classifier_groups(c: &mut Criterion) {
    let s = devices().1;
    let (rows, v) = (s.ce_rows, s.v);
    let shape = format!("{rows}x{v}");
    let logits = data(rows * v, 5);
    let targets = ids(rows, v);
    let (l2, t2) = (logits.clone(), targets.clone());
    let mut losses = vec![0.0; rows];
    // read the logits three times, write dlogits once
    run_group(
        c,
        "crossentropy_forward",
        &shape,
        (4 * 4 * rows * v) as u64,
        // the CPU side copies the logits first (it overwrites them): a small extra cost
        Box::new(move || {
            let mut x = l2.clone();
            ops::crossentropy::crossentropy_forward(&mut losses, &mut x, &t2, rows, v, Some(1.0))
        }),
        |dev| {
            let mut x = dev.upload(&logits).unwrap();
            let t = dev.upload(&targets).unwrap();
            let mut l = dev.alloc::<f32>(rows).unwrap();
            let mut mean = dev.alloc::<f32>(1).unwrap();
            let dev = dev.clone();
            // dlogits overwrite the logits: later iterations see gradients, same cost
            Box::new(move || {
                classifier::crossentropy_forward(
                    &dev,
                    l.view_mut(),
                    x.view_mut(),
                    t.view(),
                    rows,
                    v,
                    Some(1.0),
                )
                .unwrap();
                classifier::crossentropy_mean(&dev, mean.view_mut(), l.view(), t.view(), rows)
                    .unwrap();
            })
        },
    );
    let l3 = logits.clone();
    let mut out = vec![0i32; s.b];
    run_group(
        c,
        "argmax_forward",
        &format!("{}x{v}", s.b),
        (4 * s.b * v) as u64,
        Box::new(move || ops::crossentropy::argmax_forward(&mut out, &l3[..s.b * v], s.b, v)),
        |dev| {
            let x = dev.upload(&logits[..s.b * v]).unwrap();
            let mut o = dev.alloc::<i32>(s.b).unwrap();
            let dev = dev.clone();
            Box::new(move || {
                classifier::argmax_forward(&dev, o.view_mut(), x.view(), s.b, v).unwrap()
            })
        },
    );
}

fn adamw_groups(c: &mut Criterion) {
    let s = devices().1;
    let n = s.params;
    let hp = AdamWParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.0,
        variant: AdamWVariant::Torch,
    };
    let (mut p, g, mut m, mut v) = (data(n, 6), data(n, 7), vec![0.0; n], vec![0.0; n]);
    // ~150 tensors as in GPT-2 small, all trainable
    let per = n / 150;
    let tensors: Vec<adamw::AdamWTensor> = (0..150)
        .map(|i| adamw::AdamWTensor {
            offset: i * per,
            len: if i == 149 { n - i * per } else { per },
            decay: i % 2 == 0,
            trainable: true,
        })
        .collect();
    run_group(
        c,
        "adamw_update_multi",
        &format!("{n}"),
        (4 * 7 * n) as u64,
        Box::new(move || {
            ops::adamw::adamw_update(
                &mut p, &g, &mut m, &mut v, hp.lr, hp.beta1, hp.beta2, hp.eps, 0.0, 1,
            )
        }),
        |dev| {
            let plan = adamw::AdamWPlan::new(dev, &tensors).unwrap();
            let (mut p, g) = (f32_buf(dev, n, 6), f32_buf(dev, n, 7));
            let (mut m, mut v) = (dev.alloc::<f32>(n).unwrap(), dev.alloc::<f32>(n).unwrap());
            let dev = dev.clone();
            Box::new(move || {
                adamw::adamw_update_multi(
                    &dev,
                    &plan,
                    p.view_mut(),
                    g.view(),
                    m.view_mut(),
                    v.view_mut(),
                    None,
                    &hp,
                    1,
                )
                .unwrap()
            })
        },
    );
    let x = data(n, 8);
    let x2 = x.clone();
    run_group(
        c,
        "global_norm",
        &format!("{n}"),
        (4 * n) as u64,
        Box::new(move || {
            criterion::black_box(ops::global_norm::global_norm(&x2));
        }),
        |dev| {
            let xd = dev.upload(&x).unwrap();
            let mut norm = dev.alloc::<f32>(1).unwrap();
            let mut scratch = dev
                .alloc::<f32>(global_norm::global_norm_scratch_len(n))
                .unwrap();
            let dev = dev.clone();
            Box::new(move || {
                global_norm::global_norm(&dev, norm.view_mut(), scratch.view_mut(), xd.view(), n)
                    .unwrap()
            })
        },
    );
}

fn pointwise_groups(c: &mut Criterion) {
    let s = devices().1;
    let n = s.rows * s.c;
    let site = DropoutSite {
        p: 0.1,
        seed: 1,
        step: 2,
        site: 3,
    };
    let x = data(n, 9);
    let x2 = x.clone();
    let mut out = vec![0.0; n];
    run_group(
        c,
        "dropout_forward",
        &format!("{}x{}", s.rows, s.c),
        (8 * n) as u64,
        Box::new(move || ops::dropout::dropout_forward(&mut out, &x2, &site)),
        |dev| {
            let xd = dev.upload(&x).unwrap();
            let mut o = dev.alloc::<f32>(n).unwrap();
            let dev = dev.clone();
            Box::new(move || {
                dropout::dropout_forward(&dev, o.view_mut(), xd.view(), site, n).unwrap()
            })
        },
    );
    // the MLP's bias + GELU after its GEMM (4C wide): reads pre and bias, writes pre and out
    let (rows4, c4) = (s.rows, 4 * s.c);
    let (pre0, bias) = (data(rows4 * c4, 13), data(c4, 14));
    let (mut pre_h, bias_h, mut out_h) = (pre0.clone(), bias.clone(), vec![0.0; rows4 * c4]);
    run_group(
        c,
        "bias_gelu_forward",
        &format!("{rows4}x{c4}"),
        (12 * rows4 * c4) as u64,
        Box::new(move || ops::gelu::bias_gelu_forward(&mut pre_h, &mut out_h, &bias_h, c4)),
        |dev| {
            let (mut pr, bd) = (dev.upload(&pre0).unwrap(), dev.upload(&bias).unwrap());
            let mut o = dev.alloc::<f32>(rows4 * c4).unwrap();
            let dev = dev.clone();
            Box::new(move || {
                gelu::bias_gelu_forward(&dev, pr.view_mut(), o.view_mut(), bd.view(), rows4, c4)
                    .unwrap()
            })
        },
    );
    let (b, cc) = (s.b, s.c);
    let ui = data(b * 2 * cc, 10);
    let (pred, target) = (data(b, 11), data(b, 12));
    let (ui2, p2, t2) = (ui.clone(), pred.clone(), target.clone());
    let (mut o, mut dp) = (vec![0.0; b], vec![0.0; b]);
    run_group(
        c,
        "rating_mf_forward_and_mse",
        &format!("{b}x{cc}"),
        (4 * (2 * b * cc + 4 * b)) as u64,
        Box::new(move || {
            ops::rating::rating_mf_forward(&mut o, &ui2, b, cc);
            criterion::black_box(ops::rating::mse_forward(&mut dp, &p2, &t2, 1.0));
        }),
        |dev| {
            let (u, p, t) = (
                dev.upload(&ui).unwrap(),
                dev.upload(&pred).unwrap(),
                dev.upload(&target).unwrap(),
            );
            let (mut o, mut dp, mut loss) = (
                dev.alloc::<f32>(b).unwrap(),
                dev.alloc::<f32>(b).unwrap(),
                dev.alloc::<f32>(1).unwrap(),
            );
            let dev = dev.clone();
            Box::new(move || {
                rating::rating_mf_forward(&dev, o.view_mut(), u.view(), b, cc).unwrap();
                rating::mse_forward(
                    &dev,
                    loss.view_mut(),
                    dp.view_mut(),
                    p.view(),
                    t.view(),
                    b,
                    1.0,
                )
                .unwrap();
            })
        },
    );
}

fn matmul_groups(c: &mut Criterion) {
    let s = devices().1;
    // the attention projection of one block: (rows, 768) x (768, 2304) + bias
    let (rows, cin, cout) = (s.rows, s.c, 3 * s.c);
    let shape = format!("{rows}x{cin}x{cout}");
    let (x, w, b) = (data(rows * cin, 13), data(cin * cout, 14), data(cout, 15));
    let (x2, w2, b2) = (x.clone(), w.clone(), b.clone());
    let mut out = vec![0.0; rows * cout];
    run_group(
        c,
        "matmul_forward",
        &shape,
        (4 * (rows * cin + cin * cout + 2 * rows * cout)) as u64,
        Box::new(move || {
            ops::matmul::matmul_forward(
                &mut out,
                &x2,
                &w2,
                Some(&b2),
                rows,
                cin,
                cout,
                WeightLayout::InOut,
            )
        }),
        |dev| {
            let (xd, wd, bd) = (
                dev.upload(&x).unwrap(),
                dev.upload(&w).unwrap(),
                dev.upload(&b).unwrap(),
            );
            let mut o = dev.alloc::<f32>(rows * cout).unwrap();
            let dev = dev.clone();
            Box::new(move || {
                matmul::matmul_forward(
                    &dev,
                    o.view_mut(),
                    xd.view(),
                    wd.view(),
                    Some(bd.view()),
                    rows,
                    cin,
                    cout,
                    WeightLayout::InOut,
                )
                .unwrap()
            })
        },
    );
    let dout = data(rows * cout, 16);
    let d2 = dout.clone();
    let mut db = vec![0.0; cout];
    run_group(
        c,
        "matmul_backward_bias",
        &format!("{rows}x{cout}"),
        (4 * (rows * cout + 2 * cout)) as u64,
        Box::new(move || {
            // the CPU reference's dbias loop alone (no GEMMs)
            for r in 0..rows {
                for (d, g) in db.iter_mut().zip(&d2[r * cout..(r + 1) * cout]) {
                    *d += *g;
                }
            }
        }),
        |dev| {
            let dd = dev.upload(&dout).unwrap();
            let mut dbd = dev.alloc::<f32>(cout).unwrap();
            let mut scratch = dev
                .alloc::<f32>(matmul::matmul_backward_scratch_len(rows, cout))
                .unwrap();
            let dev = dev.clone();
            Box::new(move || {
                matmul::matmul_backward_bias(
                    &dev,
                    dbd.view_mut(),
                    scratch.view_mut(),
                    dd.view(),
                    rows,
                    cout,
                )
                .unwrap()
            })
        },
    );
}

fn layernorm_groups(c: &mut Criterion) {
    let s = devices().1;
    let (rows, cc) = (s.rows, s.c);
    let n = rows * cc;
    let (a, b, w, bias) = (data(n, 17), data(n, 18), data(cc, 19), data(cc, 20));
    let (a2, b2, w2, bias2) = (a.clone(), b.clone(), w.clone(), bias.clone());
    let (mut r, mut o, mut m, mut rs) =
        (vec![0.0; n], vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
    run_group(
        c,
        "residual_layernorm_forward",
        &format!("{rows}x{cc}"),
        (4 * (4 * n + 2 * rows + 2 * cc)) as u64,
        Box::new(move || {
            ops::layernorm::residual_layernorm_forward(
                &mut r, &mut o, &mut m, &mut rs, &a2, &b2, &w2, &bias2, rows, cc, EPS,
            )
        }),
        |dev| {
            let (ad, bd, wd, biasd) = (
                dev.upload(&a).unwrap(),
                dev.upload(&b).unwrap(),
                dev.upload(&w).unwrap(),
                dev.upload(&bias).unwrap(),
            );
            let (mut r, mut o) = (dev.alloc::<f32>(n).unwrap(), dev.alloc::<f32>(n).unwrap());
            let (mut m, mut rs) = (
                dev.alloc::<f32>(rows).unwrap(),
                dev.alloc::<f32>(rows).unwrap(),
            );
            let dev = dev.clone();
            Box::new(move || {
                layernorm::residual_layernorm_forward(
                    &dev,
                    r.view_mut(),
                    o.view_mut(),
                    Some(m.view_mut()),
                    Some(rs.view_mut()),
                    ad.view(),
                    bd.view(),
                    wd.view(),
                    biasd.view(),
                    rows,
                    cc,
                    EPS,
                )
                .unwrap()
            })
        },
    );
}

// ------------------------------------------------------------------------------------------
// attention at PEPLER's shape (GPT-2 small heads, a batch of 128 explanations of ~26 positions)

const ATT: ops::attention::AttnShape = ops::attention::AttnShape {
    b: 128,
    l: 26,
    c: 768,
    nh: 12,
};

/// Causal FLOPs: each (sequence, head) does two L x L x hd products over the lower triangle with
/// the diagonal (L(L+1)/2 query-key pairs, 2 FLOPs per multiply-add) in the forward (QK^T, PV) and
/// five in the backward (QK^T recomputed, dO V^T, dV, dQ, dK).
fn attention_flops(products: usize) -> u64 {
    let s = ATT;
    (s.b * s.nh * products * 2 * s.hd() * s.l * (s.l + 1) / 2) as u64
}

fn attention(c: &mut Criterion) {
    use pepler_cuda::kernels::attention as ka;
    let s = ATT;
    let qkv = data(s.b * s.l * 3 * s.c, 4);
    let dout = data(s.b * s.l * s.c, 5);
    let (fwd_flops, bwd_flops) = (attention_flops(2), attention_flops(5));
    {
        let mut out = vec![0.0; s.b * s.l * s.c];
        let mut att = vec![0.0; s.b * s.nh * s.l * s.l];
        let mut dqkv = vec![0.0; s.b * s.l * 3 * s.c];
        ops::attention::attention_forward(&mut out, &mut att, &qkv, None, None, s);
        for (group, flops) in [
            ("attention_forward", fwd_flops),
            ("attention_backward", bwd_flops),
        ] {
            let mut g = c.benchmark_group(group);
            g.throughput(Throughput::Elements(flops));
            g.sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3));
            g.bench_function(format!("cpu/{group}"), |bch| {
                bch.iter(|| {
                    if group == "attention_forward" {
                        ops::attention::attention_forward(&mut out, &mut att, &qkv, None, None, s)
                    } else {
                        ops::attention::attention_backward(&mut dqkv, &dout, &qkv, &att, None, s)
                    }
                })
            });
            g.finish();
        }
    }
    // The emulated device would take seconds per launch at this shape: only a GPU is timed.
    let dev = match Device::cuda() {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!(
                "attention: no CUDA GPU ({e:#}); benched the CPU reference only \
                 (throughput 'elements' = FLOPs)"
            );
            return;
        }
    };
    use ka::{AttnBackwardKernel as Bwd, AttnForwardKernel as Fwd};
    let flops = (fwd_flops, bwd_flops);
    attention_on_cuda::<f32>(
        c,
        &dev,
        &qkv,
        &dout,
        flops,
        &[("cuda", Fwd::Scalar, Bwd::Scalar)],
    );
    // bf16 at hd 64: the tensor-core kernels (the default) and the CUDA-core ones, side by side
    let kernels = [
        ("cuda/tc", Fwd::TensorCore, Bwd::TensorCore),
        ("cuda/scalar", Fwd::Scalar, Bwd::Scalar),
    ];
    attention_on_cuda::<half::bf16>(c, &dev, &qkv, &dout, flops, &kernels);
}

/// The `cuda` rows of the attention groups (`attention_forward[_bf16]`,
/// `attention_backward[_bf16]`) in element type `A`, one row per `(label, forward, backward)`
/// kernel family.
fn attention_on_cuda<A: Act>(
    c: &mut Criterion,
    dev: &Device,
    qkv: &[f32],
    dout: &[f32],
    (fwd_flops, bwd_flops): (u64, u64),
    kernels: &[(
        &str,
        pepler_cuda::kernels::attention::AttnForwardKernel,
        pepler_cuda::kernels::attention::AttnBackwardKernel,
    )],
) {
    use pepler_cuda::kernels::attention as ka;
    let s = ATT;
    let up = |v: &[f32]| {
        let mut n = vec![A::default(); v.len()];
        A::narrow_into(&mut n, v);
        dev.upload(&n).unwrap()
    };
    let (qkv_in, dout_in) = (up(qkv), up(dout));
    let mut out = dev.alloc::<A>(s.b * s.l * s.c).unwrap();
    let mut lse = dev.alloc::<f32>(s.b * s.nh * s.l).unwrap();
    let mut dqkv = dev.alloc::<A>(s.b * s.l * 3 * s.c).unwrap();
    let mut scratch = dev
        .alloc::<f32>(ka::attention_backward_scratch_len(s).unwrap())
        .unwrap();
    let fwd = |which, out: &mut DeviceBuffer<A>, lse: &mut DeviceBuffer<f32>| {
        let (o, l) = (out.view_mut(), lse.view_mut());
        ka::attention_forward_using(dev, which, o, l, qkv_in.view(), None, None, s).unwrap()
    };
    let bwd = |which,
               dqkv: &mut DeviceBuffer<A>,
               out: &DeviceBuffer<A>,
               lse: &DeviceBuffer<f32>,
               scratch: &mut DeviceBuffer<f32>| {
        ka::attention_backward_using(
            dev,
            which,
            dqkv.view_mut(),
            dout_in.view(),
            qkv_in.view(),
            out.view(),
            lse.view(),
            None,
            None,
            s,
            scratch.view_mut(),
        )
        .unwrap()
    };
    let tflops =
        |flops: u64, d: Duration, iters: u64| flops as f64 * iters as f64 / d.as_secs_f64() / 1e12;
    for (base, flops) in [
        ("attention_forward", fwd_flops),
        ("attention_backward", bwd_flops),
    ] {
        let group = A::kernel(base);
        let mut g = c.benchmark_group(group.as_str());
        g.throughput(Throughput::Elements(flops));
        g.sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for &(label, fk, bk) in kernels {
            fwd(fk, &mut out, &mut lse);
            let mut best = f64::MAX;
            g.bench_function(format!("{label}/{group}"), |bch| {
                bch.iter_custom(|iters| {
                    let d = device_time(dev, &mut || {
                        for _ in 0..iters {
                            if base == "attention_forward" {
                                fwd(fk, &mut out, &mut lse);
                            } else {
                                bwd(bk, &mut dqkv, &out, &lse, &mut scratch);
                            }
                        }
                    });
                    best = best.min(d.as_secs_f64() / iters as f64);
                    d
                })
            });
            eprintln!(
                "{label}/{group} B={} L={} C={} NH={}: best {:.1} us/launch, {:.3} TFLOP/s",
                s.b,
                s.l,
                s.c,
                s.nh,
                best * 1e6,
                tflops(flops, Duration::from_secs_f64(best), 1)
            );
        }
        g.finish();
    }
}

/// The bf16 twins and the kernels mixed precision added (`_bf16` device rows; the cpu row is the
/// f32 reference on the same shape): half the bytes of the f32 groups for the memory-bound ones.
fn bf16_groups(c: &mut Criterion) {
    use half::bf16;
    let s = devices().1;
    let n = s.rows * s.c;
    let shape = format!("{}x{}", s.rows, s.c);
    let x = data(n, 21);
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    // residual add: read 2, write 1 (2 bytes each)
    let (a, b) = (x.clone(), data(n, 22));
    let mut out = vec![0.0; n];
    let xb2 = xb.clone();
    run_group(
        c,
        "residual_forward_bf16",
        &shape,
        (6 * n) as u64,
        Box::new(move || ops::residual::residual_forward(&mut out, &a, &b)),
        |dev| {
            let (ad, bd) = (dev.upload(&xb2).unwrap(), dev.upload(&xb2).unwrap());
            let mut o = dev.alloc::<bf16>(n).unwrap();
            let dev = dev.clone();
            Box::new(move || {
                residual::residual_forward(&dev, o.view_mut(), ad.view(), bd.view(), n).unwrap()
            })
        },
    );
    // the weight copy: read f32, write bf16
    let xs = x.clone();
    let mut outb = vec![bf16::ZERO; n];
    run_group(
        c,
        "cast_f32_to_bf16",
        &shape,
        (6 * n) as u64,
        Box::new(move || {
            for (o, &v) in outb.iter_mut().zip(&xs) {
                *o = bf16::from_f32(v);
            }
        }),
        |dev| {
            let xd = dev.upload(&x).unwrap();
            let mut o = dev.alloc::<bf16>(n).unwrap();
            let dev = dev.clone();
            Box::new(move || adamw::cast_f32_to_bf16(&dev, o.view_mut(), xd.view(), n).unwrap())
        },
    );
    // the LM head's row gather: every other row of (rows, c)
    let nr = s.rows / 2;
    let idx: Vec<i32> = (0..nr).map(|r| (2 * r) as i32).collect();
    let (src, idx_h) = (data(n, 23), idx.clone());
    let mut g_out = vec![0.0; nr * s.c];
    let cc = s.c;
    run_group(
        c,
        "row_gather_bf16",
        &format!("{nr}of{}x{}", s.rows, s.c),
        (4 * nr * s.c) as u64,
        Box::new(move || ops::gather::row_gather(&mut g_out, &src, &idx_h, cc)),
        |dev| {
            let (sd, id) = (dev.upload(&xb).unwrap(), dev.upload(&idx).unwrap());
            let mut o = dev.alloc::<bf16>(nr * cc).unwrap();
            let (dev, rows) = (dev.clone(), s.rows);
            Box::new(move || {
                gather::row_gather(&dev, o.view_mut(), sd.view(), id.view(), nr, cc, rows).unwrap()
            })
        },
    );
    bf16_layernorm_groups(c);
    bf16_gelu_and_classifier_groups(c);
}

/// bf16 rows `v` on `dev`.
fn bf16_buf(dev: &Device, v: &[f32]) -> DeviceBuffer<half::bf16> {
    let b: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
    dev.upload(&b).unwrap()
}

/// LayerNorm forward and backward with bf16 activations at GPT-2's width (the 16-byte chunked
/// rows of kernels/layernorm.cu).
fn bf16_layernorm_groups(c: &mut Criterion) {
    use half::bf16;
    let s = devices().1;
    let (rows, cc) = (s.rows, s.c);
    let n = rows * cc;
    let shape = format!("{rows}x{cc}");
    let (x, w, b, dout) = (data(n, 24), data(cc, 25), data(cc, 26), data(n, 27));
    let (x2, w2, b2) = (x.clone(), w.clone(), b.clone());
    let (mut o, mut m, mut rs) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
    // read inp, write out (2 bytes each); weight, bias, mean, rstd in f32
    run_group(
        c,
        "layernorm_forward_bf16",
        &shape,
        (4 * n + 8 * cc + 8 * rows) as u64,
        Box::new(move || {
            ops::layernorm::layernorm_forward(&mut o, &mut m, &mut rs, &x2, &w2, &b2, rows, cc, EPS)
        }),
        |dev| {
            let (xd, wd, bd) = (
                bf16_buf(dev, &x),
                f32_buf(dev, cc, 25),
                f32_buf(dev, cc, 26),
            );
            let mut o = dev.alloc::<bf16>(n).unwrap();
            let (mut m, mut rs) = (
                dev.alloc::<f32>(rows).unwrap(),
                dev.alloc::<f32>(rows).unwrap(),
            );
            let dev = dev.clone();
            Box::new(move || {
                layernorm::layernorm_forward(
                    &dev,
                    o.view_mut(),
                    Some(m.view_mut()),
                    Some(rs.view_mut()),
                    xd.view(),
                    wd.view(),
                    bd.view(),
                    rows,
                    cc,
                    EPS,
                )
                .unwrap()
            })
        },
    );
    // the CPU's statistics feed both sides' backward
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    ops::layernorm::layernorm_forward(
        &mut vec![0.0; n],
        &mut mean,
        &mut rstd,
        &x,
        &w,
        &b,
        rows,
        cc,
        EPS,
    );
    let (_, _, blocks) = layernorm::layernorm_backward_config(rows, cc).unwrap();
    let (x2, w2, d2, m2, r2) = (
        x.clone(),
        w.clone(),
        dout.clone(),
        mean.clone(),
        rstd.clone(),
    );
    let (mut di, mut dw, mut db) = (vec![0.0; n], vec![0.0; cc], vec![0.0; cc]);
    // read dout, inp, dinp and write dinp (2 bytes each); weight, mean, rstd; the partials
    // written and read back (blocks x 2c f32); dweight, dbias read and written
    run_group(
        c,
        "layernorm_backward_bf16",
        &shape,
        (8 * n + 4 * cc + 8 * rows + 16 * blocks * cc + 16 * cc) as u64,
        Box::new(move || {
            ops::layernorm::layernorm_backward(
                &mut di, &mut dw, &mut db, &d2, &x2, &w2, &m2, &r2, rows, cc,
            )
        }),
        |dev| {
            let (xd, dd, wd) = (
                bf16_buf(dev, &x),
                bf16_buf(dev, &dout),
                f32_buf(dev, cc, 25),
            );
            let (md, rd) = (dev.upload(&mean).unwrap(), dev.upload(&rstd).unwrap());
            let mut di = bf16_buf(dev, &vec![0.0; n]);
            let (mut dw, mut db) = (f32_buf(dev, cc, 28), f32_buf(dev, cc, 29));
            let mut scratch = dev
                .alloc::<f32>(layernorm::layernorm_backward_scratch_len(rows, cc).unwrap())
                .unwrap();
            let dev = dev.clone();
            Box::new(move || {
                layernorm::layernorm_backward(
                    &dev,
                    di.view_mut(),
                    Some(dw.view_mut()),
                    Some(db.view_mut()),
                    scratch.view_mut(),
                    dd.view(),
                    xd.view(),
                    wd.view(),
                    md.view(),
                    rd.view(),
                    rows,
                    cc,
                )
                .unwrap()
            })
        },
    );
}

/// GELU at the MLP's width (8 bf16 per thread, act_map1) and the cross-entropy over bf16 logits
/// at the f32 classifier group's shape (rows split into head, 16-byte chunks, tail).
fn bf16_gelu_and_classifier_groups(c: &mut Criterion) {
    use half::bf16;
    let s = devices().1;
    let (rows4, c4) = (s.rows, 4 * s.c);
    let n = rows4 * c4;
    let x = data(n, 30);
    let x2 = x.clone();
    let mut out = vec![0.0; n];
    // read 1, write 1 (2 bytes each)
    run_group(
        c,
        "gelu_forward_bf16",
        &format!("{rows4}x{c4}"),
        (4 * n) as u64,
        Box::new(move || ops::gelu::gelu_forward(&mut out, &x2)),
        |dev| {
            let xd = bf16_buf(dev, &x);
            let mut o = dev.alloc::<bf16>(n).unwrap();
            let dev = dev.clone();
            Box::new(move || gelu::gelu_forward(&dev, o.view_mut(), xd.view(), n).unwrap())
        },
    );
    let (rows, v) = (s.ce_rows, s.v);
    let logits = data(rows * v, 5);
    let targets = ids(rows, v);
    let (l2, t2) = (logits.clone(), targets.clone());
    let mut losses = vec![0.0; rows];
    // read the logits three times, write dlogits once (2 bytes each)
    run_group(
        c,
        "crossentropy_forward_bf16",
        &format!("{rows}x{v}"),
        (2 * 4 * rows * v) as u64,
        Box::new(move || {
            let mut x = l2.clone();
            ops::crossentropy::crossentropy_forward(&mut losses, &mut x, &t2, rows, v, Some(1.0))
        }),
        |dev| {
            let mut x = bf16_buf(dev, &logits);
            let t = dev.upload(&targets).unwrap();
            let mut l = dev.alloc::<f32>(rows).unwrap();
            let dev = dev.clone();
            // dlogits overwrite the logits: later iterations see gradients, same cost
            Box::new(move || {
                classifier::crossentropy_forward(
                    &dev,
                    l.view_mut(),
                    x.view_mut(),
                    t.view(),
                    rows,
                    v,
                    Some(1.0),
                )
                .unwrap()
            })
        },
    );
}

criterion_group!(
    benches,
    bf16_groups,
    layernorm_forward,
    attention,
    embedding,
    classifier_groups,
    adamw_groups,
    pointwise_groups,
    matmul_groups,
    layernorm_groups
);
criterion_main!(benches);
