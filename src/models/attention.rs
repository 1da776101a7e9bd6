//! The UNet's transformer layers: diffusers' `Attention` (with the SDPA processor),
//! `FeedForward` with GEGLU, `BasicTransformerBlock` and the continuous-input
//! `Transformer2DModel` with either 1x1-conv or linear projections.

use crate::loading::Weights;
use crate::models::nn::{attention, Conv2d, GroupNorm, LayerNorm, Linear};
use crate::{Error, Result};
use tch::Tensor;

/// Loads a projection stored as `name` or, in older checkpoints, `legacy` (the VAE's
/// `query/key/value/proj_attn`), as a `[out, in]` matrix or a `[out, in, 1, 1]` 1x1 conv.
pub fn load_projection(
    w: &Weights,
    name: &str,
    legacy: Option<&str>,
    in_dim: i64,
    out_dim: i64,
    bias: bool,
) -> Result<Linear> {
    let stored = match legacy {
        Some(old) if !w.contains(&format!("{name}.weight")) && w.contains(&format!("{old}.weight")) => old,
        _ => name,
    };
    let w = w.pp(stored);
    let weight = match w.shape_of("weight") {
        Some(s) if s.len() == 4 => w.get("weight", &[out_dim, in_dim, 1, 1])?.reshape([out_dim, in_dim]),
        _ => w.get("weight", &[out_dim, in_dim])?,
    };
    let bias = if bias { Some(w.get("bias", &[out_dim])?) } else { None };
    Ok(Linear { weight, bias })
}

/// Multi-head attention: self-attention, or cross-attention when given a context.
///
/// diffusers' `upcast_attention` has no effect here, exactly as in diffusers itself: its
/// default processor (`AttnProcessor2_0`) calls `scaled_dot_product_attention`, which
/// ignores the flag.
#[derive(Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: i64,
}

impl Attention {
    /// `context_dim` is the width of the keys/values' source (`None`: same as the query).
    /// `legacy_names` also accepts the pre-0.14 VAE names `query/key/value/proj_attn`.
    pub fn load(
        w: &Weights,
        query_dim: i64,
        context_dim: Option<i64>,
        heads: i64,
        dim_head: i64,
        qkv_bias: bool,
        legacy_names: bool,
    ) -> Result<Attention> {
        if heads <= 0 || dim_head <= 0 {
            return Err(Error::Model(format!(
                "attention at '{}': {heads} heads of width {dim_head} is not a valid layout",
                w.prefix_str()
            )));
        }
        let inner = heads * dim_head;
        let kv_dim = context_dim.unwrap_or(query_dim);
        let legacy = |old: &'static str| if legacy_names { Some(old) } else { None };
        Ok(Attention {
            to_q: load_projection(w, "to_q", legacy("query"), query_dim, inner, qkv_bias)?,
            to_k: load_projection(w, "to_k", legacy("key"), kv_dim, inner, qkv_bias)?,
            to_v: load_projection(w, "to_v", legacy("value"), kv_dim, inner, qkv_bias)?,
            to_out: load_projection(w, "to_out.0", legacy("proj_attn"), inner, query_dim, true)?,
            heads,
        })
    }

    /// `x` is `[batch, tokens, query_dim]`; `context` `[batch, tokens', context_dim]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let kv = context.unwrap_or(x);
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(kv);
        let v = self.to_v.forward(kv);
        self.to_out.forward(&attention(&q, &k, &v, self.heads, None, false))
    }
}

/// `Linear(dim, 2·inner) → value · GELU(gate) → Linear(inner, dim)` (diffusers'
/// `FeedForward` with `activation_fn="geglu"`).
#[derive(Debug)]
pub struct FeedForward {
    pub proj_in: Linear,
    pub proj_out: Linear,
}

