//! Command-line definitions (clap derive). Parsing only; the work is in the library.

pub mod batch;
pub mod bench;
pub mod generate;
pub mod info;
pub mod license;
pub mod progress;
pub mod schedulers;
pub mod serve;
pub mod show;

use clap::{Args, Parser, Subcommand};
use sdgen::plan::{PredictionType, Settings};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sdgen",
    version,
    about = "Stable Diffusion text-to-image on libtorch, equal to Hugging Face diffusers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate images from a text prompt.
    Generate(generate::GenerateArgs),
    /// Generate images for every line of a prompt file (txt, jsonl, csv); resumable, shardable.
    Batch(batch::BatchArgs),
    /// Print the record stored in a PNG that sdgen wrote.
    Show(show::ShowArgs),
    /// Print the model licence's use restrictions and what recipients must be told.
    License(license::LicenseArgs),
    /// List the schedulers (samplers) with their A1111 and diffusers names.
    Schedulers,
    /// Print the sdgen and libtorch versions, CUDA devices and CPU threads.
    Info(info::InfoArgs),
    /// Time one generation: load, first step, steps/s, VAE decode, peak memory.
    Bench(bench::BenchArgs),
    /// Serve the A1111 and OpenAI image APIs and a web page, keeping the model loaded.
    Serve(serve::ServeArgs),
}

/// Which model, on which device, in which precision.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A diffusers folder, a single .safetensors checkpoint, or a Hugging Face hub id
    /// (owner/name[@revision]). Default: $SDGEN_MODEL, then "model" in
    /// ~/.config/sdgen/config.json, then stable-diffusion-v1-5/stable-diffusion-v1-5.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// auto (CUDA when available), cpu, cuda or cuda:N [default: auto].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16 [default: auto].
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// epsilon or v_prediction, overriding the model's scheduler config. Single files default
    /// to epsilon for SD 1.x and v_prediction for SD 2.x (pass epsilon for 2.x-base).
    #[arg(long, value_name = "TYPE")]
    pub prediction_type: Option<String>,
    /// Single-file checkpoints: read configs and tokenizer from this diffusers folder instead
    /// of the built-in SD 1.x / 2.x / SDXL ones.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Single-file checkpoints: sd1, sd2 or sdxl, instead of detecting it from tensor shapes.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

/// Ways to use less GPU memory.
#[derive(Args, Debug, Clone, Default)]
pub struct MemoryArgs {
    /// Keep the text encoder and the VAE on the CPU and run them there (in fp32), so GPU
    /// memory holds only the UNet; slower decoding. No effect on a CPU-only run.
    #[arg(long)]
    pub offload: bool,
    /// Decode the image in overlapping 512-pixel tiles blended together, for large images
    /// whose VAE decode would not fit in memory.
    #[arg(long)]
    pub vae_tiling: bool,
    /// How the UNet's convolutions run on the CPU in fp32: auto (Winograd for wide layers,
    /// fastest; its weights take about 1.5 GB more for SD 1.5), direct (libtorch's
    /// convolution, least memory) or winograd (every 3x3 layer) [default: auto].
    #[arg(long, value_name = "ALGO")]
    pub cpu_conv: Option<String>,
}

impl ModelArgs {
    /// The model-level settings these flags give (unset where a flag is absent).
    pub fn settings(&self) -> sdgen::Result<Settings> {
        Ok(Settings {
            model: self.model.clone(),
            device: self.device.as_deref().map(str::parse).transpose()?,
            dtype: self.dtype.as_deref().map(str::parse).transpose()?,
            prediction_type: self.prediction_type.as_deref().map(PredictionType::parse).transpose()?,
            config_dir: self.config_dir.clone(),
            arch: self.arch.as_deref().map(sdgen::plan::Arch::parse).transpose()?,
            offload: self.memory.offload.then_some(true),
            vae_tiling: self.memory.vae_tiling.then(sdgen::models::vae::VaeTiling::default),
            conv: self.memory.cpu_conv.as_deref().map(sdgen::models::conv::ConvAlgo::parse).transpose()?,
            ..Settings::default()
        })
    }
}

