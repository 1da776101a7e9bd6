//! The Stable Diffusion networks, built from each component's `config.json`.

pub mod attention;
pub mod autoencoder;
pub mod clip;
pub mod conv;
pub mod embeddings;
pub(crate) mod layers;
pub mod nn;
pub mod resnet;
pub mod taesd;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod winograd;

pub use taesd::{TinyVae, TinyVaeConfig};
pub use unet::{UNet, UNetConfig};
pub use vae::{Vae, VaeConfig};
