//! The resolved plan: every setting that changes pixels, decided once and typed.
//!
//! A run goes request → [`Settings`] (flags, a `--from` record, environment and config file,
//! merged by [`Settings::or`] in one order of precedence) → [`ModelSpec`] (what the model folder
//! or checkpoint says about itself, read from its small JSON files without loading weights) →
//! a `Record` (one image: the request with every default filled, the sampler, precision,
//! device, memory options and the latent shape). The PNG's `sdgen` record is the serialized plan, so
//! `--from` replays it; batch resume keys and `--merge` derive from the same values.

use crate::device::{DType, DeviceChoice};
use crate::init_image::InputImage;
use crate::loading::read_json;
use crate::models::clip::ClipTextConfig;
use crate::models::conv::ConvAlgo;
use crate::models::unet::UNetConfig;
use crate::models::vae::{VaeConfig, VaeTiling};
use crate::request::{LicenseRecord, Request, SizeConditioning};
use crate::schedulers::{self, SchedulerConfig, SchedulerInfo, SigmaSchedule};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::loading::single_file::Arch;

/// What the model predicts, as `prediction_type` in a scheduler config says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

impl PredictionType {
    pub fn parse(s: &str) -> Result<PredictionType> {
        match s.trim() {
            "epsilon" => Ok(PredictionType::Epsilon),
            "v_prediction" | "v" => Ok(PredictionType::VPrediction),
            "sample" => Ok(PredictionType::Sample),
            other => {
                Err(Error::invalid(format!("unknown prediction type '{other}': use epsilon, v_prediction or sample")))
            }
        }
    }

    /// The name diffusers' configs use.
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        }
    }
}

/// How the model is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`).
    Folder,
    /// One `.safetensors` checkpoint in the original CompVis/A1111 layout.
    SingleFile,
}

/// One weights file that is loaded, and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// `unet`, `vae`, `text_encoder`, or `checkpoint` for a single file.
    pub component: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// What a model says about itself, read without loading its weights.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Where it is on disk.
    pub path: PathBuf,
    pub layout: Layout,
    pub arch: Arch,
    /// The weights files the loaders will read, UNet (or checkpoint) first; their hashes.
    pub files: Vec<ModelFile>,
    /// The scheduler config, with a `--prediction-type` override applied.
    pub scheduler_config: SchedulerConfig,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipTextConfig,
    /// SDXL: the second text encoder (`CLIPTextModelWithProjection`), whose pooled output
    /// conditions the UNet.
    pub text_encoder_2: Option<ClipTextConfig>,
    /// SDXL: with no negative prompt, the unconditional embeddings are zeros instead of the
    /// encoded empty prompt (`force_zeros_for_empty_prompt` in `model_index.json`, default true).
    pub force_zeros_for_empty_prompt: bool,
    pub license: LicenseRecord,
    /// Single files: where configs came from (None: sdgen's built-in ones).
    pub config_dir: Option<PathBuf>,
    /// Single files: the architecture was forced instead of detected.
    pub arch_forced: bool,
    /// sha256 over the UNet's, VAE's and text encoder's config texts: they change pixels too.
    pub config_hash: String,
    /// Single files: the checkpoint, already inspected and with its configs.
    pub(crate) prepared: Option<Box<crate::loading::single_file::Prepared>>,
    /// The autoencoder used instead of the model's own (`--vae`), checked against the model
    /// by [`ModelSpec::set_vae`]. Latent scaling comes from its config, not from `vae`.
    pub vae_swap: Option<crate::loading::vae_source::VaeSwap>,
}

/// The options that decide what [`ModelSpec::inspect`] finds.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions<'a> {
    pub config_dir: Option<&'a Path>,
    pub arch: Option<Arch>,
    pub prediction_type: Option<PredictionType>,
    /// The UNet's dtype: decides between a plain and an fp16 weights file where both exist.
    pub kind: Option<tch::Kind>,
}