/// Resolves the model in `settings` (or its defaults: `$SDGEN_MODEL`, the config file, the
/// built-in default) to something on disk, downloading a hub model into the Hugging Face cache
/// when needed, and returns the library's load options.
pub fn load_options(settings: &Settings, quiet: bool) -> anyhow::Result<sdgen::LoadOptions> {
    use sdgen::loading::source::{ModelSource, Origin};
    let choice = ModelSource::choose(settings.model.as_deref())?;
    if !matches!(choice.origin, Origin::Flag) && !quiet {
        eprintln!("model: {} (from {})", choice.source, choice.origin);
    }
    let dtype = settings.dtype.unwrap_or_default();
    let device = settings.device.unwrap_or_default();
    // Whether the run will be in fp16 decides which hub weights to fetch; resolving the
    // device here only reads CUDA availability.
    let fp16 = device.resolve().map(|d| dtype.resolve(d) == tch::Kind::Half).unwrap_or(false);
    let path = choice.source.materialize(fp16, &mut progress::DownloadBar::new(quiet))?;
    // Hub models are recorded as repo@commit (the snapshot folder's name), so --from
    // finds exactly these weights again.
    let label = match &choice.source {
        ModelSource::Hub { repo, .. } => {
            let commit = path
                .ancestors()
                .find(|p| p.parent().and_then(|q| q.file_name()).is_some_and(|n| n == "snapshots"))
                .and_then(|p| p.file_name())
                .map(|c| c.to_string_lossy().into_owned());
            Some(match commit {
                Some(c) => format!("{repo}@{c}"),
                None => choice.source.to_string(),
            })
        }
        _ => None,
    };
    Ok(sdgen::LoadOptions {
        model: path,
        device,
        dtype,
        source_label: label,
        config_dir: settings.config_dir.clone(),
        arch: settings.arch,
        prediction_type: settings.prediction_type,
        offload: settings.offload.unwrap_or(false),
        vae_tiling: settings.vae_tiling,
        conv: settings.conv.unwrap_or_default(),
        limits: Default::default(),
    })
}

/// What to generate; every field is optional so `--from` and batch files can fill the rest.
#[derive(Args, Debug, Clone, Default)]
pub struct GenerationArgs {
    /// What the image should not show.
    #[arg(long, short = 'n', value_name = "TEXT")]
    pub negative: Option<String>,
    /// Denoising steps [default: 20].
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less skips the unconditional pass [default: 7.5].
    #[arg(long, value_name = "SCALE", allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Random seed; random when absent (and printed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Image width in pixels, a multiple of 8 [default: 512; SDXL: 1024, its trained size].
    #[arg(long, value_name = "PX")]
    pub width: Option<u32>,
    /// Image height in pixels, a multiple of 8 [default: 512; SDXL: 1024, its trained size].
    #[arg(long, value_name = "PX")]
    pub height: Option<u32>,
    /// Scheduler: a diffusers class or A1111 name (`sdgen schedulers` lists them)
    /// [default: the model's own scheduler].
    #[arg(long, value_name = "NAME")]
    pub scheduler: Option<String>,
    /// Use the output of an earlier CLIP layer (2 = skip the last layer, as A1111).
    #[arg(long, value_name = "N")]
    pub clip_skip: Option<usize>,
    /// img2img: start from this image (PNG, JPEG or WebP), resized to --width/--height
    /// [default size: the image's, rounded down to a multiple of 8].
    #[arg(long, value_name = "IMAGE", help_heading = "Starting from an image")]
    pub init_image: Option<PathBuf>,
    /// Inpainting: repaint the white part of this mask (black is kept; any size, resized;
    /// binarized at 50% grey). Needs --init-image.
    #[arg(long, value_name = "MASK", help_heading = "Starting from an image")]
    pub mask: Option<PathBuf>,
    /// How far from the init image to go, 0 < S ≤ 1: the last S × steps steps run
    /// [default: 0.75; inpainting 1.0].
    #[arg(long, value_name = "S", help_heading = "Starting from an image", allow_negative_numbers = true)]
    pub strength: Option<f64>,
    /// How to read the prompts: `a1111` (emphasis `(word:1.2)`, `[word]`, `BREAK`, editing
    /// `[from:to:when]`, alternation `[a|b]`, any length) or `plain` (literal text cut at 77
    /// tokens, as diffusers) [default: a1111].
    #[arg(long, value_name = "SYNTAX")]
    pub prompt_syntax: Option<sdgen::request::PromptSyntax>,
    /// Spread the steps `leading`, `linspace` or `trailing` over the schedule, overriding the
    /// model's scheduler config (few-step models such as SDXL-Turbo and Lightning want
    /// trailing) [default: the model's].
    #[arg(long, value_name = "SPACING")]
    pub timestep_spacing: Option<sdgen::request::TimestepSpacing>,
    /// SDXL: the size the UNet is told the training image had [default: the image size].
    #[arg(long, value_name = "WxH", help_heading = "SDXL size conditioning")]
    pub original_size: Option<sdgen::request::Size>,
    /// SDXL: the top-left corner of the crop it is told was taken [default: 0,0].
    #[arg(long, value_name = "TOP,LEFT", help_heading = "SDXL size conditioning")]
    pub crop_coords: Option<sdgen::request::Crop>,
    /// SDXL: the size it is told is wanted [default: the image size].
    #[arg(long, value_name = "WxH", help_heading = "SDXL size conditioning")]
    pub target_size: Option<sdgen::request::Size>,
    /// SDXL: --original-size for the unconditional (negative) pass [default: --original-size].
    #[arg(long, value_name = "WxH", help_heading = "SDXL size conditioning")]
    pub negative_original_size: Option<sdgen::request::Size>,
    /// SDXL: --crop-coords for the negative pass [default: 0,0 when another negative value is given].
    #[arg(long, value_name = "TOP,LEFT", help_heading = "SDXL size conditioning")]
    pub negative_crop_coords: Option<sdgen::request::Crop>,
    /// SDXL: --target-size for the negative pass [default: --target-size].
    #[arg(long, value_name = "WxH", help_heading = "SDXL size conditioning")]
    pub negative_target_size: Option<sdgen::request::Size>,
}

