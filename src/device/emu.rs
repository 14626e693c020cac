//! The emulated device: `kernels/*.cu` compiled for the host (kernels/emu, Contract 1), device
//! memory in host RAM, GEMMs on the CPU with cuBLAS semantics (`super::gemm`).
//!
//! Launches are synchronous (the emulator runs the whole grid before returning), so
//! `synchronize` is a no-op. Parameters are passed cuLaunchKernel-style: an array of pointers,
//! one per kernel parameter, each pointing at the parameter's value.
//!
//! Every piece of stream work (kernel launch, memset, device copy, GEMM) is an [`EmuOp`] handed
//! to [`EmuDevice::submit`]: run at once, or recorded while a graph capture is under way
//! (`Device::capture`); a captured graph replays its ops in order ([`EmuDevice::run`]).

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use half::bf16;

use super::emu_ffi::{self, EmuOptions};
use super::gemm::{self, SgemmConfig};
use super::{DType, Elem, KernelArg, LaunchConfig};

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

/// One piece of stream work on the emulated device, with its arguments by value (what a CUDA
/// graph node holds): the addresses are raw device addresses, checked when the op was submitted.
#[derive(Clone, Debug)]
pub(crate) enum EmuOp {
    Launch {
        name: String,
        cfg: LaunchConfig,
        args: Vec<KernelArg>,
    },
    Zero {
        addr: u64,
        bytes: usize,
    },
    Dtod {
        src: u64,
        dst: u64,
        bytes: usize,
    },
    Sgemm {
        cfg: SgemmConfig,
        a: u64,
        b: u64,
        c: u64,
    },
    GemmBf16 {
        cfg: SgemmConfig,
        a: u64,
        b: u64,
        c: u64,
        c_type: DType,
        bias: Option<u64>,
    },
}

/// The emulated device: its launch options and, during a graph capture, the recorded work. The
/// emulator serialises launches itself.
pub struct EmuDevice {
    opts: EmuOptions,
    /// `Some` while `Device::capture` runs: submitted work is recorded here instead of run.
    recording: Mutex<Option<Vec<EmuOp>>>,
}

impl EmuDevice {
    /// `opts` override the environment (`PEPLER_EMU_SHUFFLE`, `PEPLER_EMU_WATCHDOG_MS`,
    /// `PEPLER_EMU_STRICT`) per launch.
    pub fn new(opts: EmuOptions) -> Result<EmuDevice> {
        Ok(EmuDevice {
            opts,
            recording: Mutex::new(None),
        })
    }

    /// Whether strict mode is on for this device's launches and copies.
    pub fn strict(&self) -> bool {
        self.opts.strict_enabled()
    }

    fn recording(&self) -> Result<std::sync::MutexGuard<'_, Option<Vec<EmuOp>>>> {
        self.recording
            .lock()
            .map_err(|_| anyhow!("emulated device: capture state poisoned"))
    }

    /// Whether a graph capture is under way.
    pub(crate) fn capturing(&self) -> bool {
        self.recording().map(|r| r.is_some()).unwrap_or(false)
    }

    /// Starts recording submitted work (an error if a capture is already under way).
    pub(crate) fn begin_capture(&self) -> Result<()> {
        let mut rec = self.recording()?;
        if rec.is_some() {
            bail!("Device::capture: a capture is already under way on this device (captures do not nest)");
        }
        *rec = Some(Vec::new());
        Ok(())
    }

    /// Stops recording and returns the recorded work (empty if no capture was under way).
    pub(crate) fn end_capture(&self) -> Vec<EmuOp> {
        self.recording
            .lock()
            .map(|mut r| r.take())
            .unwrap_or_else(|p| p.into_inner().take())
            .unwrap_or_default()
    }

    /// Runs `op` now, or records it while a capture is under way.
    ///
    /// # Safety
    /// As [`EmuDevice::run`] (when it runs now; a recorded op has the same requirement when its
    /// graph is launched).
    pub(crate) unsafe fn submit(&self, op: EmuOp) -> Result<()> {
        {
            let mut rec = self.recording()?;
            if let Some(ops) = rec.as_mut() {
                ops.push(op);
                return Ok(());
            }
        }
        self.run(&op)
    }

    /// Runs one op.
    ///
    /// # Safety
    /// Every address of `op` lies in live emulated device memory covering what the op touches
    /// (checked by `Device` when the op was submitted), and no host reference aliases the
    /// memory it writes.
    pub(crate) unsafe fn run(&self, op: &EmuOp) -> Result<()> {
        match op {
            EmuOp::Launch { name, cfg, args } => self.launch(name, cfg, args),
            EmuOp::Zero { addr, bytes } => {
                std::ptr::write_bytes(*addr as *mut u8, 0, *bytes);
                emu_ffi::mem::mark_written(*addr, *bytes);
                Ok(())
            }
            EmuOp::Dtod { src, dst, bytes } => {
                // source and destination never overlap (a shared and an exclusive borrow)
                std::ptr::copy_nonoverlapping(*src as *const u8, *dst as *mut u8, *bytes);
                emu_ffi::mem::copy_written(*src, *dst, *bytes);
                Ok(())
            }
            EmuOp::Sgemm { cfg, a, b, c } => {
                gemm::sgemm_host(cfg, *a as *const f32, *b as *const f32, *c as *mut f32);
                mark_gemm_output_written::<f32>(cfg, *c);
                Ok(())
            }
            EmuOp::GemmBf16 {
                cfg,
                a,
                b,
                c,
                c_type,
                bias,
            } => {
                let (a, b) = (*a as *const bf16, *b as *const bf16);
                let bias = bias.map(|p| p as *const f32);
                match c_type {
                    DType::F32 => {
                        gemm::gemm_bf16_host(cfg, a, b, *c as *mut f32, bias);
                        mark_gemm_output_written::<f32>(cfg, *c);
                    }
                    DType::BF16 => {
                        gemm::gemm_bf16_host(cfg, a, b, *c as *mut bf16, bias);
                        mark_gemm_output_written::<bf16>(cfg, *c);
                    }
                    other => bail!("gemm_bf16: C must be f32 or bf16, not {other:?}"),
                }
                Ok(())
            }
        }
    }

    fn launch(&self, name: &str, cfg: &LaunchConfig, args: &[KernelArg]) -> Result<()> {
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

/// Strict mode's initcheck: the host GEMM wrote every element of the `m x n` matrices of C (not
/// the ld padding or batch gaps).
fn mark_gemm_output_written<T: Elem>(cfg: &SgemmConfig, c_addr: u64) {
    if cfg.is_noop() {
        return;
    }
    let size = std::mem::size_of::<T>();
    for batch in 0..cfg.batch {
        for j in 0..cfg.n {
            let first = (batch * cfg.stride_c + j * cfg.ldc) * size;
            emu_ffi::mem::mark_written(c_addr + first as u64, cfg.m * size);
        }
    }
}
