//! Single-file Stable Diffusion checkpoints: one `.safetensors` in the original CompVis/A1111
//! layout holding UNet, VAE and text encoder (SDXL: Stability's SGM layout, with two text
//! encoders), without configs or tokenizers.
//!
//! [`inspect`] reads the file's header, tells SD 1.x, SD 2.x and SDXL apart (SDXL by its
//! layout, the others by the text width), derives what the shapes say
//! about each model and builds, per model, the map from diffusers names to stored tensors
//! (see `ldm_keys`). [`ConfigSet`] supplies the configs the file lacks: the standard SD 1.5
//! or SD 2.1 ones compiled into sdgen, or a diffusers folder's (`--config-dir`, the
//! equivalent of diffusers' `from_single_file(config=...)`). [`prepare`] does both and checks
//! that configs and weights describe the same model.
//!
//! Prediction type: a checkpoint cannot say whether it predicts noise or v (SD 2.x-base and
//! SD 2.1-768 have identical shapes; diffusers guesses from the `global_step` of a pickled
//! `.ckpt`, which a `.safetensors` file lacks, and then assumes v). sdgen's rule: an explicit
//! `--prediction-type` wins; otherwise the scheduler config decides, which for the built-in
//! configs means epsilon for SD 1.x and v_prediction for SD 2.x (the 768-v model).

use crate::loading::config::parse_json;
use crate::loading::ldm_keys::{self, Header, Ignored, TextFormat, TextLayout, UNetLayout, VaeLayout};
use crate::loading::weights::MappedFile;
use crate::loading::{Source, Weights};
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// The Stable Diffusion family of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// SD 1.x: CLIP ViT-L/14 text encoder, cross-attention width 768.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder, cross-attention width 1024.
    Sd2,
    /// SDXL: two text encoders (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, cross-attention
    /// width 2048) and added conditioning (pooled text, size and crop ids).
    Sdxl,
}

impl Arch {
    /// The short name used on the command line and in `data/configs/`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd1 => "sd1",
            Arch::Sd2 => "sd2",
            Arch::Sdxl => "sdxl",
        }
    }

    /// Parses `sd1`/`sd2`/`sdxl` (also `1`, `2`, `v1`, `v2`, `sd15`, `sd21`, `sd1.5`, `sd2.1`, `xl`).
    pub fn parse(s: &str) -> Result<Arch> {
        let t = s.trim().to_ascii_lowercase().replace(['-', '_', ' '], "");
        match t.as_str() {
            "sd1" | "1" | "v1" | "sd15" | "sd1.5" | "sd1.x" | "sd14" | "sd1.4" => Ok(Arch::Sd1),
            "sd2" | "2" | "v2" | "sd21" | "sd2.1" | "sd2.x" | "sd20" | "sd2.0" => Ok(Arch::Sd2),
            "sdxl" | "xl" | "sdxl1.0" | "sdxl10" => Ok(Arch::Sdxl),
            _ => Err(Error::invalid(format!("unknown architecture '{s}': expected sd1, sd2 or sdxl"))),
        }
    }

    /// The prediction type of this family's standard scheduler config.
    pub fn default_prediction_type(self) -> &'static str {
        match self {
            Arch::Sd1 | Arch::Sdxl => "epsilon",
            Arch::Sd2 => "v_prediction",
        }
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Arch, D::Error> {
        let s = String::deserialize(d)?;
        Arch::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Sd1 => "SD 1.x",
            Arch::Sd2 => "SD 2.x",
            Arch::Sdxl => "SDXL",
        })
    }
}

/// What decided [`SingleFile::arch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// The UNet's cross-attention width: 768 is SD 1.x, 1024 is SD 2.x.
    CrossAttentionWidth,
    /// Any other width (small test models): the text encoder's layout, CLIP or OpenCLIP.
    TextEncoderFormat,
    /// SDXL's layout: two text encoders under `conditioner.embedders.` (or, in a file
    /// without text encoders, the UNet's added conditioning `label_emb.0`).
    SgmLayout,
    /// The caller said so.
    Override,
}

/// One of the three models in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Unet,
    Vae,
    TextEncoder,
    /// SDXL's second text encoder (`conditioner.embedders.1`).
    TextEncoder2,
}