impl ModelSpec {
    /// Reads a model folder's or checkpoint's configs and picks its weights files, hashing
    /// them (cached), without loading any tensor.
    pub fn inspect(path: &Path, opts: &ModelOptions<'_>) -> Result<ModelSpec> {
        let kind = opts.kind.unwrap_or(tch::Kind::Float);
        let mut spec = if path.is_file() {
            Self::inspect_single_file(path, opts)?
        } else if path.is_dir() {
            Self::inspect_folder(path, kind)?
        } else {
            return Err(Error::invalid(format!(
                "model {} does not exist; pass --model with a diffusers folder (model_index.json, unet/, vae/, \
                 text_encoder/, tokenizer/, scheduler/) or a .safetensors checkpoint",
                path.display()
            )));
        };
        if let Some(p) = opts.prediction_type {
            spec.scheduler_config.prediction_type = Some(p.name().to_string());
        }
        spec.check_latents()?;
        spec.check_text()?;
        Ok(spec)
    }

    fn inspect_folder(dir: &Path, kind: tch::Kind) -> Result<ModelSpec> {
        const COMPONENTS: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];
        for c in COMPONENTS {
            if !dir.join(c).is_dir() {
                return Err(Error::invalid(format!(
                    "model folder {} has no {c}/ folder; a diffusers Stable Diffusion folder needs {}",
                    dir.display(),
                    COMPONENTS.map(|c| format!("{c}/")).join(", ")
                )));
            }
        }
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        if !scheduler_path.is_file() {
            return Err(Error::invalid(format!("model folder is missing {}", scheduler_path.display())));
        }
        let scheduler_config: SchedulerConfig = read_json(&scheduler_path)?;
        let unet = UNetConfig::from_file(&dir.join("unet").join("config.json"))?;
        let vae = VaeConfig::from_file(&dir.join("vae").join("config.json"))?;
        let text_encoder = ClipTextConfig::load(&dir.join("text_encoder").join("config.json"))?;
        let arch = arch_of(&unet);
        let mut files = vec![
            hashed("unet", crate::models::unet::diffusers_weights_file(&dir.join("unet"))?)?,
            hashed("text_encoder", crate::models::clip::weights_file(&dir.join("text_encoder"), kind)?)?,
            hashed("vae", crate::models::unet::diffusers_weights_file(&dir.join("vae"))?)?,
        ];
        let text_encoder_2 = if arch == Arch::Sdxl {
            for c in ["text_encoder_2", "tokenizer_2"] {
                if !dir.join(c).is_dir() {
                    return Err(Error::invalid(format!(
                        "model folder {} is an SDXL model (its UNet has added text/time conditioning) but has no \
                         {c}/ folder; an SDXL diffusers folder needs text_encoder/, text_encoder_2/, tokenizer/ and \
                         tokenizer_2/",
                        dir.display()
                    )));
                }
            }
            let te2 = dir.join("text_encoder_2");
            files.push(hashed("text_encoder_2", crate::models::clip::weights_file(&te2, kind)?)?);
            Some(ClipTextConfig::load(&te2.join("config.json"))?)
        } else {
            None
        };
        let license = crate::output::license::detect(Some(dir), arch.name());
        let mut texts = Vec::new();
        for rel in CONFIGS.iter().chain(if arch == Arch::Sdxl { &SDXL_CONFIGS[..] } else { &[] }) {
            let path = dir.join(rel);
            texts.push(std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?);
        }
        let force_zeros_for_empty_prompt = force_zeros(&dir.join("model_index.json"))?;
        Ok(ModelSpec {
            config_hash: hash_texts(&texts),
            path: dir.to_path_buf(),
            layout: Layout::Folder,
            arch,
            files,
            scheduler_config,
            unet,
            vae,
            text_encoder,
            text_encoder_2,
            force_zeros_for_empty_prompt,
            license,
            config_dir: None,
            arch_forced: false,
            prepared: None,
            vae_swap: None,
        })
    }

    fn inspect_single_file(path: &Path, opts: &ModelOptions<'_>) -> Result<ModelSpec> {
        use crate::loading::single_file;
        let prepared = single_file::prepare(
            path,
            &single_file::Options {
                arch: opts.arch,
                config_dir: opts.config_dir,
                prediction_type: opts.prediction_type.map(PredictionType::name),
            },
        )?;
        let configs = &prepared.configs;
        let scheduler_config: SchedulerConfig = configs.parse("scheduler/scheduler_config.json")?;
        let unet: UNetConfig = configs.parse("unet/config.json")?;
        let vae: VaeConfig = configs.parse("vae/config.json")?;
        let text_encoder: ClipTextConfig = configs.parse("text_encoder/config.json")?;
        let arch = prepared.file.arch;
        let text_encoder_2: Option<ClipTextConfig> =
            if arch == Arch::Sdxl { Some(configs.parse("text_encoder_2/config.json")?) } else { None };
        let mut license = crate::output::license::detect(opts.config_dir, arch.name());
        if opts.config_dir.is_none() {
            license.source = format!("default for a single-file {arch} checkpoint (the file carries no licence)");
        }
        let extra = if arch == Arch::Sdxl { &SDXL_CONFIGS[..] } else { &[] };
        let texts: Vec<String> =
            CONFIGS.iter().chain(extra).map(|rel| configs.text(rel).unwrap_or_default().to_string()).collect();
        Ok(ModelSpec {
            config_hash: hash_texts(&texts),
            path: path.to_path_buf(),
            layout: Layout::SingleFile,
            arch,
            files: vec![hashed("checkpoint", path.to_path_buf())?],
            scheduler_config,
            unet,
            vae,
            text_encoder,
            text_encoder_2,
            // As diffusers' from_single_file(config=...): the config folder's pipeline setting.
            force_zeros_for_empty_prompt: match opts.config_dir {
                Some(dir) => force_zeros(&dir.join("model_index.json"))?,
                None => true,
            },
            license,
            config_dir: opts.config_dir.map(Path::to_path_buf),
            arch_forced: opts.arch.is_some(),
            prepared: Some(Box::new(prepared)),
            vae_swap: None,
        })
    }

    /// The "Model hash": sha256 of the UNet weights (single files: the whole checkpoint).
    pub fn hash(&self) -> &str {
        &self.files[0].sha256
    }

    /// The image size a request gets when it names none: SDXL models' trained size (the
    /// UNet's `sample_size` times the VAE scale factor: 1024² for SDXL 1.0), else 512².
    pub fn default_size(&self) -> (u32, u32) {
        match (self.arch, self.unet.sample_size()) {
            (Arch::Sdxl, Some((h, w))) => {
                let f = i64::from(self.vae_scale_factor());
                let side = |v: i64| u32::try_from(v.saturating_mul(f)).unwrap_or(1024);
                (side(w), side(h))
            }
            (Arch::Sdxl, None) => (1024, 1024),
            _ => (512, 512),
        }
    }

    /// The text encoders' widths must add up to the UNet's cross-attention width, and the
    /// second encoder's projection must be the pooled width the added conditioning takes.
    fn check_text(&self) -> Result<()> {
        let Some(te2) = &self.text_encoder_2 else { return Ok(()) };
        let wide = self.text_encoder.hidden_size + te2.hidden_size;
        let cross = match &self.unet.cross_attention_dim {
            crate::models::unet::PerLevel::One(d) => vec![*d],
            crate::models::unet::PerLevel::List(ds) => ds.clone(),
        };
        if cross.iter().any(|&d| d != wide) {
            return Err(Error::invalid(format!(
                "{}: the UNet attends to text of width {:?}, but the two text encoders give {} + {} = {wide}; these \
                 components do not belong together",
                self.path.display(),
                self.unet.cross_attention_dim,
                self.text_encoder.hidden_size,
                te2.hidden_size
            )));
        }
        let pooled = self.unet.pooled_text_width();
        if pooled != Some(te2.projection_dim) {
            return Err(Error::invalid(format!(
                "{}: the UNet's added conditioning takes a pooled text embedding of width {}, but the second text \
                 encoder projects to {}; these components do not belong together",
                self.path.display(),
                pooled.map_or("none".to_string(), |p| p.to_string()),
                te2.projection_dim
            )));
        }
        Ok(())
    }

    /// The config of the autoencoder that runs: the swapped one, else the model's own.
    pub fn autoencoder(&self) -> crate::models::autoencoder::AutoencoderConfig {
        match &self.vae_swap {
            Some(s) => s.config.clone(),
            None => crate::models::autoencoder::AutoencoderConfig::Kl(self.vae.clone()),
        }
    }

    /// How many latent channels the VAE makes, which text-to-image noise must have.
    pub fn latent_channels(&self) -> i64 {
        match &self.vae_swap {
            Some(s) => s.config.latent_channels(),
            None => self.vae.latent_channels,
        }
    }

    /// Pixels per latent pixel along each side: 2^(VAE levels - 1), 8 for SD's VAE.
    pub fn vae_scale_factor(&self) -> u32 {
        match &self.vae_swap {
            Some(s) => s.config.scale_factor(),
            None => 1 << self.vae.block_out_channels.len().saturating_sub(1).min(16),
        }
    }

    /// Whether the UNet is an inpainting one: it takes the latents, the mask and the masked
    /// image's latents (9 channels for SD's 4-channel VAE).
    pub fn is_inpainting(&self) -> bool {
        self.unet.in_channels == 2 * self.latent_channels() + 1
    }

    /// Uses `swap` instead of the model's own VAE, after checking that it fits: its latent
    /// channels must be the UNet's, its scale the model's VAE's; an `AutoencoderKL` must
    /// share the model's VAE's `scaling_factor` (another value means another model family,
    /// e.g. SDXL's 0.13025 against SD 1.x's 0.18215); a tiny autoencoder must be TAESDXL for
    /// SDXL and TAESD otherwise, told apart by `xl` in its names (their shapes and configs
    /// are identical).
    pub fn set_vae(&mut self, swap: crate::loading::vae_source::VaeSwap) -> Result<()> {
        use crate::models::autoencoder::AutoencoderConfig;
        let what = format!("--vae {}", swap.source);
        let c = swap.config.latent_channels();
        let unet_in = self.unet.in_channels;
        if unet_in != c && unet_in != 2 * c + 1 {
            return Err(Error::invalid(format!(
                "{what} makes {c}-channel latents, but the UNet of {} takes {unet_in} input channels (its own VAE \
                 makes {}); this VAE belongs to another kind of model",
                self.path.display(),
                self.vae.latent_channels
            )));
        }
        let own = 1u32 << self.vae.block_out_channels.len().saturating_sub(1).min(16);
        if swap.config.scale_factor() != own {
            return Err(Error::invalid(format!(
                "{what} maps one latent to {} pixels, the model's own VAE to {own}; it belongs to another kind of model",
                swap.config.scale_factor()
            )));
        }
        match &swap.config {
            AutoencoderConfig::Kl(cfg) => {
                if (cfg.scaling_factor - self.vae.scaling_factor).abs() > 1e-9 {
                    return Err(Error::invalid(format!(
                        "{what} has scaling_factor {}, but this {} model's own VAE has {}: the VAE was trained \
                         for another model family (0.18215 is SD 1.x/2.x's, 0.13025 SDXL's); pick a VAE made for \
                         this model",
                        cfg.scaling_factor,
                        self.arch.name(),
                        self.vae.scaling_factor
                    )));
                }
            }
            AutoencoderConfig::Tiny(_) => {
                let sdxl = self.arch == Arch::Sdxl;
                if swap.named_xl && !sdxl {
                    return Err(Error::invalid(format!(
                        "{what} is a TAESDXL (its name says xl), made for SDXL; this is an {} model: use TAESD \
                         (madebyollin/taesd) instead",
                        self.arch.name()
                    )));
                }
                if !swap.named_xl && sdxl {
                    return Err(Error::invalid(format!(
                        "{what} is a TAESD for SD 1.x/2.x, and this is an SDXL model: use TAESDXL \
                         (madebyollin/taesdxl). TAESD and TAESDXL have the same shapes, so sdgen tells them apart \
                         by name: if this one is made for SDXL, put xl in its file or folder name"
                    )));
                }
            }
        }
        self.vae_swap = Some(swap);
        Ok(())
    }

    /// An inpainting UNet needs an init image and a mask to run at all.
    pub fn check_start(&self, req: &Request) -> Result<()> {
        if self.is_inpainting() && req.mask.is_none() {
            return Err(Error::invalid(format!(
                "{} is an inpainting model: its UNet takes {} input channels (latents, mask and masked image), so \
                 it needs --init-image and --mask; for text-to-image use the model's ordinary version",
                self.path.display(),
                self.unet.in_channels
            )));
        }
        Ok(())
    }

    /// The UNet's inputs must be the VAE's latent channels, or those plus the mask and the
    /// masked image's latents for an inpainting UNet.
    fn check_latents(&self) -> Result<()> {
        let (unet_in, latent) = (self.unet.in_channels, self.latent_channels());
        if unet_in == latent || self.is_inpainting() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{}: the UNet takes {unet_in} input channels but the VAE makes {latent}-channel latents; these \
             components do not belong together",
            self.path.display()
        )))
    }

    /// The scheduler row and sigma schedule the model's own scheduler config describes, if
    /// sdgen has it; else Euler.
    pub fn default_sampler(&self) -> Sampler {
        sampler_from_config(&self.scheduler_config).unwrap_or_else(|| Sampler {
            info: schedulers::resolve("EulerDiscreteScheduler").map(|(i, _)| i).unwrap_or(&schedulers::all()[0]),
            schedule: SigmaSchedule::Default,
        })
    }

    /// The sampler a request names, or the model's own when it names none (empty string).
    pub fn sampler(&self, name: &str) -> Result<Sampler> {
        if name.trim().is_empty() {
            return Ok(self.default_sampler());
        }
        let (info, schedule) = schedulers::resolve(name)?;
        // An explicit schedule wins; otherwise the config's `use_karras_sigmas` and
        // `use_exponential_sigmas` decide, as they do when the scheduler is built.
        let schedule = match schedule {
            Some(s) if s != SigmaSchedule::Default => s,
            _ => Some(schedulers::configured_schedule(&self.scheduler_config))
                .filter(|s| info.supports(*s))
                .unwrap_or_default(),
        };
        Ok(Sampler { info, schedule })
    }
}

