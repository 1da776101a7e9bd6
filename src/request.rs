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
    /// How the prompts are read: A1111's syntax (emphasis, `BREAK`, editing, any length) or
    /// literally, as diffusers does (cut at 77 tokens). Records made before the field
    /// existed were plain.
    #[serde(default = "PromptSyntax::plain", skip_serializing_if = "PromptSyntax::is_plain")]
    pub prompt_syntax: PromptSyntax,
    /// Overrides the scheduler config's `timestep_spacing` (`trailing` for few-step models
    /// such as SDXL-Turbo and Lightning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<TimestepSpacing>,
    /// SDXL's size and crop conditioning; unset values take diffusers' defaults.
    #[serde(default, skip_serializing_if = "SizeConditioning::is_unset")]
    pub size_conditioning: SizeConditioning,
    /// img2img and inpainting: the image to start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<crate::init_image::InputImage>,
    /// Inpainting: white = repaint, black = keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<crate::init_image::InputImage>,
    /// How much of the schedule runs from the init image, in (0, 1] (diffusers' `strength`);
    /// set whenever there is an init image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// LoRAs applied to the model for this request, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRecord>,
}

fn one() -> usize {
    1
}

/// How prompt text is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptSyntax {
    /// AUTOMATIC1111's: `(x)`, `[x]`, `(x:1.5)`, escapes, `BREAK`, `[from:to:when]`,
    /// `[a|b]`, prompts longer than 75 tokens in chunks. A prompt without any of it and
    /// at most 75 tokens encodes exactly as `Plain`.
    #[default]
    A1111,
    /// Literal text cut at 77 tokens, as diffusers reads it.
    Plain,
}

impl PromptSyntax {
    pub fn plain() -> PromptSyntax {
        PromptSyntax::Plain
    }

    pub fn is_plain(&self) -> bool {
        *self == PromptSyntax::Plain
    }

    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Plain => "plain",
        }
    }
}

impl std::str::FromStr for PromptSyntax {
    type Err = String;

    fn from_str(s: &str) -> Result<PromptSyntax, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "a1111" | "auto1111" | "automatic1111" | "webui" => Ok(PromptSyntax::A1111),
            "plain" | "diffusers" => Ok(PromptSyntax::Plain),
            _ => Err(format!("unknown prompt syntax '{s}': use a1111 or plain")),
        }
    }
}

/// How the inference steps are spread over the training timesteps (diffusers'
/// `timestep_spacing`).
/// A LoRA as a request names it and a record keeps it: the name A1111 shows (the file's stem),
/// the weight, the file's sha256 and where it was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraRecord {
    pub name: String,
    pub weight: f64,
    pub sha256: String,
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing {
    /// Evenly from 0, every `1000 / steps`, plus `steps_offset` (SD 1.x/2.x/XL's configs).
    Leading,
    /// Evenly from 0 to 999 inclusive.
    Linspace,
    /// Evenly back from 999: the last step ends at the noise-free end; what few-step
    /// distilled models (Turbo, Lightning) need.
    Trailing,
}

impl TimestepSpacing {
    pub fn name(self) -> &'static str {
        match self {
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Linspace => "linspace",
            TimestepSpacing::Trailing => "trailing",
        }
    }
}

impl std::str::FromStr for TimestepSpacing {
    type Err = String;

    fn from_str(s: &str) -> Result<TimestepSpacing, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "leading" => Ok(TimestepSpacing::Leading),
            "linspace" => Ok(TimestepSpacing::Linspace),
            "trailing" => Ok(TimestepSpacing::Trailing),
            _ => Err(format!("unknown timestep spacing '{s}': use leading, linspace or trailing")),
        }
    }
}

/// A width and a height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl std::str::FromStr for Size {
    type Err = String;

    /// `WIDTHxHEIGHT`, e.g. `1024x768`.
    fn from_str(s: &str) -> Result<Size, String> {
        let (w, h) = s
            .trim()
            .split_once(['x', 'X', '×'])
            .ok_or_else(|| format!("'{s}' is not a size: write WIDTHxHEIGHT, e.g. 1024x768"))?;
        let num = |v: &str, what: &str| {
            v.trim().parse::<u32>().map_err(|_| format!("'{s}': the {what} '{v}' is not a whole number of pixels"))
        };
        Ok(Size { width: num(w, "width")?, height: num(h, "height")? })
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// The top-left corner of a crop, in pixels from the top and from the left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crop {
    pub top: u32,
    pub left: u32,
}

