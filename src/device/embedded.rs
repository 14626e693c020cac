//! The kernels build.rs embedded: the fatbin nvcc produced from `kernels/*.cu` (when nvcc was found
//! at build time), the compiler version, and the GPU targets it holds.

/// 16-byte aligned bytes, so the driver can read the fatbin header in place.
#[cfg(pepler_fatbin)]
#[repr(C, align(16))]
struct Aligned<B: ?Sized>(B);

#[cfg(pepler_fatbin)]
const FATBIN: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin")));

/// The fatbin with every `extern "C" __global__` kernel of `kernels/*.cu` and `kernels/test/*.cu`
/// (SASS for [`TARGETS`] minus the PTX entry, PTX for `compute_80`), or `None` when the crate was
/// built without nvcc.
#[cfg(pepler_fatbin)]
pub const KERNELS_FATBIN: Option<&[u8]> = Some(&FATBIN.0);
/// The fatbin with every `extern "C" __global__` kernel, or `None`: this build found no nvcc.
#[cfg(not(pepler_fatbin))]
pub const KERNELS_FATBIN: Option<&[u8]> = None;

/// The nvcc release that compiled [`KERNELS_FATBIN`] (e.g. "13.0.88"), `None` without nvcc.
pub const NVCC_VERSION: Option<&str> = option_env!("PEPLER_NVCC_VERSION");

/// The targets build.rs compiles for: SASS for each `sm_*`, PTX for the `compute_*` entry.
pub const TARGETS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90", "compute_80"];

/// What to tell a user whose build has no CUDA kernels.
pub const NO_KERNELS_HELP: &str = "this pepler-cuda was built without nvcc, so it has no CUDA kernels \
(the cpu and emu devices still work). Install the CUDA 13.0 compiler, e.g. from PyPI into a virtual \
environment: `python3 -m venv ~/nvcc && ~/nvcc/bin/pip install nvidia-cuda-nvcc==13.0.88 \
nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85` \
(or a CUDA toolkit), then rebuild with NVCC=<venv>/lib/python3.*/site-packages/nvidia/cu13/bin/nvcc \
(or CUDA_HOME set, or nvcc on PATH).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatbin_and_version_agree() {
        assert_eq!(KERNELS_FATBIN.is_some(), NVCC_VERSION.is_some());
        if let Some(f) = KERNELS_FATBIN {
            // fatbin magic 0xBA55ED50, little-endian
            assert_eq!(&f[..4], &[0x50, 0xed, 0x55, 0xba]);
            assert_eq!(f.as_ptr() as usize % 16, 0);
        }
        assert_eq!(
            env!("PEPLER_FATBIN_TARGETS"),
            TARGETS.join(","),
            "build.rs and embedded.rs disagree on the targets"
        );
    }
}
