//! The device layer: one interface over the CUDA device (cudarc) and the emulated device.
//!
//! [`Device`] is a cheap-to-clone handle to either a real GPU ([`cuda`]) or the emulated device
//! ([`emu`]: the same `kernels/*.cu` compiled for the host, memory in host RAM, GEMMs on the CPU
//! with cuBLAS semantics). Everything above this layer (typed kernel launches in
//! `crate::kernels`, the GPU backend) is written once against it:
//!
//! - memory: [`Device::alloc`] (zero-filled), [`Device::alloc_uninit`] (poisoned on the emulated
//!   device: NaN bytes, and strict mode reports reads of never-written bytes), [`Device::upload`], [`Device::htod`],
//!   [`Device::dtoh`], [`Device::download`], [`Device::dtod`], [`Device::zero`]; buffers are typed
//!   by [`Elem`] (f32, bf16, f16, i32, u32, u8) and borrowed as [`View`] / [`ViewMut`] (sub-ranges
//!   with [`View::slice`] / [`ViewMut::slice_mut`] / [`ViewMut::split_at_mut`]).
//! - kernels: [`Device::launch`] by name with a [`LaunchConfig`] and [`KernelArg`]s in signature
//!   order. Both devices check the arguments' number, kinds and sizes against the kernel's source
//!   signature ([`sigs`]); pointer types are not checked (unsafe). A pointer argument carries the
//!   extent of the view it came from: on the emulated device in strict mode the kernel may touch
//!   exactly that range ([`EmuOptions::strict`]), so launchers pass views sliced to what a launch
//!   may touch. More than 48 KiB of dynamic shared memory needs [`Device::opt_in_dyn_smem`].
//! - GEMM: [`Device::sgemm`] with a [`SgemmConfig`] (cuBLAS column-major semantics, fp32, no TF32),
//!   and [`Device::gemm_bf16`] (bf16 A/B, bf16 or f32 C, f32 compute, optional f32 bias epilogue).
//! - [`Device::synchronize`].
//! - graphs: [`Device::capture`] records the work a closure queues into a [`Graph`] that
//!   [`Graph::launch`] replays (CUDA stream capture on cuda, a recorded op list on emu).
//!
//! Every operation checks that its buffers belong to this device and are large enough, and
//! returns an error (never a panic) otherwise.

pub mod cuda;
pub mod embedded;
pub mod emu;
pub mod emu_ffi;
pub mod gemm;
pub mod graph;
pub mod sigs;
pub mod step;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

pub use emu_ffi::EmuOptions;
pub use gemm::{GemmOp, SgemmConfig};
pub use graph::Graph;
pub use step::{StepScalars, StepSlot};

/// Element type of a device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    I32,
    U32,
    U8,
}

/// A plain-old-data type that can live in device memory.
pub trait Elem: bytemuck::Pod + Send + Sync + fmt::Debug + 'static {
    const DTYPE: DType;
}

impl Elem for f32 {
    const DTYPE: DType = DType::F32;
}
impl Elem for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Elem for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl Elem for i32 {
    const DTYPE: DType = DType::I32;
}
impl Elem for u32 {
    const DTYPE: DType = DType::U32;
}
impl Elem for u8 {
    const DTYPE: DType = DType::U8;
}

/// Which device to open (command line `--device cuda|emu|auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A real NVIDIA GPU through cudarc; an error if there is none.
    Cuda,
    /// The emulated device: the CUDA kernels compiled for the host.
    Emu,
    /// Cuda when usable, otherwise Emu (with a note saying why).
    Auto,
}

impl FromStr for DeviceKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cuda" => Ok(DeviceKind::Cuda),
            "emu" => Ok(DeviceKind::Emu),
            "auto" => Ok(DeviceKind::Auto),
            other => bail!("unknown device {other:?}: expected one of cuda, emu, auto"),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cuda => "cuda",
            DeviceKind::Emu => "emu",
            DeviceKind::Auto => "auto",
        })
    }
}

/// Grid, block and dynamic shared memory of one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes (`DYN_SMEM` in the kernel).
    pub dyn_smem: u32,
}

/// Dynamic shared memory a launch may use without a per-kernel opt-in (all CUDA GPUs).
pub const MAX_DYN_SMEM: u32 = 48 * 1024;

/// The most dynamic shared memory a kernel can opt in to ([`Device::opt_in_dyn_smem`]) on the
/// GPUs of the fatbin: 227 KiB on sm_90 (H100/H200). sm_80 allows 163 KiB and sm_86/sm_89 99 KiB;
/// on a GPU the device's own limit applies.
pub const MAX_DYN_SMEM_OPTIN: u32 = 227 * 1024;

