//! The denoising network: diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x, 2.x and
//! SDXL use it, built from the `unet/config.json` of a diffusers folder.
//!
//! SDXL's UNet adds `addition_embed_type: "text_time"`: the pooled text embedding and six
//! size/crop ids (each through the sinusoidal embedding) go through one more MLP whose output
//! is added to the timestep embedding.

use crate::loading::weights::MapGuard;
use crate::loading::{read_json, Weights};
use crate::models::attention::TransformerSpec;
use crate::models::embeddings::{TimestepEmbedding, Timesteps};
use crate::models::nn::{Conv2d, ConvAlgo, GroupNorm};
use crate::models::unet_blocks::{BlockCommon, DownBlock, LevelSpec, MidBlock, UpBlock};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A config value that is either one value for every level or a list with one per level.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a number or a list with one number per level")]
pub enum PerLevel<T> {
    One(T),
    List(Vec<T>),
}

impl<T: Clone> PerLevel<T> {
    /// One value per level; a list of the wrong length is an error naming `field`.
    fn expand(&self, levels: usize, path: &Path, field: &str) -> Result<Vec<T>> {
        match self {
            PerLevel::One(v) => Ok(vec![v.clone(); levels]),
            PerLevel::List(list) if list.len() == levels => Ok(list.clone()),
            PerLevel::List(list) => Err(Error::config(
                path,
                format!(
                    "field '{field}': has {} entries but the UNet has {levels} levels (down_block_types); \
                     give one value or one per level",
                    list.len()
                ),
            )),
        }
    }
}

/// `unet/config.json`, with diffusers' field names and defaults. Fields that change nothing
/// for the supported blocks (`sample_size`, `dropout`, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "four")]
    pub in_channels: i64,
    #[serde(default = "four")]
    pub out_channels: i64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    #[serde(default = "no_per_level")]
    pub only_cross_attention: PerLevel<bool>,
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<i64>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: PerLevel<i64>,
    #[serde(default = "one")]
    pub downsample_padding: i64,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "default_groups")]
    pub norm_num_groups: Option<i64>,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: PerLevel<i64>,
    #[serde(default = "one_per_level")]
    pub transformer_layers_per_block: PerLevel<i64>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<serde_json::Value>,
    /// Despite the name, the number of attention heads (see [`UNetConfig::heads_per_level`]).
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: PerLevel<i64>,
    #[serde(default)]
    pub num_attention_heads: Option<serde_json::Value>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<serde_json::Value>,
    /// `null`, or `"text_time"` (SDXL: pooled text and size/crop ids added to the timestep).
    #[serde(default)]
    pub addition_embed_type: Option<serde_json::Value>,
    /// Width of the sinusoidal embedding of each added time id (SDXL: 256).
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    #[serde(default)]
    pub num_class_embeds: Option<serde_json::Value>,
    /// Input width of the added-conditioning MLP: pooled text width + 6 · `addition_time_embed_dim`.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
    /// Accepted (`null` too, as SDXL's config has it) and, as in diffusers' default SDPA
    /// processor, without effect.
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    /// The latent size the model was trained at: one number, or `[height, width]`.
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<serde_json::Value>,
    #[serde(default)]
    pub timestep_post_act: Option<serde_json::Value>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<serde_json::Value>,
    #[serde(default = "three")]
    pub conv_in_kernel: i64,
    #[serde(default = "three")]
    pub conv_out_kernel: i64,
    #[serde(default = "default_str")]
    pub attention_type: String,
    /// The file the config came from, for error messages.
    #[serde(skip)]
    pub path: PathBuf,
}

fn four() -> i64 {
    4
}
fn three() -> i64 {
    3
}
fn one() -> i64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn default_str() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}
fn default_groups() -> Option<i64> {
    Some(32)
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn no_per_level() -> PerLevel<bool> {
    PerLevel::One(false)
}
fn one_per_level() -> PerLevel<i64> {
    PerLevel::One(1)
}
fn default_layers_per_block() -> PerLevel<i64> {
    PerLevel::One(2)
}
fn default_cross_attention_dim() -> PerLevel<i64> {
    PerLevel::One(1280)
}
fn default_attention_head_dim() -> PerLevel<i64> {
    PerLevel::One(8)
}
fn default_block_out_channels() -> Vec<i64> {
    vec![320, 640, 1280, 1280]
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_down_blocks() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn default_up_blocks() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}

/// Which kind of level a block type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LevelKind {
    Plain,
    CrossAttn,
}

