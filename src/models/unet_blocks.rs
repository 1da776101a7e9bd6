//! The UNet's levels: diffusers' `DownBlock2D`/`CrossAttnDownBlock2D`,
//! `UNetMidBlock2DCrossAttn`/`UNetMidBlock2D` and `UpBlock2D`/`CrossAttnUpBlock2D`.
//!
//! A block with cross-attention is the plain block with a transformer after each resnet, so
//! one struct covers both kinds: `attentions` is empty for the plain one.

use crate::loading::Weights;
use crate::models::attention::{Transformer2DModel, TransformerSpec};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetSpec, Upsample2D};
use crate::Result;
use tch::Tensor;

/// Settings common to every block of one UNet.
#[derive(Debug, Clone, Copy)]
pub struct BlockCommon {
    pub temb_channels: i64,
    pub groups: i64,
    pub eps: f64,
    pub downsample_padding: i64,
}

/// The shape of one level of the UNet.
#[derive(Debug, Clone, Copy)]
pub struct LevelSpec {
    /// Down: the input width. Up: the width of this level's deepest skip.
    pub in_channels: i64,
    pub out_channels: i64,
    /// Up only: the width of the state coming from the level below.
    pub prev_output_channels: i64,
    pub num_layers: i64,
    /// Whether the level ends with a down- or upsampler (all but the last).
    pub resample: bool,
    /// The transformers' settings, for cross-attention blocks.
    pub attn: Option<TransformerSpec>,
}

impl BlockCommon {
    fn resnet(&self, in_channels: i64, out_channels: i64, output_scale_factor: f64) -> ResnetSpec {
        ResnetSpec {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            output_scale_factor,
        }
    }
}

fn transformers(w: &Weights, n: i64, channels: i64, attn: Option<&TransformerSpec>) -> Result<Vec<Transformer2DModel>> {
    match attn {
        Some(spec) => (0..n).map(|i| Transformer2DModel::load(&w.pp("attentions").pp(i), channels, spec)).collect(),
        None => Ok(Vec::new()),
    }
}

/// One level on the way down: resnets (each followed by a transformer when the block has
/// cross-attention), then a stride-2 downsampler except at the last level.
#[derive(Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn load(w: &Weights, common: &BlockCommon, level: &LevelSpec) -> Result<DownBlock> {
        let out = level.out_channels;
        let resnets = (0..level.num_layers)
            .map(|i| {
                let cin = if i == 0 { level.in_channels } else { out };
                ResnetBlock2D::load(&w.pp("resnets").pp(i), common.resnet(cin, out, 1.0))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if level.resample {
            Some(Downsample2D::load(&w.pp("downsamplers.0"), out, common.downsample_padding)?)
        } else {
            None
        };
        Ok(DownBlock { resnets, attentions: transformers(w, level.num_layers, out, level.attn.as_ref())?, downsampler })
    }

    /// Returns the block's output and the states it hands to the up path as skips.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut h = x.shallow_clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, Some(context));
            }
            skips.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h);
            skips.push(h.shallow_clone());
        }
        (h, skips)
    }
}

/// The bottleneck: a resnet, then (transformer, resnet) pairs. `UNetMidBlock2D` as the
/// UNet builds it has no pairs at all.
#[derive(Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn load(
        w: &Weights,
        common: &BlockCommon,
        channels: i64,
        output_scale_factor: f64,
        attn: Option<&TransformerSpec>,
    ) -> Result<MidBlock> {
        let pairs = i64::from(attn.is_some());
        let resnets = (0..=pairs)
            .map(|i| {
                ResnetBlock2D::load(&w.pp("resnets").pp(i), common.resnet(channels, channels, output_scale_factor))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MidBlock { resnets, attentions: transformers(w, pairs, channels, attn)? })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            if i > 0 {
                h = self.attentions[i - 1].forward(&h, Some(context));
            }
            h = resnet.forward(&h, Some(temb));
        }
        h
    }
}

/// One level on the way up: each resnet takes the running state concatenated with a skip
/// from the down path (last in, first out), then an optional transformer; a 2x upsampler
/// follows except at the last level.
#[derive(Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Channel bookkeeping as in diffusers' `get_up_block`: the last resnet's skip is as wide
    /// as `level.in_channels`, the others' as `out_channels`.
    pub fn load(w: &Weights, common: &BlockCommon, level: &LevelSpec) -> Result<UpBlock> {
        let (n, out) = (level.num_layers, level.out_channels);
        let resnets = (0..n)
            .map(|i| {
                let skip = if i == n - 1 { level.in_channels } else { out };
                let cin = if i == 0 { level.prev_output_channels } else { out };
                ResnetBlock2D::load(&w.pp("resnets").pp(i), common.resnet(cin + skip, out, 1.0))
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if level.resample { Some(Upsample2D::load(&w.pp("upsamplers.0"), out)?) } else { None };
        Ok(UpBlock { resnets, attentions: transformers(w, n, out, level.attn.as_ref())?, upsampler })
    }

    /// `skips` holds exactly this block's skips in down-path order; they are used from the last.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(i64, i64)>,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            h = resnet.forward(&Tensor::cat(&[&h, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, Some(context));
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&h, upsample_size),
            None => h,
        }
    }
}