/// The configs besides the scheduler's whose values change pixels.
const CONFIGS: [&str; 3] = ["unet/config.json", "vae/config.json", "text_encoder/config.json"];
/// SDXL's besides those.
const SDXL_CONFIGS: [&str; 1] = ["text_encoder_2/config.json"];

/// `force_zeros_for_empty_prompt` from a folder's `model_index.json`: diffusers' SDXL
/// pipelines default it to true, and so does a folder without the file or the key.
fn force_zeros(path: &Path) -> Result<bool> {
    if !path.is_file() {
        return Ok(true);
    }
    let index: serde_json::Value = read_json(path)?;
    match index.get("force_zeros_for_empty_prompt") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => {
            Err(Error::config(path, format!("field 'force_zeros_for_empty_prompt': {other} is not true or false")))
        }
    }
}

fn hash_texts(texts: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn hashed(component: &str, path: PathBuf) -> Result<ModelFile> {
    let sha256 = crate::loading::sha256_file_cached(&path)?;
    Ok(ModelFile { component: component.to_string(), path, sha256 })
}

/// SDXL UNets have added text/time conditioning; SD 2.x-style ones 1024-wide cross-attention
/// or linear projections.
pub fn arch_of(unet: &UNetConfig) -> Arch {
    if unet.addition_embed_type.as_ref().is_some_and(|v| !v.is_null()) {
        return Arch::Sdxl;
    }
    let wide = match &unet.cross_attention_dim {
        crate::models::unet::PerLevel::One(d) => *d == 1024,
        crate::models::unet::PerLevel::List(ds) => ds.contains(&1024),
    };
    if wide || unet.use_linear_projection {
        Arch::Sd2
    } else {
        Arch::Sd1
    }
}

/// A scheduler-table row with the sigma schedule it runs on.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    pub info: &'static SchedulerInfo,
    pub schedule: SigmaSchedule,
}