/// diffusers accepts a `UNetRes` prefix on block type names and strips it.
fn level_kind(path: &Path, field: &str, index: usize, name: &str, plain: &str, cross: &str) -> Result<LevelKind> {
    let bare = name.strip_prefix("UNetRes").unwrap_or(name);
    if bare == plain {
        Ok(LevelKind::Plain)
    } else if bare == cross {
        Ok(LevelKind::CrossAttn)
    } else {
        Err(Error::config(
            path,
            format!(
                "field '{field}[{index}]': unsupported block type '{name}'; sdgen supports {plain} and {cross} \
                 (the blocks of Stable Diffusion 1.x and 2.x)"
            ),
        ))
    }
}

/// The fully resolved shape of one level, shared by its down and up blocks.
#[derive(Debug, Clone)]
struct Level {
    channels: i64,
    layers: i64,
    heads: i64,
    cross_attention_dim: i64,
    transformer_layers: i64,
    only_cross_attention: bool,
}

impl UNetConfig {
    /// Reads and parses `config.json`; see [`UNetConfig::check`] for what is supported.
    pub fn from_file(path: &Path) -> Result<UNetConfig> {
        let mut cfg: UNetConfig = read_json(path)?;
        cfg.path = path.to_path_buf();
        cfg.check()?;
        Ok(cfg)
    }

    /// Parses config text; `path` names it in messages.
    pub fn from_json(path: &Path, text: &str) -> Result<UNetConfig> {
        let mut cfg: UNetConfig = crate::loading::config::parse_json(path, text)?;
        cfg.path = path.to_path_buf();
        cfg.check()?;
        Ok(cfg)
    }

    fn err(&self, field: &str, message: impl std::fmt::Display) -> Error {
        Error::config(&self.path, format!("field '{field}': {message}"))
    }

    fn unsupported(&self, field: &str, value: impl std::fmt::Display, why: &str) -> Error {
        self.err(field, format!("unsupported value {value}; {why}"))
    }

    /// Attention heads per level. diffusers' naming quirk: SD 1.x/2.x configs name the head
    /// count `attention_head_dim` (8 means 8 heads; SD 2.x's `[5, 10, 20, 20]` is 5..20 heads,
    /// each 64 wide), and diffusers uses `num_attention_heads or attention_head_dim`. diffusers
    /// refuses a non-null `num_attention_heads`, so it is refused here too.
    pub fn heads_per_level(&self) -> Result<Vec<i64>> {
        if let Some(v) = self.num_attention_heads.as_ref().filter(|v| !v.is_null()) {
            return Err(self.unsupported(
                "num_attention_heads",
                v,
                "diffusers itself rejects it (the head count is given as attention_head_dim); set it to null",
            ));
        }
        let heads = self.attention_head_dim.expand(self.block_out_channels.len(), &self.path, "attention_head_dim")?;
        if let Some(h) = heads.iter().find(|&&h| h <= 0) {
            return Err(self.err("attention_head_dim", format!("head count {h} must be positive")));
        }
        Ok(heads)
    }

