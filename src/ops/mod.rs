//! See the module map in lib.rs.
pub mod gelu;
pub mod layernorm;
pub mod residual;
pub mod softmax;