impl Component {
    /// The diffusers folder name.
    pub fn folder(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// What [`inspect`] learned from a checkpoint's header.
#[derive(Debug, Clone)]
pub struct SingleFile {
    pub path: PathBuf,
    pub arch: Arch,
    pub detected_by: Detection,
    /// The UNet takes 9 input channels (latents, mask, masked image).
    pub inpainting: bool,
    pub unet: UNetLayout,
    pub vae: VaeLayout,
    pub text_encoder: TextLayout,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG, with its projection).
    pub text_encoder_2: Option<TextLayout>,
    /// Diffusers name → stored tensor, per model.
    pub unet_sources: BTreeMap<String, Source>,
    pub vae_sources: BTreeMap<String, Source>,
    pub text_encoder_sources: BTreeMap<String, Source>,
    /// SDXL: the second text encoder's tensors (empty for SD 1.x/2.x).
    pub text_encoder_2_sources: BTreeMap<String, Source>,
    /// Stored tensors no model loads, each with its reason.
    pub ignored: Vec<Ignored>,
    header: Header,
}

impl SingleFile {
    pub fn sources(&self, c: Component) -> &BTreeMap<String, Source> {
        match c {
            Component::Unet => &self.unet_sources,
            Component::Vae => &self.vae_sources,
            Component::TextEncoder => &self.text_encoder_sources,
            Component::TextEncoder2 => &self.text_encoder_2_sources,
        }
    }

    /// Re-maps an OpenCLIP text encoder to use `layers` blocks (a config's
    /// `num_hidden_layers`) instead of all but the last; see [`ldm_keys::text`].
    pub fn use_openclip_layers(&mut self, layers: usize) -> Result<()> {
        if self.text_encoder.format != TextFormat::OpenClip || layers == self.text_encoder.num_hidden_layers {
            return Ok(());
        }
        let (layout, sources, ignored) = ldm_keys::text(&self.header, Some(layers))?;
        self.ignored.retain(|i| !i.key.starts_with(ldm_keys::TEXT_PREFIX));
        self.ignored.extend(ignored);
        self.text_encoder = layout;
        self.text_encoder_sources = sources;
        Ok(())
    }

