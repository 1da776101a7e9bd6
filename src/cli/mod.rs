//! Command-line definitions (clap derive). Parsing only; the work is in the library.

pub mod batch;
pub mod bench;
pub mod config;
pub mod generate;
pub mod info;
pub mod license;
pub mod progress;
pub mod schedulers;
pub mod serve;
pub mod show;
pub mod tools;

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
    #[command(after_help = "Examples:
  sdgen generate \"a lighthouse at dawn\" -m weights/tiny-sd -s 42
  sdgen generate -p \"a red fox\" --sampler \"DPM++ 2M Karras\" --cfg-scale 6 -W 640 -H 448
  sdgen generate --from old.png --steps 30      (an sdgen or A1111 PNG, or a parameters .txt)
  sdgen generate \"a red fox\" --steps 30 --preview 5   (NAME.preview.png while it forms)")]
    Generate(generate::GenerateArgs),
    /// Generate images for every line of a prompt file (txt, jsonl, csv); resumable, shardable.
    #[command(after_help = "Examples:
  sdgen batch prompts.txt -m weights/tiny-sd -o out/
  sdgen batch prompts.jsonl --batch-size 4 --shard 0/4
  sdgen batch prompts.txt --merge --json        (what is done across all shards)")]
    Batch(batch::BatchArgs),
    /// Summarize how a PNG was made (sdgen, A1111 or ComfyUI metadata).
    #[command(after_help = "Examples:
  sdgen show image.png
  sdgen show image.png --json          (sdgen's full record)
  sdgen show image.png --parameters    (the A1111 text, to paste)")]
    Show(show::ShowArgs),
    /// Print the model licence's use restrictions and what recipients must be told.
    #[command(after_help = "Examples:
  sdgen license -m weights/tiny-sd
  sdgen license --sd2        (SD 2.x and SDXL: CreativeML OpenRAIL++-M)")]
    License(license::LicenseArgs),
    /// List the schedulers (samplers) with their A1111 and diffusers names.
    #[command(after_help = "Examples:
  sdgen schedulers
  sdgen generate \"a cat\" --scheduler \"DPM++ 2M SDE Karras\"")]
    Schedulers,
    /// Print the sdgen and libtorch versions, CUDA devices and CPU threads.
    #[command(after_help = "Examples:
  sdgen info
  sdgen info --json")]
    Info(info::InfoArgs),
    /// Time one generation: load, first step, steps/s, VAE decode, peak memory.
    #[command(after_help = "Examples:
  sdgen bench -m weights/tiny-sd --device cpu
  sdgen bench --dtype fp16 --steps 30 --json")]
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:
  sdgen completions bash > ~/.local/share/bash-completion/completions/sdgen
  sdgen completions zsh > ~/.zfunc/_sdgen
  sdgen completions fish > ~/.config/fish/completions/sdgen.fish")]
    Completions(tools::CompletionsArgs),
    /// Print the man page (roff), or write one per subcommand into a folder.
    #[command(after_help = "Examples:
  sdgen man | man -l -
  sdgen man --dir /usr/local/share/man/man1")]
    Man(tools::ManArgs),
    /// Serve the A1111 and OpenAI image APIs and a web page, keeping the model loaded.
    #[command(after_help = "Examples:
  sdgen serve --model weights/tiny-sd     (then open http://127.0.0.1:7860/)
  sdgen serve --models-dir ~/models --model sd15 --listen 0.0.0.0:7860 --api-key SECRET
  sdgen serve --model weights/tiny-sdxl --api-auth user:pass --queue 32")]
    Serve(serve::ServeArgs),
}

/// Which model, on which device, in which precision.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A diffusers folder, a single .safetensors checkpoint, or a Hugging Face hub id
    /// (owner/name[@revision]). Without it: $SDGEN_MODEL, then "model" in
    /// ~/.config/sdgen/config.json, then stable-diffusion-v1-5/stable-diffusion-v1-5.
    #[arg(long, short = 'm', value_name = "MODEL", env = sdgen::loading::source::MODEL_ENV)]
    pub model: Option<String>,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: Option<String>,
    /// auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.
    #[arg(long, value_name = "DTYPE", default_value = "auto")]
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
    /// Another VAE instead of the model's own: a diffusers VAE folder, a model folder with
    /// vae/, a .safetensors file (diffusers or original names; TAESD's taesd_decoder too) or
    /// a hub id (stabilityai/sd-vae-ft-mse, madebyollin/taesd, madebyollin/taesdxl).
    #[arg(long, value_name = "SOURCE")]
    pub vae: Option<String>,
    #[command(flatten)]
    pub memory: MemoryArgs,
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(flatten)]
    pub embeddings: EmbeddingArgs,
}