    /// SDXL's added conditioning, when the config has it: `Some((addition_time_embed_dim,
    /// projection_class_embeddings_input_dim))`.
    pub fn added_conditioning(&self) -> Result<Option<(i64, i64)>> {
        match self.addition_embed_type.as_ref().filter(|v| !v.is_null()) {
            None => {
                if let Some(d) = self.projection_class_embeddings_input_dim {
                    return Err(self.unsupported(
                        "projection_class_embeddings_input_dim",
                        d,
                        "it is only used with addition_embed_type \"text_time\" (or class embeddings, which sdgen \
                         does not support); set it to null",
                    ));
                }
                Ok(None)
            }
            Some(serde_json::Value::String(s)) if s == "text_time" => {
                let time = self.addition_time_embed_dim.ok_or_else(|| {
                    self.err("addition_time_embed_dim", "is required with addition_embed_type \"text_time\"")
                })?;
                let input = self.projection_class_embeddings_input_dim.ok_or_else(|| {
                    self.err(
                        "projection_class_embeddings_input_dim",
                        "is required with addition_embed_type \"text_time\"",
                    )
                })?;
                if time <= 0 || time % 2 == 1 {
                    return Err(self.err("addition_time_embed_dim", format!("{time} must be positive and even")));
                }
                if input <= 6 * time {
                    return Err(self.err(
                        "projection_class_embeddings_input_dim",
                        format!(
                            "{input} leaves no room for the pooled text embedding: it must be the text embedding's \
                             width plus 6 time ids × addition_time_embed_dim {time} = {}",
                            6 * time
                        ),
                    ));
                }
                Ok(Some((time, input)))
            }
            Some(other) => Err(self.unsupported(
                "addition_embed_type",
                other,
                "sdgen supports null (SD 1.x/2.x) and \"text_time\" (SDXL)",
            )),
        }
    }

    /// The width of the pooled text embedding the added conditioning takes (SDXL: the second
    /// text encoder's `projection_dim`), if the UNet has added conditioning.
    pub fn pooled_text_width(&self) -> Option<i64> {
        let (time, input) = self.added_conditioning().ok().flatten()?;
        Some(input - 6 * time)
    }

    /// The trained latent size `(height, width)` from `sample_size`, if the config gives one.
    pub fn sample_size(&self) -> Option<(i64, i64)> {
        match self.sample_size.as_ref()? {
            serde_json::Value::Number(n) => n.as_i64().filter(|&v| v > 0).map(|v| (v, v)),
            serde_json::Value::Array(a) if a.len() == 2 => {
                let h = a[0].as_i64().filter(|&v| v > 0)?;
                let w = a[1].as_i64().filter(|&v| v > 0)?;
                Some((h, w))
            }
            _ => None,
        }
    }

    /// Checks that the config describes a UNet sdgen can build exactly as diffusers does.
    pub fn check(&self) -> Result<()> {
        self.levels().map(|_| ())
    }

