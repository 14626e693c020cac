//! Cost per launch of the first kernels, device-first names (`emu/layernorm_forward`), with the
//! CPU reference on the same shape in the same run as the baseline. The emulated device runs the
//! CUDA source on host threads (tens of ms per launch: it is a correctness tool, and this bench
//! keeps that cost visible); the cuda rows appear only where a GPU is usable.
//!
//! `cargo bench --bench kernels`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pepler_cuda::device::Device;
use pepler_cuda::kernels::layernorm;
use pepler_cuda::ops;

/// GPT-2 small's width, a small batch of rows.
const ROWS: usize = 64;
const C: usize = 768;
const EPS: f32 = 1e-5;

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
            dev.synchronize().unwrap();
            let t = Instant::now();
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
            // launches are asynchronous on a GPU: stop the clock only when they are done
            dev.synchronize().unwrap();
            t.elapsed()
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
    let tflops =
        |flops: u64, d: Duration, iters: u64| flops as f64 * iters as f64 / d.as_secs_f64() / 1e12;
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
    let dqkv_in = dev.upload(&qkv).unwrap();
    let ddout = dev.upload(&dout).unwrap();
    let mut out = dev.alloc::<f32>(s.b * s.l * s.c).unwrap();
    let mut lse = dev.alloc::<f32>(s.b * s.nh * s.l).unwrap();
    let mut dqkv = dev.alloc::<f32>(s.b * s.l * 3 * s.c).unwrap();
    let mut scratch = dev
        .alloc::<f32>(ka::attention_backward_scratch_len(s).unwrap())
        .unwrap();
    let fwd = |out: &mut pepler_cuda::device::DeviceBuffer<f32>,
               lse: &mut pepler_cuda::device::DeviceBuffer<f32>| {
        ka::attention_forward(
            &dev,
            out.view_mut(),
            lse.view_mut(),
            dqkv_in.view(),
            None,
            None,
            s,
        )
        .unwrap()
    };
    fwd(&mut out, &mut lse);
    let bwd = |dqkv: &mut pepler_cuda::device::DeviceBuffer<f32>,
               out: &pepler_cuda::device::DeviceBuffer<f32>,
               lse: &pepler_cuda::device::DeviceBuffer<f32>,
               scratch: &mut pepler_cuda::device::DeviceBuffer<f32>| {
        ka::attention_backward(
            &dev,
            dqkv.view_mut(),
            ddout.view(),
            dqkv_in.view(),
            out.view(),
            lse.view(),
            None,
            None,
            s,
            scratch.view_mut(),
        )
        .unwrap()
    };
    for group in ["attention_forward", "attention_backward"] {
        let flops = if group == "attention_forward" {
            fwd_flops
        } else {
            bwd_flops
        };
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(flops));
        g.sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        let mut best = f64::MAX;
        g.bench_function(format!("cuda/{group}"), |bch| {
            bch.iter_custom(|iters| {
                dev.synchronize().unwrap();
                let t = Instant::now();
                for _ in 0..iters {
                    if group == "attention_forward" {
                        fwd(&mut out, &mut lse);
                    } else {
                        bwd(&mut dqkv, &out, &lse, &mut scratch);
                    }
                }
                dev.synchronize().unwrap();
                let d = t.elapsed();
                best = best.min(d.as_secs_f64() / iters as f64);
                d
            })
        });
        g.finish();
        eprintln!(
            "cuda/{group} B={} L={} C={} NH={}: best {:.1} us/launch, {:.3} TFLOP/s",
            s.b,
            s.l,
            s.c,
            s.nh,
            best * 1e6,
            tflops(flops, Duration::from_secs_f64(best), 1)
        );
    }
}

criterion_group!(benches, layernorm_forward, attention);
criterion_main!(benches);