/// How the UNet runs on CUDA. None of these changes an image beyond float rounding, so
/// records do not carry them.
#[derive(Args, Debug, Clone, Default)]
pub struct GpuArgs {
    /// Run every UNet step eagerly instead of replaying a CUDA graph captured per image size
    /// and batch (graphs cut kernel-launch overhead; they hold one memory pool per shape).
    #[arg(long, help_heading = "GPU")]
    pub no_cuda_graphs: bool,
    /// Store convolution weights and activations channels-last (NHWC), the layout of cuDNN's
    /// fastest fp16 kernels.
    #[arg(long, help_heading = "GPU")]
    pub channels_last: bool,
    /// fp16 matrix multiplications accumulate in fp16 (cuBLAS): faster, less exact.
    #[arg(long, help_heading = "GPU")]
    pub fp16_accumulation: bool,
}

impl GpuArgs {
    pub fn options(&self) -> sdgen::cuda::CudaOptions {
        sdgen::cuda::CudaOptions {
            graphs: !self.no_cuda_graphs,
            channels_last: self.channels_last,
            fp16_accumulation: self.fp16_accumulation,
        }
    }
}

/// Textual-inversion embeddings.
#[derive(Args, Debug, Clone, Default)]
pub struct EmbeddingArgs {
    /// Load a textual-inversion embedding (.safetensors: A1111's, SDXL's clip_l/clip_g, or
    /// diffusers' learned_embeds); write its token (the file name, or diffusers' stored token)
    /// in prompts. Repeatable.
    #[arg(long, value_name = "FILE", help_heading = "Embeddings")]
    pub embedding: Vec<PathBuf>,
    /// Load every .safetensors embedding in this folder and its subfolders; those made for
    /// another model are skipped with a warning [default: $SDGEN_EMBEDDINGS_DIR].
    #[arg(long, value_name = "DIR", help_heading = "Embeddings")]
    pub embeddings_dir: Option<PathBuf>,
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
    /// How the UNet's and the VAE's convolutions run on the CPU in fp32: auto (Winograd for
    /// the UNet's wide layers and the VAE's 3x3 layers, fastest; its weights take about 2.3 GB
    /// more for SD 1.5, made when a layer first runs), direct (libtorch's convolution, least
    /// memory) or winograd (every 3x3 layer).
    #[arg(long, value_name = "ALGO", default_value = "auto")]
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
            embeddings: (!self.embeddings.embedding.is_empty()).then(|| self.embeddings.embedding.clone()),
            embeddings_dir: self.embeddings.embeddings_dir.clone(),
            vae: self.vae.clone(),
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
    let (vae, vae_label) = match &settings.vae {
        Some(v) => {
            let (path, label) = vae_source(v, fp16, quiet)?;
            (Some(path), label)
        }
        None => (None, None),
    };
    Ok(sdgen::LoadOptions {
        vae,
        vae_label,
        vae_sha256: settings.vae_sha256.clone(),
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
        // Set by each command from its GPU flags (not settings: records do not carry them).
        cuda: Default::default(),
        embeddings: settings.embeddings.clone().unwrap_or_default(),
        // The environment comes last, under the flags and a --from record.
        embeddings_dir: settings
            .embeddings_dir
            .clone()
            .or_else(|| std::env::var_os("SDGEN_EMBEDDINGS_DIR").filter(|v| !v.is_empty()).map(PathBuf::from)),
    })
}

/// `--vae SOURCE` on disk: a local folder or file as it is (its label the string given), or a
/// hub VAE fetched into the Hugging Face cache (its label `repo@commit`, so `--from` finds
/// exactly these weights again).
fn vae_source(source: &str, fp16: bool, quiet: bool) -> anyhow::Result<(PathBuf, Option<String>)> {
    use sdgen::loading::source::ModelSource;
    let parsed = ModelSource::parse(source).map_err(|e| anyhow::anyhow!("--vae: {e}"))?;
    match parsed {
        ModelSource::Folder(p) | ModelSource::SingleFile(p) => Ok((p, None)),
        ModelSource::Hub { repo, revision } => {
            let path = sdgen::loading::hub::fetch_vae(
                &repo,
                revision.as_deref(),
                fp16,
                &mut progress::DownloadBar::new(quiet),
            )?;
            let commit = path
                .ancestors()
                .find(|p| p.parent().and_then(|q| q.file_name()).is_some_and(|n| n == "snapshots"))
                .and_then(|p| p.file_name())
                .map(|c| c.to_string_lossy().into_owned());
            Ok((
                path,
                Some(match commit {
                    Some(c) => format!("{repo}@{c}"),
                    None => source.to_string(),
                }),
            ))
        }
    }
}