impl PartialEq for Sampler {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.info, other.info) && self.schedule == other.schedule
    }
}

impl Sampler {
    /// The name that resolves back to this sampler: A1111's, with a non-default schedule
    /// folded in ("DPM++ 2M Karras").
    pub fn name(&self) -> String {
        self.info.a1111_combined_name(Some(self.schedule))
    }
}

/// Everything a user can set, each unset unless given. Layers combine with [`Settings::or`]:
/// the command line's flags over a `--from` record ([`Settings::over_record`]); the model
/// itself, when unset, comes from `$SDGEN_MODEL` or the config file (`ModelSource::choose`),
/// and what is still unset takes the model's or sdgen's default in
/// [`Settings::resolve_request`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub scheduler: Option<String>,
    pub num_images: Option<usize>,
    pub clip_skip: Option<usize>,
    pub model: Option<String>,
    pub device: Option<DeviceChoice>,
    pub dtype: Option<DType>,
    pub prediction_type: Option<PredictionType>,
    pub config_dir: Option<PathBuf>,
    pub arch: Option<Arch>,
    pub offload: Option<bool>,
    pub vae_tiling: Option<VaeTiling>,
    pub conv: Option<ConvAlgo>,
    pub timestep_spacing: Option<crate::request::TimestepSpacing>,
    pub prompt_syntax: Option<crate::request::PromptSyntax>,
    /// img2img / inpainting: the image to start from, the mask, the strength.
    pub init_image: Option<InputImage>,
    pub mask: Option<InputImage>,
    pub strength: Option<f64>,
    /// SDXL's size and crop conditioning, merged value by value.
    pub size_conditioning: SizeConditioning,
    /// LoRAs as (file or name in `lora_dir`, weight), besides the prompt's `<lora:…>` tags.
    pub loras: Option<Vec<(String, f64)>>,
    /// Where `<lora:NAME>` tags and bare `--lora NAME`s are looked up (`NAME.safetensors`).
    pub lora_dir: Option<PathBuf>,
    /// Textual-inversion embedding files, and a folder of them (`--embedding`, `--embeddings-dir`).
    pub embeddings: Option<Vec<PathBuf>>,
    pub embeddings_dir: Option<PathBuf>,
    /// `--vae`: another autoencoder (a folder, a `.safetensors` file or a hub id).
    pub vae: Option<String>,
    /// The sha256 the VAE had when a record was made: a replay refuses other weights.
    pub vae_sha256: Option<String>,
}