    /// The weights of one model, by diffusers names; `finish()` judges this model's tensors only.
    pub fn weights(&self, c: Component, device: Device, kind: Kind) -> Result<Weights> {
        Weights::open_mapped(std::slice::from_ref(&self.path), device, kind, self.sources(c).clone())
    }
}

/// Reads a checkpoint's header and maps its tensors; the architecture comes from the shapes.
pub fn inspect(path: &Path) -> Result<SingleFile> {
    inspect_with(path, None)
}

/// Like [`inspect`], with the architecture forced when `arch` is given.
pub fn inspect_with(path: &Path, arch: Option<Arch>) -> Result<SingleFile> {
    let (_file, entries) = MappedFile::open(path)?;
    let shapes = entries.into_iter().map(|(name, e)| (name, e.shape)).collect();
    inspect_header(&Header::new(path, shapes), arch)
}

/// The work of [`inspect_with`] on a header already read (tests feed full-size layouts here).
pub fn inspect_header(h: &Header, arch: Option<Arch>) -> Result<SingleFile> {
    let has = |prefix: &str| h.shapes.keys().any(|k| k.starts_with(prefix));
    let (ldm_text, sgm_text) = (has(ldm_keys::TEXT_PREFIX), has(ldm_keys::SGM_TEXT_PREFIX));
    let added = h.shapes.contains_key(&format!("{}label_emb.0.0.weight", ldm_keys::UNET_PREFIX));
    if ldm_text && sgm_text {
        return Err(Error::weights(
            &h.path,
            format!(
                "the file holds both an SD 1.x/2.x text encoder ('{}*') and SDXL's ('{}*'): it does not hold one \
                 Stable Diffusion model",
                ldm_keys::TEXT_PREFIX,
                ldm_keys::SGM_TEXT_PREFIX
            ),
        ));
    }
    let sdxl = sgm_text || (added && !ldm_text);
    if has(ldm_keys::UNET_PREFIX) && !has(ldm_keys::VAE_PREFIX) && !ldm_text && !sgm_text {
        return Err(Error::weights(
            &h.path,
            format!(
                "the file holds only a UNet ('{}*'), without the VAE ('{}*') and text encoder{}: sdgen needs a \
                 whole checkpoint, or a diffusers folder",
                ldm_keys::UNET_PREFIX,
                ldm_keys::VAE_PREFIX,
                if sdxl { "s" } else { "" }
            ),
        ));
    }
    match (arch, sdxl) {
        (Some(a @ (Arch::Sd1 | Arch::Sd2)), true) => {
            return Err(Error::weights(
                &h.path,
                format!(
                    "--arch {} was given, but this is an SDXL checkpoint (text encoders under '{}*', added \
                     conditioning in the UNet); use --arch sdxl or leave --arch out",
                    a.name(),
                    ldm_keys::SGM_TEXT_PREFIX
                ),
            ))
        }
        (Some(Arch::Sdxl), false) => {
            return Err(Error::weights(
                &h.path,
                format!(
                    "--arch sdxl was given, but this is not an SDXL checkpoint: it has no SDXL text encoders \
                     ('{}*'){}; use --arch sd1 or sd2, or leave --arch out",
                    ldm_keys::SGM_TEXT_PREFIX,
                    if ldm_text {
                        format!(" but an SD 1.x/2.x one ('{}*')", ldm_keys::TEXT_PREFIX)
                    } else {
                        String::new()
                    }
                ),
            ))
        }
        _ => {}
    }

    let mut ignored = ldm_keys::outside(h)?;
    let (unet, unet_sources) = ldm_keys::unet(h, sdxl)?;
    let (vae, vae_sources) = ldm_keys::vae(h)?;
    let (text_encoder, text_encoder_sources, text_encoder_2, text_encoder_2_sources) = if sdxl {
        let ((te1, te1_sources, te1_ignored), (te2, te2_sources, te2_ignored)) = ldm_keys::sgm_text(h)?;
        ignored.extend(te1_ignored);
        ignored.extend(te2_ignored);
        (te1, te1_sources, Some(te2), te2_sources)
    } else {
        let (te, sources, text_ignored) = ldm_keys::text(h, None)?;
        ignored.extend(text_ignored);
        (te, sources, None, BTreeMap::new())
    };

    let inpainting = match unet.in_channels {
        4 => false,
        9 => true,
        n => {
            return Err(Error::weights(
                &h.path,
                format!(
                    "the UNet takes {n} input channels; sdgen knows text-to-image (4) and inpainting (9) UNets, \
                     not this variant (depth, instruct-pix2pix, ...)"
                ),
            ))
        }
    };
    // SDXL's UNet attends to both encoders' hidden states, concatenated.
    let (text_width, what) = match &text_encoder_2 {
        Some(te2) => (
            text_encoder.hidden_size + te2.hidden_size,
            format!(
                "the text encoders have widths {} + {} = {}",
                text_encoder.hidden_size,
                te2.hidden_size,
                text_encoder.hidden_size + te2.hidden_size
            ),
        ),
        None => (text_encoder.hidden_size, format!("the text encoder has width {}", text_encoder.hidden_size)),
    };
    if unet.cross_attention_dim != text_width {
        return Err(Error::weights(
            &h.path,
            format!(
                "the UNet attends to text of width {} but {what}: the file does not hold one Stable Diffusion model",
                unet.cross_attention_dim
            ),
        ));
    }
    let (arch, detected_by) = match (arch, sdxl, unet.cross_attention_dim, text_encoder.format) {
        (Some(a), _, _, _) => (a, Detection::Override),
        (None, true, _, _) => (Arch::Sdxl, Detection::SgmLayout),
        (None, false, 768, _) => (Arch::Sd1, Detection::CrossAttentionWidth),
        (None, false, 1024, _) => (Arch::Sd2, Detection::CrossAttentionWidth),
        (None, false, _, TextFormat::HfClip) => (Arch::Sd1, Detection::TextEncoderFormat),
        (None, false, _, TextFormat::OpenClip) => (Arch::Sd2, Detection::TextEncoderFormat),
    };
    Ok(SingleFile {
        path: h.path.clone(),
        arch,
        detected_by,
        inpainting,
        unet,
        vae,
        text_encoder,
        text_encoder_2,
        unet_sources,
        vae_sources,
        text_encoder_sources,
        text_encoder_2_sources,
        ignored,
        header: h.clone(),
    })
}

/// The files of a diffusers folder that a single file needs besides its weights, relative
/// to the folder.
pub const CONFIG_FILES: [&str; 8] = [
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
];

/// A transformers 5 tokenizer folder has this instead of `vocab.json` and `merges.txt`
/// (and no `special_tokens_map.json`); a config folder may have either kind.
pub const TOKENIZER_JSON: &str = "tokenizer/tokenizer.json";

/// What an SDXL checkpoint needs besides [`CONFIG_FILES`]: its second text encoder's config
/// and second tokenizer.
pub const SDXL_CONFIG_FILES: [&str; 5] = [
    "text_encoder_2/config.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
];

/// [`TOKENIZER_JSON`] of the second tokenizer.
pub const TOKENIZER_2_JSON: &str = "tokenizer_2/tokenizer.json";

const SCHEDULER: &str = "scheduler/scheduler_config.json";

macro_rules! data {
    ($rel:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/data/", $rel))
    };
}

/// SDXL base 1.0's second text encoder and tokenizer, beside [`standard_files`]`(Arch::Sdxl)`.
fn standard_sdxl_files() -> [&'static str; 5] {
    [
        data!("configs/sdxl/text_encoder_2/config.json"),
        data!("configs/sdxl/tokenizer_2/tokenizer_config.json"),
        data!("configs/sdxl/tokenizer_2/special_tokens_map.json"),
        data!("tokenizer/clip/vocab.json"),
        data!("tokenizer/clip/merges.txt"),
    ]
}

fn standard_files(arch: Arch) -> [&'static str; 8] {
    let (vocab, merges) = (data!("tokenizer/clip/vocab.json"), data!("tokenizer/clip/merges.txt"));
    match arch {
        Arch::Sd1 => [
            data!("configs/sd1/unet/config.json"),
            data!("configs/sd1/vae/config.json"),
            data!("configs/sd1/text_encoder/config.json"),
            data!("configs/sd1/scheduler/scheduler_config.json"),
            data!("configs/sd1/tokenizer/tokenizer_config.json"),
            data!("configs/sd1/tokenizer/special_tokens_map.json"),
            vocab,
            merges,
        ],
        Arch::Sdxl => [
            data!("configs/sdxl/unet/config.json"),
            data!("configs/sdxl/vae/config.json"),
            data!("configs/sdxl/text_encoder/config.json"),
            data!("configs/sdxl/scheduler/scheduler_config.json"),
            data!("configs/sdxl/tokenizer/tokenizer_config.json"),
            data!("configs/sdxl/tokenizer/special_tokens_map.json"),
            vocab,
            merges,
        ],
        Arch::Sd2 => [
            data!("configs/sd2/unet/config.json"),
            data!("configs/sd2/vae/config.json"),
            data!("configs/sd2/text_encoder/config.json"),
            data!("configs/sd2/scheduler/scheduler_config.json"),
            data!("configs/sd2/tokenizer/tokenizer_config.json"),
            data!("configs/sd2/tokenizer/special_tokens_map.json"),
            vocab,
            merges,
        ],
    }
}

/// One field [`ConfigSet::check`] compares: file, field, the configured and the stored value.
type Check = (&'static str, &'static str, Option<Value>, Value);

/// The configs and tokenizer files that turn a single file into the equivalent of a
/// diffusers folder ([`CONFIG_FILES`], or a transformers 5 tokenizer: see [`ConfigSet::from_dir`];
/// for SDXL also [`SDXL_CONFIG_FILES`]).
#[derive(Debug, Clone)]
pub struct ConfigSet {
    /// Where the files came from, used as the directory in messages.
    origin: PathBuf,
    files: BTreeMap<&'static str, Cow<'static, str>>,
}

impl ConfigSet {
    /// SD 1.5's, SD 2.1's or SDXL base 1.0's published configs, compiled into sdgen (see
    /// data/configs/README.md).
    pub fn standard(arch: Arch) -> ConfigSet {
        let mut files: BTreeMap<&'static str, Cow<'static, str>> =
            CONFIG_FILES.iter().zip(standard_files(arch)).map(|(rel, text)| (*rel, Cow::Borrowed(text))).collect();
        if arch == Arch::Sdxl {
            files.extend(SDXL_CONFIG_FILES.iter().zip(standard_sdxl_files()).map(|(rel, t)| (*rel, Cow::Borrowed(t))));
        }
        ConfigSet { origin: PathBuf::from(format!("<built-in {} configs>", arch.name())), files }
    }