/// What to generate; every field is optional so `--from` and batch files can fill the rest.
#[derive(Args, Debug, Clone, Default)]
pub struct GenerationArgs {
    /// Apply a LoRA (kohya, diffusers/PEFT, LyCORIS LoHa/LoKr `.safetensors`): a file, or a
    /// name found as NAME.safetensors in --lora-dir, with an optional weight [default: 1].
    /// Repeatable. Prompts may also say `<lora:NAME:WEIGHT>`.
    #[arg(long = "lora", value_name = "FILE[:WEIGHT]", help_heading = "LoRA")]
    pub loras: Vec<String>,
    /// Where LoRA names (`--lora NAME`, `<lora:NAME>` in prompts) are looked up
    /// [default: $SDGEN_LORA_DIR].
    #[arg(long, value_name = "DIR", env = "SDGEN_LORA_DIR", help_heading = "LoRA")]
    pub lora_dir: Option<PathBuf>,
    /// What the image should not show.
    #[arg(long, short = 'n', visible_alias = "negative-prompt", value_name = "TEXT")]
    pub negative: Option<String>,
    /// Denoising steps.
    #[arg(long, value_name = "N", default_value = sdgen::Request::default().steps.to_string())]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less skips the unconditional pass.
    #[arg(
        long,
        visible_alias = "cfg-scale",
        value_name = "SCALE",
        allow_negative_numbers = true,
        default_value = sdgen::Request::default().guidance.to_string()
    )]
    pub guidance: Option<f64>,
    /// Random seed; random when absent (and printed).
    #[arg(long, short = 's', value_name = "N")]
    pub seed: Option<u64>,
    /// Image width in pixels, a multiple of 8. Without it: 512, or the model's trained size
    /// for SDXL (1024), or the init image's.
    #[arg(long, short = 'W', value_name = "PX")]
    pub width: Option<u32>,
    /// Image height in pixels, a multiple of 8. Without it: as --width.
    #[arg(long, short = 'H', value_name = "PX")]
    pub height: Option<u32>,
    /// Scheduler: a diffusers class or A1111 name (`sdgen schedulers` lists them). Without
    /// it: the model's own scheduler.
    #[arg(long, visible_aliases = ["sampler", "sampling-method"], value_name = "NAME")]
    pub scheduler: Option<String>,
    /// Use the output of an earlier CLIP layer (2 = skip the last layer, as A1111).
    #[arg(long, value_name = "N")]
    pub clip_skip: Option<usize>,
    /// img2img: start from this image (PNG, JPEG or WebP), resized to --width/--height
    /// (without it: the image's, rounded down to a multiple of 8).
    #[arg(long, value_name = "IMAGE", help_heading = "Starting from an image")]
    pub init_image: Option<PathBuf>,
    /// Inpainting: repaint the white part of this mask (black is kept; any size, resized;
    /// binarized at 50% grey). Needs --init-image.
    #[arg(long, value_name = "MASK", help_heading = "Starting from an image")]
    pub mask: Option<PathBuf>,
    /// How far from the init image to go, 0 < S ≤ 1: the last S × steps steps run
    /// (without it: 0.75; inpainting 1.0).
    #[arg(long, value_name = "S", help_heading = "Starting from an image", allow_negative_numbers = true)]
    pub strength: Option<f64>,
    /// How to read the prompts: `a1111` (emphasis `(word:1.2)`, `[word]`, `BREAK`, editing
    /// `[from:to:when]`, alternation `[a|b]`, any length) or `plain` (literal text cut at 77
    /// tokens, as diffusers) [default: a1111].
    #[arg(long, value_name = "SYNTAX")]
    pub prompt_syntax: Option<sdgen::request::PromptSyntax>,
    /// Spread the steps `leading`, `linspace` or `trailing` over the schedule, overriding the
    /// model's scheduler config (few-step models such as SDXL-Turbo and Lightning want
    /// trailing) (without it: the model's).
    #[arg(long, value_name = "SPACING")]
    pub timestep_spacing: Option<sdgen::request::TimestepSpacing>,
    /// SDXL: the size the UNet is told the training image had (without it: the image size).
    #[arg(long, value_name = "WxH", help_heading = "SDXL size conditioning")]
    pub original_size: Option<sdgen::request::Size>,
    /// SDXL: the top-left corner of the crop it is told was taken (without it: 0,0).
    #[arg(long, value_name = "TOP,LEFT", help_heading = "SDXL size conditioning")]
    pub crop_coords: Option<sdgen::request::Crop>,
    /// SDXL: the size it is told is wanted (without it: the image size).
    #[arg(long, value_name = "WxH", help_heading = "SDXL size conditioning")]
    pub target_size: Option<sdgen::request::Size>,
    /// SDXL: --original-size for the unconditional (negative) pass (without it: --original-size).
    #[arg(long, value_name = "WxH", help_heading = "SDXL size conditioning")]
    pub negative_original_size: Option<sdgen::request::Size>,
    /// SDXL: --crop-coords for the negative pass (without it: 0,0 when another negative value is given).
    #[arg(long, value_name = "TOP,LEFT", help_heading = "SDXL size conditioning")]
    pub negative_crop_coords: Option<sdgen::request::Crop>,
    /// SDXL: --target-size for the negative pass (without it: --target-size).
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
            loras: if self.loras.is_empty() {
                None
            } else {
                Some(self.loras.iter().map(|l| sdgen::lora::parse_lora_arg(l)).collect())
            },
            lora_dir: self.lora_dir.clone(),
            ..Settings::default()
        })
    }
}

