//! The text-to-image pipeline: load a model folder once, then turn requests into images.
//!
//! [`Pipeline::generate_many`] is a numbered sequence of plain steps, as in diffusers'
//! `StableDiffusionPipeline.__call__`:
//!
//! 1. check the inputs;
//! 2. encode the prompt and the negative prompt;
//! 3. prepare the timesteps;
//! 4. prepare the latents;
//! 5. run the loop with classifier-free guidance;
//! 6. decode.
//!
//! Precision and memory: weights load in the chosen dtype tensor by tensor (see
//! `loading::weights`); noise is always drawn on the CPU in fp32. When an fp16 VAE decodes
//! to non-finite values (the all-black image of SD 1.x/2.x in fp16), the decode is redone
//! with an fp32 copy of the VAE, loaded from the weights on first need and then kept: it
//! costs 4 bytes per VAE parameter (≈ 335 MB for SD's VAE) on the device, only in
//! processes that hit the overflow. `offload` keeps the text encoder and the VAE on the
//! CPU; `vae_tiling` decodes large images tile by tile.

use crate::device::{device_name, kind_name, DType, DeviceChoice};
use crate::embeddings::{Embedding, EmbeddingRecord, Vectors};
use crate::error::catch_torch;
use crate::models::clip::ClipTextModel;
use crate::models::conv::ConvAlgo;
use crate::models::unet::{Conditioning, UNet};
use crate::models::vae::{Vae, VaeTiling};
use crate::noise::{NoiseSource, SeededNoise};
use crate::plan::{Arch, Layout, ModelOptions, ModelSpec, PredictionType, Sampler};
use crate::request::{Image, ModelRecord, PromptSyntax, Record, Request};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use std::cell::{Cell, OnceCell};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A diffusers model folder (`unet/`, `vae/`, ...) or a single `.safetensors` checkpoint.
    pub model: PathBuf,
    pub device: DeviceChoice,
    pub dtype: DType,
    /// What records name as the model's source (a hub id); default: the path.
    pub source_label: Option<String>,
    /// Single files: take configs and tokenizer from this diffusers folder.
    pub config_dir: Option<PathBuf>,
    /// Single files: force the architecture instead of detecting it from tensor shapes.
    pub arch: Option<Arch>,
    /// Override the scheduler config's `prediction_type`.
    pub prediction_type: Option<PredictionType>,
    /// Keep the text encoder and the VAE on the CPU (and run them there, in fp32 when the
    /// UNet runs on a GPU), so that GPU memory holds only the UNet and its activations. On a
    /// CPU-only run the components stay in the UNet's dtype and nothing changes.
    pub offload: bool,
    /// Decode latents larger than one tile in overlapping, blended tiles.
    pub vae_tiling: Option<VaeTiling>,
    /// How the UNet's and the VAE's convolutions run on the CPU in fp32: `Auto` is fastest, `Direct`
    /// uses the least memory (see [`crate::models::conv`]).
    pub conv: ConvAlgo,
    /// What a request may ask for, and whether non-finite images are written.
    pub limits: crate::limits::Limits,
    /// Textual-inversion embedding files to load (see [`crate::embeddings`]); each must fit.
    pub embeddings: Vec<PathBuf>,
    /// A folder of embeddings, loaded after `embeddings`; files that do not fit the model are
    /// skipped with a warning.
    pub embeddings_dir: Option<PathBuf>,
}

impl LoadOptions {
    /// What the model says about itself (configs, files, hashes), read without loading
    /// weights: what [`Pipeline::load`] will load, for planning and for `batch --merge`.
    /// The `embeddings` files are read and checked against its text encoders here too (and
    /// the embeddings folder is listed), so a wrong one fails before any weights load.
    pub fn inspect(&self) -> Result<ModelSpec> {
        let kind = self.dtype.resolve(self.device.resolve()?);
        let spec = ModelSpec::inspect(
            &self.model,
            &ModelOptions {
                config_dir: self.config_dir.as_deref(),
                arch: self.arch,
                prediction_type: self.prediction_type,
                kind: Some(kind),
            },
        )?;
        let widths = (spec.text_encoder.hidden_size, spec.text_encoder_2.as_ref().map(|c| c.hidden_size));
        for path in &self.embeddings {
            Embedding::read(path)?.check_fits(widths.0, widths.1)?;
        }
        if let Some(dir) = &self.embeddings_dir {
            crate::embeddings::files_in(dir)?;
        }
        Ok(spec)
    }
}

/// Where the loop is, for progress displays, for inspecting the latents, and for stopping.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Model evaluations done so far, and in all.
    pub step: usize,
    pub steps: usize,
    /// Sampling steps done so far, and in all, as `--steps` counts them (less the steps img2img
    /// skips). Progress displays show these: Heun-like samplers evaluate the model twice per
    /// step and PLMS once more than its steps, so `step` would read "39 of 20" or "21 of 20".
    pub sampling_step: usize,
    pub sampling_steps: usize,
    /// The latents after this step, `[batch, channels, h/8, w/8]`, on the device.
    pub latents: &'a Tensor,
    cancel: &'a Cell<bool>,
}

impl Progress<'_> {
    /// Stops the run after this step: the call returns [`Error::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.set(true);
    }
}

/// The latents after the loop, before decoding.
pub struct Denoised {
    pub latents: Tensor,
    /// The sampler that ran and its effective config, for records.
    pub sampler: Sampler,
    pub scheduler_config: serde_json::Value,
}

/// One finished image and the record that reproduces it.
#[derive(Debug, Clone)]
pub struct Generated {
    pub image: Image,
    pub record: Record,
}

/// A loaded model, ready to generate. It holds no reference to other threads' state, so one
/// worker thread can own it (`Pipeline: Send`).
pub struct Pipeline {
    tokenizer: Tokenizer,
    text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and text encoder (with projection).
    tokenizer_2: Option<Tokenizer>,
    text_encoder_2: Option<ClipTextModel>,
    unet: UNet,
    vae: Vae,
    /// An fp32 VAE for when the fp16 one overflows; built on first need.
    vae_fp32: OnceCell<Vae>,
    /// Set once the fp32 fallback has been announced, so a batch warns only once.
    warned_vae_upcast: Cell<bool>,
    limits: crate::limits::Limits,
    /// Components whose non-finite output was already announced (with `allow_non_finite`).
    warned_non_finite: Cell<u8>,
    vae_tiling: Option<VaeTiling>,
    spec: ModelSpec,
    /// Where and in which dtype the UNet runs (and the latents live).
    device: Device,
    kind: Kind,
    /// Where and in which dtype the text encoder and the VAE run.
    aux: Place,
    offload: bool,
    conv: ConvAlgo,
    model: ModelRecord,
    /// `--prediction-type`, when it overrode the model's.
    prediction_override: Option<PredictionType>,
    /// Recent prompt embeddings by (text, layer): batch files repeat prompts and negative
    /// prompts, and each is encoded once.
    embed_cache: std::cell::RefCell<std::collections::HashMap<EmbedKey, TextEmbeds>>,
    /// The LoRAs patched into the UNet and text encoders, and the weights they replaced.
    loras: crate::lora::Applied,
}

/// What an encoding is cached by: the text, the layer it is taken from, and whether it was
/// read with A1111's syntax.
type EmbedKey = (String, Option<usize>, bool);

