//! The Stable Diffusion networks, built from each component's `config.json`.

pub mod clip;
pub mod nn;
