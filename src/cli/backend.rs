//! Choosing the backend a subcommand runs on (`--device`) and the CPU thread count (`--threads`).
//!
//! Work that runs on "some backend" implements [`OnBackend`]; [`dispatch`] picks the backend and
//! calls it with the concrete type, so the model code stays generic and monomorphised.

use anyhow::{bail, Context, Result};

use super::train::DeviceArg;
use crate::backend::cpu::CpuBackend;
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

/// Why the GPU backend cannot run here, in words, for `--device cuda|emu`.
fn gpu_backend_missing(device: DeviceArg) -> String {
    let probe = match device {
        DeviceArg::Emu => Device::emu().map(|d| d.name()),
        _ => Device::cuda().map(|d| d.name()),
    };
    let found = match probe {
        Ok(name) => format!("the device is there ({name})"),
        Err(e) => format!("and the device is not usable either: {e:#}"),
    };
    format!(
        "the GPU backend (the whole training step in CUDA kernels) is not built yet — {found}. \
         Use --device cpu (or auto)."
    )
}

/// Runs `job` on the backend `device` names.
pub fn dispatch<J: OnBackend>(device: DeviceArg, job: J) -> Result<J::Out> {
    match device {
        DeviceArg::Cpu => job.run(CpuBackend::new()),
        DeviceArg::Auto => {
            eprintln!(
                "device auto: using the CPU backend ({} threads); the GPU backend is not built yet",
                rayon::current_num_threads()
            );
            job.run(CpuBackend::new())
        }
        DeviceArg::Cuda | DeviceArg::Emu => Err(anyhow::anyhow!(gpu_backend_missing(device)))
            .context(format!("--device {device:?}").to_lowercase()),
    }
}
