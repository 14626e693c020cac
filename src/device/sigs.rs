//! Kernel signatures, read by build.rs from the kernel sources: every `extern "C" __global__`
//! kernel's parameters (name and C type as written). [`check_args`] compares a launch's
//! [`KernelArg`]s with them on BOTH devices before anything runs: the number of arguments, and
//! per argument its kind (pointer or by-value scalar, float or integer) and size in bytes. A
//! mismatch on a GPU would read garbage parameters or fault; here it is an error naming the kernel
//! and the parameter.

use anyhow::{bail, Result};

use super::KernelArg;

/// What a kernel parameter is, as far as the argument check is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `T*` with a non-const pointee (the kernel may write through it).
    Ptr,
    /// `const T*` (read-only).
    ConstPtr,
    /// `float`.
    F32,
    /// `double`.
    F64,
    /// An integer (signed or unsigned) of [`ParamSig::size`] bytes.
    Int,
    /// Anything else (a struct by value): its size comes from the C++ compiler (the emulator's
    /// kernel table).
    Other,
}

/// One kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSig {
    pub name: &'static str,
    /// The C type as written, normalised (`const float*`, `int`).
    pub ty: &'static str,
    pub kind: ParamKind,
    /// Size in bytes (0 for [`ParamKind::Other`]).
    pub size: usize,
}

/// One kernel: name, source file and parameters in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSig {
    pub name: &'static str,
    pub file: &'static str,
    pub params: &'static [ParamSig],
}

include!(concat!(env!("OUT_DIR"), "/kernel_sigs.rs"));

/// Every kernel of `kernels/*.cu` and `kernels/test/*.cu`.
pub fn all() -> &'static [KernelSig] {
    KERNEL_SIGS
}

/// The signature of kernel `name`, if there is such a kernel.
pub fn lookup(name: &str) -> Option<&'static KernelSig> {
    KERNEL_SIGS.iter().find(|k| k.name == name)
}

fn arg_desc(a: &KernelArg) -> (&'static str, usize) {
    match a {
        KernelArg::Ptr(_) => ("a pointer", 8),
        KernelArg::I32(_) => ("an i32", 4),
        KernelArg::U32(_) => ("a u32", 4),
        KernelArg::I64(_) => ("an i64", 8),
        KernelArg::U64(_) => ("a u64", 8),
        KernelArg::F32(_) => ("an f32", 4),
    }
}

/// Error unless `args` match kernel `name`'s parameters in number, kind and size. Signedness of
/// integers is not checked (a `u32` may feed an `int`), everything that changes the bytes the
/// kernel reads is.
pub fn check_args(name: &str, args: &[KernelArg]) -> Result<()> {
    let Some(sig) = lookup(name) else {
        bail!("launch {name}: no kernel of that name in kernels/*.cu (an `extern \"C\" __global__` function)");
    };
    if sig.params.len() != args.len() {
        bail!(
            "launch {name}: the kernel ({}) takes {} parameters, {} arguments were given",
            sig.file,
            sig.params.len(),
            args.len()
        );
    }
    for (i, (p, a)) in sig.params.iter().zip(args).enumerate() {
        let (what, size) = arg_desc(a);
        let kind_ok = match p.kind {
            ParamKind::Ptr | ParamKind::ConstPtr => matches!(a, KernelArg::Ptr(_)),
            ParamKind::F32 => matches!(a, KernelArg::F32(_)),
            ParamKind::F64 => false,
            ParamKind::Int => matches!(
                a,
                KernelArg::I32(_) | KernelArg::U32(_) | KernelArg::I64(_) | KernelArg::U64(_)
            ),
            ParamKind::Other => !matches!(a, KernelArg::Ptr(_)),
        };
        let psize = if p.kind == ParamKind::Other {
            other_param_size(name, i)
        } else {
            Some(p.size)
        };
        let size_ok = psize.is_none_or(|s| s == size);
        if !kind_ok || !size_ok {
            bail!(
                "launch {name}: parameter {i} `{}` is `{}` ({} bytes) but {what} ({size} bytes) was passed",
                p.name,
                p.ty,
                psize.map_or("?".to_string(), |s| s.to_string())
            );
        }
    }
    Ok(())
}

/// The C++ compiler's size of a by-value struct parameter (the emulator's table is built from the
/// same source the fatbin is).
fn other_param_size(name: &str, i: usize) -> Option<usize> {
    super::emu_ffi::kernel_param_sizes(name).and_then(|v| v.get(i).copied())
}
