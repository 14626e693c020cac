//! Choosing the backend a subcommand runs on (`--device`) and the CPU thread count (`--threads`).
//!
//! Work that runs on "some backend" implements [`OnBackend`]; [`dispatch`] picks the backend and
//! calls it with the concrete type, so the model code stays generic and monomorphised.

use anyhow::{bail, Context, Result};

use super::train::DeviceArg;
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
use crate::backend::{Act, Backend};
use crate::device::Device;
use crate::precision::Precision;

/// `--device`, `--threads`, `--precision`: where and how a job computes (flattened into every
/// subcommand that runs the model).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct DeviceArgs {
    /// Device: auto, cpu, cuda or emu.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Activation precision: fp32, or bf16 (mixed precision: f32 master weights, moments and
    /// reductions; checkpoints stay fp32). Default: bf16 on a GPU of compute capability 8.0 or
    /// newer, fp32 elsewhere.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

/// A job that can run on any backend, with activations stored as `A` (the precision).
pub trait OnBackend {
    type Out;
    fn run<B: Backend, A: Act>(self, be: B) -> Result<Self::Out>;
}

/// Sizes rayon's global pool (the CPU backend's threads). `None` keeps rayon's default (all cores).
pub fn configure_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // A second call (tests in one process) finds the pool built: keep it.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    Ok(())
}

/// Runs `job` on the backend `device` names, with activations in `precision` (`None`: bf16 on a
/// GPU of compute capability 8.0 or newer, fp32 elsewhere): `cuda` and `emu` run the GPU backend
/// (our CUDA kernels) on a real GPU or on the emulated device; `auto` prefers a usable GPU and says
/// which backend it chose and why.
pub fn dispatch<J: OnBackend>(
    device: DeviceArg,
    precision: Option<Precision>,
    job: J,
) -> Result<J::Out> {
    match device {
        DeviceArg::Cpu => run_in(CpuBackend::new(), precision, None, job),
        DeviceArg::Cuda => {
            let dev = Device::cuda().context("--device cuda")?;
            eprintln!("device cuda: {}", dev.name());
            let cc = dev.compute_capability();
            run_in(GpuBackend::new(dev), precision, cc, job)
        }
        DeviceArg::Emu => {
            let dev = Device::emu().context("--device emu")?;
            eprintln!("device emu: {} (slow: for testing)", dev.name());
            run_in(GpuBackend::new(dev), precision, None, job)
        }
        DeviceArg::Auto => match Device::cuda() {
            Ok(dev) => {
                eprintln!("device auto: using the GPU backend on {}", dev.name());
                let cc = dev.compute_capability();
                run_in(GpuBackend::new(dev), precision, cc, job)
            }
            Err(e) => {
                eprintln!(
                    "device auto: no usable GPU ({e:#}); using the CPU backend ({} threads)",
                    rayon::current_num_threads()
                );
                run_in(CpuBackend::new(), precision, None, job)
            }
        },
    }
}

/// The default precision: bf16 where tensor cores run it (compute capability >= 8.0), else fp32.
pub fn default_precision(capability: Option<(i32, i32)>) -> Precision {
    match capability {
        Some((major, _)) if major >= 8 => Precision::Bf16,
        _ => Precision::Fp32,
    }
}

/// Runs `job` on `be` with the chosen (or default) precision, and says which.
fn run_in<B: Backend, J: OnBackend>(
    be: B,
    precision: Option<Precision>,
    capability: Option<(i32, i32)>,
    job: J,
) -> Result<J::Out> {
    let p = precision.unwrap_or_else(|| default_precision(capability));
    let how = if precision.is_some() {
        ""
    } else {
        " (default)"
    };
    eprintln!("precision: {p}{how}");
    match p {
        Precision::Fp32 => job.run::<B, f32>(be),
        Precision::Bf16 => job.run::<B, half::bf16>(be),
    }
}
