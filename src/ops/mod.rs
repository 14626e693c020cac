//! See the module map in lib.rs.
pub mod adamw;
pub mod attention;
pub mod crossentropy;
pub mod dropout;
pub mod embedding;
pub mod gather;
pub mod gelu;
pub mod global_norm;
pub mod layernorm;
pub mod matmul;
pub mod rating;
pub mod residual;
pub mod shape;
pub mod softmax;
