//! Getting model files: where they come from (folder, file or hub), configs, memory-mapped
//! weights and their hashes.

pub mod config;
pub mod hash;
pub mod hub;
pub mod source;
pub mod weights;

pub use config::read_json;
pub use hash::{sha256_file, sha256_file_cached};
pub use weights::{Source, Weights};