    fn levels(&self) -> Result<(Vec<LevelKind>, Vec<LevelKind>, Vec<Level>)> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(self.err("block_out_channels", "must list at least one level"));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(self.err(
                "down_block_types",
                format!(
                    "block_out_channels has {n} entries, down_block_types {} and up_block_types {}; they must match",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            ));
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| c <= 0) {
            return Err(self.err("block_out_channels", format!("channel count {c} must be positive")));
        }
        let down = (self.down_block_types.iter().enumerate())
            .map(|(i, t)| level_kind(&self.path, "down_block_types", i, t, "DownBlock2D", "CrossAttnDownBlock2D"))
            .collect::<Result<Vec<_>>>()?;
        let up = (self.up_block_types.iter().enumerate())
            .map(|(i, t)| level_kind(&self.path, "up_block_types", i, t, "UpBlock2D", "CrossAttnUpBlock2D"))
            .collect::<Result<Vec<_>>>()?;
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") | Some("UNetMidBlock2D") => {}
            Some(other) => {
                return Err(self.unsupported(
                    "mid_block_type",
                    format!("'{other}'"),
                    "sdgen supports UNetMidBlock2DCrossAttn, UNetMidBlock2D and null",
                ))
            }
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(self.unsupported("act_fn", format!("'{}'", self.act_fn), "sdgen supports silu (swish)"));
        }
        match self.norm_num_groups {
            Some(g) if g > 0 => {}
            other => {
                return Err(self.unsupported(
                    "norm_num_groups",
                    format!("{other:?}"),
                    "Stable Diffusion UNets use group norm with a positive group count",
                ))
            }
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(self.unsupported(
                "resnet_time_scale_shift",
                format!("'{}'", self.resnet_time_scale_shift),
                "sdgen supports 'default'",
            ));
        }
        if self.time_embedding_type != "positional" {
            return Err(self.unsupported(
                "time_embedding_type",
                format!("'{}'", self.time_embedding_type),
                "sdgen supports 'positional'",
            ));
        }
        if self.attention_type != "default" {
            return Err(self.unsupported(
                "attention_type",
                format!("'{}'", self.attention_type),
                "sdgen supports 'default'",
            ));
        }
        if self.dual_cross_attention {
            return Err(self.unsupported("dual_cross_attention", "true", "sdgen supports false"));
        }
        self.added_conditioning()?;
        let must_be_null: [(&str, &Option<serde_json::Value>, &str); 8] = [
            ("class_embed_type", &self.class_embed_type, "class-conditioned UNets are not Stable Diffusion 1.x/2.x"),
            ("num_class_embeds", &self.num_class_embeds, "class-conditioned UNets are not supported"),
            ("encoder_hid_dim", &self.encoder_hid_dim, "encoder projections are not supported"),
            ("encoder_hid_dim_type", &self.encoder_hid_dim_type, "encoder projections are not supported"),
            ("time_embedding_act_fn", &self.time_embedding_act_fn, "sdgen supports null"),
            ("timestep_post_act", &self.timestep_post_act, "sdgen supports null"),
            ("time_cond_proj_dim", &self.time_cond_proj_dim, "guidance-embedding (LCM) UNets are not supported"),
            (
                "reverse_transformer_layers_per_block",
                &self.reverse_transformer_layers_per_block,
                "asymmetric UNets are not supported",
            ),
        ];
        for (field, value, why) in must_be_null {
            if let Some(v) = value.as_ref().filter(|v| !v.is_null()) {
                return Err(self.unsupported(field, v, why));
            }
        }
        if let Some(d) = self.time_embedding_dim.filter(|&d| d <= 0) {
            return Err(self.err("time_embedding_dim", format!("{d} must be positive")));
        }
        for (field, k) in [("conv_in_kernel", self.conv_in_kernel), ("conv_out_kernel", self.conv_out_kernel)] {
            if k <= 0 || k % 2 == 0 {
                return Err(self.unsupported(field, k, "the kernel size must be odd and positive"));
            }
        }
        if self.downsample_padding < 0 {
            return Err(self.err("downsample_padding", "must not be negative"));
        }
        if self.in_channels <= 0 || self.out_channels <= 0 {
            return Err(self.err("in_channels", "in_channels and out_channels must be positive"));
        }

        let heads = self.heads_per_level()?;
        let layers = self.layers_per_block.expand(n, &self.path, "layers_per_block")?;
        let cross = self.cross_attention_dim.expand(n, &self.path, "cross_attention_dim")?;
        let tlayers = self.transformer_layers_per_block.expand(n, &self.path, "transformer_layers_per_block")?;
        let only_cross = self.only_cross_attention.expand(n, &self.path, "only_cross_attention")?;
        for (field, values) in [("layers_per_block", &layers), ("transformer_layers_per_block", &tlayers)] {
            if let Some(v) = values.iter().find(|&&v| v < 0) {
                return Err(self.err(field, format!("{v} must not be negative")));
            }
        }
        if let Some(v) = cross.iter().find(|&&v| v <= 0) {
            return Err(self.err("cross_attention_dim", format!("{v} must be positive")));
        }
        let levels = (0..n)
            .map(|i| Level {
                channels: self.block_out_channels[i],
                layers: layers[i],
                heads: heads[i],
                cross_attention_dim: cross[i],
                transformer_layers: tlayers[i],
                only_cross_attention: only_cross[i],
            })
            .collect();
        Ok((down, up, levels))
    }
}

/// The UNet, ready to run on the device and dtype its weights were loaded with.
#[derive(Debug)]
pub struct UNet {
    pub config: UNetConfig,
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    /// SDXL's added conditioning: the time ids' sinusoids and the MLP over [pooled, ids].
    add_time_proj: Option<Timesteps>,
    add_embedding: Option<TimestepEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    device: Device,
    kind: Kind,
    /// Kernels and activations are stored channels-last ([`UNet::set_channels_last`]).
    channels_last: bool,
    /// Last: dropped after the tensors that may borrow the mapped weights.
    _map: MapGuard,
}

