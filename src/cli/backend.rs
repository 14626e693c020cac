//! Choosing the backend a subcommand runs on (`--device`) and the CPU thread count (`--threads`).
//!
//! Work that runs on "some backend" implements [`OnBackend`]; [`dispatch`] picks the backend and
//! calls it with the concrete type, so the model code stays generic and monomorphised.

use anyhow::{bail, Context, Result};

use super::train::DeviceArg;
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::device::Device;

/// A job that can run on any backend.
pub trait OnBackend {
    type Out;
    fn run<B: Backend>(self, be: B) -> Result<Self::Out>;
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

/// Runs `job` on the backend `device` names: `cuda` and `emu` run the GPU backend (our CUDA
/// kernels) on a real GPU or on the emulated device; `auto` prefers a usable GPU and says which
/// backend it chose and why.
pub fn dispatch<J: OnBackend>(device: DeviceArg, job: J) -> Result<J::Out> {
    match device {
        DeviceArg::Cpu => job.run(CpuBackend::new()),
        DeviceArg::Cuda => {
            let dev = Device::cuda().context("--device cuda")?;
            eprintln!("device cuda: {}", dev.name());
            job.run(GpuBackend::new(dev))
        }
        DeviceArg::Emu => {
            let dev = Device::emu().context("--device emu")?;
            eprintln!("device emu: {} (slow: for testing)", dev.name());
            job.run(GpuBackend::new(dev))
        }
        DeviceArg::Auto => match Device::cuda() {
            Ok(dev) => {
                eprintln!("device auto: using the GPU backend on {}", dev.name());
                job.run(GpuBackend::new(dev))
            }
            Err(e) => {
                eprintln!(
                    "device auto: no usable GPU ({e:#}); using the CPU backend ({} threads)",
                    rayon::current_num_threads()
                );
                job.run(CpuBackend::new())
            }
        },
    }
}