macro_rules! layer {
    ($a:ident, $b:ident, $($f:ident),*) => {
        Settings {
            size_conditioning: $a.size_conditioning.or($b.size_conditioning),
            $($f: $a.$f.or($b.$f)),*
        }
    };
}

impl Settings {
    /// These settings, with `lower`'s filling the gaps.
    pub fn or(self, lower: Settings) -> Settings {
        layer!(
            self,
            lower,
            prompt,
            negative_prompt,
            seed,
            steps,
            guidance,
            width,
            height,
            scheduler,
            num_images,
            clip_skip,
            model,
            device,
            dtype,
            prediction_type,
            config_dir,
            arch,
            offload,
            vae_tiling,
            conv,
            timestep_spacing,
            prompt_syntax,
            init_image,
            mask,
            strength,
            loras,
            lora_dir,
            embeddings,
            embeddings_dir,
            vae,
            vae_sha256
        )
    }

    /// `--from`: these settings (the command line's) over what `record` says. When the flags
    /// name another model, the record's model-specific settings (prediction type, config
    /// folder, forced architecture) stay behind: they belong to the recorded model.
    pub fn over_record(self, record: &Record) -> Settings {
        let mut recorded = Settings::from_record(record);
        if self.model.as_ref().is_some_and(|m| *m != record.model.source) {
            recorded.prediction_type = None;
            recorded.config_dir = None;
            recorded.arch = None;
        }
        // A VAE on the command line is taken as it is now, even under the recorded name.
        if self.vae.is_some() {
            recorded.vae_sha256 = None;
        }
        self.or(recorded)
    }