impl LaunchConfig {
    /// A 1-D launch: `grid` blocks of `block` threads.
    pub fn linear(grid: u32, block: u32, dyn_smem: u32) -> Self {
        LaunchConfig {
            grid: (grid, 1, 1),
            block: (block, 1, 1),
            dyn_smem,
        }
    }

    /// The limits every CUDA GPU enforces (the emulator enforces the same ones, so a shape that
    /// passes on the emulated device also launches on a GPU).
    pub fn validate(&self, kernel: &str) -> Result<()> {
        self.validate_with_smem_limit(kernel, MAX_DYN_SMEM)
    }

    /// [`LaunchConfig::validate`] with a kernel's opted-in dynamic shared memory limit.
    pub fn validate_with_smem_limit(&self, kernel: &str, max_dyn_smem: u32) -> Result<()> {
        let (gx, gy, gz) = self.grid;
        let (bx, by, bz) = self.block;
        if gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 {
            bail!(
                "launch {kernel}: empty grid {:?} or block {:?}",
                self.grid,
                self.block
            );
        }
        if gy > 65535 || gz > 65535 || gx > i32::MAX as u32 {
            bail!("launch {kernel}: grid {:?} exceeds CUDA limits", self.grid);
        }
        let threads = bx as u64 * by as u64 * bz as u64;
        if threads > 1024 || bz > 64 {
            bail!(
                "launch {kernel}: block {:?} exceeds CUDA limits (1024 threads)",
                self.block
            );
        }
        if self.dyn_smem > max_dyn_smem {
            bail!(
                "launch {kernel}: {} bytes of dynamic shared memory > {max_dyn_smem}{}",
                self.dyn_smem,
                if max_dyn_smem == MAX_DYN_SMEM {
                    " (more needs Device::opt_in_dyn_smem for this kernel)"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }
}

/// A device address tagged with the device it belongs to, and the extent of the view it came
/// from (what a kernel given this pointer may touch: strict mode's memcheck on the emulated
/// device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevPtr {
    addr: u64,
    device_id: u64,
    bytes: u64,
}

impl DevPtr {
    /// The null pointer (for optional kernel outputs); valid on every device.
    pub const NULL: DevPtr = DevPtr {
        addr: 0,
        device_id: 0,
        bytes: 0,
    };

    /// The raw address (device virtual address on cuda, host address on emu).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The extent in bytes of the view this pointer came from.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// One kernel parameter, passed cuLaunchKernel-style (by address of the value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    Ptr(DevPtr),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
}

/// `From<scalar>` for each by-value kernel argument kind.
macro_rules! kernel_arg_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for KernelArg {
            fn from(v: $t) -> Self {
                KernelArg::$variant(v)
            }
        })*
    };
}
kernel_arg_from!(i32 => I32, u32 => U32, i64 => I64, u64 => U64, f32 => F32, DevPtr => Ptr);

impl<T: Elem> From<View<'_, T>> for KernelArg {
    fn from(v: View<'_, T>) -> Self {
        KernelArg::Ptr(v.ptr())
    }
}
impl<T: Elem> From<&ViewMut<'_, T>> for KernelArg {
    fn from(v: &ViewMut<'_, T>) -> Self {
        KernelArg::Ptr(v.ptr())
    }
}
impl<T: Elem> From<&mut ViewMut<'_, T>> for KernelArg {
    fn from(v: &mut ViewMut<'_, T>) -> Self {
        KernelArg::Ptr(v.ptr())
    }
}