/// Previews while images form (`sdgen::preview`).
#[derive(Args, Debug, Clone, Default)]
pub struct PreviewArgs {
    /// Write NAME.preview.png beside each image every N sampling steps while it forms, replaced
    /// each time and removed when the image is written (or the run fails or is stopped). Without
    /// --preview-vae it is A1111's "Approx cheap": one pixel per latent pixel, 1/8 of the size.
    #[arg(long, value_name = "N", value_parser = preview_every, help_heading = "Previews")]
    pub preview: Option<usize>,
    /// Decode the previews with this tiny autoencoder (TAESD for SD 1.x/2.x, TAESDXL for SDXL):
    /// a folder, a .safetensors file (taesd_decoder too) or a hub id (madebyollin/taesd), as
    /// --vae takes them; full-size previews. Used with --preview.
    #[arg(long, value_name = "SOURCE", help_heading = "Previews")]
    pub preview_vae: Option<String>,
}

/// `--preview N`: N ≥ 1 sampling steps between previews.
fn preview_every(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("N is how many sampling steps apart previews are written, so at least 1 \
                      (leave --preview out for no previews)"
            .into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number of steps")),
    }
}

impl PreviewArgs {
    /// `--preview-vae` does nothing without `--preview`: say so when the command line (not the
    /// config file, which may set it for the runs that preview) gave it alone.
    pub fn warn_unused(&self, from_config: &[String]) {
        if self.preview.is_none() && self.preview_vae.is_some() && !from_config.iter().any(|id| id == "preview_vae") {
            log::warn!("--preview-vae is used only with --preview N; no previews are made");
        }
    }
}

/// Limits on what one request may ask for (see `sdgen::limits`), and the NaN guard.
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Most denoising steps a request may ask for.
    #[arg(long, value_name = "N", default_value = sdgen::limits::Limits::default().max_steps.to_string())]
    pub max_steps: Option<usize>,
    /// Most images one request (or batch line) may ask for.
    #[arg(long, value_name = "N", default_value = sdgen::limits::Limits::default().max_images.to_string())]
    pub max_images: Option<usize>,
    /// Most pixels (width × height) per image (4096×4096).
    #[arg(long, value_name = "N", default_value = sdgen::limits::Limits::default().max_pixels.to_string())]
    pub max_pixels: Option<u64>,
    /// Largest width or height.
    #[arg(long, value_name = "PX", default_value = sdgen::limits::Limits::default().max_side.to_string())]
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
    /// File name template: {index}, {seed}, {prompt}, {timestamp} (without it: never collides).
    #[arg(long, value_name = "TEMPLATE")]
    pub name: Option<String>,
    /// Replace existing files instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `--preview-vae SOURCE`: makes the pipeline's previews a tiny autoencoder's decodes (a
/// folder, a file or a hub id, as `--vae` takes them).
pub fn load_preview_vae(pipe: &mut sdgen::Pipeline, source: &str, quiet: bool) -> anyhow::Result<()> {
    sdgen::loading::source::ModelSource::parse(source).map_err(|e| anyhow::anyhow!("--preview-vae: {e}"))?;
    let (path, label) = vae_source(source, pipe.kind() == tch::Kind::Half, quiet)?;
    pipe.load_preview_vae(&path, Some(label.as_deref().unwrap_or(source)))?;
    if !quiet {
        eprintln!("previews: tiny autoencoder {}", label.as_deref().unwrap_or(source));
    }
    Ok(())
}