/// A prompt's encoding: the cross-attention states `[1, 77, dim]` and, for SDXL, the second
/// encoder's pooled, projected embedding `[1, projection_dim]`; in the UNet's device and dtype.
#[derive(Debug)]
struct TextEmbeds {
    context: Tensor,
    pooled: Option<Tensor>,
}

impl TextEmbeds {
    fn shallow_clone(&self) -> TextEmbeds {
        TextEmbeds { context: self.context.shallow_clone(), pooled: self.pooled.as_ref().map(Tensor::shallow_clone) }
    }

    /// What diffusers' SDXL pipelines use for "no negative prompt" with
    /// `force_zeros_for_empty_prompt`: zeros of the same shapes.
    fn zeros_like(&self) -> TextEmbeds {
        TextEmbeds { context: self.context.zeros_like(), pooled: self.pooled.as_ref().map(Tensor::zeros_like) }
    }
}

/// Entries kept in [`Pipeline::encode_text`]'s cache before it is emptied.
const EMBED_CACHE_SIZE: usize = 64;

/// A device and a dtype for a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    device: Device,
    kind: Kind,
}

/// Where the denoising loop starts (see [`Pipeline::start`]).
struct Start {
    latents: Tensor,
    inpaint: Option<Inpaint>,
}

/// What inpainting needs in the loop, at latent size on the UNet's device.
struct Inpaint {
    /// 1 = repaint, 0 = keep; `[n, 1, h, w]`.
    mask: Tensor,
    /// Inpainting UNets: the masked image's latents, concatenated to the UNet's input.
    masked_latents: Option<Tensor>,
    /// Ordinary UNets: the init image's latents, blended back outside the mask.
    image_latents: Option<Tensor>,
    /// The noise the start was drawn with, which re-noises the known region.
    noise: Tensor,
}

/// The loaded models of a [`ModelSpec`].
struct Parts {
    tokenizer: Tokenizer,
    text_encoder: ClipTextModel,
    tokenizer_2: Option<Tokenizer>,
    text_encoder_2: Option<ClipTextModel>,
    unet: UNet,
    vae: Vae,
}

/// Loads exactly the files the spec lists, so that what is recorded is what ran.
fn load_folder(spec: &ModelSpec, device: Device, kind: Kind, aux: Place, conv: ConvAlgo) -> Result<Parts> {
    let dir = &spec.path;
    let file = |component: &str| -> Result<&Path> {
        spec.files
            .iter()
            .find(|f| f.component == component)
            .map(|f| f.path.as_path())
            .ok_or_else(|| Error::Model(format!("no {component} weights were planned for {}", dir.display())))
    };
    let tokenizer = Tokenizer::from_dir(&dir.join("tokenizer"))?;
    let w = crate::loading::Weights::open(&[file("text_encoder")?.to_path_buf()], aux.device, aux.kind)?;
    let text_encoder = ClipTextModel::new(&w, &spec.text_encoder)?;
    w.finish()?;
    let (tokenizer_2, text_encoder_2) = match &spec.text_encoder_2 {
        Some(cfg) => {
            let tokenizer = Tokenizer::from_dir(&dir.join("tokenizer_2"))?;
            let w = crate::loading::Weights::open(&[file("text_encoder_2")?.to_path_buf()], aux.device, aux.kind)?;
            let model = ClipTextModel::new(&w, cfg)?;
            w.finish()?;
            (Some(tokenizer), Some(model))
        }
        None => (None, None),
    };
    let w = crate::loading::Weights::open(&[file("unet")?.to_path_buf()], device, kind)?;
    w.set_conv_algo(conv);
    let unet = UNet::new(&w, &spec.unet)?;
    w.finish()?;
    let vae = load_vae(spec, aux.device, aux.kind, conv)?;
    Ok(Parts { tokenizer, text_encoder, tokenizer_2, text_encoder_2, unet, vae })
}

fn load_single_file(spec: &ModelSpec, device: Device, kind: Kind, aux: Place, conv: ConvAlgo) -> Result<Parts> {
    use crate::loading::single_file::Component;
    let prepared = spec.prepared.as_ref().ok_or_else(|| Error::Model("the checkpoint was not inspected".into()))?;
    // The tokenizer reads files; give it the configs as a diffusers-style folder.
    let tmp =
        tempfile::tempdir().map_err(|e| Error::io_op(crate::error::IoOp::CreateFolder, std::env::temp_dir(), e))?;
    prepared.configs.write_to(tmp.path())?;
    let tokenizer = Tokenizer::from_dir(&tmp.path().join("tokenizer"))?;
    let file = &prepared.file;
    let w = file.weights(Component::TextEncoder, aux.device, aux.kind)?;
    let text_encoder = ClipTextModel::new(&w, &spec.text_encoder)?;
    w.finish()?;
    let (tokenizer_2, text_encoder_2) = match &spec.text_encoder_2 {
        Some(cfg) => {
            let tokenizer = Tokenizer::from_dir(&tmp.path().join("tokenizer_2"))?;
            let w = file.weights(Component::TextEncoder2, aux.device, aux.kind)?;
            let model = ClipTextModel::new(&w, cfg)?;
            w.finish()?;
            (Some(tokenizer), Some(model))
        }
        None => (None, None),
    };
    let w = file.weights(Component::Unet, device, kind)?;
    w.set_conv_algo(conv);
    let unet = UNet::new(&w, &spec.unet)?;
    w.finish()?;
    let vae = load_vae(spec, aux.device, aux.kind, conv)?;
    Ok(Parts { tokenizer, text_encoder, tokenizer_2, text_encoder_2, unet, vae })
}

/// The VAE of a spec in any dtype (the fp32 fallback loads it a second time).
fn load_vae(spec: &ModelSpec, device: Device, kind: Kind, conv: ConvAlgo) -> Result<Vae> {
    let w = match (&spec.prepared, spec.layout) {
        (Some(p), Layout::SingleFile) => p.file.weights(crate::loading::single_file::Component::Vae, device, kind)?,
        _ => {
            let f = spec
                .files
                .iter()
                .find(|f| f.component == "vae")
                .ok_or_else(|| Error::Model(format!("no VAE weights were planned for {}", spec.path.display())))?;
            crate::loading::Weights::open(std::slice::from_ref(&f.path), device, kind)?
        }
    };
    w.set_conv_algo(conv);
    let vae = Vae::new(&w, &spec.vae)?;
    w.finish()?;
    Ok(vae)
}

impl Pipeline {
    /// Loads a model onto the chosen device: a diffusers folder, or a single-file checkpoint
    /// (original LDM layout) with shipped or given configs.
    pub fn load(opts: &LoadOptions) -> Result<Pipeline> {
        catch_torch("loading the model", || Pipeline::load_inner(opts, None))
    }

    /// [`Pipeline::load`] for a model already inspected with [`LoadOptions::inspect`].
    pub fn from_spec(opts: &LoadOptions, spec: ModelSpec) -> Result<Pipeline> {
        catch_torch("loading the model", || Pipeline::load_inner(opts, Some(spec)))
    }