/// The memory behind a buffer.
enum Mem {
    /// Zero-length buffers own nothing (cuMemAlloc rejects 0 bytes).
    Empty,
    Cuda(#[allow(dead_code)] cuda::CudaMem),
    Emu(#[allow(dead_code)] emu::HostMem),
}

/// An owned, typed allocation on one device; freed on drop. No `Clone`: copying device memory
/// can fail (out of memory), so it is explicit ([`Device::dtod`]).
pub struct DeviceBuffer<T: Elem> {
    addr: u64,
    len: usize,
    device_id: u64,
    _mem: Mem,
    _usage: Usage,
    _t: PhantomData<T>,
}

/// Bytes of device memory a [`Device`] has allocated: now and at most (the benchmarks' peak).
#[derive(Debug, Default)]
struct MemStats {
    current: AtomicUsize,
    peak: AtomicUsize,
}

/// One allocation's share of its device's [`MemStats`], given back on drop.
struct Usage {
    stats: Arc<MemStats>,
    bytes: usize,
}

impl Usage {
    fn new(stats: &Arc<MemStats>, bytes: usize) -> Usage {
        let now = stats.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        stats.peak.fetch_max(now, Ordering::Relaxed);
        Usage {
            stats: Arc::clone(stats),
            bytes,
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        self.stats.current.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl<T: Elem> fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceBuffer<{:?}>[{}] on device #{}",
            T::DTYPE,
            self.len,
            self.device_id
        )
    }
}

impl<T: Elem> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }
    /// The whole buffer, read-only.
    pub fn view(&self) -> View<'_, T> {
        View {
            addr: self.addr,
            len: self.len,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
    /// The whole buffer, writable.
    pub fn view_mut(&mut self) -> ViewMut<'_, T> {
        ViewMut {
            addr: self.addr,
            len: self.len,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
    /// A writable range through a shared reference: for owners that hand out disjoint ranges of
    /// one allocation (the GPU backend's parameter arenas).
    ///
    /// # Safety
    /// No other live view of this buffer may overlap `range` while the returned view is used.
    pub unsafe fn slice_mut_unchecked(&self, range: impl RangeBounds<usize>) -> ViewMut<'_, T> {
        let (s, e) = bounds(range, self.len);
        ViewMut {
            addr: self.addr + (s * std::mem::size_of::<T>()) as u64,
            len: e - s,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
    /// `self.view().slice(range)`.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> View<'_, T> {
        self.view().slice(range)
    }
    /// `self.view_mut().slice_mut(range)` with the buffer's lifetime.
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> ViewMut<'_, T> {
        let (s, e) = bounds(range, self.len);
        ViewMut {
            addr: self.addr + (s * std::mem::size_of::<T>()) as u64,
            len: e - s,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
}

fn bounds(range: impl RangeBounds<usize>, len: usize) -> (usize, usize) {
    let s = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let e = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    assert!(
        s <= e && e <= len,
        "device view range {s}..{e} out of bounds for length {len}"
    );
    (s, e)
}

/// A borrowed, read-only range of a [`DeviceBuffer`] (like `&[T]`).
#[derive(Clone, Copy)]
pub struct View<'a, T: Elem> {
    addr: u64,
    len: usize,
    device_id: u64,
    _p: PhantomData<&'a [T]>,
}

/// A borrowed, writable range of a [`DeviceBuffer`] (like `&mut [T]`).
pub struct ViewMut<'a, T: Elem> {
    addr: u64,
    len: usize,
    device_id: u64,
    _p: PhantomData<&'a mut [T]>,
}

impl<T: Elem> fmt::Debug for View<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "View<{:?}>[{}]", T::DTYPE, self.len)
    }
}
impl<T: Elem> fmt::Debug for ViewMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ViewMut<{:?}>[{}]", T::DTYPE, self.len)
    }
}

impl<'a, T: Elem> View<'a, T> {
    /// This view typed `U` when `U` is `T`, else `None` (see [`ViewMut::downcast`]).
    pub fn downcast<U: Elem>(self) -> Option<View<'a, U>> {
        (std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>()).then_some(View {
            addr: self.addr,
            len: self.len,
            device_id: self.device_id,
            _p: PhantomData,
        })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ptr(&self) -> DevPtr {
        DevPtr {
            addr: self.addr,
            device_id: self.device_id,
            bytes: (self.len * std::mem::size_of::<T>()) as u64,
        }
    }
    /// A sub-range. Panics when out of bounds, like slice indexing (a programming error).
    pub fn slice(&self, range: impl RangeBounds<usize>) -> View<'a, T> {
        let (s, e) = bounds(range, self.len);
        View {
            addr: self.addr + (s * std::mem::size_of::<T>()) as u64,
            len: e - s,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
}

impl<'a, T: Elem> ViewMut<'a, T> {
    /// This view typed `U` when `U` is `T` (a no-op for generic code that dispatches on its
    /// element type, e.g. an `A: Act` launcher calling the f32-only sgemm), else `None`.
    pub fn downcast<U: Elem>(self) -> Option<ViewMut<'a, U>> {
        (std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>()).then_some(ViewMut {
            addr: self.addr,
            len: self.len,
            device_id: self.device_id,
            _p: PhantomData,
        })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ptr(&self) -> DevPtr {
        DevPtr {
            addr: self.addr,
            device_id: self.device_id,
            bytes: (self.len * std::mem::size_of::<T>()) as u64,
        }
    }
    /// A shorter-lived writable view of the same range (so one view can feed several calls).
    pub fn reborrow(&mut self) -> ViewMut<'_, T> {
        ViewMut {
            addr: self.addr,
            len: self.len,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
    /// A read-only view of the same range.
    pub fn as_view(&self) -> View<'_, T> {
        View {
            addr: self.addr,
            len: self.len,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
    /// A writable sub-range. Panics when out of bounds.
    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> ViewMut<'_, T> {
        let (s, e) = bounds(range, self.len);
        ViewMut {
            addr: self.addr + (s * std::mem::size_of::<T>()) as u64,
            len: e - s,
            device_id: self.device_id,
            _p: PhantomData,
        }
    }
    /// Two disjoint writable halves `[0, mid)` and `[mid, len)`. Panics when `mid > len`.
    pub fn split_at_mut(self, mid: usize) -> (ViewMut<'a, T>, ViewMut<'a, T>) {
        assert!(mid <= self.len, "split_at_mut: {mid} > length {}", self.len);
        let right = self.addr + (mid * std::mem::size_of::<T>()) as u64;
        (
            ViewMut {
                addr: self.addr,
                len: mid,
                device_id: self.device_id,
                _p: PhantomData,
            },
            ViewMut {
                addr: right,
                len: self.len - mid,
                device_id: self.device_id,
                _p: PhantomData,
            },
        )
    }
}

impl<'a, T: Elem> From<ViewMut<'a, T>> for View<'a, T> {
    fn from(v: ViewMut<'a, T>) -> Self {
        View {
            addr: v.addr,
            len: v.len,
            device_id: v.device_id,
            _p: PhantomData,
        }
    }
}
impl<'a, T: Elem> From<&'a DeviceBuffer<T>> for View<'a, T> {
    fn from(b: &'a DeviceBuffer<T>) -> Self {
        b.view()
    }
}
impl<'a, T: Elem> From<&'a mut DeviceBuffer<T>> for ViewMut<'a, T> {
    fn from(b: &'a mut DeviceBuffer<T>) -> Self {
        b.view_mut()
    }
}

