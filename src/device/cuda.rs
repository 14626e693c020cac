//! The CUDA device: cudarc 0.19 (dynamic loading) with the fatbin build.rs embedded, one stream,
//! and cuBLAS for GEMMs (default math mode, so fp32 GEMMs never use TF32).
//!
//! cudarc panics when it cannot load `libcuda.so`/`libcublas.so`, so [`CudaDevice::new`] checks
//! for the libraries first and turns every failure into an error that says what is missing.
//! All work goes to one stream, so cudarc's cross-stream event tracking is switched off.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::sys as blas_sys;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, PushKernelArg,
};

use super::embedded;
use super::gemm::{GemmOp, SgemmConfig};
use super::{KernelArg, LaunchConfig};

/// Device memory owned by a buffer (freed on drop, ordered after queued work on the stream).
pub(crate) struct CudaMem {
    /// Owns the allocation; never read, dropped to free.
    #[allow(dead_code)]
    slice: CudaSlice<u8>,
    addr: u64,
}

impl CudaMem {
    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }
}

/// One GPU, its stream, the loaded kernels and a lazily created cuBLAS handle.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    blas: Mutex<Option<CudaBlas>>,
    name: String,
    capability: Option<(i32, i32)>,
}

/// Run a cudarc call that may panic (missing library or symbol) and turn the panic into an error.
fn no_panic<R>(what: &str, f: impl FnOnce() -> R) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        anyhow!("{what}: the CUDA libraries failed to load: {msg}")
    })
}

