//! The device layer: one interface over the CUDA device (cudarc) and the emulated device.

pub mod embedded;
pub mod emu_ffi;
