//! Reaching a model's linear and convolution layers by their diffusers names, so adapters
//! (LoRA) can patch their weights after load without the models knowing about adapters.
//!
//! Each network walks its own layers in `visit_layers`, passing the name diffusers gives the
//! module (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`,
//! `text_model.encoder.layers.0.mlp.fc1`).

use crate::models::attention::{Attention, BasicTransformerBlock, FeedForward, Projection, Transformer2DModel};
use crate::models::nn::{Conv2d, Linear};
use crate::models::resnet::ResnetBlock2D;
use crate::models::unet_blocks::{DownBlock, MidBlock, UpBlock};

/// One patchable layer.
pub(crate) enum LayerMut<'a> {
    Linear(&'a mut Linear),
    Conv(&'a mut Conv2d),
}

/// Called with each layer's full diffusers name.
pub(crate) type Visitor<'v> = dyn FnMut(&str, LayerMut<'_>) + 'v;

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

pub(crate) fn linear(prefix: &str, name: &str, l: &mut Linear, f: &mut Visitor<'_>) {
    f(&join(prefix, name), LayerMut::Linear(l));
}

pub(crate) fn conv(prefix: &str, name: &str, c: &mut Conv2d, f: &mut Visitor<'_>) {
    f(&join(prefix, name), LayerMut::Conv(c));
}

impl Attention {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        linear(p, "to_q", &mut self.to_q, f);
        linear(p, "to_k", &mut self.to_k, f);
        linear(p, "to_v", &mut self.to_v, f);
        linear(p, "to_out.0", &mut self.to_out, f);
    }
}

impl FeedForward {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        linear(p, "net.0.proj", &mut self.proj_in, f);
        linear(p, "net.2", &mut self.proj_out, f);
    }
}

impl BasicTransformerBlock {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        self.attn1.visit_layers(&join(p, "attn1"), f);
        if let Some((_, attn2)) = &mut self.cross {
            attn2.visit_layers(&join(p, "attn2"), f);
        }
        self.ff.visit_layers(&join(p, "ff"), f);
    }
}

fn projection(p: &str, name: &str, proj: &mut Projection, f: &mut Visitor<'_>) {
    match proj {
        Projection::Conv(c) => conv(p, name, c, f),
        Projection::Linear(l) => linear(p, name, l, f),
    }
}

impl Transformer2DModel {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        projection(p, "proj_in", &mut self.proj_in, f);
        for (i, b) in self.blocks.iter_mut().enumerate() {
            b.visit_layers(&join(p, &format!("transformer_blocks.{i}")), f);
        }
        projection(p, "proj_out", &mut self.proj_out, f);
    }
}

impl ResnetBlock2D {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        conv(p, "conv1", &mut self.conv1, f);
        if let Some(t) = &mut self.time_emb_proj {
            linear(p, "time_emb_proj", t, f);
        }
        conv(p, "conv2", &mut self.conv2, f);
        if let Some(c) = &mut self.conv_shortcut {
            conv(p, "conv_shortcut", c, f);
        }
    }
}

fn resnets_and_attentions(
    p: &str,
    resnets: &mut [ResnetBlock2D],
    attentions: &mut [Transformer2DModel],
    f: &mut Visitor<'_>,
) {
    for (i, r) in resnets.iter_mut().enumerate() {
        r.visit_layers(&join(p, &format!("resnets.{i}")), f);
    }
    for (i, a) in attentions.iter_mut().enumerate() {
        a.visit_layers(&join(p, &format!("attentions.{i}")), f);
    }
}

impl DownBlock {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        resnets_and_attentions(p, &mut self.resnets, &mut self.attentions, f);
        if let Some(d) = &mut self.downsampler {
            conv(p, "downsamplers.0.conv", &mut d.conv, f);
        }
    }
}

impl MidBlock {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        resnets_and_attentions(p, &mut self.resnets, &mut self.attentions, f);
    }
}

impl UpBlock {
    pub(crate) fn visit_layers(&mut self, p: &str, f: &mut Visitor<'_>) {
        resnets_and_attentions(p, &mut self.resnets, &mut self.attentions, f);
        if let Some(u) = &mut self.upsampler {
            conv(p, "upsamplers.0.conv", &mut u.conv, f);
        }
    }
}