    fn load_inner(opts: &LoadOptions, spec: Option<ModelSpec>) -> Result<Pipeline> {
        let device = opts.device.resolve()?;
        let kind = opts.dtype.resolve(device);
        if let Some(t) = &opts.vae_tiling {
            t.check()?;
        }
        // Offloaded components run on the CPU; fp16 there is slow and the VAE overflows in
        // it, so they use fp32 unless the whole run is on the CPU anyway.
        let aux = match (opts.offload, device.is_cuda()) {
            (false, _) => Place { device, kind },
            (true, true) => Place { device: Device::Cpu, kind: Kind::Float },
            (true, false) => Place { device: Device::Cpu, kind },
        };
        let spec = match spec {
            Some(s) => s,
            None => opts.inspect()?,
        };
        let parts = match spec.layout {
            Layout::SingleFile => load_single_file(&spec, device, kind, aux, opts.conv)?,
            Layout::Folder => load_folder(&spec, device, kind, aux, opts.conv)?,
        };
        let path = &spec.path;
        let name = opts.source_label.as_deref().map(hub_model_name).unwrap_or_else(|| {
            path.canonicalize()
                .ok()
                .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| path.display().to_string())
        });
        let model = ModelRecord {
            source: opts.source_label.clone().unwrap_or_else(|| path.display().to_string()),
            name,
            hash: Some(spec.hash().to_string()),
            architecture: spec.arch,
            license: spec.license.clone(),
            files: spec.files.clone(),
            config_dir: spec.config_dir.clone(),
            arch_forced: spec.arch_forced,
            embeddings: Vec::new(),
        };
        let mut pipe = Pipeline {
            tokenizer: parts.tokenizer,
            text_encoder: parts.text_encoder,
            tokenizer_2: parts.tokenizer_2,
            text_encoder_2: parts.text_encoder_2,
            unet: parts.unet,
            vae: parts.vae,
            vae_fp32: OnceCell::new(),
            warned_vae_upcast: Cell::new(false),
            limits: opts.limits,
            warned_non_finite: Cell::new(0),
            vae_tiling: opts.vae_tiling,
            spec,
            device,
            kind,
            aux,
            offload: opts.offload,
            conv: opts.conv,
            model,
            prediction_override: opts.prediction_type,
            embed_cache: Default::default(),
            loras: Default::default(),
        };
        pipe.load_embeddings_inner(&opts.embeddings)?;
        if let Some(dir) = &opts.embeddings_dir {
            pipe.load_embeddings_dir_inner(dir)?;
        }
        Ok(pipe)
    }

    /// Loads textual-inversion embedding files (see [`crate::embeddings`]) into the tokenizers
    /// and text encoders, in order, as diffusers' `load_textual_inversion`: each file's token
    /// (its name, or the stored key of diffusers' `learned_embeds`) then stands for its vectors
    /// in prompts. A file already loaded (same token, same contents) is skipped. A missing
    /// file, a pickle, an embedding that does not fit this model or a token already taken is
    /// an error naming the file, and nothing of that file is loaded. Returns what was loaded;
    /// the records list it too.
    pub fn load_embeddings(&mut self, files: &[PathBuf]) -> Result<Vec<EmbeddingRecord>> {
        catch_torch("loading embeddings", || self.load_embeddings_inner(files))
    }

    /// Loads every `.safetensors` embedding in `dir` and its subfolders, sorted by path, as
    /// [`Pipeline::load_embeddings`]; but a file that cannot load (made for another model, a
    /// token already taken, damaged) is skipped with a warning, as A1111 skips them, and
    /// pickles are left alone (one warning). A missing folder is an error.
    pub fn load_embeddings_dir(&mut self, dir: &Path) -> Result<Vec<EmbeddingRecord>> {
        catch_torch("loading embeddings", || self.load_embeddings_dir_inner(dir))
    }

    fn load_embeddings_inner(&mut self, files: &[PathBuf]) -> Result<Vec<EmbeddingRecord>> {
        let mut loaded = Vec::new();
        for path in files {
            if let Some(r) = self.load_embedding(path)? {
                loaded.push(r);
            }
        }
        Ok(loaded)
    }

    fn load_embeddings_dir_inner(&mut self, dir: &Path) -> Result<Vec<EmbeddingRecord>> {
        let (files, pickles) = crate::embeddings::files_in(dir)?;
        if !pickles.is_empty() {
            log::warn!(
                "{} pickle embedding(s) in {} not loaded (sdgen reads .safetensors only; convert them), e.g. {}",
                pickles.len(),
                dir.display(),
                pickles[0].display()
            );
        }
        let mut loaded = Vec::new();
        for path in &files {
            match self.load_embedding(path) {
                Ok(Some(r)) => loaded.push(r),
                Ok(None) => {}
                Err(e) => log::warn!("embedding skipped: {e}"),
            }
        }
        Ok(loaded)
    }

    /// One file into the tokenizers and text encoders; `None` when the same token with the
    /// same file contents is loaded already. Everything is checked before anything changes.
    fn load_embedding(&mut self, path: &Path) -> Result<Option<EmbeddingRecord>> {
        let e = Embedding::read(path)?;
        if self.model.embeddings.iter().any(|r| r.token == e.token && r.sha256 == e.sha256) {
            return Ok(None);
        }
        let second = self.text_encoder_2.as_ref().map(|te| te.embedding_width());
        e.check_fits(self.text_encoder.embedding_width(), second)?;
        let n = e.count();
        let taken = |reason: String| Error::weights(path, reason);
        self.tokenizer.check_embedding_token(&e.token, n).map_err(taken)?;
        if let Some(tok2) = &self.tokenizer_2 {
            tok2.check_embedding_token(&e.token, n).map_err(taken)?;
        }
        let (first, second) = match &e.vectors {
            Vectors::Single(v) => (v, None),
            Vectors::Sdxl { clip_l, clip_g } => (clip_l, Some(clip_g)),
        };
        let ids = self.tokenizer.add_embedding_token(&e.token, n).map_err(taken)?;
        self.text_encoder.set_token_embeddings(&ids, first)?;
        if let (Some(vectors), Some(tok2), Some(te2)) = (second, &mut self.tokenizer_2, &mut self.text_encoder_2) {
            let ids = tok2.add_embedding_token(&e.token, n).map_err(taken)?;
            te2.set_token_embeddings(&ids, vectors)?;
        }
        self.embed_cache.borrow_mut().clear();
        let record = e.record();
        self.model.embeddings.push(record.clone());
        Ok(Some(record))
    }

    /// Makes `loras` the set of LoRAs applied to the UNet and text encoders (an empty slice
    /// removes them all), without reloading: replaced weights are kept and put back. Returns
    /// what each file applied. Every file is read and checked first, so on error the pipeline
    /// keeps the set it had. Asking for the set already applied does nothing.
    pub fn set_loras(&mut self, loras: &[crate::lora::LoraRequest]) -> Result<Vec<crate::lora::LoraReport>> {
        let models = crate::lora::Models {
            unet: &mut self.unet,
            text_encoder: &mut self.text_encoder,
            text_encoder_2: self.text_encoder_2.as_mut(),
        };
        let state = &mut self.loras;
        let reports = catch_torch("applying LoRAs", || state.set(models, loras))?;
        // Cached prompt encodings came from the text encoders as they were.
        self.embed_cache.borrow_mut().clear();
        Ok(reports)
    }

    /// Applies the request's LoRAs when they differ from those applied ([`Pipeline::set_loras`]).
    pub fn apply_loras(&mut self, req: &Request) -> Result<Vec<crate::lora::LoraReport>> {
        self.set_loras(&lora_requests(req))
    }

    /// The LoRAs applied now.
    pub fn loras(&self) -> &[crate::lora::LoraRequest] {
        self.loras.requests()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether `offload` was asked for: the text encoder and the VAE live on the CPU (apart
    /// from the UNet when that runs on a GPU).
    pub fn offloaded(&self) -> bool {
        self.offload
    }

    /// Turns tiled VAE decoding on (with these tile sizes) or off.
    pub fn set_vae_tiling(&mut self, tiling: Option<VaeTiling>) -> Result<()> {
        if let Some(t) = &tiling {
            t.check()?;
        }
        self.vae_tiling = tiling;
        Ok(())
    }

    pub fn model(&self) -> &ModelRecord {
        &self.model
    }

    /// What the model files say: configs, files and hashes.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn model_dir(&self) -> &Path {
        &self.spec.path
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.spec.scheduler_config
    }

    /// The name of the scheduler the model's own config describes (`_class_name`, its
    /// algorithm and sigma schedule), if sdgen has it, else Euler.
    pub fn default_scheduler(&self) -> String {
        self.spec.default_sampler().name()
    }

    /// Checks a request against this model without running anything.
    pub fn check(&self, req: &Request) -> Result<()> {
        check_request(req, &self.limits)?;
        if lora_requests(req) != self.loras.requests() {
            return Err(Error::invalid(
                "the request's LoRAs are not the ones applied: call Pipeline::apply_loras(request) first",
            ));
        }
        self.spec.check_start(req)?;
        self.spec.sampler(&req.scheduler)?;
        let scale = self.spec.vae_scale_factor();
        for (what, v) in [("width", req.width), ("height", req.height)] {
            if v % scale != 0 {
                return Err(Error::invalid(format!(
                    "{what} {v} is not a multiple of {scale}, this model's VAE scale factor"
                )));
            }
        }
        let layers = self.text_encoder.config().num_hidden_layers;
        let layers = self.text_encoder_2.as_ref().map_or(layers, |te2| layers.min(te2.config().num_hidden_layers));
        crate::preflight::check_clip_skip(req.clip_skip, layers)?;
        if !self.unet.has_added_conditioning() && !req.size_conditioning.is_unset() {
            return Err(Error::invalid(
                "original size, crop coordinates and target size are SDXL's size conditioning; this model's UNet \
                 has no added conditioning to take them (it is not an SDXL model)",
            ));
        }
        if !self.limits.check_memory {
            return Ok(());
        }
        crate::limits::check_decode_memory(
            req,
            &self.vae.config,
            self.aux.device,
            self.aux.kind,
            self.vae_tiling.is_some(),
        )
    }

    /// Makes `req.num_images` images, image `i` from seed `req.seed + i`.
    pub fn generate(&self, req: &Request, on_step: &mut dyn FnMut(Progress)) -> Result<Vec<Generated>> {
        self.check(req)?;
        let singles: Vec<Request> =
            (0..req.num_images).map(|i| Request { seed: req.image_seed(i), num_images: 1, ..req.clone() }).collect();
        self.generate_many(&singles, on_step)
    }

    /// Makes one image per request, all in one UNet batch. The requests must share size,
    /// steps, scheduler, guidance and clip skip; each keeps its own prompt and seed, and the
    /// result equals running them one at a time. A libtorch failure (out of memory) is an
    /// `Err`, and so is a cancel from `on_step`.
    pub fn generate_many(&self, reqs: &[Request], on_step: &mut dyn FnMut(Progress)) -> Result<Vec<Generated>> {
        let Some(denoised) = self.denoise(reqs, on_step)? else { return Ok(Vec::new()) };
        // 6. Decode.
        let images = self.decode(&denoised.latents)?;
        let latent_shape = denoised.latents.size()[1..].to_vec();
        Ok(reqs
            .iter()
            .zip(images)
            .map(|(r, image)| Generated {
                image,
                record: Record {
                    sdgen_version: crate::VERSION.to_string(),
                    request: Request { scheduler: denoised.sampler.name(), ..r.clone() },
                    model: self.model.clone(),
                    sampler: Some(denoised.sampler.into()),
                    scheduler_config: denoised.scheduler_config.clone(),
                    prediction_type: self.prediction_override,
                    latent_shape: latent_shape.clone(),
                    device: device_name(self.device),
                    dtype: kind_name(self.kind).to_string(),
                    offload: self.offload,
                    conv: self.conv,
                    vae_tiling: self.vae_tiling,
                },
            })
            .collect())
    }

    /// Steps 1 to 5: the final latents for a batch of requests (see [`Pipeline::generate_many`]),
    /// or `None` for an empty batch.
    pub fn denoise(&self, reqs: &[Request], on_step: &mut dyn FnMut(Progress)) -> Result<Option<Denoised>> {
        catch_torch("denoising", || self.denoise_inner(reqs, on_step))
    }

    fn denoise_inner(&self, reqs: &[Request], on_step: &mut dyn FnMut(Progress)) -> Result<Option<Denoised>> {
        // 1. Check the inputs.
        let Some(first) = reqs.first() else { return Ok(None) };
        let sampler = self.spec.sampler(&first.scheduler)?;
        for r in reqs {
            self.check(r)?;
            let same = r.width == first.width
                && r.height == first.height
                && r.steps == first.steps
                && self.spec.sampler(&r.scheduler)? == sampler
                && r.guidance == first.guidance
                && r.clip_skip == first.clip_skip
                && r.timestep_spacing == first.timestep_spacing
                && r.init_image.is_some() == first.init_image.is_some()
                && r.mask.is_some() == first.mask.is_some()
                && r.strength == first.strength;
            if !same {
                return Err(Error::invalid(
                    "requests batched together must share width, height, steps, scheduler, timestep spacing, \
                     guidance, clip skip, strength and whether they start from an image or a mask",
                ));
            }
        }
        let _guard = tch::no_grad_guard();
        let guided = first.guidance > 1.0;

        // 2. Encode the prompt and the negative prompt (unconditional first, as diffusers),
        //    with SDXL's pooled embeddings and size/crop ids.
        //    A1111 prompts may change at given steps (editing, alternation): one schedule per
        //    row, the unconditional rows first.
        let mut rows = Vec::with_capacity(reqs.len() * 2);
        if guided {
            rows.extend(self.schedules(reqs, true)?);
        }
        rows.extend(self.schedules(reqs, false)?);

        // 3. Prepare the timesteps.
        let config = match first.timestep_spacing {
            Some(s) => {
                SchedulerConfig { timestep_spacing: Some(s.name().to_string()), ..self.spec.scheduler_config.clone() }
            }
            None => self.spec.scheduler_config.clone(),
        };
        let mut scheduler = sampler.info.build(Some(sampler.schedule), &config, first.steps)?;
        let timesteps = scheduler.timesteps().to_vec();
        // One diffusers class can run several samplers (`algorithm_type`): record the one that
        // its effective config runs, not only the row that was named.
        let sampler = serde_json::from_value(scheduler.config_json())
            .ok()
            .and_then(|c: SchedulerConfig| crate::plan::sampler_from_config(&c))
            .filter(|ran| ran.info.diffusers_name == sampler.info.diffusers_name)
            .map(|ran| Sampler { info: ran.info, schedule: sampler.schedule })
            .unwrap_or(sampler);

        // img2img and inpainting begin where the strength says (diffusers' `get_timesteps`).
        let begin = match (&first.init_image, first.strength) {
            (Some(_), Some(strength)) => {
                let begin = crate::init_image::start_step(first.steps, strength)? * scheduler.order();
                scheduler.set_begin_index(begin)?;
                begin
            }
            _ => 0,
        };

        // 4. Prepare the latents: CPU fp32 noise per seed (scaled), or the init image's
        //    latents noised to the first step's level; for inpainting also the mask and the
        //    masked image's latents. Their channels are the VAE's latent channels.
        let scale = i64::from(self.spec.vae_scale_factor());
        let (h, w) = (i64::from(first.height) / scale, i64::from(first.width) / scale);
        let mut noise = BatchNoise { streams: reqs.iter().map(|r| SeededNoise::new(r.seed)).collect() };
        let Start { mut latents, inpaint } = self.start(reqs, &*scheduler, begin, (h, w), &mut noise)?;

        // 5. The denoising loop, with classifier-free guidance when guidance > 1.
        let cancel = Cell::new(false);
        let both = |t: &Tensor| if guided { Tensor::cat(&[t, t], 0) } else { t.shallow_clone() };
        let extra = inpaint.as_ref().and_then(|ip| ip.masked_latents.as_ref().map(|m| (both(&ip.mask), both(m))));
        let runs = timesteps.len() - begin;
        let sampling_steps = first.steps.saturating_sub(begin / scheduler.order()).max(1);
        // Evaluations map evenly onto steps; the last evaluation always completes the last step.
        let sampling_step = |done: usize| if done >= runs { sampling_steps } else { done * sampling_steps / runs };
        for (i, &t) in timesteps.iter().enumerate().skip(begin) {
            let x = scheduler.scale_model_input(&both(&latents), i);
            // Inpainting UNets take the mask and the masked image's latents beside the latents.
            let x = match &extra {
                Some((mask, masked)) => Tensor::cat(&[&x, mask, masked], 1),
                None => x,
            };
            let out = self.unet_rows(&x, t, &rows, i - begin)?;
            let eps = if guided {
                let parts = out.chunk(2, 0);
                &parts[0] + (&parts[1] - &parts[0]) * first.guidance
            } else {
                out
            };
            latents = scheduler.step(&eps, i, &latents, &mut noise)?;
            // Ordinary UNets inpaint by putting back the known region, noised to the next
            // step's level (clean after the last step).
            if let Some(Inpaint { mask, image_latents: Some(known), noise: eps, .. }) = &inpaint {
                let known = if i + 1 < timesteps.len() {
                    scheduler.add_noise(known, eps, i + 1)?
                } else {
                    known.shallow_clone()
                };
                latents = (mask.ones_like() - mask) * known + mask * &latents;
            }
            on_step(Progress {
                step: i + 1 - begin,
                steps: runs,
                sampling_step: sampling_step(i + 1 - begin),
                sampling_steps,
                latents: &latents,
                cancel: &cancel,
            });
            if cancel.get() {
                return Err(Error::Cancelled);
            }
        }
        self.finite(&latents, crate::finite::Component::DenoisingLoop)?;
        Ok(Some(Denoised { latents, sampler, scheduler_config: scheduler.config_json() }))
    }

    /// Step 4: the latents the loop starts from, as diffusers' pipelines draw them from each
    /// request's generator: text-to-image, noise; img2img, the encoder's sample, then noise,
    /// added at the first step's level; inpainting, the encoder's sample of the image (unless
    /// an inpainting UNet starts from pure noise at strength 1), noise, then the encoder's
    /// sample of the masked image.
    fn start(
        &self,
        reqs: &[Request],
        scheduler: &dyn crate::schedulers::Scheduler,
        begin: usize,
        (h, w): (i64, i64),
        noise: &mut BatchNoise,
    ) -> Result<Start> {
        let n = reqs.len() as i64;
        let channels = self.spec.latent_channels();
        let shape = [n, channels, h, w];
        let first = &reqs[0];
        if first.init_image.is_none() {
            let latents = noise.randn(&shape, self.device, Kind::Float) * scheduler.init_noise_sigma();
            return Ok(Start { latents: latents.to_kind(self.kind), inpaint: None });
        }
        let mut images = Vec::with_capacity(reqs.len());
        for r in reqs {
            let init = r.init_image.as_ref().ok_or_else(|| {
                Error::invalid("requests batched together must all start from an init image, or none")
            })?;
            images.push(crate::init_image::image_tensor(&*init.pixels("init image")?, r.width, r.height)?);
        }
        let image = Tensor::cat(&images, 0);
        if first.mask.is_none() {
            let known = self.encode_image(&image, noise)?;
            let eps = noise.randn(&shape, self.device, Kind::Float).to_kind(self.kind);
            let latents = scheduler.add_noise(&known, &eps, begin)?;
            return Ok(Start { latents, inpaint: None });
        }
        let inpainting_unet = self.unet.config.in_channels == 2 * channels + 1;
        let strength_max = first.strength == Some(1.0);
        let known = if !inpainting_unet || !strength_max { Some(self.encode_image(&image, noise)?) } else { None };
        let eps = noise.randn(&shape, self.device, Kind::Float).to_kind(self.kind);
        let latents = match (&known, strength_max) {
            (Some(known), false) => scheduler.add_noise(known, &eps, begin)?,
            _ => &eps * scheduler.init_noise_sigma(),
        };
        let mut masks = Vec::with_capacity(reqs.len());
        for r in reqs {
            let mask = r
                .mask
                .as_ref()
                .ok_or_else(|| Error::invalid("requests batched together must all have a mask, or none"))?;
            masks.push(crate::init_image::mask_tensor(&*mask.pixels("mask")?, r.width, r.height)?);
        }
        let mask = Tensor::cat(&masks, 0);
        // diffusers encodes the masked image whatever the UNet: the draw moves the generator.
        let masked = image * mask.lt(0.5).to_kind(Kind::Float);
        let masked_latents = self.encode_image(&masked, noise)?;
        Ok(Start {
            latents,
            inpaint: Some(Inpaint {
                mask: crate::init_image::latent_mask(&mask, h, w, self.device, self.kind),
                masked_latents: inpainting_unet.then_some(masked_latents),
                image_latents: if inpainting_unet { None } else { known },
                noise: eps,
            }),
        })
    }

    /// Images `[n, 3, H, W]` in [-1, 1] → the encoder's sampled latents, scaled as the
    /// UNet sees them, one draw per request from its generator. SDXL encodes a
    /// `force_upcast` VAE in fp32 and applies `latents_mean`/`latents_std` when given.
    fn encode_image(&self, image: &Tensor, noise: &mut BatchNoise) -> Result<Tensor> {
        let sdxl = self.spec.arch == Arch::Sdxl;
        let upcast = sdxl && self.vae.config.force_upcast && self.aux.kind == Kind::Half;
        let (vae, kind) = if upcast { (self.vae_fp32()?, Kind::Float) } else { (&self.vae, self.aux.kind) };
        let (mean, std) = vae.encode_distribution(&image.to_device(self.aux.device).to_kind(kind));
        let eps = noise.randn(&mean.size(), self.aux.device, Kind::Float).to_kind(kind);
        let z = mean + std * eps;
        self.finite(&z, crate::finite::Component::VaeEncoder)?;
        let c = &vae.config;
        let z = match (&c.latents_mean, &c.latents_std) {
            (Some(m), Some(s)) if sdxl && m.len() as i64 == z.size()[1] && s.len() as i64 == z.size()[1] => {
                let (zk, zd) = (z.kind(), z.device());
                let per = |v: &[f64]| Tensor::from_slice(v).view([1, -1, 1, 1]).to_kind(zk).to_device(zd);
                (z - per(m)) * c.scaling_factor / per(s)
            }
            _ => z * c.scaling_factor,
        };
        Ok(z.to_device(self.device).to_kind(self.kind))
    }

    /// The conditioning of one pass for a batch of requests at the first step: the prompts'
    /// (or, with `negative`, the negative prompts') encodings, and for SDXL the pooled
    /// embeddings and the size/crop ids. The denoising loop stacks the negative pass before
    /// the positive. Fails when the rows' token counts differ (A1111 prompts of different
    /// lengths), which the loop runs as separate UNet calls.
    pub fn conditioning(&self, reqs: &[Request], negative: bool) -> Result<Conditioning> {
        let rows = self.schedules(reqs, negative)?;
        let picked: Vec<&Conditioning> = rows.iter().map(|r| &r[0].1).collect();
        catch_torch("encoding the prompt", || Ok(cat_rows(&picked)))
    }

    /// Per request, its conditioning schedule for one pass: `(end_step, conditioning of
    /// batch 1)` pairs as [`crate::prompt::schedule`] gives them (one pair for plain prompts).
    fn schedules(&self, reqs: &[Request], negative: bool) -> Result<Vec<Vec<(usize, Conditioning)>>> {
        catch_torch("encoding the prompt", || reqs.iter().map(|r| self.row_schedule(r, negative)).collect())
    }

    fn row_schedule(&self, r: &Request, negative: bool) -> Result<Vec<(usize, Conditioning)>> {
        let sdxl = self.text_encoder_2.is_some();
        let a1111 = r.prompt_syntax == PromptSyntax::A1111;
        if !self.unet.has_added_conditioning() && !r.size_conditioning.is_unset() {
            return Err(Error::invalid(
                "--original-size, --crop-coords and --target-size (and their negative forms) are SDXL's size \
                 conditioning; this model's UNet has no added conditioning to take them",
            ));
        }
        let text = if negative { r.negative_prompt.as_deref() } else { Some(r.prompt.as_str()) };
        // SDXL without a negative prompt: zeros, as diffusers (`force_zeros_for_empty_prompt`)
        // and A1111 (which also zeros an empty one) do.
        let zeros = negative
            && sdxl
            && self.spec.force_zeros_for_empty_prompt
            && (text.is_none() || (a1111 && text.is_some_and(str::is_empty)));
        let plan: Vec<(usize, String)> = match text {
            Some(t) if a1111 && !zeros => crate::prompt::schedule(t, r.steps),
            Some(t) => vec![(r.steps.max(1), t.to_string())],
            None => vec![(r.steps.max(1), String::new())],
        };
        let mut out = Vec::with_capacity(plan.len());
        for (end, t) in plan {
            let e = if zeros {
                // The shapes of a one-chunk encoding (the prompt's, as diffusers zeros it).
                let like = if a1111 { "" } else { r.prompt.as_str() };
                self.encode(like, r.clip_skip, false, false)?.zeros_like()
            } else {
                self.encode(&t, r.clip_skip, negative, a1111)?
            };
            let time_ids = if self.unet.has_added_conditioning() {
                let c = &r.size_conditioning;
                let ids = if negative { c.negative_time_ids(r.width, r.height) } else { c.time_ids(r.width, r.height) };
                let ids: Vec<f32> = ids.iter().map(|&v| v as f32).collect();
                Some(Tensor::from_slice(&ids).view([1, 6]).to_device(self.device).to_kind(self.kind))
            } else {
                None
            };
            let pooled = match (self.unet.has_added_conditioning(), e.pooled) {
                (false, _) => None,
                (true, Some(p)) => Some(p),
                (true, None) => {
                    return Err(Error::Model(
                        "this UNet needs a pooled text embedding, which needs SDXL's second text encoder".into(),
                    ))
                }
            };
            out.push((end, Conditioning { context: e.context, pooled, time_ids }));
        }
        Ok(out)
    }

    /// The UNet on `x` (one row per conditioning row) at `t` with each row's conditioning
    /// at sampling step `k`. Rows whose token counts differ (A1111 prompts with more chunks
    /// than their negative) run as separate UNet calls, as A1111 does by default.
    fn unet_rows(&self, x: &Tensor, t: f64, rows: &[Vec<(usize, Conditioning)>], k: usize) -> Result<Tensor> {
        let picked: Vec<&Conditioning> = rows.iter().map(|sched| &sched[crate::prompt::index_at(sched, k)].1).collect();
        let len = |c: &Conditioning| c.context.size().get(1).copied().unwrap_or(0);
        if picked.iter().all(|c| len(c) == len(picked[0])) {
            return self.unet.forward_cond(x, t, &cat_rows(&picked));
        }
        let mut outs = Vec::new();
        let mut start = 0;
        while start < picked.len() {
            let mut end = start + 1;
            while end < picked.len() && len(picked[end]) == len(picked[start]) {
                end += 1;
            }
            let part = x.narrow(0, start as i64, (end - start) as i64);
            outs.push(self.unet.forward_cond(&part, t, &cat_rows(&picked[start..end]))?);
            start = end;
        }
        Ok(Tensor::cat(&outs, 0))
    }

    /// Text → embeddings `[1, 77, hidden]`, warning when the prompt was cut. `clip_skip`
    /// counts as A1111 does: 1 (or `None`) is the last layer, 2 the one before. For SDXL the
    /// states are both encoders' concatenated (see [`Pipeline::encode`]).
    pub fn encode_text(&self, text: &str, clip_skip: Option<usize>) -> Result<Tensor> {
        Ok(self.encode(text, clip_skip, false, false)?.context)
    }

    /// [`Pipeline::encode_text`] for a prompt in A1111's syntax: emphasis, `BREAK` and any
    /// length, as `[1, 77 × chunks, hidden]` (one text: no editing or alternation).
    pub fn encode_a1111(&self, text: &str, clip_skip: Option<usize>) -> Result<Tensor> {
        Ok(self.encode(text, clip_skip, false, true)?.context)
    }

    /// [`Pipeline::encode_text`] with SDXL's pooled embedding, cached. For SDXL, as diffusers
    /// encodes: each encoder's `hidden_states[-(k + 2)]` without the final layer norm, where `k`
    /// is diffusers' clip skip (A1111's minus one, 0 when unset), concatenated along the width;
    /// the pooled, projected output of the second. A negative prompt always uses
    /// `hidden_states[-2]`, as diffusers ignores clip skip there.
    fn encode(&self, text: &str, clip_skip: Option<usize>, negative: bool, a1111: bool) -> Result<TextEmbeds> {
        let layer = match (&self.text_encoder_2, negative) {
            (None, _) => clip_skip,
            (Some(_), true) => Some(2),
            (Some(_), false) => Some(clip_skip.unwrap_or(1).max(1) + 1),
        };
        let key = (text.to_string(), layer, a1111);
        if let Some(hit) = self.embed_cache.borrow().get(&key) {
            return Ok(hit.shallow_clone());
        }
        let embeds = catch_torch("encoding the prompt", || {
            if a1111 {
                self.encode_chunks(text, layer)
            } else {
                self.encode_uncached(text, layer)
            }
        })?;
        let mut cache = self.embed_cache.borrow_mut();
        if cache.len() >= EMBED_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(key, embeds.shallow_clone());
        Ok(embeds)
    }

    /// A1111's encoding of one prompt text (no editing left): weighted pieces packed into
    /// 75-token chunks, each encoded alone, its states multiplied by the token weights and
    /// rescaled to the chunk's mean before weighting ("Original" emphasis), chunks
    /// concatenated. SDXL: per encoder (the second pads with its own pad token), states
    /// concatenated, the pooled embedding from the first chunk. `layer` as in
    /// [`Pipeline::encode_uncached`].
    fn encode_chunks(&self, text: &str, layer: Option<usize>) -> Result<TextEmbeds> {
        let pieces = crate::prompt::parse_attention(text);
        let tok = &self.tokenizer;
        let specials = crate::prompt::Specials {
            bos: tok.bos_id(),
            eos: tok.eos_id(),
            pad: tok.pad_id(),
            comma: tok.tokenize(",").first().copied(),
        };
        let mut chunks = crate::prompt::chunks(&pieces, &|t| tok.tokenize(t), &|id| tok.group_len(id), specials);
        if chunks.len() > crate::prompt::MAX_CHUNKS {
            // A prompt of thousands of words would make every attention layer as long: cut.
            let dropped: Vec<i64> = chunks[crate::prompt::MAX_CHUNKS..]
                .iter()
                .flat_map(|c| c.ids.iter().copied())
                .filter(|&i| i != specials.bos && i != specials.eos && i != specials.pad)
                .collect();
            log::warn!(
                "the prompt is longer than {} chunks of {} tokens; the rest was cut off: {}",
                crate::prompt::MAX_CHUNKS,
                crate::prompt::CHUNK_TOKENS,
                crate::limits::excerpt(&tok.decode(&dropped), 12)
            );
            chunks.truncate(crate::prompt::MAX_CHUNKS);
        }
        let chunks2 = self.tokenizer_2.as_ref().map(|tok2| {
            let specials2 = crate::prompt::Specials {
                bos: tok2.bos_id(),
                eos: tok2.eos_id(),
                pad: tok2.pad_id(),
                comma: tok2.tokenize(",").first().copied(),
            };
            crate::prompt::chunks(&pieces, &|t| tok2.tokenize(t), &|id| tok2.group_len(id), specials2)
        });
        let mut states = Vec::with_capacity(chunks.len());
        let mut pooled = None;
        for (n, chunk) in chunks.iter().enumerate() {
            let ids = Tensor::from_slice(&chunk.ids).view([1, -1]).to_device(self.aux.device);
            let weights = Tensor::from_slice(&chunk.weights).view([1, -1, 1]).to_device(self.aux.device);
            let uniform = chunk.weights.iter().all(|&w| w == 1.0);
            let emphasis = |z: Tensor| -> Tensor {
                if uniform {
                    return z;
                }
                let before = z.mean(z.kind());
                let weighted = &z * weights.to_kind(z.kind());
                let after = weighted.mean(z.kind());
                weighted * (before / after)
            };
            let z = match (&self.text_encoder_2, &self.tokenizer_2) {
                (Some(te2), Some(tok2)) => {
                    let from_end = layer.unwrap_or(2);
                    let first = emphasis(self.text_encoder.hidden_state(&ids, from_end)?.hidden);
                    // The second tokenizer's own chunk (it pads with its own token and, like
                    // diffusers', splits its pad token "!" out of words); when that gives
                    // another chunk count, the first's ids padded with its pad token, as A1111.
                    let ids2 = match chunks2.as_ref().filter(|c| c.len() == chunks.len()) {
                        Some(c2) => c2[n].ids.clone(),
                        None => {
                            let eos = chunk.ids.iter().position(|&i| i == specials.eos).unwrap_or(chunk.ids.len());
                            chunk
                                .ids
                                .iter()
                                .enumerate()
                                .map(|(k, &i)| if k > eos { tok2.pad_id() } else { i })
                                .collect()
                        }
                    };
                    let ids2 = Tensor::from_slice(&ids2).view([1, -1]).to_device(self.aux.device);
                    let out2 = te2.hidden_state(&ids2, from_end)?;
                    if n == 0 {
                        pooled = Some(out2.pooled);
                    }
                    let second = emphasis(out2.hidden);
                    Tensor::cat(&[&first, &second.to_kind(first.kind())], -1)
                }
                _ => emphasis(self.text_encoder.forward(&ids, layer.map(|n| n.saturating_sub(1)))?.hidden),
            };
            states.push(z);
        }
        let context = Tensor::cat(&states, 1);
        self.finite(&context, crate::finite::Component::TextEncoder)?;
        let to_unet = |t: Tensor| t.to_device(self.device).to_kind(self.kind);
        Ok(TextEmbeds { context: to_unet(context), pooled: pooled.map(to_unet) })
    }

    /// Token ids `[1, 77]` of `text` on the text encoders' device, warning when it was cut.
    fn token_ids(&self, tokenizer: &Tokenizer, text: &str, warn: bool) -> Tensor {
        let enc = tokenizer.encode(text);
        if enc.truncated && warn {
            log::warn!(
                "the prompt is longer than CLIP's {} tokens; the rest was cut off: {}",
                tokenizer.max_length(),
                crate::limits::excerpt(&enc.removed_text, 12)
            );
        }
        Tensor::from_slice(&enc.ids).view([1, -1]).to_device(self.aux.device)
    }

    /// `layer`: SD 1.x/2.x, A1111's clip skip; SDXL, the hidden state counted from the end.
    fn encode_uncached(&self, text: &str, layer: Option<usize>) -> Result<TextEmbeds> {
        let ids = self.token_ids(&self.tokenizer, text, true);
        let (context, pooled) = match (&self.text_encoder_2, &self.tokenizer_2) {
            (Some(te2), Some(tok2)) => {
                let from_end = layer.unwrap_or(2);
                let first = self.text_encoder.hidden_state(&ids, from_end)?;
                let second = te2.hidden_state(&self.token_ids(tok2, text, false), from_end)?;
                (Tensor::cat(&[&first.hidden, &second.hidden.to_kind(first.hidden.kind())], -1), Some(second.pooled))
            }
            _ => {
                // Requests count clip skip as A1111 does (1 = last layer); diffusers counts skipped layers.
                (self.text_encoder.forward(&ids, layer.map(|n| n.saturating_sub(1)))?.hidden, None)
            }
        };
        self.finite(&context, crate::finite::Component::TextEncoder)?;
        // With offload the encoders ran on the CPU: bring their output to the UNet.
        let to_unet = |t: Tensor| t.to_device(self.device).to_kind(self.kind);
        Ok(TextEmbeds { context: to_unet(context), pooled: pooled.map(to_unet) })
    }

    /// Latents → 8-bit RGB images, as diffusers' `output_type="pil"` computes them.
    ///
    /// diffusers 0.36's `StableDiffusionPipeline` decodes in the VAE's dtype and ignores the
    /// VAE config's `force_upcast` (only the SDXL pipelines read it), so sdgen does too: an
    /// fp16 decode that stays finite equals diffusers'. One that overflows is redone in fp32
    /// (with a warning, once per pipeline) instead of giving a black image.
    pub fn decode(&self, latents: &Tensor) -> Result<Vec<Image>> {
        catch_torch("decoding the image", || self.decode_inner(latents))
    }

    fn decode_inner(&self, latents: &Tensor) -> Result<Vec<Image>> {
        let _guard = tch::no_grad_guard();
        // diffusers' SDXL pipelines decode an fp16 VAE whose config says `force_upcast` in
        // fp32 from the start (SDXL's VAE overflows in fp16); the SD pipeline does not.
        let upcast = self.spec.arch == Arch::Sdxl && self.vae.config.force_upcast && self.aux.kind == Kind::Half;
        let (vae, kind) = if upcast { (self.vae_fp32()?, Kind::Float) } else { (&self.vae, self.aux.kind) };
        let z = unscale(vae, &latents.to_device(self.aux.device).to_kind(kind), self.spec.arch == Arch::Sdxl)?;
        let mut x = self.run_vae(vae, &z)?;
        if kind != Kind::Float && !bool::try_from(x.isfinite().all())? {
            if !self.warned_vae_upcast.replace(true) {
                log::warn!(
                    "the {} VAE decoded to non-finite values (it overflows in half precision); \
                     decoding again in fp32, which keeps an fp32 copy of the VAE in memory",
                    kind_name(self.aux.kind)
                );
            }
            let vae = self.vae_fp32()?;
            let z =
                unscale(vae, &latents.to_device(self.aux.device).to_kind(Kind::Float), self.spec.arch == Arch::Sdxl)?;
            x = self.run_vae(vae, &z)?;
        }
        self.finite(&x, crate::finite::Component::VaeDecoder)?;
        let x = (x / 2.0 + 0.5).clamp(0.0, 1.0).to_kind(Kind::Float).to_device(Device::Cpu);
        let u8s = (x.permute([0, 2, 3, 1]) * 255.0).round().to_kind(Kind::Uint8).contiguous();
        let (b, h, w, _) = u8s.size4()?;
        let flat = Vec::<u8>::try_from(u8s.view([-1]))?;
        let per = (h * w * 3) as usize;
        Ok((0..b as usize)
            .map(|i| Image { width: w as u32, height: h as u32, rgb: flat[i * per..(i + 1) * per].to_vec() })
            .collect())
    }

    /// The VAE's image for `z` (already divided by the scaling factor), tiled if asked.
    fn run_vae(&self, vae: &Vae, z: &Tensor) -> Result<Tensor> {
        match self.vae_tiling {
            Some(t) => vae.decode_tiled(z, t),
            None => Ok(vae.decode(z)),
        }
    }

    /// Errors unless `t` is finite (or non-finite values are allowed, then warns once).
    fn finite(&self, t: &Tensor, component: crate::finite::Component) -> Result<()> {
        crate::finite::check_with(t, component, self.limits.allow_non_finite, &self.warned_non_finite)
    }

    /// The fp32 VAE on the VAE's device, loaded from the weights again the first time.
    fn vae_fp32(&self) -> Result<&Vae> {
        if let Some(v) = self.vae_fp32.get() {
            return Ok(v);
        }
        let vae = load_vae(&self.spec, self.aux.device, Kind::Float, self.conv)?;
        Ok(self.vae_fp32.get_or_init(|| vae))
    }
}

