//! The CUDA device: cudarc 0.19 (dynamic loading) with the fatbin build.rs embedded, one stream,
//! cuBLAS for fp32 GEMMs (default math mode, so fp32 GEMMs never use TF32) and cuBLASLt for the
//! bf16 GEMMs of mixed precision (`CUBLAS_COMPUTE_32F`, the bias in the epilogue). Both handles
//! are created on first use and own a workspace allocated once, so that a GEMM never allocates
//! (which keeps GEMMs capturable in a CUDA graph).
//!
//! cudarc panics when it cannot load `libcuda.so`/`libcublas.so`, so [`CudaDevice::new`] checks
//! for the libraries first and turns every failure into an error that says what is missing.
//! All work goes to one stream, so cudarc's cross-stream event tracking is switched off. That
//! stream is a created (non-blocking) stream, not the legacy default stream, which CUDA cannot
//! capture into a graph (`super::graph`).

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::sys as blas_sys;
use cudarc::cublas::CudaBlas;
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::result::CublasError as LtError;
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr,
    PushKernelArg,
};

use super::embedded;
use super::gemm::{GemmOp, SgemmConfig};
use super::{DType, DevPtr, KernelArg, LaunchConfig};

/// Device memory owned by a buffer (freed on drop, ordered after queued work on the stream; a
/// buffer dropped during a graph capture is freed when the capture ends, so that its free is not
/// captured into the graph).
pub(crate) struct CudaMem {
    /// Owns the allocation; never read, dropped (or handed to `capture`) to free.
    slice: Option<CudaSlice<u8>>,
    addr: u64,
    capture: Arc<CaptureState>,
}

impl CudaMem {
    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            self.capture.release(slice);
        }
    }
}

/// Whether the stream is being captured, and the allocations dropped meanwhile.
#[derive(Default)]
struct CaptureState {
    /// Guarded by `deferred`'s lock when it changes, so a drop never races the end of a capture.
    active: AtomicBool,
    deferred: Mutex<Vec<CudaSlice<u8>>>,
}

impl CaptureState {
    fn release(&self, slice: CudaSlice<u8>) {
        let mut deferred = match self.deferred.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        if self.active.load(Ordering::SeqCst) {
            deferred.push(slice);
        } else {
            drop(deferred);
            drop(slice);
        }
    }

    /// Ends the capture state; returns the allocations to free now.
    fn finish(&self) -> Vec<CudaSlice<u8>> {
        let mut deferred = match self.deferred.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        self.active.store(false, Ordering::SeqCst);
        std::mem::take(&mut *deferred)
    }
}

/// One GPU, its stream, the loaded kernels and a lazily created cuBLAS handle.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    blas: Mutex<Option<Blas>>,
    blaslt: Mutex<Option<BlasLt>>,
    capture: Arc<CaptureState>,
    name: String,
    capability: Option<(i32, i32)>,
}

/// The cuBLAS handle and the workspace it was given (`cublasSetWorkspace`): without one, cuBLAS
/// may allocate its own, which a graph capture cannot record. Fields drop in order: the handle
/// before its workspace.
struct Blas {
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
}

