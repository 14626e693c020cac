//! GPT-2 + PEPLER written once against a `Backend`: config, parameters, HF safetensors I/O,
//! forward/backward. One `pub mod` line per file; add yours below.

pub mod acts;
pub mod batch;
pub mod block;
pub mod config;
pub mod decode;
pub mod heads;
pub mod params;
pub mod pepler;
pub mod safetensors_io;
pub mod sizes;
pub mod step;
