//! The emulated device: `kernels/*.cu` compiled for the host (kernels/emu, Contract 1), device
//! memory in host RAM, GEMMs on the CPU with cuBLAS semantics (`super::gemm`).
//!
//! Launches are synchronous (the emulator runs the whole grid before returning), so
//! `synchronize` is a no-op. Parameters are passed cuLaunchKernel-style: an array of pointers,
//! one per kernel parameter, each pointing at the parameter's value.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::ffi::c_void;
use std::ptr::NonNull;

use anyhow::{anyhow, Result};

use super::emu_ffi::{self, EmuOptions};
use super::{KernelArg, LaunchConfig};

/// Alignment of emulated device allocations: at least what cudaMalloc guarantees (256 bytes),
/// so vectorised (float4) paths are taken exactly when they would be on a GPU.
const EMU_ALIGN: usize = 256;

/// Bytes each allocation owns before and after its elements: strict mode reports an access there
/// as out of bounds (one element past the end of a buffer lands here instead of in whatever the
/// host allocator put next). A multiple of EMU_ALIGN, so the elements stay 256-byte aligned.
const REDZONE: usize = 256;

/// A 256-byte-aligned host allocation standing in for device memory, registered with the
/// emulator's strict mode (memcheck treats it as device memory; initcheck tracks which bytes were
/// written) while it lives.
pub(crate) struct HostMem {
    /// The start of the allocation (REDZONE bytes before the elements).
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: HostMem is a plain owned allocation; access is coordinated by the View borrow rules.
unsafe impl Send for HostMem {}
// SAFETY: as above; &HostMem exposes no interior access.
unsafe impl Sync for HostMem {}

impl HostMem {
    pub(crate) fn alloc_zeroed(bytes: usize) -> Result<HostMem> {
        HostMem::alloc_filled(bytes, None)
    }

    /// Filled with 0xFF bytes (NaN as f32/bf16/f16, -1 as integers) and every byte marked
    /// never-written for initcheck.
    pub(crate) fn alloc_poisoned(bytes: usize) -> Result<HostMem> {
        HostMem::alloc_filled(bytes, Some(0xff))
    }

    fn alloc_filled(bytes: usize, poison: Option<u8>) -> Result<HostMem> {
        let total = bytes
            .checked_add(2 * REDZONE)
            .ok_or_else(|| anyhow!("emu alloc of {bytes} bytes: too large"))?;
        let layout = Layout::from_size_align(total, EMU_ALIGN)
            .map_err(|e| anyhow!("emu alloc of {bytes} bytes: {e}"))?;
        // SAFETY: layout has non-zero size.
        let base = unsafe {
            match poison {
                None => alloc_zeroed(layout),
                Some(_) => alloc(layout),
            }
        };
        let base = NonNull::new(base)
            .ok_or_else(|| anyhow!("emu alloc of {bytes} bytes: out of memory"))?;
        if let Some(b) = poison {
            // SAFETY: base is a fresh allocation of layout.size() bytes.
            unsafe { std::ptr::write_bytes(base.as_ptr(), b, layout.size()) };
        }
        let mem = HostMem { base, layout };
        emu_ffi::mem::register(mem.addr(), bytes, REDZONE, poison.is_none());
        Ok(mem)
    }

    /// The address of the first element.
    pub(crate) fn addr(&self) -> u64 {
        self.base.as_ptr() as u64 + REDZONE as u64
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        emu_ffi::mem::unregister(self.addr());
        // SAFETY: allocated in alloc_filled with this layout.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// The emulated device. Stateless apart from its launch options: the emulator serialises
/// launches itself.
pub struct EmuDevice {
    opts: EmuOptions,
}

impl EmuDevice {
    /// `opts` override the environment (`PEPLER_EMU_SHUFFLE`, `PEPLER_EMU_WATCHDOG_MS`,
    /// `PEPLER_EMU_STRICT`) per launch.
    pub fn new(opts: EmuOptions) -> Result<EmuDevice> {
        Ok(EmuDevice { opts })
    }

    /// Whether strict mode is on for this device's launches and copies.
    pub fn strict(&self) -> bool {
        self.opts.strict_enabled()
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
        // strict mode's memcheck: each pointer may touch exactly the view it came from
        let ranges: Vec<(u64, u64)> = args
            .iter()
            .map(|a| match *a {
                KernelArg::Ptr(p) => (p.addr(), p.bytes()),
                _ => (0, 0),
            })
            .collect();
        let (g, b) = (cfg.grid, cfg.block);
        // SAFETY: Device::launch's contract: args match the kernel's parameters and every pointer
        // covers what the kernel touches; each params[i] points at a live 8-byte slot whose first
        // bytes hold the value of parameter i.
        unsafe {
            emu_ffi::launch_checked(
                &self.opts,
                name,
                [g.0, g.1, g.2],
                [b.0, b.1, b.2],
                cfg.dyn_smem as usize,
                &mut params,
                Some(&ranges),
            )
        }
    }
}