    /// What a record says, as settings: `--from` puts these under the command line's flags.
    /// The request's seed is the recorded image's own, and one image is made.
    pub fn from_record(r: &Record) -> Settings {
        let req = &r.request;
        Settings {
            prompt: Some(req.prompt.clone()),
            // SDXL tells "no negative prompt" (zeros) from an empty one, so None stays None.
            negative_prompt: req.negative_prompt.clone(),
            seed: Some(req.seed),
            steps: Some(req.steps),
            guidance: Some(req.guidance),
            width: Some(req.width),
            height: Some(req.height),
            scheduler: Some(r.sampler.as_ref().map(|s| s.name.clone()).unwrap_or_else(|| req.scheduler.clone())),
            num_images: Some(1),
            clip_skip: req.clip_skip,
            model: Some(r.model.source.clone()),
            device: r.device.parse().ok(),
            dtype: r.dtype.parse().ok(),
            // Records since the plan name an override only; older ones had no such field, so
            // their scheduler config's value is the best guess of what ran.
            prediction_type: r.prediction_type.or_else(|| {
                r.scheduler_config
                    .get("prediction_type")
                    .and_then(|v| v.as_str())
                    .filter(|_| r.sampler.is_none())
                    .and_then(|s| PredictionType::parse(s).ok())
            }),
            config_dir: r.model.config_dir.clone(),
            arch: if r.model.arch_forced { Some(r.model.architecture) } else { None },
            offload: Some(r.offload),
            vae_tiling: r.vae_tiling,
            conv: Some(r.conv),
            size_conditioning: req.size_conditioning,
            timestep_spacing: req.timestep_spacing,
            prompt_syntax: Some(req.prompt_syntax),
            init_image: req.init_image.clone(),
            mask: req.mask.clone(),
            strength: req.strength,
            loras: if req.loras.is_empty() {
                None
            } else {
                Some(req.loras.iter().map(|l| (l.path.to_string_lossy().into_owned(), l.weight)).collect())
            },
            lora_dir: None,
            // The files that were loaded (a folder's too), each by itself.
            embeddings: (!r.model.embeddings.is_empty())
                .then(|| r.model.embeddings.iter().map(|e| e.file.clone()).collect()),
            embeddings_dir: None,
            vae: r.model.vae.as_ref().map(|v| v.source.clone()),
            vae_sha256: r.model.vae.as_ref().map(|v| v.sha256.clone()),
        }
    }

