//! Timestep conditioning for the UNet: the sinusoidal embedding of the timestep and the
//! two-layer MLP that widens it (diffusers' `Timesteps` and `TimestepEmbedding`).

use crate::loading::Weights;
use crate::models::nn::Linear;
use crate::Result;
use tch::{Kind, Tensor};

/// The period of the slowest sinusoid, as in DDPM and diffusers.
const MAX_PERIOD: f64 = 10000.0;

/// Sinusoidal timestep features (no weights).
#[derive(Debug, Clone)]
pub struct Timesteps {
    pub num_channels: i64,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    /// `timesteps` is 1-D, one (possibly fractional) value per batch element. The result is
    /// float32 `[n, num_channels]` whatever the input dtype, exactly as diffusers computes it:
    /// every op runs in float32 in the same order, because at t≈1000 one ulp in the argument
    /// already moves the sines by ~1e-4.
    pub fn forward(&self, timesteps: &Tensor) -> Tensor {
        let half = self.num_channels / 2;
        let device = timesteps.device();
        let exponent = Tensor::arange(half, (Kind::Float, device)) * (-MAX_PERIOD.ln());
        let exponent = exponent / (half as f64 - self.downscale_freq_shift);
        let freqs = exponent.exp();
        let args = timesteps.unsqueeze(1).to_kind(Kind::Float) * freqs.unsqueeze(0);
        let emb = Tensor::cat(&[args.sin(), args.cos()], -1);
        let emb = if self.flip_sin_to_cos {
            Tensor::cat(&[emb.narrow(1, half, half), emb.narrow(1, 0, half)], -1)
        } else {
            emb
        };
        if self.num_channels % 2 == 1 {
            emb.constant_pad_nd([0, 1, 0, 0])
        } else {
            emb
        }
    }
}

/// `linear_1 → SiLU → linear_2`, turning timestep features into the embedding every
/// resnet block receives.
#[derive(Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(w: &Weights, in_channels: i64, time_embed_dim: i64) -> Result<TimestepEmbedding> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(&w.pp("linear_1"), in_channels, time_embed_dim, true)?,
            linear_2: Linear::load(&w.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values by construction: with flip, the first half is cos(t·f_i) and the
    /// second sin(t·f_i), f_i = exp(-ln(10000)·i/(half - shift)).
    #[test]
    fn sinusoids_follow_the_formula() {
        let tp = Timesteps { num_channels: 8, flip_sin_to_cos: true, downscale_freq_shift: 1.0 };
        let t = Tensor::from_slice(&[0.0f32, 665.333_3]);
        let emb = tp.forward(&t);
        assert_eq!(emb.size(), [2, 8]);
        for (row, tv) in [0.0f64, 665.333_3].iter().enumerate() {
            for i in 0..4 {
                let f = (-(10000f64.ln()) * i as f64 / 3.0).exp();
                let cos = emb.double_value(&[row as i64, i]);
                let sin = emb.double_value(&[row as i64, i + 4]);
                assert!((cos - (tv * f).cos()).abs() < 2e-4, "cos row {row} i {i}");
                assert!((sin - (tv * f).sin()).abs() < 2e-4, "sin row {row} i {i}");
            }
        }
        let odd = Timesteps { num_channels: 5, flip_sin_to_cos: false, downscale_freq_shift: 0.0 }.forward(&t);
        assert_eq!(odd.size(), [2, 5]);
        assert_eq!(odd.double_value(&[1, 4]), 0.0);
    }
}
