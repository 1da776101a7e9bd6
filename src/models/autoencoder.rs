//! Either image autoencoder a pipeline can hold: `AutoencoderKL` ([`Vae`]) or
//! `AutoencoderTiny` ([`TinyVae`]), and their configs, behind one interface for decoding,
//! encoding, tiling and the latent scaling.

use crate::loading::Weights;
use crate::models::taesd::{TinyVae, TinyVaeConfig};
use crate::models::vae::{Vae, VaeConfig, VaeTiling};
use crate::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The config of either autoencoder.
#[derive(Debug, Clone)]
pub enum AutoencoderConfig {
    Kl(VaeConfig),
    Tiny(TinyVaeConfig),
}

impl AutoencoderConfig {
    /// diffusers' class name (`_class_name`).
    pub fn class_name(&self) -> &'static str {
        match self {
            AutoencoderConfig::Kl(_) => "AutoencoderKL",
            AutoencoderConfig::Tiny(_) => "AutoencoderTiny",
        }
    }

    pub fn latent_channels(&self) -> i64 {
        match self {
            AutoencoderConfig::Kl(c) => c.latent_channels,
            AutoencoderConfig::Tiny(c) => c.latent_channels,
        }
    }

    pub fn scaling_factor(&self) -> f64 {
        match self {
            AutoencoderConfig::Kl(c) => c.scaling_factor,
            AutoencoderConfig::Tiny(c) => c.scaling_factor,
        }
    }

    /// Pixels per latent along each side: `2^(levels - 1)`, as diffusers' pipelines compute it.
    pub fn scale_factor(&self) -> u32 {
        let levels = match self {
            AutoencoderConfig::Kl(c) => c.block_out_channels.len(),
            AutoencoderConfig::Tiny(c) => c.decoder_block_out_channels.len(),
        };
        1 << levels.saturating_sub(1).min(16)
    }

    /// Whether SDXL pipelines run it in fp32 when the model is fp16 (diffusers' rule; always
    /// false for the tiny autoencoder, whose class overrides the config).
    pub fn force_upcast(&self) -> bool {
        match self {
            AutoencoderConfig::Kl(c) => c.force_upcast,
            AutoencoderConfig::Tiny(_) => false,
        }
    }

    /// The file the config came from, for messages.
    pub fn path(&self) -> &Path {
        match self {
            AutoencoderConfig::Kl(c) => &c.path,
            AutoencoderConfig::Tiny(c) => &c.path,
        }
    }
}

/// A loaded autoencoder (boxed: the two differ much in size, and a pipeline holds one).
#[derive(Debug)]
pub enum Autoencoder {
    Kl(Box<Vae>),
    Tiny(Box<TinyVae>),
}

impl Autoencoder {
    /// Builds the autoencoder `config` describes from weights with diffusers' names.
    pub fn new(w: &Weights, config: &AutoencoderConfig) -> Result<Autoencoder> {
        Ok(match config {
            AutoencoderConfig::Kl(c) => Autoencoder::Kl(Box::new(Vae::new(w, c)?)),
            AutoencoderConfig::Tiny(c) => Autoencoder::Tiny(Box::new(TinyVae::new(w, c)?)),
        })
    }

    pub fn config(&self) -> AutoencoderConfig {
        match self {
            Autoencoder::Kl(v) => AutoencoderConfig::Kl(v.config.clone()),
            Autoencoder::Tiny(v) => AutoencoderConfig::Tiny(v.config.clone()),
        }
    }

    pub fn scaling_factor(&self) -> f64 {
        match self {
            Autoencoder::Kl(v) => v.config.scaling_factor,
            Autoencoder::Tiny(v) => v.config.scaling_factor,
        }
    }

    pub fn force_upcast(&self) -> bool {
        match self {
            Autoencoder::Kl(v) => v.config.force_upcast,
            Autoencoder::Tiny(_) => false,
        }
    }

    /// Per-channel `latents_mean`/`latents_std` (SDXL pipelines only; KL configs only).
    pub fn latents_mean_std(&self) -> Option<(&[f64], &[f64], &Path)> {
        match self {
            Autoencoder::Kl(v) => match (&v.config.latents_mean, &v.config.latents_std) {
                (Some(m), Some(s)) => Some((m, s, &v.config.path)),
                _ => None,
            },
            Autoencoder::Tiny(_) => None,
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Autoencoder::Kl(v) => v.device(),
            Autoencoder::Tiny(v) => v.device(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Autoencoder::Kl(v) => v.kind(),
            Autoencoder::Tiny(v) => v.kind(),
        }
    }

    /// The image for `z` (already divided by the scaling factor), about [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Tensor {
        match self {
            Autoencoder::Kl(v) => v.decode(z),
            Autoencoder::Tiny(v) => v.decode(z),
        }
    }

    /// [`Vae::decode_tiled`]. The tiny autoencoder decodes whole: it needs little memory
    /// (no attention, 64 channels), and tiles would change its pixels for nothing.
    pub fn decode_tiled(&self, z: &Tensor, tiling: VaeTiling) -> Result<Tensor> {
        match self {
            Autoencoder::Kl(v) => v.decode_tiled(z, tiling),
            Autoencoder::Tiny(v) => Ok(v.decode(z)),
        }
    }

    /// Whether the autoencoder can encode images (a decoder-only TAESD file cannot).
    pub fn can_encode(&self) -> bool {
        match self {
            Autoencoder::Kl(_) => true,
            Autoencoder::Tiny(v) => v.has_encoder(),
        }
    }
}
