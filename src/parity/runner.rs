//! The parity check runner: rebuilds a dumped case on a backend and compares everything the dump
//! recorded: step-0 forward (logits, losses, ratings), backward (every gradient), then the recorded
//! AdamW steps (`step{k}.loss` before each update, `step{k}.param.*` after it) and, at the end, that
//! every frozen parameter is bit-identical to its step-0 value.

use anyhow::{bail, Result};

use super::compare::{compare, Row};
use super::dump::ParityDump;
use super::tolerances::{tolerance_at, tolerance_for_at, TensorClass, Tolerance};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
use crate::backend::{Act, AdamWParams, Backend};
use crate::device::Device;
use crate::model::params::ParamSet;
use crate::model::pepler::{ForwardOptions, Pepler};
use crate::precision::Precision;

/// Which backend to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu,
    /// The CUDA kernels on the emulated device.
    Emu,
    Cuda,
}

impl std::str::FromStr for BackendChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(BackendChoice::Cpu),
            "emu" => Ok(BackendChoice::Emu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => bail!("unknown backend `{other}` (expected cpu, emu or cuda)"),
        }
    }
}

/// The result of checking one dump.
#[derive(Clone, Debug)]
pub struct CaseReport {
    pub case: String,
    pub backend: String,
    pub rows: Vec<Row>,
}

impl CaseReport {
    pub fn pass(&self) -> bool {
        self.rows.iter().all(|r| r.pass)
    }
    pub fn failures(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| !r.pass)
    }
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Checks `dump` on the chosen backend in fp32, starting from the dump's own step-0 parameters.
pub fn check_dump(dump: &ParityDump, backend: BackendChoice) -> Result<CaseReport> {
    check_dump_at(dump, backend, Precision::Fp32)
}

/// `check_dump` with activations in `precision`, under that precision's tolerances.
pub fn check_dump_at(
    dump: &ParityDump,
    backend: BackendChoice,
    precision: Precision,
) -> Result<CaseReport> {
    check_dump_from(dump, backend, precision, &dump.params)
}

/// Refuses to hold a run against a dump made in a lower precision than the run's tolerances
/// assume (an autocast-bf16 dump under the fp32 table would fail for the dump's sake, not ours).
fn check_precision(dump: &ParityDump, precision: Precision) -> Result<()> {
    if dump.precision == Precision::Bf16 && precision == Precision::Fp32 {
        bail!(
            "{}: an autocast-bf16 dump is checked with --precision bf16 only",
            dump.path.display()
        );
    }
    Ok(())
}

/// Like `check_dump_at`, starting from `start` (same config) instead of the dump's parameters: a
/// perturbed `start` must make the check fail (the negative test).
pub fn check_dump_from(
    dump: &ParityDump,
    backend: BackendChoice,
    precision: Precision,
    start: &ParamSet,
) -> Result<CaseReport> {
    check_precision(dump, precision)?;
    match precision {
        Precision::Fp32 => check_on::<f32>(dump, backend, start),
        Precision::Bf16 => check_on::<half::bf16>(dump, backend, start),
    }
}

fn check_on<A: Act>(
    dump: &ParityDump,
    backend: BackendChoice,
    start: &ParamSet,
) -> Result<CaseReport> {
    match backend {
        BackendChoice::Cpu => check_with::<_, A>(CpuBackend::new(), dump, start),
        BackendChoice::Emu => check_with::<_, A>(GpuBackend::new(Device::emu()?), dump, start),
        BackendChoice::Cuda => check_with::<_, A>(GpuBackend::new(Device::cuda()?), dump, start),
    }
}

/// The backend's hyper-parameters for the dump's optimizer, including its formula (`variant`).
fn adamw_hp(opt: &super::dump::DumpOptimizer) -> AdamWParams {
    AdamWParams {
        variant: opt.variant,
        lr: opt.lr,
        beta1: opt.betas[0],
        beta2: opt.betas[1],
        eps: opt.eps,
        weight_decay: opt.weight_decay,
    }
}

/// Compares a host vector with the dump's tensor `name`; tolerance from the table.
fn check(
    rows: &mut Vec<Row>,
    dump: &ParityDump,
    precision: Precision,
    name: &str,
    actual: &[f32],
    shape: &[usize],
) {
    let tol = tolerance_for_at(precision, name, dump.optimizer.lr).unwrap_or(Tolerance::EXACT);
    rows.push(match dump.expected(name) {
        Ok(e) => compare(name, actual, shape, &e.data, &e.shape, tol),
        Err(err) => Row::failed(name, tol, format!("{err:#}")),
    });
}

