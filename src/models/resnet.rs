//! The convolutional pieces shared by the UNet and the VAE: diffusers' `ResnetBlock2D`,
//! `Downsample2D` and `Upsample2D` (the variants Stable Diffusion uses).

use crate::loading::Weights;
use crate::models::nn::{Conv2d, GroupNorm, Linear};
use crate::Result;
use tch::Tensor;

/// `GroupNorm → SiLU → conv → (+ time) → GroupNorm → SiLU → conv`, plus a skip connection
/// (a 1x1 conv when the channel count changes).
#[derive(Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale_factor: f64,
}

/// What a [`ResnetBlock2D`] is built with.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    pub in_channels: i64,
    pub out_channels: i64,
    /// Width of the time embedding; `None` in the VAE, which has no time input.
    pub temb_channels: Option<i64>,
    pub groups: i64,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn load(w: &Weights, s: ResnetSpec) -> Result<ResnetBlock2D> {
        let (cin, cout) = (s.in_channels, s.out_channels);
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&w.pp("norm1"), s.groups, cin, s.eps)?,
            conv1: Conv2d::load(&w.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: match s.temb_channels {
                Some(t) => Some(Linear::load(&w.pp("time_emb_proj"), t, cout, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&w.pp("norm2"), s.groups, cout, s.eps)?,
            conv2: Conv2d::load(&w.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::load(&w.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
            output_scale_factor: s.output_scale_factor,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h += proj.forward(&t.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(&x.contiguous()),
            None => x.shallow_clone(),
        };
        let out = skip + h;
        // Dividing by exactly 1 changes nothing, so the common case skips the op.
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Stride-2 3x3 convolution. With `padding == 0` (the VAE encoder) the input is first padded
/// on the right and bottom only, as diffusers does.
#[derive(Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    pub pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn load(w: &Weights, channels: i64, padding: i64) -> Result<Downsample2D> {
        Ok(Downsample2D {
            conv: Conv2d::load(&w.pp("conv"), channels, channels, 3, 2, padding)?,
            pad_right_bottom: padding == 0,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.pad_right_bottom {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour 2x upsampling followed by a 3x3 convolution.
#[derive(Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &Weights, channels: i64) -> Result<Upsample2D> {
        Ok(Upsample2D { conv: Conv2d::load(&w.pp("conv"), channels, channels, 3, 1, 1)? })
    }

    /// `size` forces the output height and width: the UNet passes the size of the matching
    /// skip connection when the latent is not a multiple of the total downsampling factor.
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let up = match size {
            Some((h, w)) => x.upsample_nearest2d([h, w], None::<f64>, None::<f64>),
            None => {
                let (h, w) = (x.size()[2], x.size()[3]);
                x.upsample_nearest2d([2 * h, 2 * w], 2.0, 2.0)
            }
        };
        self.conv.forward(&up)
    }
}
