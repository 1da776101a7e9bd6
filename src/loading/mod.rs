//! Getting model files off disk: configs and memory-mapped weights.

pub mod config;
pub mod ldm_keys;
pub mod single_file;
pub mod weights;

pub use config::read_json;
pub use weights::{Source, Weights};
