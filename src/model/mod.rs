//! GPT-2 + PEPLER written once against a `Backend`: config, parameters, HF safetensors I/O,
//! forward/backward. One `pub mod` line per file; add yours below.

pub mod batch;
pub mod config;
pub mod decode;
pub mod params;
pub mod pepler;
pub mod safetensors_io;
pub mod sizes;