impl FeedForward {
    pub fn load(w: &Weights, dim: i64) -> Result<FeedForward> {
        let inner = dim * 4;
        Ok(FeedForward {
            proj_in: Linear::load(&w.pp("net.0.proj"), dim, inner * 2, true)?,
            proj_out: Linear::load(&w.pp("net.2"), inner, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.proj_in.forward(x);
        let halves = h.chunk(2, -1);
        self.proj_out.forward(&(&halves[0] * halves[1].gelu("none")))
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-normed with a residual.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    /// `None` when the block has no context to attend to.
    pub cross: Option<(LayerNorm, Attention)>,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
    /// The first attention also attends to the context instead of to itself.
    pub only_cross_attention: bool,
}

/// Settings shared by every transformer block of a [`Transformer2DModel`].
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec {
    pub heads: i64,
    pub cross_attention_dim: Option<i64>,
    pub num_layers: i64,
    pub norm_groups: i64,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
}

impl BasicTransformerBlock {
    pub fn load(w: &Weights, dim: i64, heads: i64, dim_head: i64, spec: &TransformerSpec) -> Result<Self> {
        let eps = 1e-5;
        let attn1_ctx = if spec.only_cross_attention { spec.cross_attention_dim } else { None };
        let cross = match spec.cross_attention_dim {
            Some(ctx) => Some((
                LayerNorm::load(&w.pp("norm2"), dim, eps)?,
                Attention::load(&w.pp("attn2"), dim, Some(ctx), heads, dim_head, false, false)?,
            )),
            None => None,
        };
        Ok(BasicTransformerBlock {
            norm1: LayerNorm::load(&w.pp("norm1"), dim, eps)?,
            attn1: Attention::load(&w.pp("attn1"), dim, attn1_ctx, heads, dim_head, false, false)?,
            cross,
            norm3: LayerNorm::load(&w.pp("norm3"), dim, eps)?,
            ff: FeedForward::load(&w.pp("ff"), dim)?,
            only_cross_attention: spec.only_cross_attention,
        })
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let ctx1 = if self.only_cross_attention { context } else { None };
        let mut h = self.attn1.forward(&self.norm1.forward(x), ctx1) + x;
        if let Some((norm2, attn2)) = &self.cross {
            h = attn2.forward(&norm2.forward(&h), context) + h;
        }
        self.ff.forward(&self.norm3.forward(&h)) + h
    }
}

/// How a [`Transformer2DModel`] moves between the image and the token sequence.
#[derive(Debug)]
pub enum Projection {
    /// 1x1 convolution on the image (SD 1.x).
    Conv(Conv2d),
    /// Linear layer on the tokens (SD 2.x, `use_linear_projection`).
    Linear(Linear),
}

/// GroupNorm, project in, transformer blocks over the `h·w` tokens, project out, residual.
#[derive(Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DModel {
    /// A transformer over `channels`-wide feature maps with `spec.heads` heads of width
    /// `channels / heads` (diffusers' integer division).
    pub fn load(w: &Weights, channels: i64, spec: &TransformerSpec) -> Result<Transformer2DModel> {
        if spec.heads <= 0 || channels / spec.heads == 0 {
            return Err(Error::Model(format!(
                "transformer at '{}': {channels} channels cannot be split into {} attention heads",
                w.prefix_str(),
                spec.heads
            )));
        }
        let dim_head = channels / spec.heads;
        let inner = spec.heads * dim_head;
        let (proj_in, proj_out) = if spec.use_linear_projection {
            (
                Projection::Linear(Linear::load(&w.pp("proj_in"), channels, inner, true)?),
                Projection::Linear(Linear::load(&w.pp("proj_out"), inner, channels, true)?),
            )
        } else {
            (
                Projection::Conv(Conv2d::load(&w.pp("proj_in"), channels, inner, 1, 1, 0)?),
                Projection::Conv(Conv2d::load(&w.pp("proj_out"), inner, channels, 1, 1, 0)?),
            )
        };
        let blocks = (0..spec.num_layers)
            .map(|i| BasicTransformerBlock::load(&w.pp("transformer_blocks").pp(i), inner, spec.heads, dim_head, spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2DModel {
            norm: GroupNorm::load(&w.pp("norm"), spec.norm_groups, channels, 1e-6)?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let (b, c, height, width) = x.size4().expect("transformer input is [batch, channels, height, width]");
        let channels_last = crate::models::nn::is_channels_last(x);
        let h = self.norm.forward(x);
        let mut h = match &self.proj_in {
            Projection::Conv(conv) => conv.forward_to_tokens(&h),
            Projection::Linear(l) => l.forward(&h.permute([0, 2, 3, 1]).reshape([b, height * width, c])),
        };
        for block in &self.blocks {
            h = block.forward(&h, context);
        }
        let h = match &self.proj_out {
            Projection::Conv(conv) => conv.forward_from_tokens(&h, height, width),
            // Tokens are NHWC memory: channels-last activations keep the view, others are copied
            // back to NCHW.
            Projection::Linear(l) => {
                let nchw = l.forward(&h).reshape([b, height, width, c]).permute([0, 3, 1, 2]);
                if channels_last {
                    nchw
                } else {
                    nchw.contiguous()
                }
            }
        };
        h + x
    }
}
