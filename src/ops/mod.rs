//! See the module map in lib.rs.
pub mod gelu;
pub mod layernorm;
pub mod residual;
pub mod softmax;
pub mod attention;
pub mod crossentropy;
pub mod dropout;
pub mod embedding;
pub mod matmul;
pub mod rating;
pub mod adamw;