#[derive(Clone)]
enum Inner {
    Cuda(Arc<cuda::CudaDevice>),
    Emu(Arc<emu::EmuDevice>),
}

/// A handle to one device. Clones share the device (and its buffers' identity).
#[derive(Clone)]
pub struct Device {
    inner: Inner,
    id: u64,
    note: Option<String>,
    /// Per-kernel dynamic shared memory limits above [`MAX_DYN_SMEM`] ([`Device::opt_in_dyn_smem`]).
    smem_optin: Arc<Mutex<HashMap<String, u32>>>,
    /// Bytes allocated through this device (all clones share it).
    mem: Arc<MemStats>,
    /// The step scalars captured graphs read ([`step`]; all clones share them).
    step: step::SharedStepState,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({} #{}: {})", self.kind(), self.id, self.name())
    }
}

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

impl Device {
    /// Open a device of the given kind. `Auto` falls back to `Emu` and prints why (to stderr;
    /// also available from [`Device::note`]).
    pub fn open(kind: DeviceKind) -> Result<Device> {
        match kind {
            DeviceKind::Cuda => Device::cuda(),
            DeviceKind::Emu => Device::emu(),
            DeviceKind::Auto => Device::auto(),
        }
    }

    /// GPU 0 through cudarc. Errors (never panics) when there is no driver, no GPU, or the crate
    /// was built without CUDA kernels.
    pub fn cuda() -> Result<Device> {
        Device::cuda_ordinal(0)
    }

    /// GPU `ordinal` through cudarc.
    pub fn cuda_ordinal(ordinal: usize) -> Result<Device> {
        let dev = cuda::CudaDevice::new(ordinal)?;
        Ok(Device::wrap(Inner::Cuda(Arc::new(dev)), None))
    }

    /// The emulated device (launch options from the environment).
    pub fn emu() -> Result<Device> {
        Device::emu_with(EmuOptions::default())
    }

    /// The emulated device with explicit launch options (watchdog, schedule shuffling), e.g. for
    /// tests that must not depend on or mutate the environment.
    pub fn emu_with(opts: EmuOptions) -> Result<Device> {
        let dev = emu::EmuDevice::new(opts)?;
        Ok(Device::wrap(Inner::Emu(Arc::new(dev)), None))
    }

    /// Cuda when usable, else the emulated device with a note saying why.
    pub fn auto() -> Result<Device> {
        match Device::cuda() {
            Ok(d) => Ok(d),
            Err(e) => {
                let note =
                    format!("CUDA device not usable ({e:#}); falling back to the emulated device");
                eprintln!("note: {note}");
                let mut d = Device::emu()?;
                d.note = Some(note);
                Ok(d)
            }
        }
    }

    fn wrap(inner: Inner, note: Option<String>) -> Device {
        Device {
            inner,
            id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
            note,
            smem_optin: Arc::new(Mutex::new(HashMap::new())),
            mem: Arc::new(MemStats::default()),
            step: Default::default(),
        }
    }

