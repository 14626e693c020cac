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

criterion_group!(benches, layernorm_forward);
criterion_main!(benches);