impl std::str::FromStr for Crop {
    type Err = String;

    /// `TOP,LEFT`, e.g. `0,0` (diffusers' `crops_coords_top_left` order).
    fn from_str(s: &str) -> Result<Crop, String> {
        let (t, l) =
            s.trim().split_once(',').ok_or_else(|| format!("'{s}' is not a crop corner: write TOP,LEFT, e.g. 0,0"))?;
        let num = |v: &str, what: &str| {
            v.trim().parse::<u32>().map_err(|_| format!("'{s}': {what} '{v}' is not a whole number of pixels"))
        };
        Ok(Crop { top: num(t, "top")?, left: num(l, "left")? })
    }
}

impl std::fmt::Display for Crop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.top, self.left)
    }
}

/// SDXL's micro-conditioning: the size the training image had, where it was cropped, and
/// the size asked for, each fed to the UNet as numbers ("time ids"). As in diffusers,
/// `original_size` and `target_size` default to the image size and `crop_coords` to (0, 0).
/// The negative values condition the unconditional pass; a negative value not given is the
/// positive one (the crop: (0, 0)), so giving none changes nothing. Models without added
/// conditioning (SD 1.x/2.x) refuse these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeConditioning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_coords: Option<Crop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_original_size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_crop_coords: Option<Crop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_target_size: Option<Size>,
}

impl SizeConditioning {
    pub fn is_unset(&self) -> bool {
        *self == SizeConditioning::default()
    }

    /// These values, with `lower`'s where these are unset.
    pub fn or(self, lower: SizeConditioning) -> SizeConditioning {
        SizeConditioning {
            original_size: self.original_size.or(lower.original_size),
            crop_coords: self.crop_coords.or(lower.crop_coords),
            target_size: self.target_size.or(lower.target_size),
            negative_original_size: self.negative_original_size.or(lower.negative_original_size),
            negative_crop_coords: self.negative_crop_coords.or(lower.negative_crop_coords),
            negative_target_size: self.negative_target_size.or(lower.negative_target_size),
        }
    }

    fn negative_given(&self) -> bool {
        self.negative_original_size.is_some()
            || self.negative_crop_coords.is_some()
            || self.negative_target_size.is_some()
    }

    /// The six ids of the conditional pass for an image of `width`×`height`, in diffusers'
    /// order: original (height, width), crop (top, left), target (height, width).
    pub fn time_ids(&self, width: u32, height: u32) -> [u32; 6] {
        let image = Size { width, height };
        let o = self.original_size.unwrap_or(image);
        let c = self.crop_coords.unwrap_or(Crop { top: 0, left: 0 });
        let t = self.target_size.unwrap_or(image);
        [o.height, o.width, c.top, c.left, t.height, t.width]
    }

    /// The ids of the unconditional pass: the conditional ones unless a negative value is given.
    pub fn negative_time_ids(&self, width: u32, height: u32) -> [u32; 6] {
        if !self.negative_given() {
            return self.time_ids(width, height);
        }
        let image = Size { width, height };
        let o = self.negative_original_size.or(self.original_size).unwrap_or(image);
        let c = self.negative_crop_coords.unwrap_or(Crop { top: 0, left: 0 });
        let t = self.negative_target_size.or(self.target_size).unwrap_or(image);
        [o.height, o.width, c.top, c.left, t.height, t.width]
    }
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
            prompt_syntax: PromptSyntax::default(),
            timestep_spacing: None,
            size_conditioning: SizeConditioning::default(),
            init_image: None,
            mask: None,
            strength: None,
            loras: Vec::new(),
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
    /// Textual-inversion embeddings loaded into the text encoders, in loading order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<crate::embeddings::EmbeddingRecord>,
    /// The autoencoder used instead of the model's own (`--vae`); absent: the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<VaeRecord>,
}

/// A swapped autoencoder (`--vae`), as records keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaeRecord {
    /// The path or hub id it was loaded from.
    pub source: String,
    /// A short display name (A1111's `VAE:`).
    pub name: String,
    /// Full sha256 hex of its weights file (A1111's `VAE hash:` is the first 10 digits).
    pub sha256: String,
    /// diffusers' class: `AutoencoderKL` or `AutoencoderTiny`.
    pub class: String,
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
