//! Getting model files: where a model comes from (folder, hub id, single file), hub
//! downloads into the standard cache, configs, memory-mapped weights, their hashes, and the
//! original single-file checkpoint layout.

pub mod config;
pub mod hash;
pub mod hub;
pub mod ldm_keys;
pub mod single_file;
pub mod source;
pub mod vae_source;
pub mod weights;

pub use config::read_json;
pub use hash::{sha256_file, sha256_file_cached};
pub(crate) use weights::MappedPages;
pub use weights::{Source, Weights};
