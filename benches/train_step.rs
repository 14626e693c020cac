//! One PEPLER training step (zero_grad + forward + backward + AdamW, `Pepler::train_step`) at
//! GPT-2 shapes on the CPU backend, the GPU backend on a CUDA GPU (`--device cuda`) or on the
//! emulated device (`--device emu`, correctness only: far too slow to time): GPT-2 small by
//! default (12 layers, 768 wide, 12 heads; `--model xl`: 48 layers, 1600 wide, 25 heads), vocab
//! 50260, n_positions 1024, random init, continuous prompt, dropout 0.1 in train mode, batch 8 x 22
//! text tokens (24 positions with the prompt), ragged rows; every parameter trainable (stage 2) by
//! default. The same workload as `scripts/reference/bench_step.py`, so the two medians compare
//! directly.
//!
//! Run: `cargo bench --bench train_step [-- --device cpu|cuda|emu --precision fp32|bf16 --model
//! small|xl --graph on|off|both --iters 10 --warmup 2 --stage 1|2 --batch B --text-len 22
//! --peak-tflops P]` (batch default: 8 on the CPU, 128 on a GPU, as the original PEPLER; precision
//! default: bf16 on a GPU of compute capability >= 8.0, fp32 elsewhere). `--graph` (GPU backend
//! only; default `both`): steps replayed as one captured graph, launched kernel by kernel, or both
//! in turn, then what the graph saves (the step is captured at its second run, so keep `--warmup`
//! at 2 or more to time replays only). Prints per mode ms/step, tokens/s, the model FLOP
//! utilisation (MFU: forward + backward FLOPs of the step over `--peak-tflops`, default the
//! H100/H200 SXM dense peak of the precision: 67 TFLOP/s fp32 on CUDA cores, 989 bf16 on tensor
//! cores) and one JSON line `{"framework":"pepler-cuda",...,"graph":..,"median_step_s":..}` (the
//! graph-on line last), then the device memory the GPU backend allocated (peak). `--device cuda`
//! without a usable GPU says so and benches the CPU backend instead.

use std::time::Instant;

use anyhow::{bail, Result};
use pepler_cuda::backend::cpu::CpuBackend;
use pepler_cuda::backend::gpu::GpuBackend;
use pepler_cuda::backend::{Act, AdamWParams, Backend};
use pepler_cuda::cli::backend::default_precision;
use pepler_cuda::device::Device;
use pepler_cuda::model::batch::Batch;
use pepler_cuda::model::config::ModelConfig;
use pepler_cuda::model::params::ParamSet;
use pepler_cuda::model::pepler::Pepler;
use pepler_cuda::model::sizes::ModelSize;
use pepler_cuda::model::step::TrainStep;
use pepler_cuda::precision::Precision;
use rand::{Rng, SeedableRng};

struct Args {
    device: String,
    iters: usize,
    warmup: usize,
    stage: u32,
    /// 0: the device's default (8 on the CPU, 128 on a GPU).
    batch: usize,
    text_len: usize,
    /// 0: the precision's dense peak (67 fp32, 989 bf16).
    peak_tflops: f64,
    /// `None`: the device's default (`default_precision`).
    precision: Option<Precision>,
    model: ModelSize,
    graph: GraphArg,
}

/// `--graph`: steps captured and replayed as graphs, kernel by kernel, or both (the default on a
/// backend with graphs: the comparison of what the graph saves).
#[derive(Clone, Copy, Debug, PartialEq)]
enum GraphArg {
    On,
    Off,
    Both,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        device: "cpu".to_string(),
        iters: 10,
        warmup: 2,
        stage: 2,
        batch: 0,
        text_len: 22,
        peak_tflops: 0.0,
        precision: None,
        model: ModelSize::Small,
        graph: GraphArg::Both,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = |i: usize| -> Result<usize> {
            match argv.get(i + 1).map(|s| s.parse::<usize>()) {
                Some(Ok(v)) => Ok(v),
                _ => bail!("{} needs a number", argv[i]),
            }
        };
        match argv[i].as_str() {
            "--device" => {
                a.device = argv.get(i + 1).cloned().unwrap_or_default();
                if !["cpu", "cuda", "emu"].contains(&a.device.as_str()) {
                    bail!("--device must be cpu, cuda or emu");
                }
            }
            "--peak-tflops" => {
                a.peak_tflops = match argv.get(i + 1).map(|s| s.parse::<f64>()) {
                    Some(Ok(v)) if v > 0.0 => v,
                    _ => bail!("--peak-tflops needs a positive number"),
                }
            }
            "--precision" => {
                a.precision = Some(match argv.get(i + 1).map(String::as_str) {
                    Some("fp32") => Precision::Fp32,
                    Some("bf16") => Precision::Bf16,
                    _ => bail!("--precision must be fp32 or bf16"),
                })
            }
            "--model" => {
                a.model = match argv.get(i + 1).map(String::as_str) {
                    Some("small") => ModelSize::Small,
                    Some("xl") => ModelSize::Xl,
                    _ => bail!("--model must be small or xl"),
                }
            }
            "--graph" => {
                a.graph = match argv.get(i + 1).map(String::as_str) {
                    Some("on") => GraphArg::On,
                    Some("off") => GraphArg::Off,
                    Some("both") => GraphArg::Both,
                    _ => bail!("--graph must be on, off or both"),
                };
            }
            "--iters" => a.iters = val(i)?.max(1),
            "--warmup" => a.warmup = val(i)?,
            "--stage" => a.stage = val(i)? as u32,
            "--batch" => a.batch = val(i)?,
            "--text-len" => a.text_len = val(i)?,
            // `cargo bench` passes `--bench`; ignore flags we do not know.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    if a.text_len < 4 {
        bail!("--text-len must be >= 4");
    }
    Ok(a)
}