/// Batch-1 conditionings stacked into one batch.
fn cat_rows(rows: &[&Conditioning]) -> Conditioning {
    let cat = |get: &dyn Fn(&Conditioning) -> Option<&Tensor>| -> Option<Tensor> {
        let parts: Option<Vec<&Tensor>> = rows.iter().map(|c| get(c)).collect();
        parts.map(|p| Tensor::cat(&p, 0))
    };
    Conditioning {
        context: Tensor::cat(&rows.iter().map(|c| &c.context).collect::<Vec<_>>(), 0),
        pooled: cat(&|c| c.pooled.as_ref()),
        time_ids: cat(&|c| c.time_ids.as_ref()),
    }
}

/// The denoised latents as the VAE decodes them: divided by the scaling factor or, in SDXL
/// pipelines (`mean_std`) with a VAE whose config gives per-channel `latents_mean` and
/// `latents_std`, `latents · std / scaling_factor + mean`. diffusers' SD 1.x/2.x pipeline
/// only divides.
fn unscale(vae: &Vae, latents: &Tensor, mean_std: bool) -> Result<Tensor> {
    let c = &vae.config;
    match (&c.latents_mean, &c.latents_std) {
        (Some(mean), Some(std)) if mean_std => {
            let channels = latents.size().get(1).copied().unwrap_or(0);
            if mean.len() as i64 != channels || std.len() as i64 != channels {
                return Err(Error::config(
                    &c.path,
                    format!(
                        "latents_mean and latents_std have {} and {} entries but the latents have {channels} channels",
                        mean.len(),
                        std.len()
                    ),
                ));
            }
            let per_channel = |v: &[f64]| {
                Tensor::from_slice(v).view([1, -1, 1, 1]).to_kind(latents.kind()).to_device(latents.device())
            };
            Ok(latents * per_channel(std) / c.scaling_factor + per_channel(mean))
        }
        _ => Ok(latents / c.scaling_factor),
    }
}

