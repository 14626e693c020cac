//! The emulated device: `kernels/*.cu` compiled for the host (kernels/emu, Contract 1), device
//! memory in host RAM, GEMMs on the CPU with cuBLAS semantics (`super::gemm`).
//!
//! Launches are synchronous (the emulator runs the whole grid before returning), so
//! `synchronize` is a no-op. Parameters are passed cuLaunchKernel-style: an array of pointers,
//! one per kernel parameter, each pointing at the parameter's value.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::c_void;
use std::ptr::NonNull;

use anyhow::{anyhow, Result};

use super::emu_ffi::{self, EmuOptions};
use super::{KernelArg, LaunchConfig};

/// Alignment of emulated device allocations: at least what cudaMalloc guarantees (256 bytes),
/// so vectorised (float4) paths are taken exactly when they would be on a GPU.
const EMU_ALIGN: usize = 256;

/// A zeroed, 256-byte-aligned host allocation standing in for device memory.
pub(crate) struct HostMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: HostMem is a plain owned allocation; access is coordinated by the View borrow rules.
unsafe impl Send for HostMem {}
// SAFETY: as above; &HostMem exposes no interior access.
unsafe impl Sync for HostMem {}

impl HostMem {
    pub(crate) fn alloc_zeroed(bytes: usize) -> Result<HostMem> {
        let layout = Layout::from_size_align(bytes.max(1), EMU_ALIGN)
            .map_err(|e| anyhow!("emu alloc of {bytes} bytes: {e}"))?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| anyhow!("emu alloc of {bytes} bytes: out of memory"))?;
        Ok(HostMem { ptr, layout })
    }

    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: allocated in alloc_zeroed with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The emulated device. Stateless apart from its launch options: the emulator serialises
/// launches itself.
pub struct EmuDevice {
    opts: EmuOptions,
}

impl EmuDevice {
    /// `opts` override the environment (`PEPLER_EMU_SHUFFLE`, `PEPLER_EMU_WATCHDOG_MS`) per launch.
    pub fn new(opts: EmuOptions) -> Result<EmuDevice> {
        Ok(EmuDevice { opts })
    }

    pub(crate) fn launch(&self, name: &str, cfg: &LaunchConfig, args: &[KernelArg]) -> Result<()> {
        // One 8-byte slot per parameter holding its value in its first bytes (little-endian), as
        // cuLaunchKernel expects `params[i]` to point at the value of parameter i.
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) => p.addr(),
                KernelArg::I32(v) => v as u32 as u64,
                KernelArg::U32(v) => v as u64,
                KernelArg::I64(v) => v as u64,
                KernelArg::U64(v) => v,
                KernelArg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let (g, b) = (cfg.grid, cfg.block);
        // SAFETY: Device::launch's contract: args match the kernel's parameters and every pointer
        // covers what the kernel touches; each params[i] points at a live 8-byte slot whose first
        // bytes hold the value of parameter i.
        unsafe {
            emu_ffi::launch_with(
                &self.opts,
                name,
                [g.0, g.1, g.2],
                [b.0, b.1, b.2],
                cfg.dyn_smem as usize,
                &mut params,
            )
        }
    }
}