/// cuBLASLt's workspace: NVIDIA's recommendation, 32 MiB on Hopper (sm_90), 4 MiB before.
fn workspace_bytes(ctx: &CudaContext) -> usize {
    use cudarc::driver::sys::CUdevice_attribute;
    match ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) {
        Ok(major) if major >= 9 => 32 << 20,
        _ => 4 << 20,
    }
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
        // a created stream: the legacy default stream cannot be captured into a graph
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("cannot create a CUDA stream on device {ordinal}: {e:?}"))?;
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
            blaslt: Mutex::new(None),
            capture: Arc::new(CaptureState::default()),
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
        Ok(CudaMem {
            addr,
            slice: Some(slice),
            capture: self.capture.clone(),
        })
    }

    /// `bytes` of device memory with undefined contents, owned by the returned slice (for the
    /// device's own workspaces and temporaries), and its address.
    fn raw_alloc(&self, bytes: usize) -> Result<(CudaSlice<u8>, u64)> {
        // SAFETY: callers only hand the memory to cuBLAS/cuBLASLt or kernels that write before
        // they read; no Rust value is read from it.
        let slice = unsafe { self.stream.alloc::<u8>(bytes) }
            .map_err(|e| anyhow!("cuda alloc of {bytes} bytes failed: {e:?}"))?;
        let addr = {
            let (addr, _sync) = slice.device_ptr(&self.stream);
            addr
        };
        Ok((slice, addr))
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
        Ok(CudaMem {
            addr,
            slice: Some(slice),
            capture: self.capture.clone(),
        })
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
            let bytes = workspace_bytes(&self.ctx);
            let (workspace, addr) = self.raw_alloc(bytes)?;
            // SAFETY: valid handle; the workspace lives as long as the handle (same struct, dropped
            // after it) and is used on the handle's stream only.
            let st = unsafe {
                blas_sys::cublasSetWorkspace_v2(*blas.handle(), addr as *mut c_void, bytes)
            };
            if st != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                bail!("cublasSetWorkspace failed: {st:?}");
            }
            *guard = Some(Blas {
                blas,
                _workspace: workspace,
            });
        }
        f(&guard.as_ref().expect("initialised above").blas)
    }

    fn with_blaslt<R>(&self, f: impl FnOnce(&mut BlasLt) -> Result<R>) -> Result<R> {
        let mut guard = self
            .blaslt
            .lock()
            .map_err(|_| anyhow!("cuBLASLt handle poisoned"))?;
        if guard.is_none() {
            // SAFETY: only tries to dlopen the names cudarc would use.
            if !unsafe { lt_sys::is_culib_present() } {
                bail!(
                    "cuBLASLt not found (libcublasLt.so.13 could not be loaded): install the CUDA \
                     13 toolkit's cuBLAS (e.g. `pip install nvidia-cublas`, which ships cuBLASLt) \
                     and add its lib directory to LD_LIBRARY_PATH"
                );
            }
            let handle = no_panic("cublasLtCreate", lt::create_handle)?
                .map_err(|e| anyhow!("cuBLASLt init failed: {e:?}"))?;
            let bytes = workspace_bytes(&self.ctx);
            let (workspace, addr) = match self.raw_alloc(bytes) {
                Ok(w) => w,
                Err(e) => {
                    // SAFETY: created just above, not used since.
                    let _ = unsafe { lt::destroy_handle(handle) };
                    return Err(e);
                }
            };
            *guard = Some(BlasLt {
                handle,
                workspace_addr: addr,
                workspace_bytes: bytes,
                _workspace: workspace,
                algos: HashMap::new(),
            });
        }
        f(guard.as_mut().expect("initialised above"))
    }

    /// Creates the cuBLAS and cuBLASLt handles (and their workspaces) now if their libraries are
    /// present: a graph capture must not create them (creation allocates and synchronizes).
    pub(crate) fn init_blas_handles(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        // SAFETY: only try to dlopen the names cudarc would use.
        if unsafe { blas_sys::is_culib_present() } {
            self.with_blas(|_| Ok(()))?;
        }
        // SAFETY: as above.
        if unsafe { lt_sys::is_culib_present() } {
            self.with_blaslt(|_| Ok(()))?;
        }
        Ok(())
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

impl CudaDevice {
    /// [`super::Device::gemm_bf16`] on this GPU: cuBLASLt with the f32 bias in its epilogue, or,
    /// when cuBLASLt has no algorithm for that (or for `k == 0` / `alpha == 0`, which it does not
    /// compute), the product into an f32 temporary and one `gemm_epilogue_*` kernel
    /// (kernels/matmul.cu) for `+ beta * C + bias` and the rounding.
    pub(crate) fn gemm_bf16(
        &self,
        cfg: &SgemmConfig,
        a: u64,
        b: u64,
        c: u64,
        c_type: DType,
        bias: Option<u64>,
    ) -> Result<()> {
        if cfg.is_noop() {
            return Ok(());
        }
        let c_f32 = match c_type {
            DType::F32 => true,
            DType::BF16 => false,
            other => bail!("gemm_bf16: C must be f32 or bf16, not {other:?}"),
        };
        self.ctx
            .bind_to_thread()
            .map_err(|e| anyhow!("cuda bind: {e:?}"))?;
        if cfg.k == 0 || cfg.alpha == 0.0 {
            // C = beta * C + bias without A and B (cuBLAS's k == 0 semantics)
            return self.gemm_epilogue(cfg, c, c_f32, None, bias);
        }
        let stream = self.stream.cu_stream() as lt_sys::cudaStream_t;
        let direct = LtProblem {
            cfg: *cfg,
            a,
            b,
            d: c,
            d_f32: c_f32,
            bias,
        };
        // SAFETY: Device::gemm_bf16 checked every extent of A, B, C and the bias against live
        // buffers of this device; all work is ordered on this device's stream.
        let r = self.with_blaslt(|blt| Ok(unsafe { blt.matmul(&direct, stream) }))?;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.0 == lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => {
                // No algorithm for this bias (or this D alignment): the product to a compact f32
                // temporary, then the kernel.
                let count = cfg.m * cfg.n * cfg.batch;
                let (tmp, tmp_addr) = self.raw_alloc(count * 4)?;
                let mut pcfg = *cfg;
                pcfg.beta = 0.0;
                pcfg.ldc = cfg.m;
                pcfg.stride_c = cfg.m * cfg.n;
                let product = LtProblem {
                    cfg: pcfg,
                    a,
                    b,
                    d: tmp_addr,
                    d_f32: true,
                    bias: None,
                };
                // SAFETY: as above; tmp holds the compact m x n x batch product.
                self.with_blaslt(|blt| {
                    unsafe { blt.matmul(&product, stream) }.map_err(|e| {
                        anyhow!(
                            "cuBLASLt bf16 GEMM (f32 product for the bias kernel) {cfg:?}: {e:?}"
                        )
                    })
                })?;
                self.gemm_epilogue(cfg, c, c_f32, Some(tmp_addr), bias)?;
                // freed on the stream, after the kernel that reads it
                drop(tmp);
                Ok(())
            }
            Err(e) => bail!(
                "cuBLASLt bf16 GEMM {cfg:?} (C {c_type:?}, bias {}): {e:?}",
                bias.is_some()
            ),
        }
    }

    /// `gemm_epilogue_{f32,bf16}`: C = round(acc + beta * C + bias) over the m x n x batch
    /// matrices of C; `acc` (compact, f32) absent means 0.
    fn gemm_epilogue(
        &self,
        cfg: &SgemmConfig,
        c: u64,
        c_f32: bool,
        acc: Option<u64>,
        bias: Option<u64>,
    ) -> Result<()> {
        let name = if c_f32 {
            "gemm_epilogue_f32"
        } else {
            "gemm_epilogue_bf16"
        };
        let count = cfg.m * cfg.n * cfg.batch;
        let ptr = |addr: u64| {
            KernelArg::Ptr(DevPtr {
                addr,
                device_id: 0,
                bytes: 0,
            })
        };
        let args = [
            ptr(c),
            acc.map_or(KernelArg::Ptr(DevPtr::NULL), ptr),
            bias.map_or(KernelArg::Ptr(DevPtr::NULL), ptr),
            KernelArg::F32(cfg.beta),
            KernelArg::I32(cfg.m as i32),
            KernelArg::I32(cfg.n as i32),
            KernelArg::I32(cfg.ldc as i32),
            KernelArg::I64(cfg.stride_c as i64),
            KernelArg::I32(cfg.batch as i32),
        ];
        super::sigs::check_args(name, &args)?;
        let grid = u32::try_from(count.div_ceil(256))
            .map_err(|_| anyhow!("{name}: {count} elements need too many blocks"))?;
        self.launch(name, &LaunchConfig::linear(grid, 256, 0), &args)
    }
}