impl GenerationArgs {
    /// The request settings these flags give (unset where a flag is absent). The init image
    /// and mask are read here, so a bad file fails before any model loads.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let open = |path: &Option<PathBuf>, what: &str| -> anyhow::Result<Option<sdgen::init_image::InputImage>> {
            Ok(match path {
                Some(p) => Some(sdgen::init_image::InputImage::open(p, what, true)?),
                None => None,
            })
        };
        let init_image = open(&self.init_image, "init image")?;
        let mask = open(&self.mask, "mask")?;
        if let (Some(img), Some(m)) = (&init_image, &mask) {
            if sdgen::init_image::aspect_differs((img.width, img.height), (m.width, m.height)) {
                log::warn!(
                    "the mask is {}x{} and the init image {}x{}: the mask is stretched to the image's size, as diffusers does",
                    m.width,
                    m.height,
                    img.width,
                    img.height
                );
            }
        }
        Ok(Settings {
            init_image,
            mask,
            strength: self.strength,
            negative_prompt: self.negative.clone(),
            seed: self.seed,
            steps: self.steps,
            guidance: self.guidance,
            width: self.width,
            height: self.height,
            scheduler: self.scheduler.clone(),
            clip_skip: self.clip_skip,
            timestep_spacing: self.timestep_spacing,
            prompt_syntax: self.prompt_syntax,
            size_conditioning: sdgen::request::SizeConditioning {
                original_size: self.original_size,
                crop_coords: self.crop_coords,
                target_size: self.target_size,
                negative_original_size: self.negative_original_size,
                negative_crop_coords: self.negative_crop_coords,
                negative_target_size: self.negative_target_size,
            },
            ..Settings::default()
        })
    }
}

/// Limits on what one request may ask for (see `sdgen::limits`), and the NaN guard.
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Most denoising steps a request may ask for [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_steps: Option<usize>,
    /// Most images one request (or batch line) may ask for [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_images: Option<usize>,
    /// Most pixels (width × height) per image [default: 16777216, 4096×4096].
    #[arg(long, value_name = "N")]
    pub max_pixels: Option<u64>,
    /// Largest width or height [default: 8192].
    #[arg(long, value_name = "PX")]
    pub max_side: Option<u32>,
    /// Lift all the limits above, and the check of the image size against available memory.
    #[arg(long)]
    pub no_limits: bool,
    /// Write images even when a component produces NaN or infinite values (they come out
    /// black); without it such an image is an error naming the component.
    #[arg(long)]
    pub allow_nan: bool,
}

impl LimitArgs {
    /// The limits these flags ask for.
    pub fn limits(&self) -> sdgen::limits::Limits {
        let base = if self.no_limits { sdgen::limits::Limits::none() } else { sdgen::limits::Limits::default() };
        sdgen::limits::Limits {
            max_steps: self.max_steps.unwrap_or(base.max_steps),
            max_images: self.max_images.unwrap_or(base.max_images),
            max_pixels: self.max_pixels.unwrap_or(base.max_pixels),
            max_side: self.max_side.unwrap_or(base.max_side),
            allow_non_finite: self.allow_nan,
            ..base
        }
    }
}

/// Where and how images are written.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output folder (created if missing).
    #[arg(long, short = 'o', default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// File name template: {index}, {seed}, {prompt}, {timestamp} [default: never collides].
    #[arg(long, value_name = "TEMPLATE")]
    pub name: Option<String>,
    /// Replace existing files instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}