/// What the UNet is conditioned on, besides the noisy latents and the timestep: one value, so
/// that a second text encoder or added conditioning changes no caller.
#[derive(Debug)]
pub struct Conditioning {
    /// Cross-attention states `[batch, tokens, cross_attention_dim]`.
    pub context: Tensor,
    /// Pooled text embeddings `[batch, dim]` (SDXL-style added conditioning).
    pub pooled: Option<Tensor>,
    /// Added time ids `[batch, 6]` (original size, crop top-left, target size).
    pub time_ids: Option<Tensor>,
}

impl Conditioning {
    /// Cross-attention states alone, as SD 1.x and 2.x use.
    pub fn text(context: Tensor) -> Conditioning {
        Conditioning { context, pooled: None, time_ids: None }
    }

    /// Both halves for classifier-free guidance, unconditional first as diffusers stacks them.
    pub fn cat(uncond: &Conditioning, cond: &Conditioning) -> Conditioning {
        let both = |a: &Option<Tensor>, b: &Option<Tensor>| match (a, b) {
            (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 0)),
            _ => None,
        };
        Conditioning {
            context: Tensor::cat(&[&uncond.context, &cond.context], 0),
            pooled: both(&uncond.pooled, &cond.pooled),
            time_ids: both(&uncond.time_ids, &cond.time_ids),
        }
    }
}

/// `dir/diffusion_pytorch_model.safetensors`, or the `.fp16` variant when only that exists.
pub(crate) fn diffusers_weights_file(dir: &Path) -> Result<PathBuf> {
    let plain = dir.join("diffusion_pytorch_model.safetensors");
    let fp16 = dir.join("diffusion_pytorch_model.fp16.safetensors");
    if plain.is_file() {
        return Ok(plain);
    }
    if fp16.is_file() {
        return Ok(fp16);
    }
    let pickle = dir.join("diffusion_pytorch_model.bin");
    let hint = if pickle.is_file() {
        "; only a .bin pickle is there, which sdgen refuses to load: convert it to .safetensors"
    } else {
        ""
    };
    Err(Error::weights(
        dir,
        format!(
            "no diffusion_pytorch_model.safetensors (or diffusion_pytorch_model.fp16.safetensors) in this folder{hint}"
        ),
    ))
}