    /// Whether these are an SDXL model's configs (they include a second text encoder).
    pub fn is_sdxl(&self) -> bool {
        self.files.contains_key(SDXL_CONFIG_FILES[0])
    }

    /// The configs of a diffusers folder (its weights are not read). The tokenizer may be
    /// saved by transformers 4 (all of [`CONFIG_FILES`]) or 5 ([`TOKENIZER_JSON`] instead of
    /// `vocab.json`, `merges.txt` and `special_tokens_map.json`, which the tokenizer does
    /// without). A folder with `text_encoder_2/` or `tokenizer_2/` is an SDXL folder and must
    /// also have [`SDXL_CONFIG_FILES`] (with the same choice for the second tokenizer).
    pub fn from_dir(dir: &Path) -> Result<ConfigSet> {
        let sdxl = dir.join("text_encoder_2").is_dir() || dir.join("tokenizer_2").is_dir();
        let has_json = dir.join(TOKENIZER_JSON).is_file();
        let has_json_2 = dir.join(TOKENIZER_2_JSON).is_file();
        let sdxl_files: &[&'static str] = if sdxl { &SDXL_CONFIG_FILES } else { &[] };
        let sdxl_json: &[&'static str] = if sdxl { &[TOKENIZER_2_JSON] } else { &[] };
        let mut files = BTreeMap::new();
        for rel in CONFIG_FILES
            .into_iter()
            .chain([TOKENIZER_JSON])
            .chain(sdxl_files.iter().copied())
            .chain(sdxl_json.iter().copied())
        {
            let optional = match rel {
                TOKENIZER_JSON | TOKENIZER_2_JSON => true,
                "tokenizer/special_tokens_map.json" | "tokenizer_2/special_tokens_map.json" => true,
                "tokenizer/vocab.json" | "tokenizer/merges.txt" => has_json,
                "tokenizer_2/vocab.json" | "tokenizer_2/merges.txt" => has_json_2,
                _ => false,
            };
            let path = dir.join(rel);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    files.insert(rel, Cow::Owned(text));
                }
                Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::config(
                        &path,
                        format!(
                            "cannot read it ({e}); a config folder needs {} (or {TOKENIZER_JSON} instead of the \
                             tokenizer's vocab.json and merges.txt){}",
                            CONFIG_FILES.join(", "),
                            if sdxl {
                                format!(", and for SDXL also {}", SDXL_CONFIG_FILES.join(", "))
                            } else {
                                String::new()
                            }
                        ),
                    ))
                }
            }
        }
        Ok(ConfigSet { origin: dir.to_path_buf(), files })
    }

    /// Where the files came from: a folder, or `<built-in sd1 configs>`.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The text of one of [`CONFIG_FILES`] (or [`TOKENIZER_JSON`]); `None` when the folder lacks it.
    pub fn text(&self, rel: &str) -> Option<&str> {
        self.files.get(rel).map(|t| t.as_ref())
    }

    /// The path that names `rel` in messages (and its path in a folder origin).
    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.origin.join(rel)
    }

    /// Parses one JSON file into `T`, with errors naming the file and field.
    pub fn parse<T: DeserializeOwned>(&self, rel: &str) -> Result<T> {
        let text =
            self.text(rel).ok_or_else(|| Error::config(self.path_of(rel), "the config folder lacks this file"))?;
        parse_json(&self.path_of(rel), text)
    }

    /// The scheduler's `prediction_type` (diffusers' default, epsilon, when absent).
    pub fn prediction_type(&self) -> Result<String> {
        let v: Value = self.parse(SCHEDULER)?;
        match v.get("prediction_type") {
            None | Some(Value::Null) => Ok("epsilon".into()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => {
                Err(Error::config(self.path_of(SCHEDULER), format!("prediction_type is {other}, not a string")))
            }
        }
    }

    /// Overrides the scheduler's `prediction_type` (the CLI's `--prediction-type`).
    pub fn set_prediction_type(&mut self, prediction_type: &str) -> Result<()> {
        if !matches!(prediction_type, "epsilon" | "v_prediction" | "sample") {
            return Err(Error::invalid(format!(
                "unknown prediction type '{prediction_type}': expected epsilon, v_prediction or sample"
            )));
        }
        let mut v: Value = self.parse(SCHEDULER)?;
        let Some(obj) = v.as_object_mut() else {
            return Err(Error::config(self.path_of(SCHEDULER), "not a JSON object"));
        };
        obj.insert("prediction_type".into(), Value::String(prediction_type.into()));
        let text = serde_json::to_string_pretty(&v)
            .map_err(|e| Error::config(self.path_of(SCHEDULER), format!("cannot write it back: {e}")))?;
        self.files.insert(SCHEDULER, Cow::Owned(text + "\n"));
        Ok(())
    }

    /// Sets the UNet config's `in_channels` (the built-in configs for an inpainting file).
    pub fn set_unet_in_channels(&mut self, channels: i64) -> Result<()> {
        const UNET: &str = "unet/config.json";
        let mut v: Value = self.parse(UNET)?;
        let Some(obj) = v.as_object_mut() else {
            return Err(Error::config(self.path_of(UNET), "not a JSON object"));
        };
        obj.insert("in_channels".into(), Value::from(channels));
        let text = serde_json::to_string_pretty(&v)
            .map_err(|e| Error::config(self.path_of(UNET), format!("cannot write it back: {e}")))?;
        self.files.insert(UNET, Cow::Owned(text + "\n"));
        Ok(())
    }

    /// Errors unless these configs describe the checkpoint's models, field by field.
    pub fn check(&self, sf: &SingleFile) -> Result<()> {
        let unet: Value = self.parse("unet/config.json")?;
        let vae: Value = self.parse("vae/config.json")?;
        let text: Value = self.parse("text_encoder/config.json")?;
        let u = &sf.unet;
        let attention: Vec<Value> = u.attention.iter().map(|&a| Value::Bool(a)).collect();
        let down_attention = unet.get("down_block_types").and_then(Value::as_array).map(|types| {
            types.iter().map(|t| Value::Bool(t.as_str().is_some_and(|s| s.starts_with("CrossAttn")))).collect()
        });
        // Per level, as the tensors say it: levels without attention count 0 whatever the
        // config says for them (diffusers ignores it there too).
        let configured_depth = match unet.get("transformer_layers_per_block") {
            None | Some(Value::Null) => Some(vec![Value::from(1); u.attention.len()]),
            Some(Value::Array(list)) => Some(list.clone()),
            Some(one) => Some(vec![one.clone(); u.attention.len()]),
        };
        let mid_depth = configured_depth.as_ref().and_then(|d| d.last().cloned());
        let depth = configured_depth.map(|d| {
            if d.len() != u.attention.len() {
                return Value::Array(d);
            }
            d.iter().zip(&u.attention).map(|(v, &a)| if a { v.clone() } else { Value::from(0) }).collect()
        });
        let mut checks: Vec<Check> = vec![
            ("unet/config.json", "in_channels", unet.get("in_channels").cloned(), u.in_channels.into()),
            ("unet/config.json", "out_channels", unet.get("out_channels").cloned(), u.out_channels.into()),
            (
                "unet/config.json",
                "block_out_channels",
                unet.get("block_out_channels").cloned(),
                u.block_out_channels.clone().into(),
            ),
            ("unet/config.json", "layers_per_block", unet.get("layers_per_block").cloned(), u.layers_per_block.into()),
            (
                "unet/config.json",
                "cross_attention_dim",
                unet.get("cross_attention_dim").cloned(),
                u.cross_attention_dim.into(),
            ),
            (
                "unet/config.json",
                "use_linear_projection",
                Some(unet.get("use_linear_projection").cloned().unwrap_or(Value::Bool(false))),
                u.use_linear_projection.into(),
            ),
            ("unet/config.json", "down_block_types (which levels attend)", down_attention, attention.into()),
            (
                "unet/config.json",
                "transformer_layers_per_block (per level, 0 without attention)",
                depth,
                u.transformer_layers_per_block.clone().into(),
            ),
            (
                "unet/config.json",
                "transformer_layers_per_block (the last level's, which the mid-block uses)",
                mid_depth,
                u.mid_transformer_layers.into(),
            ),
            (
                "unet/config.json",
                "addition_embed_type",
                Some(unet.get("addition_embed_type").cloned().unwrap_or(Value::Null)),
                if u.added_conditioning_width.is_some() { "text_time".into() } else { Value::Null },
            ),
            (
                "vae/config.json",
                "block_out_channels",
                vae.get("block_out_channels").cloned(),
                sf.vae.block_out_channels.clone().into(),
            ),
            (
                "vae/config.json",
                "layers_per_block",
                vae.get("layers_per_block").cloned(),
                sf.vae.layers_per_block.into(),
            ),
            ("vae/config.json", "latent_channels", vae.get("latent_channels").cloned(), sf.vae.latent_channels.into()),
            (
                "text_encoder/config.json",
                "hidden_size",
                text.get("hidden_size").cloned(),
                sf.text_encoder.hidden_size.into(),
            ),
            (
                "text_encoder/config.json",
                "num_hidden_layers",
                text.get("num_hidden_layers").cloned(),
                sf.text_encoder.num_hidden_layers.into(),
            ),
            (
                "text_encoder/config.json",
                "intermediate_size",
                text.get("intermediate_size").cloned(),
                sf.text_encoder.intermediate_size.into(),
            ),
            (
                "text_encoder/config.json",
                "vocab_size",
                text.get("vocab_size").cloned(),
                sf.text_encoder.vocab_size.into(),
            ),
            (
                "text_encoder/config.json",
                "max_position_embeddings",
                text.get("max_position_embeddings").cloned(),
                sf.text_encoder.max_position_embeddings.into(),
            ),
        ];
        if let Some(te2) = &sf.text_encoder_2 {
            checks.extend(self.sdxl_checks(sf, te2, &unet)?);
        }
        for (rel, field, configured, stored) in checks {
            if configured.as_ref() != Some(&stored) {
                let configured = configured.map_or("absent".to_string(), |v| v.to_string());
                return Err(Error::config(
                    self.path_of(rel),
                    format!(
                        "{field} is {configured}, but the tensors of {} say {stored}: these configs do not describe \
                         this checkpoint; pass a diffusers folder whose configs match (--config-dir)",
                        sf.path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What an SDXL checkpoint adds to [`ConfigSet::check`]: the second text encoder, and
    /// the widths of the UNet's added conditioning (pooled text plus six time ids).
    fn sdxl_checks(&self, sf: &SingleFile, te2: &TextLayout, unet: &Value) -> Result<Vec<Check>> {
        const TE2: &str = "text_encoder_2/config.json";
        if self.text(TE2).is_none() {
            return Err(Error::config(
                self.path_of(TE2),
                format!(
                    "{} is an SDXL checkpoint, but these configs have no second text encoder: these configs do not \
                     describe this checkpoint; pass an SDXL diffusers folder (--config-dir)",
                    sf.path.display()
                ),
            ));
        }
        let text: Value = self.parse(TE2)?;
        let projection = te2.projection_dim.unwrap_or(0);
        let added = sf.unet.added_conditioning_width.unwrap_or(0);
        // Each of the six time ids is embedded to `addition_time_embed_dim` values.
        let time_width = added - projection;
        let per_id = if time_width % 6 == 0 {
            Value::from(time_width / 6)
        } else {
            Value::from(format!("({added} - {projection}) / 6, not a whole number"))
        };
        let field = |v: &Value, name: &str| v.get(name).cloned();
        Ok(vec![
            (TE2, "hidden_size", field(&text, "hidden_size"), te2.hidden_size.into()),
            (TE2, "num_hidden_layers", field(&text, "num_hidden_layers"), te2.num_hidden_layers.into()),
            (TE2, "intermediate_size", field(&text, "intermediate_size"), te2.intermediate_size.into()),
            (TE2, "vocab_size", field(&text, "vocab_size"), te2.vocab_size.into()),
            (
                TE2,
                "max_position_embeddings",
                field(&text, "max_position_embeddings"),
                te2.max_position_embeddings.into(),
            ),
            (TE2, "projection_dim", field(&text, "projection_dim"), projection.into()),
            (
                "unet/config.json",
                "projection_class_embeddings_input_dim",
                field(unet, "projection_class_embeddings_input_dim"),
                added.into(),
            ),
            ("unet/config.json", "addition_time_embed_dim", field(unet, "addition_time_embed_dim"), per_id),
        ])
    }

    /// Writes the files as a diffusers folder without weights (plus a `model_index.json`),
    /// for loaders that take a directory, such as the tokenizer.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        let scheduler_class = self
            .parse::<Value>(SCHEDULER)?
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("PNDMScheduler")
            .to_string();
        let mut index = serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "scheduler": ["diffusers", scheduler_class],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        });
        if let (true, Some(obj)) = (self.is_sdxl(), index.as_object_mut()) {
            obj.insert("_class_name".into(), "StableDiffusionXLPipeline".into());
            obj.insert("force_zeros_for_empty_prompt".into(), true.into());
            obj.insert("text_encoder_2".into(), serde_json::json!(["transformers", "CLIPTextModelWithProjection"]));
            obj.insert("tokenizer_2".into(), serde_json::json!(["transformers", "CLIPTokenizer"]));
        }
        let index = serde_json::to_string_pretty(&index).unwrap_or_default() + "\n";
        let all =
            self.files.iter().map(|(rel, text)| (*rel, text.as_ref())).chain([("model_index.json", index.as_str())]);
        for (rel, text) in all {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io_op(crate::error::IoOp::CreateFolder, parent, e))?;
            }
            std::fs::write(&path, text).map_err(|e| Error::io_write(&path, e))?;
        }
        Ok(())
    }
}

/// Choices for [`prepare`], mirroring the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// Force SD 1.x, 2.x or SDXL instead of detecting it (SDXL's layout differs from the
    /// others', so forcing one on the other's file is an error).
    pub arch: Option<Arch>,
    /// Take configs and tokenizer from this diffusers folder instead of the built-in ones.
    pub config_dir: Option<&'a Path>,
    /// Override the scheduler config's prediction type.
    pub prediction_type: Option<&'a str>,
}