/// One `cublasLtMatmul`: `D = alpha op(A) op(B) + beta D (+ bias)` with D of `cfg.ldc` and
/// `cfg.stride_c`, bf16 A and B.
struct LtProblem {
    cfg: SgemmConfig,
    a: u64,
    b: u64,
    d: u64,
    d_f32: bool,
    bias: Option<u64>,
}

/// What cuBLASLt's heuristic depends on: the problem without alpha and the addresses, plus the
/// alignment of each pointer (algorithms assume what MIN_ALIGNMENT says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LtKey {
    ops: (GemmOp, GemmOp),
    mnk: (usize, usize, usize),
    lds: (usize, usize, usize),
    batch: usize,
    strides: (usize, usize, usize),
    d_f32: bool,
    bias: bool,
    beta_zero: bool,
    align: [u32; 4],
}

/// The largest power of two (<= 256) dividing `addr` and every batch stride in bytes: what the
/// matrices of a call are aligned to.
fn alignment(addr: u64, stride_bytes: usize, batch: usize) -> u32 {
    let mut bits = addr | 256;
    if batch > 1 {
        bits |= stride_bytes as u64;
    }
    1u32 << bits.trailing_zeros().min(8)
}

/// cuBLASLt's handle, the workspace every matmul gets (allocated once: nothing allocates during
/// a GEMM, so GEMMs can be captured in a graph) and the heuristic's choice per problem (`None`:
/// no algorithm).
struct BlasLt {
    handle: lt_sys::cublasLtHandle_t,
    workspace_addr: u64,
    workspace_bytes: usize,
    _workspace: CudaSlice<u8>,
    algos: HashMap<LtKey, Option<lt_sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle is only used under CudaDevice's mutex (one thread at a time), which cuBLASLt
// allows (a handle may move between threads; calls just must not race).
unsafe impl Send for BlasLt {}

impl Drop for BlasLt {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// Owned cuBLASLt descriptors, destroyed on every path.
struct LtDesc(lt_sys::cublasLtMatmulDesc_t);
impl Drop for LtDesc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct LtLayout(lt_sys::cublasLtMatrixLayout_t);
impl Drop for LtLayout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct LtPref(lt_sys::cublasLtMatmulPreference_t);
impl Drop for LtPref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

fn as_void<T>(v: &T) -> *const c_void {
    v as *const T as *const c_void
}

impl BlasLt {
    /// Runs one matmul (`Err(CUBLAS_STATUS_NOT_SUPPORTED)` when the heuristic has no algorithm).
    ///
    /// # Safety
    /// Every matrix extent of `p` (and `m` bias elements) lies in live device memory of this
    /// handle's device; `stream` is the device's stream.
    unsafe fn matmul(
        &mut self,
        p: &LtProblem,
        stream: lt_sys::cudaStream_t,
    ) -> Result<(), LtError> {
        use lt_sys::cublasLtMatmulDescAttributes_t as DescAttr;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as PrefAttr;
        use lt_sys::cublasLtMatrixLayoutAttribute_t as LayoutAttr;
        use lt_sys::cudaDataType_t as Ty;
        let cfg = &p.cfg;
        let d_type = if p.d_f32 {
            Ty::CUDA_R_32F
        } else {
            Ty::CUDA_R_16BF
        };
        let d_size = if p.d_f32 { 4 } else { 2 };
        let desc = LtDesc(lt::create_matmul_desc(
            lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            Ty::CUDA_R_32F,
        )?);
        let op = |o: GemmOp| -> i32 {
            match o {
                GemmOp::N => 0, // CUBLAS_OP_N
                GemmOp::T => 1, // CUBLAS_OP_T
            }
        };
        let (ta, tb) = (op(cfg.transa), op(cfg.transb));
        lt::set_matmul_desc_attribute(
            desc.0,
            DescAttr::CUBLASLT_MATMUL_DESC_TRANSA,
            as_void(&ta),
            4,
        )?;
        lt::set_matmul_desc_attribute(
            desc.0,
            DescAttr::CUBLASLT_MATMUL_DESC_TRANSB,
            as_void(&tb),
            4,
        )?;
        if let Some(bias) = p.bias {
            let epi = lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            lt::set_matmul_desc_attribute(
                desc.0,
                DescAttr::CUBLASLT_MATMUL_DESC_EPILOGUE,
                as_void(&epi),
                std::mem::size_of_val(&epi),
            )?;
            lt::set_matmul_desc_attribute(
                desc.0,
                DescAttr::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                as_void(&bias),
                8,
            )?;
            // the bias is an f32 master parameter, whatever D's type
            let bias_type = Ty::CUDA_R_32F as i32;
            lt::set_matmul_desc_attribute(
                desc.0,
                DescAttr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                as_void(&bias_type),
                4,
            )?;
        }
        let layout = |ty: Ty, (rows, cols): (usize, usize), ld: usize, stride: usize| {
            let l = LtLayout(lt::create_matrix_layout(
                ty,
                rows as u64,
                cols as u64,
                ld as i64,
            )?);
            if cfg.batch > 1 {
                let (count, stride) = (cfg.batch as i32, stride as i64);
                // SAFETY: l is a live layout; the values have the attribute's types.
                unsafe {
                    lt::set_matrix_layout_attribute(
                        l.0,
                        LayoutAttr::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        as_void(&count),
                        4,
                    )?;
                    lt::set_matrix_layout_attribute(
                        l.0,
                        LayoutAttr::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        as_void(&stride),
                        8,
                    )?;
                }
            }
            Ok::<_, LtError>(l)
        };
        let a_shape = match cfg.transa {
            GemmOp::N => (cfg.m, cfg.k),
            GemmOp::T => (cfg.k, cfg.m),
        };
        let b_shape = match cfg.transb {
            GemmOp::N => (cfg.k, cfg.n),
            GemmOp::T => (cfg.n, cfg.k),
        };
        let la = layout(Ty::CUDA_R_16BF, a_shape, cfg.lda, cfg.stride_a)?;
        let lb = layout(Ty::CUDA_R_16BF, b_shape, cfg.ldb, cfg.stride_b)?;
        let ld = layout(d_type, (cfg.m, cfg.n), cfg.ldc, cfg.stride_c)?;
        let align = [
            alignment(p.a, cfg.stride_a * 2, cfg.batch),
            alignment(p.b, cfg.stride_b * 2, cfg.batch),
            alignment(p.d, cfg.stride_c * d_size, cfg.batch),
            p.bias.map_or(256, |b| alignment(b, 0, 1)),
        ];
        let key = LtKey {
            ops: (cfg.transa, cfg.transb),
            mnk: (cfg.m, cfg.n, cfg.k),
            lds: (cfg.lda, cfg.ldb, cfg.ldc),
            batch: cfg.batch,
            strides: (cfg.stride_a, cfg.stride_b, cfg.stride_c),
            d_f32: p.d_f32,
            bias: p.bias.is_some(),
            beta_zero: cfg.beta == 0.0,
            align,
        };
        let algo = match self.algos.get(&key) {
            Some(a) => *a,
            None => {
                let pref = LtPref(lt::create_matmul_pref()?);
                let ws = self.workspace_bytes as u64;
                lt::set_matmul_pref_attribute(
                    pref.0,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    as_void(&ws),
                    8,
                )?;
                for (attr, al) in [
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ]
                .into_iter()
                .zip([align[0], align[1], align[2], align[2]])
                {
                    lt::set_matmul_pref_attribute(pref.0, attr, as_void(&al), 4)?;
                }
                // the heuristic reads the bias pointer's alignment from the descriptor
                let found = match lt::get_matmul_algo_heuristic(
                    self.handle,
                    desc.0,
                    la.0,
                    lb.0,
                    ld.0,
                    ld.0,
                    pref.0,
                ) {
                    Ok(h) => Some(h.algo),
                    Err(e) if e.0 == lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => None,
                    Err(e) => return Err(e),
                };
                self.algos.insert(key, found);
                found
            }
        };
        let Some(algo) = algo else {
            return Err(LtError(lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED));
        };
        // C = D in place: beta reads D's old values (never when beta == 0)
        lt::matmul(
            self.handle,
            desc.0,
            as_void(&cfg.alpha),
            as_void(&cfg.beta),
            p.a as *const c_void,
            la.0,
            p.b as *const c_void,
            lb.0,
            p.d as *const c_void,
            ld.0,
            p.d as *mut c_void,
            ld.0,
            &algo,
            self.workspace_addr as *mut c_void,
            self.workspace_bytes,
            stream,
        )
    }
}

impl CudaDevice {
    /// Whether the stream is being captured (`Device::capture`).
    pub(crate) fn capturing(&self) -> bool {
        self.capture.active.load(Ordering::SeqCst)
    }