/// `<bos> w.. <eos> <pad>..` rows: row 0 full length, the others 5..T-2 words.
fn make_batch(cfg: &ModelConfig, b: usize, t: usize) -> Batch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut text = vec![cfg.pad_id; b * t];
    let mut mask = vec![0u8; b * t];
    for r in 0..b {
        let n = if r == 0 {
            t - 2
        } else {
            rng.gen_range(5.min(t - 2)..=t - 2)
        };
        text[r * t] = cfg.bos_id;
        for j in 1..=n {
            text[r * t + j] = rng.gen_range(0..50257);
        }
        text[r * t + n + 1] = cfg.eos_id;
        mask[r * t..r * t + n + 2].fill(1);
    }
    Batch {
        b,
        t,
        p: 0,
        users: (0..b)
            .map(|_| rng.gen_range(0..cfg.n_users as u32))
            .collect(),
        items: (0..b)
            .map(|_| rng.gen_range(0..cfg.n_items as u32))
            .collect(),
        text,
        mask,
        rating: vec![3.0; b],
        prompt: Vec::new(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Model FLOPs of one training step (forward + backward = 3x the forward's matmul FLOPs): the
/// blocks' dense layers (12 C^2 per position per layer), causal attention (QK^T and PV, half the
/// L x L square), and the LM head on the target positions only.
fn step_flops(cfg: &ModelConfig, batch: &Batch) -> f64 {
    let (c, v) = (cfg.n_embd as f64, cfg.vocab_size as f64);
    let l = (batch.t + 2) as f64;
    let rows = batch.b as f64 * l;
    let targets = batch.mask.iter().filter(|&&m| m == 1).count() as f64;
    let dense = 2.0 * rows * 12.0 * c * c * cfg.n_layer as f64;
    let attn = 2.0 * 2.0 * batch.b as f64 * l * l / 2.0 * c * cfg.n_layer as f64;
    let head = 2.0 * targets * c * v;
    3.0 * (dense + attn + head)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    match args.device.as_str() {
        "cuda" => match Device::cuda() {
            Ok(dev) => {
                println!("device: {}", dev.name());
                let cc = dev.compute_capability();
                in_precision(GpuBackend::new(dev), "cuda", &args, 128, cc)
            }
            Err(e) => {
                println!("no usable GPU ({e:#}): benching the CPU backend instead");
                in_precision(CpuBackend::new(), "cpu", &args, 8, None)
            }
        },
        "emu" => in_precision(GpuBackend::new(Device::emu()?), "emu", &args, 2, None),
        _ => in_precision(CpuBackend::new(), "cpu", &args, 8, None),
    }
}

/// `bench` with activations in the chosen (or the device's default) precision.
fn in_precision<B: Backend + Measured>(
    be: B,
    kind: &str,
    args: &Args,
    default_batch: usize,
    capability: Option<(i32, i32)>,
) -> Result<()> {
    match args
        .precision
        .unwrap_or_else(|| default_precision(capability))
    {
        Precision::Fp32 => bench::<B, f32>(be, kind, args, default_batch),
        Precision::Bf16 => bench::<B, half::bf16>(be, kind, args, default_batch),
    }
}

/// What a backend can say about its device memory.
trait Measured {
    /// Peak bytes of device memory the backend has allocated, if it tracks them.
    fn peak_bytes(&self) -> Option<usize>;
}

impl Measured for CpuBackend {
    fn peak_bytes(&self) -> Option<usize> {
        None
    }
}

impl Measured for GpuBackend {
    fn peak_bytes(&self) -> Option<usize> {
        Some(self.device().peak_bytes())
    }
}

/// `kind` ("cpu", "cuda", "emu") is what the JSON line reports as the backend (gpu-check.sh checks
/// that a `--device cuda` run really ran on the GPU).
fn bench<B: Backend + Measured, A: Act>(
    be: B,
    kind: &str,
    args: &Args,
    default_batch: usize,
) -> Result<()> {
    let batch_size = if args.batch == 0 {
        default_batch
    } else {
        args.batch
    };
    // dropout 0.1, continuous prompt, no rating head
    let cfg = args.model.config(1000, 1000);
    let precision = A::PRECISION;
    let peak_tflops = match (args.peak_tflops, precision) {
        (p, _) if p > 0.0 => p,
        (_, Precision::Fp32) => 67.0,
        (_, Precision::Bf16) => 989.0,
    };
    let t0 = Instant::now();
    let params = ParamSet::init(&cfg, 0);
    let init_s = t0.elapsed().as_secs_f64();
    let trainable: Vec<bool> = params
        .names()
        .map(|n| {
            args.stage == 2
                || n.starts_with("user_embeddings.")
                || n.starts_with("item_embeddings.")
                || n.starts_with("transformer.wte.")
        })
        .collect();
    let backend = be.name();
    let mut model = Pepler::<B, A>::with_activations(be, &params)?;
    drop(params);
    let batch = make_batch(&cfg, batch_size, args.text_len);
    let hp = AdamWParams {
        variant: pepler_cuda::backend::AdamWVariant::Torch,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.0,
    };
    let threads = rayon::current_num_threads();
    println!(
        "train_step on {backend}: GPT-2 {} (vocab {}, {} params), {precision}, batch {} x {} text tokens (+2 prompt), stage {}, {threads} rayon threads; init {init_s:.2}s",
        args.model,
        cfg.vocab_size,
        model.specs().iter().map(|s| s.numel()).sum::<usize>(),
        batch_size,
        args.text_len,
        args.stage
    );
    let tokens = (batch.b * (batch.t + 2)) as f64;
    let peak_tf = peak_tflops;
    let modes: &[bool] = match (args.graph, model.backend().has_graphs()) {
        (_, false) => &[false],
        (GraphArg::On, true) => &[true],
        (GraphArg::Off, true) => &[false],
        (GraphArg::Both, true) => &[false, true],
    };
    let mut medians = Vec::new();
    for &graphs in modes {
        model.set_step_graphs(graphs);
        let mut tot = Vec::new();
        let mut last = None;
        for k in 1..=(args.warmup + args.iters) as u64 {
            let s0 = Instant::now();
            // the step ends with the read of its losses: timed to completion
            let r = model.train_step(
                &batch,
                TrainStep {
                    step: k,
                    adam_step: k,
                    hp,
                    trainable: &trainable,
                    clip_grad_norm: None,
                    want_grad_norm: false,
                },
            )?;
            if k as usize > args.warmup {
                tot.push(s0.elapsed().as_secs_f64());
            }
            last = Some(r);
        }
        let last = last.expect("at least one step");
        let m = median(&mut tot);
        let tflops = step_flops(&cfg, &batch) / m / 1e12;
        let mode = if graphs { "graph on" } else { "graph off" };
        println!(
            "{mode}: median of {} steps {:.2} ms/step ({:?} launch), {:.0} tokens/s, {tflops:.2} TFLOP/s = MFU {:.1}% of {} TFLOP/s (last loss {:.4})",
            args.iters,
            m * 1e3,
            last.launch,
            tokens / m,
            100.0 * tflops / peak_tf,
            peak_tf,
            last.out.loss
        );
        let peak = model.backend().peak_bytes();
        println!(
            "{{\"framework\":\"pepler-cuda\",\"backend\":\"{kind}\",\"device\":\"{backend}\",\"model\":\"{}\",\"precision\":\"{precision}\",\"graph\":{graphs},\"threads\":{threads},\"batch\":{batch_size},\"stage\":{},\"median_step_s\":{m:.4},\"tokens_per_s\":{:.1},\"tflops\":{tflops:.3},\"peak_bytes\":{}}}",
            args.model,
            args.stage,
            tokens / m,
            peak.map_or("null".to_string(), |b| b.to_string())
        );
        medians.push(m);
    }
    if let [off, on] = medians[..] {
        println!(
            "the step graph saves {:.2} ms/step: graph off / graph on = {:.2}x",
            (off - on) * 1e3,
            off / on
        );
    }
    if let Some(bytes) = model.backend().peak_bytes() {
        println!(
            "peak device memory allocated: {:.2} GiB",
            bytes as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}