/// A single-file checkpoint with the configs that go with it, checked against each other.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub file: SingleFile,
    pub configs: ConfigSet,
}

/// Inspects `path`, picks its configs (`config_dir`, else the built-in ones for its
/// architecture), applies the prediction type override and checks configs against tensors.
pub fn prepare(path: &Path, opts: &Options) -> Result<Prepared> {
    let mut file = inspect_with(path, opts.arch)?;
    let mut configs = match opts.config_dir {
        Some(dir) => ConfigSet::from_dir(dir)?,
        None => ConfigSet::standard(file.arch),
    };
    // An inpainting checkpoint (9 input channels) pairs with its family's inpainting config,
    // which differs from the text-to-image one only there, as diffusers' own inpainting
    // configs do; a given config folder must say so itself.
    if file.inpainting && opts.config_dir.is_none() {
        configs.set_unet_in_channels(file.unet.in_channels)?;
    }
    if let Some(pt) = opts.prediction_type {
        configs.set_prediction_type(pt)?;
    }
    if file.text_encoder.format == TextFormat::OpenClip {
        let text: Value = configs.parse("text_encoder/config.json")?;
        if let Some(n) = text.get("num_hidden_layers").and_then(Value::as_u64) {
            if n as usize == file.text_encoder.stored_layers {
                file.use_openclip_layers(n as usize)?;
            }
        }
    }
    configs.check(&file)?;
    Ok(Prepared { file, configs })
}