    /// `Cuda` or `Emu` (never `Auto`).
    pub fn kind(&self) -> DeviceKind {
        match self.inner {
            Inner::Cuda(_) => DeviceKind::Cuda,
            Inner::Emu(_) => DeviceKind::Emu,
        }
    }

    /// Human-readable description (GPU name and compute capability, or "emulated device").
    pub fn name(&self) -> String {
        match &self.inner {
            Inner::Cuda(d) => d.name(),
            Inner::Emu(_) => "emulated CUDA device (kernels compiled for the host)".to_string(),
        }
    }

    /// Bytes of device memory allocated through this device and not yet freed (our buffers; not
    /// cuBLAS's or the driver's own).
    pub fn bytes_in_use(&self) -> usize {
        self.mem.current.load(Ordering::Relaxed)
    }

    /// The most [`Device::bytes_in_use`] has been.
    pub fn peak_bytes(&self) -> usize {
        self.mem.peak.load(Ordering::Relaxed)
    }

    /// The GPU's (major, minor) compute capability; `None` for the emulated device.
    pub fn compute_capability(&self) -> Option<(i32, i32)> {
        match &self.inner {
            Inner::Cuda(d) => d.capability(),
            Inner::Emu(_) => None,
        }
    }

    /// Why `Auto` fell back to the emulated device, if it did.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    fn check_owner(&self, device_id: u64, what: &str) -> Result<()> {
        if device_id != self.id {
            bail!("{what}: buffer belongs to device #{device_id}, not to {self:?}");
        }
        Ok(())
    }

    /// A zero-filled buffer of `len` elements.
    pub fn alloc<T: Elem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        self.alloc_impl(len, true)
    }

    /// A buffer of `len` elements whose contents are undefined until written, for outputs that a
    /// kernel overwrites (`=`) and scratch: cheaper than [`Device::alloc`] on a GPU (no memset;
    /// compute-sanitizer's initcheck then sees reads of never-written bytes), and on the emulated
    /// device filled with 0xFF bytes (NaN as floats, -1 as integers) with every byte tracked, so
    /// that in strict mode a kernel reading a byte nothing wrote, or a download of one (an output
    /// some thread forgot to write), is an error naming the kernel.
    pub fn alloc_uninit<T: Elem>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        self.alloc_impl(len, false)
    }

    fn alloc_impl<T: Elem>(&self, len: usize, zeroed: bool) -> Result<DeviceBuffer<T>> {
        self.not_capturing(
            "alloc",
            "an allocation cannot be captured in a graph: allocate every buffer before capturing",
        )?;
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| anyhow::anyhow!("alloc: {len} x {:?} overflows", T::DTYPE))?;
        let (addr, mem) = if bytes == 0 {
            (0, Mem::Empty)
        } else {
            match &self.inner {
                Inner::Cuda(d) => {
                    let m = if zeroed {
                        d.alloc_zeroed(bytes)?
                    } else {
                        d.alloc_uninit(bytes)?
                    };
                    (m.addr(), Mem::Cuda(m))
                }
                Inner::Emu(_) => {
                    let m = if zeroed {
                        emu::HostMem::alloc_zeroed(bytes)?
                    } else {
                        emu::HostMem::alloc_poisoned(bytes)?
                    };
                    (m.addr(), Mem::Emu(m))
                }
            }
        };
        Ok(DeviceBuffer {
            addr,
            len,
            device_id: self.id,
            _mem: mem,
            _usage: Usage::new(&self.mem, bytes),
            _t: PhantomData,
        })
    }

    /// A new buffer holding a copy of `src`.
    pub fn upload<T: Elem>(&self, src: &[T]) -> Result<DeviceBuffer<T>> {
        let mut buf = self.alloc::<T>(src.len())?;
        self.htod(src, buf.view_mut())?;
        Ok(buf)
    }

    /// Copy host -> device; lengths must match.
    pub fn htod<T: Elem>(&self, src: &[T], dst: ViewMut<'_, T>) -> Result<()> {
        self.not_capturing(
            "htod",
            "a copy from host memory cannot be captured (the graph would not see later host data): \
             upload before Graph::launch",
        )?;
        self.check_owner(dst.device_id, "htod")?;
        if src.len() != dst.len {
            bail!(
                "htod: host slice has {} elements, device view {}",
                src.len(),
                dst.len
            );
        }
        if src.is_empty() {
            return Ok(());
        }
        let bytes: &[u8] = bytemuck::cast_slice(src);
        match &self.inner {
            Inner::Cuda(d) => d.htod(bytes, dst.addr),
            // SAFETY: dst is a live, exclusively borrowed emu range of exactly bytes.len() bytes.
            Inner::Emu(_) => unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.addr as *mut u8, bytes.len());
                emu_ffi::mem::mark_written(dst.addr, bytes.len());
                Ok(())
            },
        }
    }

    /// Copy device -> host (waits for pending work); lengths must match.
    pub fn dtoh<T: Elem>(&self, src: View<'_, T>, dst: &mut [T]) -> Result<()> {
        self.not_capturing(
            "dtoh",
            "a host read cannot be captured (it would wait for work that has not run yet): read \
             after Graph::launch",
        )?;
        self.check_owner(src.device_id, "dtoh")?;
        if src.len != dst.len() {
            bail!(
                "dtoh: device view has {} elements, host slice {}",
                src.len,
                dst.len()
            );
        }
        if dst.is_empty() {
            return Ok(());
        }
        if let Inner::Emu(d) = &self.inner {
            if d.strict() {
                check_written::<T>(src.addr, src.len, "dtoh")?;
            }
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        match &self.inner {
            Inner::Cuda(d) => d.dtoh(src.addr, bytes),
            // SAFETY: src is a live emu range of bytes.len() bytes; dst is a distinct host slice.
            Inner::Emu(_) => unsafe {
                std::ptr::copy_nonoverlapping(
                    src.addr as *const u8,
                    bytes.as_mut_ptr(),
                    bytes.len(),
                );
                Ok(())
            },
        }
    }

    /// Copy a device range into a new host vector.
    pub fn download<T: Elem>(&self, src: View<'_, T>) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); src.len];
        self.dtoh(src, &mut out)?;
        Ok(out)
    }

    /// Copy device -> device on this device; lengths must match.
    pub fn dtod<T: Elem>(&self, src: View<'_, T>, dst: ViewMut<'_, T>) -> Result<()> {
        self.check_owner(src.device_id, "dtod (source)")?;
        self.check_owner(dst.device_id, "dtod (destination)")?;
        if src.len != dst.len {
            bail!(
                "dtod: source has {} elements, destination {}",
                src.len,
                dst.len
            );
        }
        let bytes = src.len * std::mem::size_of::<T>();
        if bytes == 0 {
            return Ok(());
        }
        match &self.inner {
            Inner::Cuda(d) => d.dtod(src.addr, dst.addr, bytes),
            // SAFETY: both ranges are live; src is shared-borrowed and dst exclusively borrowed,
            // so they cannot overlap.
            Inner::Emu(d) => unsafe {
                d.submit(emu::EmuOp::Dtod {
                    src: src.addr,
                    dst: dst.addr,
                    bytes,
                })
            },
        }
    }

    /// Fill a range with zero bits.
    pub fn zero<T: Elem>(&self, dst: ViewMut<'_, T>) -> Result<()> {
        self.check_owner(dst.device_id, "zero")?;
        let bytes = dst.len * std::mem::size_of::<T>();
        if bytes == 0 {
            return Ok(());
        }
        match &self.inner {
            Inner::Cuda(d) => d.memset_zero(dst.addr, bytes),
            // SAFETY: dst is a live, exclusively borrowed range of `bytes` bytes.
            Inner::Emu(d) => unsafe {
                d.submit(emu::EmuOp::Zero {
                    addr: dst.addr,
                    bytes,
                })
            },
        }
    }

    /// Allow kernel `name` to use up to `bytes` of dynamic shared memory (more than the default
    /// [`MAX_DYN_SMEM`] = 48 KiB). CUDA's `cudaFuncAttributeMaxDynamicSharedMemorySize`: on a GPU
    /// the limit is the device's opt-in maximum (227 KiB on sm_90, 163 KiB on sm_80, 99 KiB on
    /// sm_86/89); the emulated device allows [`MAX_DYN_SMEM_OPTIN`]. Launches of that kernel on
    /// this device (and its clones) are then validated against `bytes`.
    pub fn opt_in_dyn_smem(&self, name: &str, bytes: u32) -> Result<()> {
        if sigs::lookup(name).is_none() {
            bail!("opt_in_dyn_smem: no kernel named {name}");
        }
        match &self.inner {
            Inner::Cuda(d) => d.set_max_dyn_smem(name, bytes)?,
            Inner::Emu(_) => {
                if bytes > MAX_DYN_SMEM_OPTIN {
                    bail!(
                        "opt_in_dyn_smem {name}: {bytes} bytes of dynamic shared memory > \
                         {MAX_DYN_SMEM_OPTIN}, the most any GPU allows"
                    );
                }
            }
        }
        self.smem_optin
            .lock()
            .map_err(|_| anyhow::anyhow!("opt_in_dyn_smem: lock poisoned"))?
            .insert(name.to_string(), bytes.max(MAX_DYN_SMEM));
        Ok(())
    }

    /// Launch kernel `name` (an `extern "C" __global__` function in `kernels/*.cu`).
    ///
    /// Checked on both devices before anything runs: the launch shape (CUDA's limits; dynamic
    /// shared memory up to 48 KiB or the kernel's [`Device::opt_in_dyn_smem`] limit), and the
    /// number, kinds and sizes of `args` against the kernel's source signature ([`sigs`]).
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in order and pointee type, and every pointer
    /// must cover what the kernel reads and writes for this launch shape (the typed wrappers in
    /// `crate::kernels` establish this; pass views sliced to exactly that range, so that strict
    /// mode on the emulated device can check it). Pointers must not be used by the host until the
    /// launch completes (`synchronize`, `dtoh`).
    pub unsafe fn launch(&self, name: &str, cfg: &LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let limit = self
            .smem_optin
            .lock()
            .map_err(|_| anyhow::anyhow!("launch {name}: lock poisoned"))?
            .get(name)
            .copied()
            .unwrap_or(MAX_DYN_SMEM);
        cfg.validate_with_smem_limit(name, limit)?;
        sigs::check_args(name, args)?;
        for (i, a) in args.iter().enumerate() {
            if let KernelArg::Ptr(p) = a {
                if *p != DevPtr::NULL && p.device_id != self.id {
                    bail!("launch {name}: argument {i} points into another device's memory");
                }
            }
        }
        match &self.inner {
            Inner::Cuda(d) => d.launch(name, cfg, args),
            Inner::Emu(d) => d.submit(emu::EmuOp::Launch {
                name: name.to_string(),
                cfg: *cfg,
                args: args.to_vec(),
            }),
        }
    }

    /// Seconds the work `f` queues takes on the device: CUDA events around it on cuda (GPU time,
    /// not host time), the wall clock on emu (which runs synchronously). For benchmarks.
    pub fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.not_capturing(
            "time",
            "timing waits for the timed work; time Graph::launch instead",
        )?;
        match &self.inner {
            Inner::Cuda(d) => d.time_queued(f),
            Inner::Emu(_) => {
                let t = std::time::Instant::now();
                f()?;
                Ok(t.elapsed().as_secs_f64())
            }
        }
    }

    /// Wait for all queued work; surfaces asynchronous kernel errors on cuda.
    pub fn synchronize(&self) -> Result<()> {
        self.not_capturing(
            "synchronize",
            "waiting for the device cannot be captured (nothing runs until Graph::launch)",
        )?;
        match &self.inner {
            Inner::Cuda(d) => d.synchronize(),
            Inner::Emu(_) => Ok(()),
        }
    }

    /// Whether a graph capture ([`Device::capture`]) is under way on this device.
    pub fn capturing(&self) -> bool {
        match &self.inner {
            Inner::Cuda(d) => d.capturing(),
            Inner::Emu(d) => d.capturing(),
        }
    }

    fn not_capturing(&self, what: &str, why: &str) -> Result<()> {
        if self.capturing() {
            bail!("{what} inside Device::capture: {why}");
        }
        Ok(())
    }

    /// Records the device work `f` queues (kernel launches, [`Device::zero`], [`Device::dtod`],
    /// GEMMs) into a [`Graph`] without running it; [`Graph::launch`] replays it, in order, with
    /// the arguments it had at capture (addresses and scalars by value: replay on new data by
    /// writing new values into the same buffers). cuda: stream capture of the device's stream
    /// (`cuStreamBeginCapture`, thread-local mode), instantiated once; the cuBLAS/cuBLASLt
    /// handles and their workspaces are created before the capture starts. emu: every op is
    /// recorded with its arguments and replayed on the emulator.
    ///
    /// Inside `f`, on both devices, allocations, host copies ([`Device::htod`], [`Device::dtoh`]),
    /// [`Device::synchronize`], [`Device::time`] and a nested capture are errors; an error in `f`
    /// (or a panic) ends the capture and discards it, and the error is returned. Arguments are
    /// checked at capture time. The device (and its clones) must not be used from other threads
    /// during a capture: their work would be captured too. A buffer dropped inside `f` is freed
    /// after the capture ends (cuda), but a graph must not be launched once a buffer it uses is
    /// gone.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<graph::Graph> {
        graph::capture(self, f)
    }

    /// `C = alpha * op(A) op(B) + beta * C` with cuBLAS semantics (see [`gemm`]); cuBLAS sgemm
    /// (default math mode: no TF32) on cuda, the CPU GEMM on emu.
    pub fn sgemm(
        &self,
        cfg: &SgemmConfig,
        a: View<'_, f32>,
        b: View<'_, f32>,
        c: ViewMut<'_, f32>,
    ) -> Result<()> {
        self.check_owner(a.device_id, "sgemm A")?;
        self.check_owner(b.device_id, "sgemm B")?;
        self.check_owner(c.device_id, "sgemm C")?;
        cfg.check(a.len, b.len, c.len)?;
        match &self.inner {
            Inner::Cuda(d) => d.sgemm(cfg, a.addr, b.addr, c.addr),
            // SAFETY: check() bounds every access; C is exclusively borrowed so it overlaps
            // neither A nor B; the emu device runs synchronously.
            Inner::Emu(d) => unsafe {
                d.submit(emu::EmuOp::Sgemm {
                    cfg: *cfg,
                    a: a.addr,
                    b: b.addr,
                    c: c.addr,
                })
            },
        }
    }

    /// The GEMM of mixed precision: `D = alpha * op(A) op(B) + beta * C + bias[i]` with cuBLAS
    /// column-major semantics (the same [`SgemmConfig`] as [`Device::sgemm`]), A and B bf16,
    /// C (= D) bf16 or f32 (an [`Act`](crate::precision::Act) type), products and sums in f32,
    /// an optional f32 `bias` of `m` elements added to every column of C (row `i` of C gets
    /// `bias[i]`: in the row-major view of a linear layer, every output row gets the bias) in f32
    /// before the single rounding to C's type. `beta == 0` never reads C.
    ///
    /// cuda: cuBLASLt (`cublasLtMatmul`, `CUBLAS_COMPUTE_32F`, bf16 A/B, bf16 or f32 C/D) with the
    /// bias in the `CUBLASLT_EPILOGUE_BIAS` epilogue (bias data type f32); if cuBLASLt offers no
    /// algorithm for an f32 bias on a bf16 D, the product goes to an f32 temporary and one
    /// `gemm_epilogue_bf16` kernel adds beta*C and the bias and rounds. emu: the inputs widened
    /// exactly, the CPU GEMM into an f32 temporary, the same epilogue on the host
    /// ([`gemm::gemm_bf16_host`]).
    pub fn gemm_bf16<C: crate::precision::Act>(
        &self,
        cfg: &SgemmConfig,
        a: View<'_, half::bf16>,
        b: View<'_, half::bf16>,
        c: ViewMut<'_, C>,
        bias: Option<View<'_, f32>>,
    ) -> Result<()> {
        self.check_owner(a.device_id, "gemm_bf16 A")?;
        self.check_owner(b.device_id, "gemm_bf16 B")?;
        self.check_owner(c.device_id, "gemm_bf16 C")?;
        if let Some(bv) = &bias {
            self.check_owner(bv.device_id, "gemm_bf16 bias")?;
        }
        cfg.check(a.len, b.len, c.len)
            .map_err(|e| anyhow::anyhow!("gemm_bf16: {e:#}"))?;
        gemm::check_bias(cfg, bias.map(|b| b.len))?;
        match &self.inner {
            Inner::Cuda(d) => {
                d.gemm_bf16(cfg, a.addr, b.addr, c.addr, C::DTYPE, bias.map(|b| b.addr))
            }
            // SAFETY: check() bounds every access of A, B, C, check_bias the bias; C is
            // exclusively borrowed so it overlaps neither A, B nor the bias; the emu device runs
            // synchronously.
            Inner::Emu(d) => unsafe {
                d.submit(emu::EmuOp::GemmBf16 {
                    cfg: *cfg,
                    a: a.addr,
                    b: b.addr,
                    c: c.addr,
                    c_type: C::DTYPE,
                    bias: bias.map(|b| b.addr),
                })
            },
        }
    }
}

// The backend keeps devices and buffers in structs shared across threads (rayon, data loaders).
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Device>();
    assert_send_sync::<DeviceBuffer<f32>>();
    assert_send_sync::<View<'static, f32>>();
    assert_send_sync::<ViewMut<'static, f32>>();
};

/// Strict mode on the emulated device: error if part of `[addr, addr + len elements)` was never
/// written since `alloc_uninit` (an output a kernel forgot to write, or scratch read back).
fn check_written<T: Elem>(addr: u64, len: usize, what: &str) -> Result<()> {
    let size = std::mem::size_of::<T>();
    if let Some((first, count, writer)) = emu_ffi::mem::first_unwritten(addr, len * size) {
        let by = if writer.is_empty() {
            "no kernel was launched with it as an output".to_string()
        } else {
            format!("the last kernel launched with it as an output was `{writer}`")
        };
        bail!(
            "{what}: element {} of this {:?} view of {len} elements was never written since \
             alloc_uninit ({} element(s) in all; initcheck, strict mode): {by}",
            first / size,
            T::DTYPE,
            count.div_ceil(size)
        );
    }
    Ok(())
}
