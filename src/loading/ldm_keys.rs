//! Tensor names of original Stable Diffusion checkpoints (CompVis "LDM" layout, as A1111 and
//! most single `.safetensors` files use) mapped onto the diffusers names our models ask for.
//!
//! One file holds three models under three prefixes: the UNet under `model.diffusion_model.`,
//! the VAE under `first_stage_model.` and the text encoder under `cond_stage_model.`, either
//! as Hugging Face CLIP (SD 1.x, `cond_stage_model.transformer.text_model.*`) or as OpenCLIP
//! (SD 2.x, `cond_stage_model.model.*`, q/k/v fused into one `in_proj`).
//!
//! SDXL's checkpoints (Stability's generative-models, "SGM") keep the UNet and VAE prefixes,
//! add the UNet's added conditioning as `label_emb.0.{0,2}`, and hold two text encoders:
//! `conditioner.embedders.0.transformer.*` (Hugging Face CLIP names) and
//! `conditioner.embedders.1.model.*` (OpenCLIP names, all layers used, with its
//! `text_projection`).
//!
//! Each function here walks the stored names of one model and translates every one of them.
//! The structure (how many levels, resnets per level, which levels attend) is read off the
//! names and shapes, never assumed, and a name that fits no known pattern is an error that
//! names it: a silently skipped tensor would surface much later as a wrong image.

use crate::loading::Source;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const TEXT_PREFIX: &str = "cond_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// SDXL's text encoders, both under this prefix.
pub const SGM_TEXT_PREFIX: &str = "conditioner.embedders.";
pub const SGM_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const SGM_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// A checkpoint's tensor names and shapes (its header), with the file for messages.
#[derive(Debug, Clone)]
pub struct Header {
    pub path: PathBuf,
    pub shapes: BTreeMap<String, Vec<i64>>,
}

impl Header {
    pub fn new(path: impl Into<PathBuf>, shapes: BTreeMap<String, Vec<i64>>) -> Header {
        Header { path: path.into(), shapes }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::weights(&self.path, message.into())
    }

    fn shape(&self, key: &str) -> Result<&[i64]> {
        self.shapes.get(key).map(Vec::as_slice).ok_or_else(|| self.err(format!("missing tensor '{key}'")))
    }

    /// The names under `prefix`, with the prefix removed.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.shapes
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(move |(k, _)| (k.as_str(), &k[prefix.len()..]))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A stored tensor that no model uses, and why that is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub key: String,
    pub reason: String,
}

/// Splits `"12.rest"` into `(12, "rest")`.
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

fn is_leaf(s: &str) -> bool {
    s == "weight" || s == "bias"
}

/// ResBlock parameter names: openaimodel's `in_layers.0` is diffusers' `norm1`, and so on.
fn unet_resnet(rest: &str) -> Option<String> {
    const NAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    NAMES.iter().find_map(|(ldm, diffusers)| {
        let leaf = rest.strip_prefix(ldm)?;
        is_leaf(leaf).then(|| format!("{diffusers}{leaf}"))
    })
}

/// SpatialTransformer parameter names are diffusers' Transformer2DModel names already; only
/// the set of allowed names is checked.
fn unet_transformer(rest: &str) -> Option<String> {
    let (stem, leaf) = rest.rsplit_once('.')?;
    if !is_leaf(leaf) {
        return None;
    }
    let ok = match stem {
        "norm" | "proj_in" | "proj_out" => true,
        _ => {
            let block = stem.strip_prefix("transformer_blocks.").and_then(index);
            matches!(block, Some((_, inner)) if matches!(inner,
                "norm1" | "norm2" | "norm3" | "ff.net.0.proj" | "ff.net.2"
                | "attn1.to_q" | "attn1.to_k" | "attn1.to_v" | "attn1.to_out.0"
                | "attn2.to_q" | "attn2.to_k" | "attn2.to_v" | "attn2.to_out.0"))
        }
    };
    ok.then(|| rest.to_string())
}

/// What the UNet's stored shapes say about its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UNetLayout {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: usize,
    /// Per level, in down order: whether the level has cross-attention transformers.
    pub attention: Vec<bool>,
    pub cross_attention_dim: i64,
    /// `proj_in`/`proj_out` are linear (SD 2.x) rather than 1x1 convolutions (SD 1.x).
    pub use_linear_projection: bool,
    /// Transformer blocks per attention, per level in down order (0 where a level has none).
    pub transformer_layers_per_block: Vec<usize>,
    /// Transformer blocks of the mid-block's attention.
    pub mid_transformer_layers: usize,
    /// SDXL: the input width of the added-conditioning MLP (`label_emb.0.0`), which diffusers
    /// calls `projection_class_embeddings_input_dim`: the pooled text and six embedded time ids.
    pub added_conditioning_width: Option<i64>,
}

