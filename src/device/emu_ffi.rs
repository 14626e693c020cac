//! FFI to the emulated kernels compiled for the host (kernels/emu).