    /// The request these settings describe for `model`: what is unset takes the model's
    /// default (its own scheduler; SDXL's trained size) or sdgen's (20 steps, guidance 7.5,
    /// 512², one image). `random_seed` is used when no seed was given.
    pub fn resolve_request(&self, model: &ModelSpec, random_seed: u64) -> Result<(Request, Sampler)> {
        let sampler = model.sampler(self.scheduler.as_deref().unwrap_or(""))?;
        let (width, height) = match self.init_size(model.vae_scale_factor()) {
            Some(size) => size,
            None => model.default_size(),
        };
        let sized =
            Settings { width: self.width.or(Some(width)), height: self.height.or(Some(height)), ..self.clone() };
        let mut req = sized.request(sampler.name(), random_seed);
        // `<lora:NAME:WEIGHT>` tags leave the prompt and join the flags' LoRAs.
        let (prompt, tags) = crate::lora::extract_prompt_loras(&req.prompt);
        req.prompt = prompt;
        let named = self.loras.iter().flatten().cloned().chain(tags);
        req.loras = named
            .map(|(name, weight)| crate::lora::resolve(&name, weight, self.lora_dir.as_deref()))
            .collect::<Result<_>>()?;
        Ok((req, sampler))
    }

    /// img2img's default size: the init image's, rounded down to a multiple of `factor` (the
    /// VAE's scale factor) as diffusers does.
    fn init_size(&self, factor: u32) -> Option<(u32, u32)> {
        let img = self.init_image.as_ref()?;
        let f = factor.max(1);
        Some((img.width - img.width % f, img.height - img.height % f))
    }