/// Maps every `model.diffusion_model.*` tensor onto a UNet2DConditionModel name.
///
/// `sdxl`: the file is in the SGM layout, whose `label_emb.0` is SDXL's added (text and
/// time) conditioning; elsewhere `label_emb` means a class-conditioned UNet (unCLIP, the
/// upscaler), which is refused.
pub fn unet(h: &Header, sdxl: bool) -> Result<(UNetLayout, BTreeMap<String, Source>)> {
    let p = UNET_PREFIX;
    let names: Vec<(&str, &str)> = h.under(p).collect();
    if names.is_empty() {
        return Err(h.err(format!(
            "no UNet tensors ('{p}*'): not an original Stable Diffusion checkpoint; expected the UNet under \
             '{p}', the VAE under '{VAE_PREFIX}' and the text encoder under '{TEXT_PREFIX}' (SD 1.x/2.x) or \
             '{SGM_CLIP_PREFIX}' and '{SGM_OPEN_CLIP_PREFIX}' (SDXL){}",
            diffusers_hint(h)
        )));
    }
    if !sdxl {
        if let Some((key, _)) = names.iter().find(|(_, r)| r.starts_with("label_emb.")) {
            return Err(h.err(format!(
                "'{key}': this UNet is class-conditioned (e.g. an upscaler or unCLIP model), which sdgen does not \
                 support"
            )));
        }
    }

    // Input blocks: 1.. hold (resnet[, transformer]) per layer, with a downsampler closing
    // every level but the last. Their pattern fixes the level count and layers per level.
    let mut input: BTreeSet<usize> = BTreeSet::new();
    let mut downs: Vec<usize> = Vec::new();
    for (_, rest) in &names {
        if let Some((i, inner)) = rest.strip_prefix("input_blocks.").and_then(index) {
            if i > 0 {
                input.insert(i);
                if inner == "0.op.weight" {
                    downs.push(i);
                }
            }
        }
    }
    downs.sort_unstable();
    let n_in = input.iter().next_back().copied().unwrap_or(0);
    let levels = downs.len() + 1;
    let lpb = match downs.first() {
        Some(&d) => d - 1,
        None => n_in,
    };
    let layout_ok = lpb > 0
        && input.len() == n_in
        && n_in == levels * lpb + levels - 1
        && downs.iter().enumerate().all(|(k, &d)| d == (k + 1) * (lpb + 1));
    if !layout_ok {
        return Err(h.err(format!(
            "unrecognised UNet layout: input blocks 1..={n_in} with downsamplers at {downs:?}; \
             expected every level to have the same number of resnets"
        )));
    }
    let per = lpb + 1;

    let mut map = BTreeMap::new();
    let mut put = |key: &str, name: String| {
        map.insert(name, Source::direct(key));
    };
    for &(key, rest) in &names {
        let bad = || h.err(format!("unexpected UNet tensor '{key}' (not part of an SD 1.x/2.x or SDXL UNet)"));
        let name = if let Some(leaf) = rest.strip_prefix("time_embed.0.") {
            format!("time_embedding.linear_1.{leaf}")
        } else if let Some(leaf) = rest.strip_prefix("label_emb.0.0.").filter(|l| sdxl && is_leaf(l)) {
            format!("add_embedding.linear_1.{leaf}")
        } else if let Some(leaf) = rest.strip_prefix("label_emb.0.2.").filter(|l| sdxl && is_leaf(l)) {
            format!("add_embedding.linear_2.{leaf}")
        } else if let Some(leaf) = rest.strip_prefix("time_embed.2.") {
            format!("time_embedding.linear_2.{leaf}")
        } else if let Some(leaf) = rest.strip_prefix("input_blocks.0.0.") {
            format!("conv_in.{leaf}")
        } else if let Some(leaf) = rest.strip_prefix("out.0.") {
            format!("conv_norm_out.{leaf}")
        } else if let Some(leaf) = rest.strip_prefix("out.2.") {
            format!("conv_out.{leaf}")
        } else if let Some((i, inner)) = rest.strip_prefix("input_blocks.").and_then(index) {
            // Block 0 is conv_in, matched above; anything else under it is unknown.
            let Some(k) = i.checked_sub(1) else { return Err(bad()) };
            let (level, j) = (k / per, k % per);
            let (sub, tail) = index(inner).ok_or_else(bad)?;
            match (j == lpb, sub) {
                (true, 0) => match tail.strip_prefix("op.") {
                    Some(leaf) if is_leaf(leaf) => format!("down_blocks.{level}.downsamplers.0.conv.{leaf}"),
                    _ => return Err(bad()),
                },
                (false, 0) => format!("down_blocks.{level}.resnets.{j}.{}", unet_resnet(tail).ok_or_else(bad)?),
                (false, 1) => format!("down_blocks.{level}.attentions.{j}.{}", unet_transformer(tail).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        } else if let Some((sub, tail)) = rest.strip_prefix("middle_block.").and_then(index) {
            match sub {
                0 | 2 => format!("mid_block.resnets.{}.{}", sub / 2, unet_resnet(tail).ok_or_else(bad)?),
                1 => format!("mid_block.attentions.0.{}", unet_transformer(tail).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        } else if let Some((i, inner)) = rest.strip_prefix("output_blocks.").and_then(index) {
            let (b, j) = (i / per, i % per);
            if b >= levels {
                return Err(bad());
            }
            let (sub, tail) = index(inner).ok_or_else(bad)?;
            // The upsampler sits after the resnet (and the transformer, if any) of the last
            // layer of every up block but the last.
            let upsampler = tail.strip_prefix("conv.").filter(|l| is_leaf(l));
            match (sub, upsampler) {
                (0, _) => format!("up_blocks.{b}.resnets.{j}.{}", unet_resnet(tail).ok_or_else(bad)?),
                (1 | 2, Some(leaf)) if j == lpb && b + 1 < levels => {
                    format!("up_blocks.{b}.upsamplers.0.conv.{leaf}")
                }
                (1, None) => format!("up_blocks.{b}.attentions.{j}.{}", unet_transformer(tail).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        } else {
            return Err(bad());
        };
        put(key, name);
    }

    let conv_in = h.shape(&format!("{p}input_blocks.0.0.weight"))?;
    let conv_out = h.shape(&format!("{p}out.2.weight"))?;
    let dims = |s: &[i64], n: usize, what: &str| -> Result<()> {
        if s.len() == n {
            Ok(())
        } else {
            Err(h.err(format!("UNet {what} has shape {s:?}, expected {n} dimensions")))
        }
    };
    dims(conv_in, 4, "conv_in (input_blocks.0.0.weight)")?;
    dims(conv_out, 4, "conv_out (out.2.weight)")?;
    // Transformer blocks under one attention: its highest `transformer_blocks.N` plus one.
    let depth_of = |attn: &str| -> usize {
        let attn = format!("{p}{attn}.transformer_blocks.");
        h.under(&attn).filter_map(|(_, r)| index(r).map(|(n, _)| n + 1)).max().unwrap_or(0)
    };
    let mut block_out_channels = Vec::new();
    let mut attention = Vec::new();
    let mut transformer_layers_per_block = Vec::new();
    for level in 0..levels {
        let first = 1 + level * per;
        let conv2 = h.shape(&format!("{p}input_blocks.{first}.0.out_layers.3.weight"))?;
        block_out_channels.push(conv2.first().copied().unwrap_or(0));
        attention.push(h.shapes.contains_key(&format!("{p}input_blocks.{first}.1.proj_in.weight")));
        transformer_layers_per_block.push(depth_of(&format!("input_blocks.{first}.1")));
    }
    let added_conditioning_width = if sdxl {
        let key = format!("{p}label_emb.0.0.weight");
        match h.shapes.get(&key).map(Vec::as_slice) {
            Some([_, width]) => Some(*width),
            Some(other) => return Err(h.err(format!("'{key}' has shape {other:?}, expected 2 dimensions"))),
            None => {
                return Err(h.err(format!(
                    "the SDXL UNet lacks its added conditioning ('{key}'): not an SDXL text-to-image checkpoint"
                )))
            }
        }
    } else {
        None
    };

    let mut cross = BTreeSet::new();
    let mut proj_in_ranks = BTreeSet::new();
    for &(key, rest) in &names {
        if rest.ends_with(".attn2.to_k.weight") {
            cross.insert(h.shape(key)?.get(1).copied().unwrap_or(0));
        }
        if rest.ends_with(".proj_in.weight") {
            proj_in_ranks.insert(h.shape(key)?.len());
        }
    }
    let cross_attention_dim = match cross.iter().collect::<Vec<_>>().as_slice() {
        [one] => **one,
        [] => return Err(h.err("the UNet has no cross-attention (attn2) layers: not a text-to-image UNet")),
        many => return Err(h.err(format!("the UNet's cross-attention layers disagree on the text width: {many:?}"))),
    };
    let use_linear_projection = match proj_in_ranks.iter().collect::<Vec<_>>().as_slice() {
        [2] => true,
        [4] => false,
        other => return Err(h.err(format!("unexpected proj_in ranks {other:?} (expected all 2 or all 4)"))),
    };
    let layout = UNetLayout {
        in_channels: conv_in[1],
        out_channels: conv_out[0],
        block_out_channels,
        layers_per_block: lpb,
        attention,
        cross_attention_dim,
        use_linear_projection,
        transformer_layers_per_block,
        mid_transformer_layers: depth_of("middle_block.1"),
        added_conditioning_width,
    };
    Ok((layout, map))
}

/// What the VAE's stored shapes say about its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeLayout {
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: usize,
    pub latent_channels: i64,
}

fn vae_resnet(rest: &str) -> Option<String> {
    let (stem, leaf) = rest.split_once('.')?;
    let stem = match stem {
        "norm1" | "conv1" | "norm2" | "conv2" => stem,
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    };
    is_leaf(leaf).then(|| format!("{stem}.{leaf}"))
}

/// Maps every `first_stage_model.*` tensor onto an AutoencoderKL name.
///
/// The decoder's levels are stored in the opposite order (`up.0` is the last, full-resolution
/// level) and the mid-block attention uses 1x1 convolutions where diffusers has linear
/// layers, so those weights are reshaped on load.
pub fn vae(h: &Header) -> Result<(VaeLayout, BTreeMap<String, Source>)> {
    let p = VAE_PREFIX;
    let names: Vec<(&str, &str)> = h.under(p).collect();
    if names.is_empty() {
        return Err(h.err(format!("no VAE tensors ('{p}*'): the checkpoint lacks its autoencoder")));
    }
    let mut down = BTreeSet::new();
    let mut up = BTreeSet::new();
    for (_, rest) in &names {
        if let Some((i, _)) = rest.strip_prefix("encoder.down.").and_then(index) {
            down.insert(i);
        }
        if let Some((i, _)) = rest.strip_prefix("decoder.up.").and_then(index) {
            up.insert(i);
        }
    }
    let levels = up.len();
    if levels == 0 || down.len() != levels || up.iter().next_back() != Some(&(levels - 1)) {
        return Err(h.err(format!("unrecognised VAE layout: encoder levels {down:?}, decoder levels {up:?}")));
    }

    let mut map = BTreeMap::new();
    for &(key, rest) in &names {
        let bad = || h.err(format!("unexpected VAE tensor '{key}' (not part of a Stable Diffusion autoencoder)"));
        let mut reshape = false;
        let name = if matches!(
            rest,
            "quant_conv.weight" | "quant_conv.bias" | "post_quant_conv.weight" | "post_quant_conv.bias"
        ) {
            rest.to_string()
        } else {
            let (half, inner) = rest.split_once('.').ok_or_else(bad)?;
            if half != "encoder" && half != "decoder" {
                return Err(bad());
            }
            let tail = if let Some(leaf) = inner.strip_prefix("conv_in.").filter(|l| is_leaf(l)) {
                format!("conv_in.{leaf}")
            } else if let Some(leaf) = inner.strip_prefix("conv_out.").filter(|l| is_leaf(l)) {
                format!("conv_out.{leaf}")
            } else if let Some(leaf) = inner.strip_prefix("norm_out.").filter(|l| is_leaf(l)) {
                format!("conv_norm_out.{leaf}")
            } else if let Some(r) = inner.strip_prefix("mid.block_1.") {
                format!("mid_block.resnets.0.{}", vae_resnet(r).ok_or_else(bad)?)
            } else if let Some(r) = inner.strip_prefix("mid.block_2.") {
                format!("mid_block.resnets.1.{}", vae_resnet(r).ok_or_else(bad)?)
            } else if let Some(r) = inner.strip_prefix("mid.attn_1.") {
                let (stem, leaf) = r.split_once('.').filter(|(_, l)| is_leaf(l)).ok_or_else(bad)?;
                let stem = match stem {
                    "norm" => "group_norm",
                    "q" => "to_q",
                    "k" => "to_k",
                    "v" => "to_v",
                    "proj_out" => "to_out.0",
                    _ => return Err(bad()),
                };
                reshape = leaf == "weight" && stem != "group_norm";
                format!("mid_block.attentions.0.{stem}.{leaf}")
            } else if let (Some((i, r)), "encoder") = (inner.strip_prefix("down.").and_then(index), half) {
                if let Some((j, r)) = r.strip_prefix("block.").and_then(index) {
                    format!("down_blocks.{i}.resnets.{j}.{}", vae_resnet(r).ok_or_else(bad)?)
                } else {
                    let leaf = r.strip_prefix("downsample.conv.").filter(|l| is_leaf(l)).ok_or_else(bad)?;
                    format!("down_blocks.{i}.downsamplers.0.conv.{leaf}")
                }
            } else if let (Some((i, r)), "decoder") = (inner.strip_prefix("up.").and_then(index), half) {
                let b = levels - 1 - i;
                if let Some((j, r)) = r.strip_prefix("block.").and_then(index) {
                    format!("up_blocks.{b}.resnets.{j}.{}", vae_resnet(r).ok_or_else(bad)?)
                } else {
                    let leaf = r.strip_prefix("upsample.conv.").filter(|l| is_leaf(l)).ok_or_else(bad)?;
                    format!("up_blocks.{b}.upsamplers.0.conv.{leaf}")
                }
            } else {
                return Err(bad());
            };
            format!("{half}.{tail}")
        };
        map.insert(name, Source { reshape, ..Source::direct(key) });
    }

    let mut block_out_channels = Vec::new();
    for i in 0..levels {
        let conv2 = h.shape(&format!("{p}encoder.down.{i}.block.0.conv2.weight"))?;
        block_out_channels.push(conv2.first().copied().unwrap_or(0));
    }
    let layers_per_block = names
        .iter()
        .filter_map(|(_, r)| r.strip_prefix("encoder.down.0.block.").and_then(index).map(|(j, _)| j))
        .collect::<BTreeSet<_>>()
        .len();
    let latent_channels = h.shape(&format!("{p}decoder.conv_in.weight"))?.get(1).copied().unwrap_or(0);
    Ok((VaeLayout { block_out_channels, layers_per_block, latent_channels }, map))
}

/// How the text encoder is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// Hugging Face `CLIPTextModel` names under `cond_stage_model.transformer.` (SD 1.x).
    HfClip,
    /// OpenCLIP names under `cond_stage_model.model.` (SD 2.x).
    OpenClip,
}

/// What the text encoder's stored shapes say about its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLayout {
    pub format: TextFormat,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    /// Layers of the diffusers text encoder (for OpenCLIP one less than stored, see [`text`]).
    pub num_hidden_layers: usize,
    /// Transformer blocks stored in the file.
    pub stored_layers: usize,
    /// SDXL's second encoder: the width of its `text_projection` (diffusers' `projection_dim`).
    pub projection_dim: Option<i64>,
}

fn hf_clip_layer(rest: &str) -> bool {
    let Some((stem, leaf)) = rest.rsplit_once('.') else { return false };
    is_leaf(leaf)
        && matches!(
            stem,
            "self_attn.q_proj"
                | "self_attn.k_proj"
                | "self_attn.v_proj"
                | "self_attn.out_proj"
                | "layer_norm1"
                | "layer_norm2"
                | "mlp.fc1"
                | "mlp.fc2"
        )
}

/// Maps every `cond_stage_model.*` tensor onto a `CLIPTextModel` name, or lists it as ignored.
///
/// SD 2.x conditions on the penultimate layer of OpenCLIP ViT-H's text tower; diffusers'
/// text encoder therefore has one layer less than the file (23 of 24) and uses its last
/// hidden state, and its single-file loader skips the final stored block. So does this.
/// OpenCLIP's `text_projection` and `logit_scale` and CLIP's `position_ids` buffer have no
/// counterpart in the text encoder and are ignored too.
///
/// `openclip_layers` overrides how many OpenCLIP blocks to use (a config's
/// `num_hidden_layers`): the stored count, or one less (the default). A file whose final
/// block was already pruned thus loads with a 23-layer config like diffusers loads it.
pub fn text(
    h: &Header,
    openclip_layers: Option<usize>,
) -> Result<(TextLayout, BTreeMap<String, Source>, Vec<Ignored>)> {
    let hf: Vec<(&str, &str)> = h.under(CLIP_PREFIX).collect();
    let open: Vec<(&str, &str)> = h.under(OPEN_CLIP_PREFIX).collect();
    if let Some((key, _)) =
        h.under(TEXT_PREFIX).find(|(k, _)| !k.starts_with(CLIP_PREFIX) && !k.starts_with(OPEN_CLIP_PREFIX))
    {
        return Err(h.err(format!("unexpected text encoder tensor '{key}' (neither CLIP nor OpenCLIP layout)")));
    }
    match (hf.is_empty(), open.is_empty()) {
        (false, true) => hf_clip(h, &hf, CLIP_PREFIX),
        (true, false) => open_clip(h, &open, OPEN_CLIP_PREFIX, openclip_layers, false),
        (true, true) => Err(h.err(format!(
            "no text encoder tensors ('{CLIP_PREFIX}*' or '{OPEN_CLIP_PREFIX}*'): the checkpoint lacks its text encoder"
        ))),
        (false, false) => {
            Err(h.err("the checkpoint holds both a CLIP and an OpenCLIP text encoder; cannot tell which to use"))
        }
    }
}

/// A text encoder's layout, its diffusers name → stored tensor map, and what it leaves unused.
type Text = (TextLayout, BTreeMap<String, Source>, Vec<Ignored>);

/// Maps SDXL's two text encoders (`conditioner.embedders.0/1`): the first as
/// `CLIPTextModel`, the second, all of its layers and its `text_projection`, as
/// `CLIPTextModelWithProjection`. Returns the first and the second, each with what it leaves
/// unused (CLIP's `position_ids`, OpenCLIP's `logit_scale`).
pub fn sgm_text(h: &Header) -> Result<(Text, Text)> {
    let refiner = format!("{SGM_TEXT_PREFIX}0.model.");
    for (key, _) in h.under(SGM_TEXT_PREFIX) {
        if key.starts_with(&refiner) {
            return Err(h.err(format!(
                "'{key}': the first conditioner is an OpenCLIP model, as in the SDXL refiner; sdgen runs SDXL base \
                 models (CLIP ViT-L under '{SGM_CLIP_PREFIX}', OpenCLIP ViT-bigG under '{SGM_OPEN_CLIP_PREFIX}')"
            )));
        }
        if !key.starts_with(SGM_CLIP_PREFIX) && !key.starts_with(SGM_OPEN_CLIP_PREFIX) {
            return Err(h.err(format!(
                "unexpected SDXL conditioner tensor '{key}' (expected '{SGM_CLIP_PREFIX}*' and '{SGM_OPEN_CLIP_PREFIX}*')"
            )));
        }
    }
    let clip: Vec<(&str, &str)> = h.under(SGM_CLIP_PREFIX).collect();
    let open: Vec<(&str, &str)> = h.under(SGM_OPEN_CLIP_PREFIX).collect();
    if clip.is_empty() || open.is_empty() {
        let (which, prefix) =
            if clip.is_empty() { ("first", SGM_CLIP_PREFIX) } else { ("second", SGM_OPEN_CLIP_PREFIX) };
        return Err(h.err(format!(
            "the SDXL checkpoint lacks its {which} text encoder ('{prefix}*'); SDXL needs both \
             '{SGM_CLIP_PREFIX}*' and '{SGM_OPEN_CLIP_PREFIX}*'"
        )));
    }
    Ok((hf_clip(h, &clip, SGM_CLIP_PREFIX)?, open_clip(h, &open, SGM_OPEN_CLIP_PREFIX, None, true)?))
}

fn hf_clip(h: &Header, names: &[(&str, &str)], prefix: &str) -> Result<Text> {
    let mut map = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut layers = BTreeSet::new();
    for &(key, rest) in names {
        // Checkpoints saved with old transformers lack the `text_model.` level.
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        let known = match rest {
            "embeddings.position_ids" => {
                ignored.push(Ignored {
                    key: key.to_string(),
                    reason: "CLIP's position_ids buffer (a constant arange)".into(),
                });
                continue;
            }
            "embeddings.token_embedding.weight"
            | "embeddings.position_embedding.weight"
            | "final_layer_norm.weight"
            | "final_layer_norm.bias" => true,
            _ => match rest.strip_prefix("encoder.layers.").and_then(index) {
                Some((n, inner)) if hf_clip_layer(inner) => {
                    layers.insert(n);
                    true
                }
                _ => false,
            },
        };
        if !known {
            return Err(h.err(format!("unexpected CLIP text encoder tensor '{key}'")));
        }
        map.insert(format!("text_model.{rest}"), Source::direct(key));
    }
    let find = |suffix: &str| {
        names
            .iter()
            .find(|(_, r)| r.ends_with(suffix))
            .map(|(k, _)| *k)
            .ok_or_else(|| h.err(format!("the CLIP text encoder lacks '{prefix}text_model.{suffix}'")))
    };
    let token = h.shape(find("embeddings.token_embedding.weight")?)?;
    let position = h.shape(find("embeddings.position_embedding.weight")?)?;
    let fc1 = h.shape(find("encoder.layers.0.mlp.fc1.weight")?)?;
    let n = layers.len();
    if layers.iter().next_back() != Some(&(n.saturating_sub(1))) {
        return Err(h.err(format!("CLIP text encoder layers are not numbered 0..{n}: {layers:?}")));
    }
    let layout = TextLayout {
        format: TextFormat::HfClip,
        hidden_size: token.get(1).copied().unwrap_or(0),
        intermediate_size: fc1.first().copied().unwrap_or(0),
        vocab_size: token.first().copied().unwrap_or(0),
        max_position_embeddings: position.first().copied().unwrap_or(0),
        num_hidden_layers: n,
        stored_layers: n,
        projection_dim: None,
    };
    Ok((layout, map, ignored))
}

/// An OpenCLIP text tower under `p`. SD 2.x (`sdxl` false) drops the final block and the
/// projection by default; SDXL's second encoder uses every block and its projection.
fn open_clip(h: &Header, names: &[(&str, &str)], p: &str, layers: Option<usize>, sdxl: bool) -> Result<Text> {
    let token = h.shape(&format!("{p}token_embedding.weight"))?;
    let width = match token {
        [_, w] => *w,
        other => return Err(h.err(format!("'{p}token_embedding.weight' has shape {other:?}, expected 2 dimensions"))),
    };
    let mut blocks = BTreeSet::new();
    for (_, rest) in names {
        if let Some((n, _)) = rest.strip_prefix("transformer.resblocks.").and_then(index) {
            blocks.insert(n);
        }
    }
    let stored = blocks.len();
    if stored < 2 || blocks.iter().next_back() != Some(&(stored - 1)) {
        return Err(
            h.err(format!("OpenCLIP text encoder blocks are not numbered 0..{stored} (need at least 2): {blocks:?}"))
        );
    }
    // Blocks from `last` on are not part of the diffusers text encoder.
    let last = layers.unwrap_or(if sdxl { stored } else { stored - 1 });
    // `stored - 1`, not `last + 1`: a caller's count may be anything, even usize::MAX.
    if last < stored - 1 || last > stored || last == 0 {
        return Err(h.err(format!(
            "the text encoder config asks for {last} layers, but the file stores {stored} OpenCLIP blocks \
             (expected {stored} or {})",
            stored - 1
        )));
    }

    let mut map = BTreeMap::new();
    let mut ignored = Vec::new();
    for &(key, rest) in names {
        let bad = || h.err(format!("unexpected OpenCLIP text encoder tensor '{key}'"));
        let direct = |name: &str| (name.to_string(), Source::direct(key));
        let entries: Vec<(String, Source)> = match rest {
            "token_embedding.weight" => vec![direct("text_model.embeddings.token_embedding.weight")],
            "positional_embedding" => vec![direct("text_model.embeddings.position_embedding.weight")],
            "ln_final.weight" => vec![direct("text_model.final_layer_norm.weight")],
            "ln_final.bias" => vec![direct("text_model.final_layer_norm.bias")],
            "text_projection" if sdxl => {
                // OpenCLIP computes `x @ text_projection`; a Linear computes `x @ weight.T`.
                let src = Source { transpose: true, ..Source::direct(key) };
                vec![("text_projection.weight".to_string(), src)]
            }
            "text_projection" | "logit_scale" => {
                ignored.push(Ignored {
                    key: key.to_string(),
                    reason: "OpenCLIP's contrastive head; the text encoder does not use it".into(),
                });
                continue;
            }
            _ => {
                let (n, inner) = rest.strip_prefix("transformer.resblocks.").and_then(index).ok_or_else(bad)?;
                let l = format!("text_model.encoder.layers.{n}");
                let out = match inner {
                    "attn.in_proj_weight" | "attn.in_proj_bias" => {
                        let shape = h.shape(key)?;
                        // Checked: the width is read from the file, and 3 × it must not wrap.
                        let rows = width.checked_mul(3).filter(|_| width > 0);
                        if rows.is_none() || shape.first() != rows.as_ref() {
                            return Err(h.err(format!(
                                "'{key}' has shape {shape:?}, expected 3 × {width} rows (q, k, v of width {width})"
                            )));
                        }
                        let leaf = if inner.ends_with("weight") { "weight" } else { "bias" };
                        ["q", "k", "v"]
                            .iter()
                            .enumerate()
                            .map(|(i, x)| {
                                let src = Source { slice0: Some((i as i64 * width, width)), ..Source::direct(key) };
                                (format!("{l}.self_attn.{x}_proj.{leaf}"), src)
                            })
                            .collect()
                    }
                    _ => {
                        let (stem, leaf) = inner.rsplit_once('.').filter(|(_, l)| is_leaf(l)).ok_or_else(bad)?;
                        let stem = match stem {
                            "ln_1" => "layer_norm1",
                            "ln_2" => "layer_norm2",
                            "attn.out_proj" => "self_attn.out_proj",
                            "mlp.c_fc" => "mlp.fc1",
                            "mlp.c_proj" => "mlp.fc2",
                            _ => return Err(bad()),
                        };
                        vec![(format!("{l}.{stem}.{leaf}"), Source::direct(key))]
                    }
                };
                if n >= last {
                    ignored.push(Ignored {
                        key: key.to_string(),
                        reason: "final OpenCLIP block: SD 2.x uses the penultimate layer's output".into(),
                    });
                    continue;
                }
                out
            }
        };
        map.extend(entries);
    }
    let position = h.shape(&format!("{p}positional_embedding"))?;
    let c_fc = h.shape(&format!("{p}transformer.resblocks.0.mlp.c_fc.weight"))?;
    let projection_dim = if sdxl {
        let key = format!("{p}text_projection");
        match h.shape(&key)? {
            [rows, cols] if *rows == width => Some(*cols),
            other => return Err(h.err(format!("'{key}' has shape {other:?}, expected [{width}, projection width]"))),
        }
    } else {
        None
    };
    let layout = TextLayout {
        format: TextFormat::OpenClip,
        hidden_size: width,
        intermediate_size: c_fc.first().copied().unwrap_or(0),
        vocab_size: token[0],
        max_position_embeddings: position.first().copied().unwrap_or(0),
        num_hidden_layers: last,
        stored_layers: stored,
        projection_dim,
    };
    Ok((layout, map, ignored))
}

/// DDPM schedule buffers that LatentDiffusion saves with its weights.
const SCHEDULE_BUFFERS: [&str; 12] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
];

/// Every tensor outside the model prefixes, with the reason it is not loaded.
pub fn outside(h: &Header) -> Result<Vec<Ignored>> {
    let mut out = Vec::new();
    for key in h.shapes.keys() {
        if [UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX, SGM_TEXT_PREFIX].iter().any(|p| key.starts_with(p)) {
            continue;
        }
        let reason = if key.starts_with("model_ema.") {
            "EMA copy of the UNet (like diffusers, sdgen loads the non-EMA weights)"
        } else if SCHEDULE_BUFFERS.contains(&key.as_str()) || key == "logvar" {
            "DDPM training schedule buffer (the scheduler config defines the schedule)"
        } else {
            "not part of the UNet, VAE or text encoder"
        };
        out.push(Ignored { key: key.clone(), reason: reason.into() });
    }
    Ok(out)
}

/// A hint for a file that is one diffusers model's weights rather than a whole checkpoint.
fn diffusers_hint(h: &Header) -> &'static str {
    let diffusers = ["conv_in.", "down_blocks.", "text_model.", "encoder.down_blocks.", "time_embedding."];
    if h.shapes.keys().any(|k| diffusers.iter().any(|d| k.starts_with(d))) {
        "; this file has diffusers names, as one model of a diffusers folder (unet/, vae/, text_encoder/) \
         stores them: pass the whole folder to --model instead"
    } else {
        ""
    }
}
