//! FFI to the emulated kernels: `kernels/*.cu` compiled for the host against `kernels/emu` by
//! build.rs (the C ABI of TEAM.md contract 1), and a small wrapper that turns a failed launch into
//! an `anyhow::Error` carrying the emulator's message (kernel, block, thread, source line).
//!
//! Launches are serialised inside the emulator, so these functions may be called from any thread.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

/// Per-launch settings; `None` falls back to the environment (`PEPLER_EMU_WATCHDOG_MS`, default
/// 10000; `PEPLER_EMU_SHUFFLE=<seed>`; `PEPLER_EMU_STRICT=0/1`, default 1). Tests use this instead
/// of mutating the environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuOptions {
    /// Hang timeout per block, in milliseconds.
    pub watchdog_ms: Option<u64>,
    /// `Some(Some(seed))`: shuffle mode with that seed (random block order; one thread runs at a
    /// time and the next is picked at random at every barrier/warp op); `Some(None)`: force it off.
    pub shuffle: Option<Option<u64>>,
    /// Strict mode (docs/emulator.md): memcheck (every access outside the views a launch was given
    /// is an error), initcheck (reads of never-written `alloc_uninit` memory, poisoned static
    /// shared memory), float atomics and misaligned vector accesses are errors. `None`:
    /// `PEPLER_EMU_STRICT` (default on).
    pub strict: Option<bool>,
    /// Allow float `atomicAdd`/`atomicSub` in strict mode (the emulator's own tests of atomics).
    pub allow_float_atomics: bool,
}

impl EmuOptions {
    /// Whether strict mode is on for these options (the field, else `PEPLER_EMU_STRICT`, else on).
    pub fn strict_enabled(&self) -> bool {
        self.strict.unwrap_or_else(strict_from_env)
    }
}

/// `PEPLER_EMU_STRICT`: `0` turns strict mode off; unset or anything else leaves it on.
pub fn strict_from_env() -> bool {
    std::env::var("PEPLER_EMU_STRICT").map_or(true, |v| v.trim() != "0")
}

#[repr(C)]
struct PeplerEmuOptions {
    watchdog_ms: i64,
    shuffle: i32,
    shuffle_seed: u64,
    strict: i32,
    allow_float_atomics: i32,
    arg_ranges: *const u64,
    n_arg_ranges: usize,
}

extern "C" {
    fn pepler_emu_launch_ex(
        kernel_name: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        dynamic_smem_bytes: usize,
        params: *mut *mut c_void,
        opts: *const PeplerEmuOptions,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn pepler_emu_kernel_params(
        kernel_name: *const c_char,
        sizes: *mut usize,
        cap: usize,
    ) -> std::ffi::c_long;
    fn pepler_emu_kernel_count() -> usize;
    fn pepler_emu_memcheck_instrumented() -> c_int;
    fn pepler_emu_mem_register(addr: u64, bytes: usize, redzone: usize, initialized: c_int);
    fn pepler_emu_mem_unregister(addr: u64);
    fn pepler_emu_mem_mark_written(addr: u64, bytes: usize);
    fn pepler_emu_mem_copy_written(src: u64, dst: u64, bytes: usize);
    fn pepler_emu_mem_first_unwritten(
        addr: u64,
        bytes: usize,
        count: *mut usize,
        writer: *mut c_char,
        writer_len: usize,
    ) -> std::ffi::c_longlong;
    fn pepler_emu_kernel_name(i: usize) -> *const c_char;
}

/// Launches kernel `name` on the emulated device and waits for it; settings from the environment.
///
/// # Safety
/// `params` must hold one pointer per kernel parameter, in order, each pointing to a value of
/// exactly that parameter's type (the cuLaunchKernel convention), and every device pointer among
/// those values must be valid host memory for everything the kernel reads and writes.
pub unsafe fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem: usize,
    params: &mut [*mut c_void],
) -> anyhow::Result<()> {
    // SAFETY: forwarded contract of this function.
    unsafe { launch_with(&EmuOptions::default(), name, grid, block, dyn_smem, params) }
}

/// [`launch`] with explicit [`EmuOptions`].
///
/// # Safety
/// As for [`launch`].
pub unsafe fn launch_with(
    opts: &EmuOptions,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem: usize,
    params: &mut [*mut c_void],
) -> anyhow::Result<()> {
    // SAFETY: forwarded contract of this function.
    unsafe { launch_checked(opts, name, grid, block, dyn_smem, params, None) }
}

