//! What to generate ([`Request`]), what came out ([`Image`]), and how it was made ([`Record`]).
//!
//! These are plain data with no tch types, so the output and batch code can use them
//! without knowing about libtorch.

use crate::plan::Arch;
use serde::{Deserialize, Serialize};

/// One text-to-image job. `num_images` images are made, image `i` from seed `seed + i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f64,
    pub width: u32,
    pub height: u32,
    /// A scheduler name from the scheduler table (diffusers class or A1111 display name).
    pub scheduler: String,
    #[serde(default = "one")]
    pub num_images: usize,
    /// Use the output of the `clip_skip`-th layer from the end (1 = the last layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<usize>,
}

fn one() -> usize {
    1
}

impl Default for Request {
    fn default() -> Self {
        Request {
            prompt: String::new(),
            negative_prompt: None,
            seed: 0,
            steps: 20,
            guidance: 7.5,
            width: 512,
            height: 512,
            scheduler: "euler".into(),
            num_images: 1,
            clip_skip: None,
        }
    }
}

impl Request {
    /// The seed of image `i` of this request.
    pub fn image_seed(&self, i: usize) -> u64 {
        self.seed.wrapping_add(i as u64)
    }
}

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Where a model's licence was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseRecord {
    /// e.g. `CreativeML OpenRAIL-M`.
    pub name: String,
    pub url: String,
    /// How it was determined: `model card`, `LICENSE file`, `default for SD 1.x architecture`...
    pub source: String,
}

/// The model an image was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The path or hub id it was loaded from.
    pub source: String,
    /// A short display name.
    pub name: String,
    /// Full sha256 hex of the UNet weights (single-file checkpoints: the whole file).
    pub hash: Option<String>,
    pub architecture: Arch,
    pub license: LicenseRecord,
    /// Every weights file that was loaded, with its sha256 (UNet or checkpoint first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::plan::ModelFile>,
    /// Single files: the folder the configs came from (`--config-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_dir: Option<std::path::PathBuf>,
    /// Single files: `architecture` was forced (`--arch`) rather than detected.
    #[serde(default, skip_serializing_if = "is_false")]
    pub arch_forced: bool,
}

/// Everything needed to make an image again, bit for bit on the same device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub sdgen_version: String,
    /// The request for this one image: `seed` is the image's own seed and `num_images` is 1.
    pub request: Request,
    pub model: ModelRecord,
    /// The sampler as run: table row and sigma schedule (absent in records before 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<crate::plan::SamplerRecord>,
    /// The scheduler config as used, with class-specific defaults filled in.
    pub scheduler_config: serde_json::Value,
    /// `prediction_type` as run (also in `scheduler_config`); set when it was overridden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_type: Option<crate::plan::PredictionType>,
    /// The initial latents' shape `[channels, height, width]`: the UNet's input channels and
    /// the image size over the VAE's scale factor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latent_shape: Vec<i64>,
    pub device: String,
    /// The UNet's dtype.
    pub dtype: String,
    /// `--offload`: the text encoder and the VAE ran on the CPU (in fp32 when the UNet ran
    /// on a GPU), which changes the numbers, so regenerating needs it too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub offload: bool,
    /// `--cpu-conv` when not `auto`: another convolution algorithm rounds differently.
    #[serde(default, skip_serializing_if = "crate::models::conv::ConvAlgo::is_auto")]
    pub conv: crate::models::conv::ConvAlgo,
    /// `--vae-tiling`: tiled decoding blends tiles, which changes pixels of large images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_tiling: Option<crate::models::vae::VaeTiling>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