    /// The request with `scheduler` and sdgen's defaults for what is unset; checks that need
    /// no model run on it before the model is resolved.
    pub fn request(&self, scheduler: String, random_seed: u64) -> Request {
        let d = Request::default();
        let (init_w, init_h) = match self.init_size(8) {
            Some((w, h)) => (Some(w), Some(h)),
            None => (None, None),
        };
        // diffusers' defaults: 0.8 for img2img (sdgen takes A1111's 0.75), 1.0 for inpainting.
        let strength = match (&self.init_image, &self.mask) {
            (None, _) => self.strength,
            (Some(_), None) => Some(self.strength.unwrap_or(0.75)),
            (Some(_), Some(_)) => Some(self.strength.unwrap_or(1.0)),
        };
        Request {
            prompt: self.prompt.clone().unwrap_or_default(),
            negative_prompt: self.negative_prompt.clone(),
            seed: self.seed.unwrap_or(random_seed),
            steps: self.steps.unwrap_or(d.steps),
            guidance: self.guidance.unwrap_or(d.guidance),
            width: self.width.or(init_w).unwrap_or(d.width),
            height: self.height.or(init_h).unwrap_or(d.height),
            scheduler,
            num_images: self.num_images.unwrap_or(1),
            clip_skip: self.clip_skip,
            size_conditioning: self.size_conditioning,
            timestep_spacing: self.timestep_spacing,
            prompt_syntax: self.prompt_syntax.unwrap_or_default(),
            init_image: self.init_image.clone(),
            mask: self.mask.clone(),
            strength,
            loras: Vec::new(),
        }
    }
}

/// The sampler as recorded: the table row's names and the sigma schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerRecord {
    /// The name that resolves to this sampler again ("DPM++ 2M SDE Karras").
    pub name: String,
    /// The diffusers class that implements it.
    pub class: String,
    pub schedule: SigmaSchedule,
}

impl From<Sampler> for SamplerRecord {
    fn from(s: Sampler) -> SamplerRecord {
        SamplerRecord { name: s.name(), class: s.info.diffusers_name.to_string(), schedule: s.schedule }
    }
}

pub use crate::request::Record;

/// A short key for everything about a run, besides the request, that changes pixels: the
/// model's UNet (or checkpoint) weights and all its configs (with overrides), the embeddings
/// (names and hashes; absent from the key when there are none, so older keys stay valid), and
/// the device, dtype, offload, VAE tiling and convolution options as asked for. Batch resume
/// keys include it, so a rerun with another model or precision renders again instead of
/// skipping.
///
/// The device and dtype enter as given (`auto`, `cuda`), not as resolved on this machine, so
/// `batch --merge` on a CPU login node computes the keys that GPU shards wrote.
pub fn run_key(spec: &ModelSpec, opts: &crate::LoadOptions) -> Result<String> {
    use sha2::{Digest, Sha256};
    let device = match opts.device {
        DeviceChoice::Cuda(_) => "cuda".to_string(),
        other => other.to_string(),
    };
    let mut subject = serde_json::json!({
        "weights": spec.hash(),
        "scheduler_config": spec.scheduler_config,
        "configs": spec.config_hash,
        "device": device,
        "dtype": opts.dtype,
        "offload": opts.offload,
        "vae_tiling": opts.vae_tiling,
        "conv": opts.conv,
    });
    let embeddings = crate::embeddings::key_entries(&opts.embeddings, opts.embeddings_dir.as_deref())?;
    if !embeddings.is_empty() {
        subject["embeddings"] = serde_json::json!(embeddings);
    }
    // Absent without --vae, so older keys stay valid.
    if let Some(swap) = &spec.vae_swap {
        subject["vae"] = serde_json::json!(swap.sha256);
    }
    let digest = Sha256::digest(subject.to_string().as_bytes());
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// The scheduler row and sigma schedule a model's `scheduler_config.json` describes (see
/// [`schedulers::from_model_config`]), as a [`Sampler`].
pub fn sampler_from_config(config: &SchedulerConfig) -> Option<Sampler> {
    schedulers::from_model_config(config).map(|(info, schedule)| Sampler { info, schedule })
}