/// [`launch_with`] plus the entitled range of every pointer parameter for strict mode's memcheck:
/// `ranges[i] = (address, bytes)` of parameter `i` (ignored for non-pointers). Without ranges the
/// pointers are not checked.
///
/// # Safety
/// As for [`launch`].
pub unsafe fn launch_checked(
    opts: &EmuOptions,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    dyn_smem: usize,
    params: &mut [*mut c_void],
    ranges: Option<&[(u64, u64)]>,
) -> anyhow::Result<()> {
    let cname = CString::new(name)
        .map_err(|_| anyhow::anyhow!("kernel name {name:?} contains a NUL byte"))?;
    if let Some(sizes) = kernel_param_sizes(name) {
        if sizes.len() != params.len() {
            anyhow::bail!(
                "emulated launch of `{name}`: the kernel takes {} parameters, {} were given",
                sizes.len(),
                params.len()
            );
        }
    }
    let mut copts = PeplerEmuOptions {
        watchdog_ms: opts
            .watchdog_ms
            .map_or(0, |ms| ms.clamp(1, i64::MAX as u64) as i64),
        shuffle: match opts.shuffle {
            None => -1,
            Some(None) => 0,
            Some(Some(_)) => 1,
        },
        shuffle_seed: opts.shuffle.flatten().unwrap_or(0),
        strict: i32::from(opts.strict_enabled()),
        allow_float_atomics: i32::from(opts.allow_float_atomics),
        arg_ranges: std::ptr::null(),
        n_arg_ranges: 0,
    };
    let flat: Vec<u64> = ranges
        .unwrap_or(&[])
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .collect();
    if let Some(r) = ranges {
        if r.len() != params.len() {
            anyhow::bail!(
                "emulated launch of `{name}`: {} argument ranges for {} parameters",
                r.len(),
                params.len()
            );
        }
        copts.arg_ranges = flat.as_ptr();
        copts.n_arg_ranges = r.len();
    }
    let mut err = vec![0u8; 4096];
    // SAFETY: the strings, the ranges and the error buffer outlive the call and `err.len()` is its
    // size; `params` is valid per this function's contract; the emulator copies nothing it keeps.
    let rc = unsafe {
        pepler_emu_launch_ex(
            cname.as_ptr(),
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            dyn_smem,
            params.as_mut_ptr(),
            &copts,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let msg = CStr::from_bytes_until_nul(&err)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "emulated launch failed (no message)".into());
    Err(anyhow::anyhow!(
        "emulated launch of `{name}` (grid {grid:?}, block {block:?}) failed: {msg}"
    ))
}

/// Names of all kernels compiled into the emulator, in build order.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: plain queries of the static kernel table; names are NUL-terminated static strings.
    unsafe {
        (0..pepler_emu_kernel_count())
            .filter_map(|i| {
                let p = pepler_emu_kernel_name(i);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            })
            .collect()
    }
}

/// The size in bytes of each parameter of kernel `name`, in order (`None`: no such kernel). The
/// same kernel source runs on the GPU, so this also describes the CUDA kernel's parameters.
pub fn kernel_param_sizes(name: &str) -> Option<Vec<usize>> {
    let cname = CString::new(name).ok()?;
    let mut sizes = vec![0usize; 64];
    // SAFETY: `sizes` has room for 64 entries (the emulator's maximum parameter count) and the
    // name is a valid C string for the duration of the call.
    let n = unsafe { pepler_emu_kernel_params(cname.as_ptr(), sizes.as_mut_ptr(), sizes.len()) };
    let n = usize::try_from(n).ok()?;
    sizes.truncate(n);
    Some(sizes)
}

/// Whether the emulated kernels carry strict mode's memcheck/initcheck instrumentation (every
/// normal build; not the ThreadSanitizer/AddressSanitizer builds of `scripts/sanitize.sh`, where
/// the sanitizer checks memory instead). Float atomics, poisoning and `__activemask` work in all.
pub fn memcheck_instrumented() -> bool {
    // SAFETY: a constant query.
    unsafe { pepler_emu_memcheck_instrumented() != 0 }
}

/// Whether the emulator has a kernel called `name`.
pub fn has_kernel(name: &str) -> bool {
    kernel_names().iter().any(|n| n == name)
}

/// Strict mode's registry of emulated device memory (initcheck state per byte, memcheck's notion
/// of "device memory"). Called by `super::emu::HostMem` and the device's copy functions.
pub(crate) mod mem {
    use super::*;

    /// A new allocation owning `redzone` bytes on each side (accesses there are out of bounds);
    /// `initialized`: zero-filled (else every byte starts never-written).
    pub(crate) fn register(addr: u64, bytes: usize, redzone: usize, initialized: bool) {
        // SAFETY: plain bookkeeping call; the emulator only records the numbers.
        unsafe { pepler_emu_mem_register(addr, bytes, redzone, c_int::from(initialized)) }
    }
    pub(crate) fn unregister(addr: u64) {
        // SAFETY: as above.
        unsafe { pepler_emu_mem_unregister(addr) }
    }
    /// The host wrote `[addr, addr + bytes)` (upload, memset).
    pub(crate) fn mark_written(addr: u64, bytes: usize) {
        // SAFETY: as above.
        unsafe { pepler_emu_mem_mark_written(addr, bytes) }
    }
    /// A device-to-device copy: the destination bytes inherit the source's state.
    pub(crate) fn copy_written(src: u64, dst: u64, bytes: usize) {
        // SAFETY: as above.
        unsafe { pepler_emu_mem_copy_written(src, dst, bytes) }
    }
    /// `Some((first byte offset, never-written bytes, last writer kernel))` when part of the range
    /// was never written.
    pub(crate) fn first_unwritten(addr: u64, bytes: usize) -> Option<(usize, usize, String)> {
        let mut count = 0usize;
        let mut writer = vec![0u8; 256];
        // SAFETY: `count` and `writer` are valid for writes of the given sizes.
        let first = unsafe {
            pepler_emu_mem_first_unwritten(
                addr,
                bytes,
                &mut count,
                writer.as_mut_ptr().cast(),
                writer.len(),
            )
        };
        let first = usize::try_from(first).ok()?;
        let writer = CStr::from_bytes_until_nul(&writer)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some((first, count, writer))
    }
}
