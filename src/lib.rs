//! sdgen: Stable Diffusion text-to-image on libtorch, proven equal to Hugging Face diffusers.
//!
//! The library holds everything; the `sdgen` binary is a thin command line on top of it.

pub mod batch;
pub mod bench;
pub mod cuda;
pub mod device;
pub mod embeddings;
pub mod error;
pub mod finite;
pub mod import;
pub mod info;
pub mod init_image;
pub mod limits;
pub mod loading;
pub mod lora;
pub mod mkl;
pub mod models;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod preflight;
pub mod preview;
pub mod prompt;
pub mod request;
pub mod save;
pub mod schedulers;
pub mod serve;
pub mod tokenizer;

pub use error::{Error, ErrorKind, Result};
pub use pipeline::{Generated, LoadOptions, Pipeline};
pub use request::{Image, Record, Request};

/// The crate version, as recorded in image metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
