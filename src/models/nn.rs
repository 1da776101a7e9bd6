//! The small layers every model is built from, loaded from [`Weights`] with shape checks.
//!
//! They hold plain tensors and call libtorch's functional ops, so a forward pass is exactly
//! the op sequence PyTorch runs for the same `nn.Module`.

use crate::loading::Weights;
pub use crate::models::conv::{Conv2d, ConvAlgo};
use crate::Result;
use tch::Tensor;

/// `nn.Linear`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: i64, out_dim: i64, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: w.get("weight", &[out_dim, in_dim])?,
            bias: if bias { Some(w.get("bias", &[out_dim])?) } else { None },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// `nn.GroupNorm` with affine parameters.
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: i64,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: i64, channels: i64, eps: f64) -> Result<GroupNorm> {
        if groups <= 0 || channels % groups != 0 {
            return Err(crate::Error::Model(format!(
                "group norm at '{}': {channels} channels cannot be split into {groups} groups",
                w.pp("weight").prefix_str()
            )));
        }
        Ok(GroupNorm { weight: w.get("weight", &[channels])?, bias: w.get("bias", &[channels])?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(self.groups, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub dim: i64,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: i64, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm { weight: w.get("weight", &[dim])?, bias: w.get("bias", &[dim])?, dim, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `x` `[n, c, h, w]` (or a `[out, in, k, k]` kernel) with the same values stored
/// channels-last (NHWC), the layout cuDNN's fastest fp16 convolutions read and write: libtorch
/// ops keep the layout of their inputs, so activations stay NHWC through the network.
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Whether a 4-D tensor is stored channels-last (NHWC), as [`channels_last`] makes it.
pub fn is_channels_last(x: &Tensor) -> bool {
    let (s, st) = (x.size(), x.stride());
    s.len() == 4 && s[1] > 1 && st[1] == 1 && st[3] == s[1] && st[2] == s[1] * s[3]
}

/// Multi-head attention core: `q`, `k`, `v` are `[batch, seq, heads*dim]`; returns the same
/// layout. Uses libtorch's fused `scaled_dot_product_attention`, as diffusers' `AttnProcessor2_0`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, mask: Option<&Tensor>, causal: bool) -> Tensor {
    let (b, n, c) = q.size3().expect("attention expects [batch, seq, channels]");
    let d = c / heads;
    let split = |t: &Tensor| {
        let len = t.size()[1];
        t.view([b, len, heads, d]).transpose(1, 2)
    };
    let out =
        Tensor::scaled_dot_product_attention(&split(q), &split(k), &split(v), mask, 0.0, causal, None::<f64>, false);
    out.transpose(1, 2).reshape([b, n, c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn channels_last_keeps_values_and_is_recognised() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let y = channels_last(&x);
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), [60, 1, 15, 3]);
        assert!(is_channels_last(&y) && !is_channels_last(&x));
        // Exact: a relayout moves values, it computes nothing.
        assert_eq!((&y - &x).abs().max().double_value(&[]), 0.0);
        // Ops keep the layout of their input, so activations stay NHWC through a network.
        assert!(is_channels_last(&(y.silu() + 1.0)));
        assert!(!is_channels_last(&y.contiguous()));
        // One channel: both layouts are the same memory; not reported as channels-last.
        assert!(!is_channels_last(&channels_last(&Tensor::zeros([1, 1, 3, 3], (Kind::Float, Device::Cpu)))));
    }

    /// The attention core takes `[batch, seq, heads·dim]` projections and hands SDPA
    /// `[batch, heads, seq, dim]` views (no copy: last dimension contiguous), as diffusers'
    /// `AttnProcessor2_0` does after its `view` and `transpose`; the result equals attention
    /// written out (softmax(q·kᵀ/√d)·v per head) within float rounding.
    #[test]
    fn attention_core_equals_the_formula() {
        let (b, n, m, heads, d) = (2, 5, 7, 3, 4);
        let q = Tensor::randn([b, n, heads * d], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([b, m, heads * d], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([b, m, heads * d], (Kind::Float, Device::Cpu));
        let got = attention(&q, &k, &v, heads, None, false);
        let per_head = |t: &Tensor, len: i64| t.reshape([b, len, heads, d]).permute([0, 2, 1, 3]);
        let scores = per_head(&q, n).matmul(&per_head(&k, m).transpose(-1, -2)) / (d as f64).sqrt();
        let want = scores.softmax(-1, Kind::Float).matmul(&per_head(&v, m)).permute([0, 2, 1, 3]).reshape([b, n, -1]);
        let diff = (&got - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "attention differs from the formula by {diff}");
    }
}