impl UNet {
    /// Loads `dir/config.json` and the weights beside it; every stored tensor must be used.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<UNet> {
        UNet::load_with(dir, device, kind, ConvAlgo::Auto)
    }

    /// [`UNet::load`] with the CPU convolution algorithm chosen.
    pub fn load_with(dir: &Path, device: Device, kind: Kind, conv: ConvAlgo) -> Result<UNet> {
        let cfg = UNetConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::open(&[diffusers_weights_file(dir)?], device, kind)?;
        w.set_conv_algo(conv);
        let unet = UNet::new(&w, &cfg)?;
        w.finish()?;
        Ok(unet)
    }

    /// Builds the UNet from already-opened (possibly renamed) weights with diffusers' names.
    pub fn new(w: &Weights, cfg: &UNetConfig) -> Result<UNet> {
        let (down_kinds, up_kinds, levels) = cfg.levels()?;
        let n = levels.len();
        let c0 = levels[0].channels;
        let groups = cfg.norm_num_groups.unwrap_or(32);
        let time_embed_dim = cfg.time_embedding_dim.unwrap_or(c0 * 4);
        let common = BlockCommon {
            temb_channels: time_embed_dim,
            groups,
            eps: cfg.norm_eps,
            downsample_padding: cfg.downsample_padding,
        };
        let transformer = |l: &Level, only_cross: bool| TransformerSpec {
            heads: l.heads,
            cross_attention_dim: Some(l.cross_attention_dim),
            num_layers: l.transformer_layers,
            norm_groups: groups,
            use_linear_projection: cfg.use_linear_projection,
            only_cross_attention: only_cross,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut prev = c0;
        for (i, (l, kind)) in levels.iter().zip(&down_kinds).enumerate() {
            let spec = LevelSpec {
                in_channels: prev,
                out_channels: l.channels,
                prev_output_channels: prev,
                num_layers: l.layers,
                resample: i + 1 < n,
                attn: (*kind == LevelKind::CrossAttn).then(|| transformer(l, l.only_cross_attention)),
            };
            down_blocks.push(DownBlock::load(&w.pp("down_blocks").pp(i), &common, &spec)?);
            prev = l.channels;
        }

        let deepest = &levels[n - 1];
        let mid_block = match cfg.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {
                // diffusers does not pass only_cross_attention to this mid block.
                let spec = transformer(deepest, false);
                Some(MidBlock::load(
                    &w.pp("mid_block"),
                    &common,
                    deepest.channels,
                    cfg.mid_block_scale_factor,
                    Some(&spec),
                )?)
            }
            Some(_) => {
                Some(MidBlock::load(&w.pp("mid_block"), &common, deepest.channels, cfg.mid_block_scale_factor, None)?)
            }
            None => None,
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = deepest.channels;
        for (i, kind) in up_kinds.iter().enumerate() {
            let l = &levels[n - 1 - i];
            let skip_level = &levels[(n - 1).saturating_sub(i + 1)];
            let spec = LevelSpec {
                in_channels: skip_level.channels,
                out_channels: l.channels,
                prev_output_channels: prev,
                num_layers: l.layers + 1,
                resample: i + 1 < n,
                attn: (*kind == LevelKind::CrossAttn).then(|| transformer(l, l.only_cross_attention)),
            };
            up_blocks.push(UpBlock::load(&w.pp("up_blocks").pp(i), &common, &spec)?);
            prev = l.channels;
        }

        let kin = cfg.conv_in_kernel;
        let kout = cfg.conv_out_kernel;
        let added = cfg.added_conditioning()?;
        let add_time_proj = added.map(|(dim, _)| Timesteps {
            num_channels: dim,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            downscale_freq_shift: cfg.freq_shift,
        });
        let add_embedding = match added {
            Some((_, input)) => Some(TimestepEmbedding::load(&w.pp("add_embedding"), input, time_embed_dim)?),
            None => None,
        };
        Ok(UNet {
            add_time_proj,
            add_embedding,
            config: cfg.clone(),
            conv_in: Conv2d::load(&w.pp("conv_in"), cfg.in_channels, c0, kin, 1, (kin - 1) / 2)?,
            time_proj: Timesteps {
                num_channels: c0,
                flip_sin_to_cos: cfg.flip_sin_to_cos,
                downscale_freq_shift: cfg.freq_shift,
            },
            time_embedding: TimestepEmbedding::load(&w.pp("time_embedding"), c0, time_embed_dim)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), groups, c0, cfg.norm_eps)?,
            conv_out: Conv2d::load(&w.pp("conv_out"), c0, cfg.out_channels, kout, 1, (kout - 1) / 2)?,
            device: w.device(),
            kind: w.kind(),
            channels_last: false,
            _map: w.map_guard(),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Every linear and convolution layer, by its diffusers name (for adapters).
    pub(crate) fn visit_layers(&mut self, f: &mut crate::models::layers::Visitor<'_>) {
        use crate::models::layers::{conv, linear};
        conv("", "conv_in", &mut self.conv_in, f);
        linear("", "time_embedding.linear_1", &mut self.time_embedding.linear_1, f);
        linear("", "time_embedding.linear_2", &mut self.time_embedding.linear_2, f);
        if let Some(e) = &mut self.add_embedding {
            linear("", "add_embedding.linear_1", &mut e.linear_1, f);
            linear("", "add_embedding.linear_2", &mut e.linear_2, f);
        }
        for (i, b) in self.down_blocks.iter_mut().enumerate() {
            b.visit_layers(&format!("down_blocks.{i}"), f);
        }
        if let Some(m) = &mut self.mid_block {
            m.visit_layers("mid_block", f);
        }
        for (i, b) in self.up_blocks.iter_mut().enumerate() {
            b.visit_layers(&format!("up_blocks.{i}"), f);
        }
        conv("", "conv_out", &mut self.conv_out, f);
    }

    /// Runs the convolutions on channels-last (NHWC) kernels and activations, the layout of
    /// cuDNN's fastest fp16 kernels; input and output stay NCHW, and values change only by
    /// float rounding. Meant for CUDA; right, but not faster, on the CPU. One-way.
    pub fn set_channels_last(&mut self) {
        if self.channels_last {
            return;
        }
        self.visit_layers(&mut |_, layer| {
            if let crate::models::layers::LayerMut::Conv(c) = layer {
                c.make_channels_last();
            }
        });
        self.channels_last = true;
    }

    pub fn is_channels_last(&self) -> bool {
        self.channels_last
    }

    /// Whether the UNet takes SDXL's added conditioning (pooled text and time ids).
    pub fn has_added_conditioning(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// [`UNet::forward`] with the whole [`Conditioning`]. A UNet with added conditioning
    /// (`addition_embed_type: "text_time"`) needs the pooled text embeddings `[batch,
    /// pooled]` and the time ids `[batch, 6]`; one without refuses them rather than ignore them.
    pub fn forward_cond(&self, sample: &Tensor, timestep: f64, cond: &Conditioning) -> Result<Tensor> {
        self.forward_cond_t(sample, &self.timestep_tensor(timestep), cond)
    }

    /// The timestep as [`UNet::forward_cond_t`] takes it: float32 `[1]` on the UNet's device.
    pub fn timestep_tensor(&self, timestep: f64) -> Tensor {
        Tensor::from_slice(&[timestep as f32]).to_device(self.device)
    }

    /// [`UNet::forward_cond`] with the timestep already a float32 device tensor of one value
    /// (or one per row): no host-to-device copy inside, so the call can be captured in a
    /// CUDA graph that reads the timestep from a buffer.
    pub fn forward_cond_t(&self, sample: &Tensor, timestep: &Tensor, cond: &Conditioning) -> Result<Tensor> {
        let added = match (&self.add_embedding, &cond.pooled, &cond.time_ids) {
            (None, None, None) => None,
            (None, _, _) => {
                return Err(Error::invalid(
                    "this UNet has no added conditioning (its config sets no `addition_embed_type`), so it cannot \
                     take pooled text embeddings or time ids",
                ))
            }
            (Some(_), Some(pooled), Some(time_ids)) => Some((pooled, time_ids)),
            (Some(_), _, _) => {
                return Err(Error::invalid(
                    "this UNet has added conditioning (`addition_embed_type: \"text_time\"`, as SDXL): it needs \
                     both pooled text embeddings and time ids",
                ))
            }
        };
        let batch = sample.size()[0];
        if let Some((pooled, ids)) = added {
            let want = self.config.pooled_text_width().unwrap_or(0);
            if pooled.size() != [batch, want] || ids.size() != [batch, 6] {
                return Err(Error::invalid(format!(
                    "added conditioning of shapes {:?} (pooled) and {:?} (time ids) does not fit a batch of {batch} \
                     for this UNet, which takes [{batch}, {want}] and [{batch}, 6]",
                    pooled.size(),
                    ids.size()
                )));
            }
        }
        Ok(self.run(sample, timestep, &cond.context, added))
    }

    /// Predicts the noise (or v) for `sample` `[batch, in_channels, h, w]` at `timestep`,
    /// conditioned on `encoder_hidden_states` `[batch, tokens, cross_attention_dim]`, for a
    /// UNet without added conditioning.
    ///
    /// The timestep becomes a float32 tensor, as diffusers' scheduler timesteps end up in
    /// its sinusoidal embedding; fractional values (Euler's 665.33) are kept. `h` and `w`
    /// need not be multiples of the total downsampling factor.
    pub fn forward(&self, sample: &Tensor, timestep: f64, encoder_hidden_states: &Tensor) -> Tensor {
        self.run(sample, &self.timestep_tensor(timestep), encoder_hidden_states, None)
    }

    fn run(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<(&Tensor, &Tensor)>,
    ) -> Tensor {
        let batch = sample.size()[0];
        let t = timestep.to_device(sample.device()).to_kind(Kind::Float).expand([batch], false);
        let mut temb = self.time_embedding.forward(&self.time_proj.forward(&t).to_kind(sample.kind()));
        if let (Some((pooled, ids)), Some(proj), Some(mlp)) = (added, &self.add_time_proj, &self.add_embedding) {
            // As diffusers: each id through the sinusoids (float32), [pooled, ids] promoted
            // to float32, then cast to the embedding's dtype for the MLP.
            let ids = ids.to_device(sample.device()).reshape([-1]);
            let time = proj.forward(&ids).reshape([batch, -1]);
            let input = Tensor::cat(&[&pooled.to_device(sample.device()).to_kind(Kind::Float), &time], -1);
            temb += mlp.forward(&input.to_kind(sample.kind()));
        }
        let ctx = encoder_hidden_states;

        let factor = 1i64 << self.up_blocks.len().saturating_sub(1);
        let size = sample.size();
        let forward_upsample_size = size[2..].iter().any(|d| d % factor != 0);

        let sample = if self.config.center_input_sample { sample * 2.0 - 1.0 } else { sample.shallow_clone() };
        let sample = if self.channels_last { crate::models::nn::channels_last(&sample) } else { sample };
        let mut h = self.conv_in.forward(&sample);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&h, &temb, ctx);
            h = out;
            skips.extend(states);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &temb, ctx);
        }
        for block in &self.up_blocks {
            let mine = skips.split_off(skips.len().saturating_sub(block.resnets.len()));
            let upsample_size = match skips.last() {
                Some(next) if forward_upsample_size && block.upsampler.is_some() => {
                    let s = next.size();
                    Some((s[2], s[3]))
                }
                _ => None,
            };
            h = block.forward(&h, &mine, &temb, ctx, upsample_size);
        }
        let out = self.conv_out.forward(&self.conv_norm_out.forward(&h).silu());
        if self.channels_last {
            out.contiguous()
        } else {
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UNetConfig> {
        UNetConfig::from_json(Path::new("unet/config.json"), text)
    }

    #[test]
    fn defaults_are_sd15() {
        let cfg = parse("{}").unwrap();
        assert_eq!(cfg.block_out_channels, [320, 640, 1280, 1280]);
        assert_eq!(cfg.heads_per_level().unwrap(), [8, 8, 8, 8]);
        assert_eq!(cfg.cross_attention_dim, PerLevel::One(1280));
        assert!(!cfg.use_linear_projection);
        assert_eq!(cfg.mid_block_type.as_deref(), Some("UNetMidBlock2DCrossAttn"));
    }

    #[test]
    fn attention_head_dim_is_the_head_count_int_or_list() {
        let sd2 = parse(
            r#"{"attention_head_dim": [5, 10, 20, 20], "use_linear_projection": true, "cross_attention_dim": 1024}"#,
        )
        .unwrap();
        assert_eq!(sd2.heads_per_level().unwrap(), [5, 10, 20, 20]);
        assert!(sd2.use_linear_projection);
        let short = parse(r#"{"attention_head_dim": [5, 10]}"#).unwrap_err().to_string();
        assert!(short.contains("unet/config.json") && short.contains("attention_head_dim"), "{short}");
        let heads = parse(r#"{"num_attention_heads": 8}"#).unwrap_err().to_string();
        assert!(heads.contains("num_attention_heads"), "{heads}");
        assert!(parse(r#"{"num_attention_heads": null}"#).is_ok());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                r#"{"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]}"#,
                "down_block_types[0]",
            ),
            (r#"{"addition_embed_type": "text_time"}"#, "addition_embed_type"),
            (r#"{"act_fn": "gelu"}"#, "act_fn"),
            (r#"{"resnet_time_scale_shift": "scale_shift"}"#, "resnet_time_scale_shift"),
            (r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#, "mid_block_type"),
            (r#"{"layers_per_block": "two"}"#, "layers_per_block"),
            (r#"{"transformer_layers_per_block": [[1, 2], [1, 2], [1, 2], [1, 2]]}"#, "transformer_layers_per_block"),
            (r#"{"block_out_channels": [320, 640]}"#, "down_block_types"),
        ];
        for (text, field) in cases {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.starts_with("unet/config.json: ") && msg.contains(field), "{text} -> {msg}");
        }
        assert!(parse(r#"{"class_embed_type": null, "upcast_attention": true}"#).is_ok());
    }
}