/// Runs the whole check on backend `be`.
pub fn check_with<B: Backend, A: Act>(
    be: B,
    dump: &ParityDump,
    start: &ParamSet,
) -> Result<CaseReport> {
    let cfg = &dump.config;
    if start.config() != cfg {
        bail!("parity: the starting parameters have a different config than the dump");
    }
    let backend = match A::PRECISION {
        Precision::Fp32 => be.name(),
        p => format!("{} ({p})", be.name()),
    };
    let mut model = Pepler::<B, A>::with_activations(be, start)?;
    let mut rows = Vec::new();
    let batch = &dump.batch;
    let (b, l, v) = (batch.b, batch.seq_len(cfg), cfg.vocab_size);

    // ---- step 0: forward with logits, backward for every parameter.
    model.zero_grads()?;
    let out = model.forward(
        batch,
        ForwardOptions {
            train: true,
            step: 0,
            want_logits: true,
        },
    )?;
    match &out.logits {
        Some(lg) => check(&mut rows, dump, A::PRECISION, "out.logits", lg, &[b, l, v]),
        None => rows.push(Row::failed(
            "out.logits",
            tolerance_at(A::PRECISION, TensorClass::Logits, 0.0, 0),
            "the model returned no logits".into(),
        )),
    }
    check(
        &mut rows,
        dump,
        A::PRECISION,
        "out.text_loss",
        &[out.text_loss],
        &[],
    );
    if dump.has("out.rating_loss") || out.rating_loss.is_some() {
        let rl = out.rating_loss.map(|x| vec![x]).unwrap_or_default();
        let shape: &[usize] = if rl.is_empty() { &[0] } else { &[] };
        check(&mut rows, dump, A::PRECISION, "out.rating_loss", &rl, shape);
        let r = out.rating.clone().unwrap_or_default();
        let n = r.len();
        check(&mut rows, dump, A::PRECISION, "out.rating", &r, &[n]);
    }
    check(&mut rows, dump, A::PRECISION, "out.loss", &[out.loss], &[]);
    model.backward(None)?;
    let grads = model.download_grads()?;
    for (spec, g) in grads.iter() {
        check(
            &mut rows,
            dump,
            A::PRECISION,
            &format!("grad.{}", spec.name),
            &g.data,
            &g.shape,
        );
    }

    // ---- optimizer steps on the trainable subset. An error (e.g. an op the backend lacks) becomes
    // a failing row so the step-0 table is still reported.
    if let Err(err) = run_steps(&mut model, dump, start, &mut rows) {
        rows.push(Row::failed(
            "optimizer steps",
            Tolerance::EXACT,
            format!("error: {err:#}"),
        ));
    }
    Ok(CaseReport {
        case: dump.case.clone(),
        backend,
        rows,
    })
}

/// Runs the dump's AdamW steps, checking `step{k}.loss`, `step{k}.param.*` and frozen parameters.
fn run_steps<B: Backend, A: Act>(
    model: &mut Pepler<B, A>,
    dump: &ParityDump,
    start: &ParamSet,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let batch = &dump.batch;
    let flags: Vec<bool> = start
        .names()
        .map(|n| dump.trainable.iter().any(|t| t == n))
        .collect();
    let hp = adamw_hp(&dump.optimizer);
    let steps = dump.optimizer.steps;
    for k in 1..=steps {
        model.zero_grads()?;
        let out = model.forward(
            batch,
            ForwardOptions {
                train: true,
                step: k as u64,
                want_logits: false,
            },
        )?;
        check(
            rows,
            dump,
            A::PRECISION,
            &format!("step{k}.loss"),
            &[out.loss],
            &[],
        );
        // Like torch with requires_grad = False: no gradients for frozen tensors.
        model.backward(Some(&flags))?;
        model.adamw_step(hp, k as u64, &flags)?;
        let now = model.download_params()?;
        for (i, (spec, t)) in now.iter().enumerate() {
            if flags[i] {
                check(
                    rows,
                    dump,
                    A::PRECISION,
                    &format!("step{k}.param.{}", spec.name),
                    &t.data,
                    &t.shape,
                );
            } else if k == steps {
                // Frozen: compared with the dump's step-0 value, bit for bit.
                let name = format!("frozen.{}", spec.name);
                let tol = tolerance_at(A::PRECISION, TensorClass::Frozen, 0.0, 0);
                let e = dump.params.at(i);
                rows.push(compare(&name, &t.data, &t.shape, &e.data, &e.shape, tol));
            }
        }
    }
    Ok(())
}