/// "name" from a hub label "owner/name@revision".
fn hub_model_name(label: &str) -> String {
    let repo = label.split('@').next().unwrap_or(label);
    repo.rsplit('/').next().unwrap_or(repo).to_string()
}

/// The checks that need no model.
/// What the pipeline applies for a request's LoRA records.
fn lora_requests(req: &Request) -> Vec<crate::lora::LoraRequest> {
    req.loras.iter().map(|l| crate::lora::LoraRequest { path: l.path.clone(), weight: l.weight }).collect()
}

pub fn check_request(req: &Request, limits: &crate::limits::Limits) -> Result<()> {
    crate::init_image::check_request(req).map_err(Error::invalid)?;
    for (what, v) in [("width", req.width), ("height", req.height)] {
        if v == 0 || v % 8 != 0 {
            return Err(Error::invalid(format!("{what} {v} is not a positive multiple of 8")));
        }
    }
    if req.steps == 0 {
        return Err(Error::invalid("steps must be at least 1"));
    }
    if !req.guidance.is_finite() || req.guidance < 0.0 {
        return Err(Error::invalid(format!("guidance {} must be a number ≥ 0", req.guidance)));
    }
    if req.num_images == 0 {
        return Err(Error::invalid("num_images must be at least 1"));
    }
    limits.check(req)
}

/// One independent generator per image in a batch, as diffusers does with a list of
/// generators: each draw takes batch row `i` from stream `i`.
struct BatchNoise {
    streams: Vec<SeededNoise>,
}

impl NoiseSource for BatchNoise {
    fn randn(&mut self, shape: &[i64], device: Device, kind: Kind) -> Tensor {
        let mut row = shape.to_vec();
        if row.is_empty() || row[0] != self.streams.len() as i64 {
            // A shape without our batch dimension: draw it whole from the first stream.
            return self.streams[0].randn(shape, device, kind);
        }
        row[0] = 1;
        let parts: Vec<Tensor> = self.streams.iter_mut().map(|s| s.randn(&row, Device::Cpu, Kind::Float)).collect();
        Tensor::cat(&parts, 0).to_device(device).to_kind(kind)
    }
}
