//! The kernels build.rs embedded (fatbin from nvcc, when one was found).