impl CudaDevice {
    /// Open GPU `ordinal`. Errors: no driver, no GPU, a driver too old for CUDA 13 kernels, or a
    /// crate built without nvcc.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        // SAFETY: is_culib_present only tries to dlopen the library names cudarc would use.
        let driver_present = unsafe { cudarc::driver::sys::is_culib_present() };
        if !driver_present {
            let mut msg = String::from(
                "no NVIDIA driver found (libcuda.so could not be loaded): the cuda device needs an \
                 NVIDIA GPU with its driver installed; use --device emu (or auto) to run the \
                 kernels on the emulated device",
            );
            if embedded::KERNELS_FATBIN.is_none() {
                msg.push_str("; also, this crate was built without CUDA kernels");
            }
            bail!(msg);
        }
        let Some(fatbin) = embedded::KERNELS_FATBIN else {
            bail!("built without CUDA kernels: {}", embedded::NO_KERNELS_HELP);
        };
        let ctx = no_panic("CudaContext::new", || CudaContext::new(ordinal))?.map_err(|e| {
            anyhow!("cannot open CUDA device {ordinal}: {e:?} (is a GPU visible? check nvidia-smi)")
        })?;
        // SAFETY: this device uses a single stream, so there is no cross-stream use to track.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let module = no_panic("load_module", || ctx.load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec())))?
            .map_err(|e| {
                anyhow!(
                    "cannot load the embedded CUDA kernels on device {ordinal}: {e:?} (the fatbin has \
                     SASS for sm_80/86/89/90 and PTX for compute_80 from CUDA 13.0; the driver must \
                     support CUDA 13.0)"
                )
            })?;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let capability = ctx.compute_capability().ok();
        let cc = capability
            .map(|(a, b)| format!("sm_{a}{b}"))
            .unwrap_or_default();
        Ok(CudaDevice {
            ctx,
            stream,
            module,
            functions: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
            name: format!("CUDA device {ordinal}: {gpu} ({cc})"),
            capability,
        })
    }

    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// (major, minor) compute capability, when the driver reports it.
    pub fn capability(&self) -> Option<(i32, i32)> {
        self.capability
    }

    pub(crate) fn alloc_zeroed(&self, bytes: usize) -> Result<CudaMem> {
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| anyhow!("cuda alloc of {bytes} bytes failed: {e:?}"))?;
        let addr = {
            let (addr, _sync) = slice.device_ptr(&self.stream);
            addr
        };
        Ok(CudaMem { addr, slice })
    }

    /// Device memory with undefined contents (no memset: compute-sanitizer's initcheck then
    /// reports kernel reads of bytes nothing wrote).
    pub(crate) fn alloc_uninit(&self, bytes: usize) -> Result<CudaMem> {
        // SAFETY: the memory is unset; Device::alloc_uninit documents that its contents are
        // undefined until written, and no Rust value of a type with invalid bit patterns is read
        // from it (downloads copy plain-old-data).
        let slice = unsafe { self.stream.alloc::<u8>(bytes) }
            .map_err(|e| anyhow!("cuda alloc of {bytes} bytes failed: {e:?}"))?;
        let addr = {
            let (addr, _sync) = slice.device_ptr(&self.stream);
            addr
        };
        Ok(CudaMem { addr, slice })
    }

    /// cudaFuncAttributeMaxDynamicSharedMemorySize for kernel `name`, checked against the
    /// device's opt-in maximum.
    pub(crate) fn set_max_dyn_smem(&self, name: &str, bytes: u32) -> Result<()> {
        use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
        let max = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| anyhow!("cuda device attribute: {e:?}"))?;
        if i64::from(bytes) > i64::from(max) {
            bail!(
                "opt_in_dyn_smem {name}: {bytes} bytes of dynamic shared memory > {max}, this GPU's \
                 opt-in maximum per block"
            );
        }
        let f = self.function(name)?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| anyhow!("opt_in_dyn_smem {name}: cuFuncSetAttribute failed: {e:?}"))
    }

    pub(crate) fn htod(&self, src: &[u8], dst: u64) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        // SAFETY: dst is a live device range of src.len() bytes (checked by the caller); the
        // synchronous copy finishes before src can be dropped.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("cuda htod of {} bytes failed: {e:?}", src.len()))?;
        self.synchronize()
    }

    pub(crate) fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        // SAFETY: src is a live device range of dst.len() bytes; we synchronize before returning.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("cuda dtoh of {} bytes failed: {e:?}", dst.len()))?;
        self.synchronize()
    }

    pub(crate) fn dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        // SAFETY: both ranges are live device memory of `bytes` bytes, ordered on our stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream())
        }
        .map_err(|e| anyhow!("cuda dtod of {bytes} bytes failed: {e:?}"))
    }

    pub(crate) fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        // SAFETY: dst is a live device range of `bytes` bytes, ordered on our stream.
        unsafe { cudarc::driver::result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("cuda memset of {bytes} bytes failed: {e:?}"))
    }

    fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut fns = self
            .functions
            .lock()
            .map_err(|_| anyhow!("cuda function cache poisoned"))?;
        if let Some(f) = fns.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .module
            .load_function(name)
            .map_err(|e| anyhow!("kernel {name:?} is not in the embedded fatbin: {e:?}"))?;
        fns.insert(name.to_string(), f.clone());
        Ok(f)
    }

    pub(crate) fn launch(&self, name: &str, cfg: &LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let f = self.function(name)?;
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                KernelArg::Ptr(p) => b.arg(&p.addr),
                KernelArg::I32(v) => b.arg(v),
                KernelArg::U32(v) => b.arg(v),
                KernelArg::I64(v) => b.arg(v),
                KernelArg::U64(v) => b.arg(v),
                KernelArg::F32(v) => b.arg(v),
            };
        }
        let lc = cudarc::driver::LaunchConfig {
            grid_dim: cfg.grid,
            block_dim: cfg.block,
            shared_mem_bytes: cfg.dyn_smem,
        };
        // SAFETY: the caller (Device::launch) guarantees the arguments match the kernel; each
        // value pushed lives in `args` for the duration of this call.
        unsafe { b.launch(lc) }.map_err(|e| anyhow!("launch {name} {cfg:?}: {e:?}"))?;
        Ok(())
    }

    /// Seconds of GPU time the work `f` queues on the stream, measured with CUDA events recorded
    /// before and after it (waits for the end event).
    pub(crate) fn time_queued(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = || {
            self.stream
                .record_event(timing)
                .map_err(|e| anyhow!("cuda event record: {e:?}"))
        };
        let start = event()?;
        f()?;
        let end = event()?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| anyhow!("cuda event timing: {e:?} (a kernel failed or faulted)"))?;
        Ok(f64::from(ms) / 1e3)
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("cuda synchronize: {e:?} (a kernel failed or faulted)"))
    }

    fn with_blas<R>(&self, f: impl FnOnce(&CudaBlas) -> Result<R>) -> Result<R> {
        let mut guard = self
            .blas
            .lock()
            .map_err(|_| anyhow!("cuBLAS handle poisoned"))?;
        if guard.is_none() {
            // SAFETY: only tries to dlopen the names cudarc would use.
            if !unsafe { blas_sys::is_culib_present() } {
                bail!(
                    "cuBLAS not found (libcublas.so.13 could not be loaded): install the CUDA 13 \
                     toolkit's cuBLAS (e.g. `pip install nvidia-cublas`) and add its lib directory \
                     to LD_LIBRARY_PATH"
                );
            }
            let blas = no_panic("CudaBlas::new", || CudaBlas::new(self.stream.clone()))?
                .map_err(|e| anyhow!("cuBLAS init failed: {e:?}"))?;
            // Default math: fp32 GEMMs in full fp32 (no TF32 tensor cores), as PyTorch parity needs.
            // SAFETY: valid handle created above.
            let st = unsafe {
                blas_sys::cublasSetMathMode(
                    *blas.handle(),
                    blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
                )
            };
            if st != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                bail!("cublasSetMathMode failed: {st:?}");
            }
            *guard = Some(blas);
        }
        f(guard.as_ref().expect("initialised above"))
    }

    pub(crate) fn sgemm(&self, cfg: &SgemmConfig, a: u64, b: u64, c: u64) -> Result<()> {
        if cfg.batch == 0 || cfg.m == 0 || cfg.n == 0 {
            return Ok(());
        }
        let op = |o: GemmOp| match o {
            GemmOp::N => blas_sys::cublasOperation_t::CUBLAS_OP_N,
            GemmOp::T => blas_sys::cublasOperation_t::CUBLAS_OP_T,
        };
        // cuBLAS runs in the calling thread's current context: make it ours.
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        self.with_blas(|blas| {
            // cuBLAS reads lda/ldb even for k == 0 and requires them >= 1 (validated already).
            let (m, n, k) = (cfg.m as i32, cfg.n as i32, cfg.k as i32);
            let (lda, ldb, ldc) = (cfg.lda as i32, cfg.ldb as i32, cfg.ldc as i32);
            // SAFETY: Device::sgemm checked every matrix extent against its buffer; the pointers
            // are device addresses of live buffers; alpha/beta are host scalars (default pointer
            // mode).
            let r = unsafe {
                if cfg.batch == 1 {
                    cudarc::cublas::result::sgemm(
                        *blas.handle(),
                        op(cfg.transa),
                        op(cfg.transb),
                        m,
                        n,
                        k,
                        &cfg.alpha,
                        a as *const f32,
                        lda,
                        b as *const f32,
                        ldb,
                        &cfg.beta,
                        c as *mut f32,
                        ldc,
                    )
                } else {
                    cudarc::cublas::result::sgemm_strided_batched(
                        *blas.handle(),
                        op(cfg.transa),
                        op(cfg.transb),
                        m,
                        n,
                        k,
                        &cfg.alpha,
                        a as *const f32,
                        lda,
                        cfg.stride_a as i64,
                        b as *const f32,
                        ldb,
                        cfg.stride_b as i64,
                        &cfg.beta,
                        c as *mut f32,
                        ldc,
                        cfg.stride_c as i64,
                        cfg.batch as i32,
                    )
                }
            };
            r.map_err(|e| anyhow!("cuBLAS sgemm {cfg:?}: {e:?}"))
        })
        .context("sgemm on the cuda device")
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Buffers hold their own stream handles; make sure queued work finishes before the
        // module and cuBLAS handle go away.
        let _ = self.stream.synchronize();
    }
}