    /// Creates the BLAS handles, then starts capturing the stream (thread-local mode: this
    /// thread's calls that are unsafe during capture, e.g. a synchronous allocation, fail).
    pub(crate) fn begin_capture(&self) -> Result<()> {
        if self.capturing() {
            bail!(
                "Device::capture: a capture is already under way on this device (captures do not \
                 nest)"
            );
        }
        self.init_blas_handles()?;
        // Look every kernel up now: with CUDA's lazy module loading the first lookup of a
        // function loads its code, which is better done outside the capture. (Kernels the fatbin
        // lacks, e.g. the emulator's own test kernels, fail later, at their launch.)
        for k in super::sigs::all() {
            let _ = self.function(k.name);
        }
        {
            let _deferred = self.capture.deferred.lock();
            self.capture.active.store(true, Ordering::SeqCst);
        }
        let r = self.stream.begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        );
        if let Err(e) = r {
            drop(self.capture.finish());
            bail!("cuStreamBeginCapture failed: {e:?}");
        }
        Ok(())
    }

    /// Ends the capture and instantiates the graph (`None`: nothing was captured). Frees the
    /// buffers dropped during the capture.
    pub(crate) fn end_capture(&self) -> Result<Option<CudaGraph>> {
        let graph = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        drop(self.capture.finish());
        graph.map_err(|e| {
            anyhow!(
                "cuStreamEndCapture/cuGraphInstantiate failed: {e:?} (an operation inside the \
                 capture was not capturable and invalidated it)"
            )
        })
    }

    /// Launches an instantiated graph on the stream.
    pub(crate) fn launch_graph(&self, graph: &CudaGraph) -> Result<()> {
        graph
            .launch()
            .map_err(|e| anyhow!("cuGraphLaunch failed: {e:?}"))
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Buffers hold their own stream handles; make sure queued work finishes before the
        // module and cuBLAS handle go away.
        let _ = self.stream.synchronize();
    }
}
