//! The tiny autoencoder: diffusers' `AutoencoderTiny` (madebyollin's TAESD / TAESDXL), a
//! stack of plain 3×3 convolutions and residual blocks, built from its `config.json`.
//!
//! Unlike `AutoencoderKL` its encoder gives latents directly (no distribution to sample), its
//! decoder soft-clamps the latents (`tanh(z/3)·3`) and upsamples by nearest neighbour, and its
//! `scaling_factor` is 1. The images it works on are in [0, 1] inside the network and in
//! [-1, 1] outside, as diffusers' `EncoderTiny`/`DecoderTiny` convert them.

use crate::loading::weights::MapGuard;
use crate::loading::{read_json, Weights};
use crate::models::nn::Conv2d;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `config.json` of an `AutoencoderTiny`, with diffusers' field names and defaults (TAESD's).
#[derive(Debug, Clone, Deserialize)]
pub struct TinyVaeConfig {
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    #[serde(default = "sixty_four_x4")]
    pub encoder_block_out_channels: Vec<i64>,
    #[serde(default = "sixty_four_x4")]
    pub decoder_block_out_channels: Vec<i64>,
    #[serde(default = "relu")]
    pub act_fn: String,
    #[serde(default = "nearest")]
    pub upsample_fn: String,
    #[serde(default = "four")]
    pub latent_channels: i64,
    #[serde(default = "two")]
    pub upsampling_scaling_factor: i64,
    #[serde(default = "encoder_blocks")]
    pub num_encoder_blocks: Vec<i64>,
    #[serde(default = "decoder_blocks")]
    pub num_decoder_blocks: Vec<i64>,
    /// Only used by `AutoencoderTiny.forward`'s 8-bit round trip, never by pipelines.
    #[serde(default = "three_f")]
    pub latent_magnitude: f64,
    #[serde(default = "half")]
    pub latent_shift: f64,
    /// diffusers overwrites this with `false` whatever the file says (the network is
    /// fp16-safe), so sdgen never upcasts a tiny autoencoder either.
    #[serde(default)]
    pub force_upcast: bool,
    #[serde(default = "one_f")]
    pub scaling_factor: f64,
    /// Stored by diffusers but unused by the SD 1.x/2.x/XL pipelines.
    #[serde(default)]
    pub shift_factor: f64,
    /// Where the config was saved from, when diffusers wrote it (`madebyollin/taesdxl`).
    #[serde(default, rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    /// The file the config came from, for error messages.
    #[serde(skip)]
    pub path: PathBuf,
}

fn two() -> i64 {
    2
}
fn three() -> i64 {
    3
}
fn four() -> i64 {
    4
}
fn three_f() -> f64 {
    3.0
}
fn one_f() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn relu() -> String {
    "relu".into()
}
fn nearest() -> String {
    "nearest".into()
}
fn sixty_four_x4() -> Vec<i64> {
    vec![64; 4]
}
fn encoder_blocks() -> Vec<i64> {
    vec![1, 3, 3, 3]
}
fn decoder_blocks() -> Vec<i64> {
    vec![3, 3, 3, 1]
}

impl TinyVaeConfig {
    /// TAESD's published config (`madebyollin/taesd`, `madebyollin/taesdxl`: the two are equal),
    /// for weight files that come without one.
    pub fn taesd() -> TinyVaeConfig {
        TinyVaeConfig::from_json(Path::new("(built-in TAESD config)"), "{}").expect("the defaults are valid")
    }

    pub fn from_file(path: &Path) -> Result<TinyVaeConfig> {
        let mut cfg: TinyVaeConfig = read_json(path)?;
        cfg.path = path.to_path_buf();
        cfg.check()?;
        Ok(cfg)
    }

    /// Parses config text; `path` names it in messages.
    pub fn from_json(path: &Path, text: &str) -> Result<TinyVaeConfig> {
        let mut cfg: TinyVaeConfig = crate::loading::config::parse_json(path, text)?;
        cfg.path = path.to_path_buf();
        cfg.check()?;
        Ok(cfg)
    }

    fn err(&self, field: &str, message: impl std::fmt::Display) -> Error {
        Error::config(&self.path, format!("field '{field}': {message}"))
    }

    /// How many image pixels one latent spans along each axis. diffusers' pipelines assume
    /// `2^(levels - 1)`; [`TinyVaeConfig::check`] makes sure the network agrees.
    pub fn scale_factor(&self) -> i64 {
        1 << (self.decoder_block_out_channels.len() - 1)
    }

    /// Checks that the config describes an `AutoencoderTiny` that diffusers (and sdgen) can run.
    pub fn check(&self) -> Result<()> {
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("upsampling_scaling_factor", self.upsampling_scaling_factor),
        ] {
            if v <= 0 {
                return Err(self.err(field, format!("{v} must be positive")));
            }
        }
        for (side, channels, blocks) in [
            ("encoder", &self.encoder_block_out_channels, &self.num_encoder_blocks),
            ("decoder", &self.decoder_block_out_channels, &self.num_decoder_blocks),
        ] {
            let field = format!("{side}_block_out_channels");
            if channels.is_empty() || channels.len() > 8 {
                return Err(self.err(&field, format!("must list 1 to 8 levels, not {}", channels.len())));
            }
            if blocks.len() != channels.len() {
                return Err(self.err(
                    &format!("num_{side}_blocks"),
                    format!("has {} entries but {field} has {}; they must match", blocks.len(), channels.len()),
                ));
            }
            if let Some(b) = blocks.iter().find(|&&b| b < 0) {
                return Err(self.err(&format!("num_{side}_blocks"), format!("{b} must not be negative")));
            }
            // EncoderTiny's strided convolutions and DecoderTiny's level convolutions keep
            // their level's width, so a network whose levels differ cannot run.
            if channels[0] <= 0 || channels.iter().any(|&c| c != channels[0]) {
                return Err(self.err(
                    &field,
                    format!("{channels:?}: every level must have the same positive width ({side}s with changing widths do not run in diffusers either)"),
                ));
            }
        }
        let (ne, nd) = (self.encoder_block_out_channels.len(), self.decoder_block_out_channels.len());
        let up = (self.upsampling_scaling_factor as f64).powi(nd as i32 - 1);
        if up != (1u64 << (nd - 1)) as f64 || ne != nd {
            return Err(self.err(
                "upsampling_scaling_factor",
                format!(
                    "the decoder upsamples {up}× over {nd} levels and the encoder downsamples {}× over {ne}; \
                     they must both be 2^(levels-1), as diffusers' pipelines assume",
                    1u64 << (ne - 1)
                ),
            ));
        }
        if !matches!(self.act_fn.as_str(), "relu" | "silu" | "swish" | "gelu" | "mish") {
            return Err(self.err(
                "act_fn",
                format!("unsupported value '{}'; sdgen supports relu, silu, swish, gelu and mish", self.act_fn),
            ));
        }
        if self.upsample_fn != "nearest" {
            return Err(self.err(
                "upsample_fn",
                format!("unsupported value '{}'; sdgen supports nearest (TAESD's)", self.upsample_fn),
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return Err(
                self.err("scaling_factor", format!("{} must be a finite, non-zero number", self.scaling_factor))
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Act {
    Relu,
    Silu,
    Gelu,
    Mish,
}

impl Act {
    fn of(name: &str) -> Act {
        match name {
            "silu" | "swish" => Act::Silu,
            "gelu" => Act::Gelu,
            "mish" => Act::Mish,
            _ => Act::Relu,
        }
    }

    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Act::Relu => x.relu(),
            Act::Silu => x.silu(),
            Act::Gelu => x.gelu("none"),
            Act::Mish => x.mish(),
        }
    }
}

fn conv_no_bias(w: &Weights, cin: i64, cout: i64, kernel: i64, stride: i64, padding: i64) -> Result<Conv2d> {
    let weight = w.get("weight", &[cout, cin, kernel, kernel])?;
    Ok(Conv2d::new(weight, None, stride, padding, w.conv_algo()))
}

/// `AutoencoderTinyBlock`: three 3×3 convolutions with the activation between them, plus a
/// skip (1×1 without bias when the width changes), then ReLU.
#[derive(Debug)]
struct Block {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
    act: Act,
}

impl Block {
    fn load(w: &Weights, cin: i64, cout: i64, act: Act) -> Result<Block> {
        let c = w.pp("conv");
        Ok(Block {
            convs: [
                Conv2d::load(&c.pp(0), cin, cout, 3, 1, 1)?,
                Conv2d::load(&c.pp(2), cout, cout, 3, 1, 1)?,
                Conv2d::load(&c.pp(4), cout, cout, 3, 1, 1)?,
            ],
            skip: if cin != cout { Some(conv_no_bias(&w.pp("skip"), cin, cout, 1, 1, 0)?) } else { None },
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.act.forward(&self.convs[0].forward(x));
        let h = self.act.forward(&self.convs[1].forward(&h));
        let h = self.convs[2].forward(&h);
        let skip = match &self.skip {
            Some(s) => s.forward(x),
            None => x.shallow_clone(),
        };
        (h + skip).relu()
    }
}

/// One entry of diffusers' `nn.Sequential` `layers`.
#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Block(Box<Block>),
    Act(Act),
    Upsample(i64),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Layer::Conv(c) => c.forward(x),
            Layer::Block(b) => b.forward(x),
            Layer::Act(a) => a.forward(x),
            Layer::Upsample(s) => {
                let (h, w) = (x.size()[2], x.size()[3]);
                let s = *s;
                x.upsample_nearest2d([h * s, w * s], Some(s as f64), Some(s as f64))
            }
        }
    }
}

fn run(layers: &[Layer], x: Tensor) -> Tensor {
    layers.iter().fold(x, |h, l| l.forward(&h))
}

/// `EncoderTiny.layers`: per level a convolution (strided from the second level on) and its
/// blocks, then a convolution to the latent channels.
fn encoder(w: &Weights, cfg: &TinyVaeConfig) -> Result<Vec<Layer>> {
    let act = Act::of(&cfg.act_fn);
    let mut layers = Vec::new();
    for (i, (&c, &n)) in cfg.encoder_block_out_channels.iter().zip(&cfg.num_encoder_blocks).enumerate() {
        let at = w.pp(layers.len());
        layers.push(Layer::Conv(if i == 0 {
            Conv2d::load(&at, cfg.in_channels, c, 3, 1, 1)?
        } else {
            conv_no_bias(&at, c, c, 3, 2, 1)?
        }));
        for _ in 0..n {
            layers.push(Layer::Block(Box::new(Block::load(&w.pp(layers.len()), c, c, act)?)));
        }
    }
    let last = cfg.encoder_block_out_channels[cfg.encoder_block_out_channels.len() - 1];
    layers.push(Layer::Conv(Conv2d::load(&w.pp(layers.len()), last, cfg.latent_channels, 3, 1, 1)?));
    Ok(layers)
}

/// `DecoderTiny.layers`: a convolution from the latents and the activation, then per level
/// its blocks, an upsampler (not at the last level) and a convolution (without bias, except
/// the last one, which makes the image channels).
fn decoder(w: &Weights, cfg: &TinyVaeConfig) -> Result<Vec<Layer>> {
    let act = Act::of(&cfg.act_fn);
    let ch = &cfg.decoder_block_out_channels;
    let mut layers = vec![Layer::Conv(Conv2d::load(&w.pp(0), cfg.latent_channels, ch[0], 3, 1, 1)?), Layer::Act(act)];
    let n = ch.len();
    for (i, (&c, &blocks)) in ch.iter().zip(&cfg.num_decoder_blocks).enumerate() {
        for _ in 0..blocks {
            layers.push(Layer::Block(Box::new(Block::load(&w.pp(layers.len()), c, c, act)?)));
        }
        if i + 1 < n {
            layers.push(Layer::Upsample(cfg.upsampling_scaling_factor));
        }
        let at = w.pp(layers.len());
        layers.push(Layer::Conv(if i + 1 < n {
            conv_no_bias(&at, c, c, 3, 1, 1)?
        } else {
            Conv2d::load(&at, c, cfg.out_channels, 3, 1, 1)?
        }));
    }
    Ok(layers)
}

/// The tiny autoencoder, ready to run on the device and dtype its weights were loaded with.
#[derive(Debug)]
pub struct TinyVae {
    pub config: TinyVaeConfig,
    /// `None` for decoder-only weights (madebyollin's `taesd_decoder.safetensors`).
    encoder: Option<Vec<Layer>>,
    decoder: Vec<Layer>,
    device: Device,
    kind: Kind,
    /// Last: dropped after the tensors that may borrow the mapped weights.
    _map: MapGuard,
}

impl TinyVae {
    /// Loads `dir/config.json` and the weights beside it; every stored tensor must be used.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<TinyVae> {
        let cfg = TinyVaeConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::open(&[crate::models::unet::diffusers_weights_file(dir)?], device, kind)?;
        let vae = TinyVae::new(&w, &cfg)?;
        w.finish()?;
        Ok(vae)
    }

    /// Builds the network from weights with diffusers' names (`encoder.layers.N…`,
    /// `decoder.layers.N…`). Weights without any `encoder.*` tensor give a decoder-only
    /// autoencoder, whose [`TinyVae::encode`] is an error.
    pub fn new(w: &Weights, cfg: &TinyVaeConfig) -> Result<TinyVae> {
        cfg.check()?;
        let has_encoder = w.names().iter().any(|n| n.starts_with("encoder."));
        Ok(TinyVae {
            config: cfg.clone(),
            encoder: if has_encoder { Some(encoder(&w.pp("encoder").pp("layers"), cfg)?) } else { None },
            decoder: decoder(&w.pp("decoder").pp("layers"), cfg)?,
            device: w.device(),
            kind: w.kind(),
            _map: w.map_guard(),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether [`TinyVae::encode`] can run (the weights held an encoder).
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// diffusers' `vae.decode(z).sample`: `z` is the latent already divided by the scaling
    /// factor (1 for TAESD), on the weights' device and in their dtype; the image comes back
    /// `[n, out_channels, h·scale, w·scale]` in about [-1, 1], unclamped.
    pub fn decode(&self, z: &Tensor) -> Tensor {
        let x = (z / 3.0).tanh() * 3.0;
        run(&self.decoder, x) * 2.0 - 1.0
    }

    /// diffusers' `vae.encode(x).latents` for an image in [-1, 1]: the latents themselves (no
    /// distribution, nothing drawn from a generator), not yet scaled.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let Some(layers) = &self.encoder else {
            return Err(Error::Model(format!(
                "the tiny autoencoder from {} has only a decoder; img2img and inpainting need its encoder \
                 too (use the diffusers folder, or both taesd_encoder and taesd_decoder files)",
                self.config.path.display()
            )));
        };
        Ok(run(layers, (x + 1.0) / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TinyVaeConfig> {
        TinyVaeConfig::from_json(Path::new("vae/config.json"), text)
    }

    #[test]
    fn defaults_are_taesd() {
        let cfg = TinyVaeConfig::taesd();
        assert_eq!(cfg.encoder_block_out_channels, vec![64; 4]);
        assert_eq!(cfg.num_encoder_blocks, vec![1, 3, 3, 3]);
        assert_eq!(cfg.num_decoder_blocks, vec![3, 3, 3, 1]);
        assert_eq!((cfg.scaling_factor, cfg.latent_channels, cfg.scale_factor()), (1.0, 4, 8));
        assert!(!cfg.force_upcast);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (r#"{"encoder_block_out_channels": [8, 16, 16, 16]}"#, "encoder_block_out_channels"),
            (r#"{"num_decoder_blocks": [1, 1]}"#, "num_decoder_blocks"),
            (r#"{"upsampling_scaling_factor": 3}"#, "upsampling_scaling_factor"),
            (r#"{"act_fn": "tanh"}"#, "act_fn"),
            (r#"{"upsample_fn": "bicubic"}"#, "upsample_fn"),
            (r#"{"latent_channels": 0}"#, "latent_channels"),
            (r#"{"scaling_factor": 0}"#, "scaling_factor"),
            (
                r#"{"encoder_block_out_channels": [8, 8], "num_encoder_blocks": [1, 1], "decoder_block_out_channels": [8, 8, 8], "num_decoder_blocks": [1, 1, 1]}"#,
                "upsampling_scaling_factor",
            ),
        ];
        for (text, field) in cases {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.starts_with("vae/config.json: ") && msg.contains(field), "{text} -> {msg}");
        }
    }

    /// Builds a tiny autoencoder from random weights written to a temporary file, for the
    /// general case (other depths, widths, channel counts) beside the shipped fixtures.
    fn random(cfg: &TinyVaeConfig, decoder_only: bool) -> (tempfile::TempDir, TinyVae) {
        // The names and shapes of diffusers' layout, written out independently of the loader.
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let mut conv = |name: String, cin: i64, cout: i64, k: i64, bias: bool| {
            tensors
                .push((format!("{name}.weight"), Tensor::randn([cout, cin, k, k], (Kind::Float, Device::Cpu)) * 0.2));
            if bias {
                tensors.push((format!("{name}.bias"), Tensor::randn([cout], (Kind::Float, Device::Cpu)) * 0.1));
            }
        };
        let block = |conv: &mut dyn FnMut(String, i64, i64, i64, bool), at: String, c: i64| {
            for j in [0, 2, 4] {
                conv(format!("{at}.conv.{j}"), c, c, 3, true);
            }
        };
        if !decoder_only {
            let mut i = 0;
            for (l, (&c, &n)) in cfg.encoder_block_out_channels.iter().zip(&cfg.num_encoder_blocks).enumerate() {
                conv(format!("encoder.layers.{i}"), if l == 0 { cfg.in_channels } else { c }, c, 3, l == 0);
                i += 1;
                for _ in 0..n {
                    block(&mut conv, format!("encoder.layers.{i}"), c);
                    i += 1;
                }
            }
            conv(format!("encoder.layers.{i}"), cfg.encoder_block_out_channels[0], cfg.latent_channels, 3, true);
        }
        let ch = &cfg.decoder_block_out_channels;
        conv("decoder.layers.0".into(), cfg.latent_channels, ch[0], 3, true);
        let mut i = 2;
        for (l, (&c, &n)) in ch.iter().zip(&cfg.num_decoder_blocks).enumerate() {
            for _ in 0..n {
                block(&mut conv, format!("decoder.layers.{i}"), c);
                i += 1;
            }
            let last = l + 1 == ch.len();
            if !last {
                i += 1;
            }
            conv(format!("decoder.layers.{i}"), c, if last { cfg.out_channels } else { c }, 3, last);
            i += 1;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, &path).unwrap();
        let w = Weights::open(&[path], Device::Cpu, Kind::Float).unwrap();
        let vae = TinyVae::new(&w, cfg).unwrap();
        w.finish().unwrap();
        (dir, vae)
    }

    #[test]
    fn shapes_follow_the_config() {
        for (levels, width, latent, out) in [(4, 8, 4, 3), (3, 6, 16, 3), (1, 4, 4, 1), (2, 5, 2, 4)] {
            let cfg = parse(&format!(
                r#"{{"encoder_block_out_channels": {e:?}, "decoder_block_out_channels": {e:?},
                    "num_encoder_blocks": {b:?}, "num_decoder_blocks": {b:?}, "latent_channels": {latent},
                    "out_channels": {out}, "in_channels": {out}}}"#,
                e = vec![width; levels],
                b = (0..levels as i64).map(|i| i % 2 + 1).collect::<Vec<_>>(),
            ))
            .unwrap();
            let (_dir, vae) = random(&cfg, false);
            let s = cfg.scale_factor();
            let image = Tensor::rand([2, out, 5 * s, 3 * s], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let z = vae.encode(&image).unwrap();
            assert_eq!(z.size(), [2, latent, 5, 3]);
            let back = vae.decode(&z);
            assert_eq!(back.size(), [2, out, 5 * s, 3 * s]);
            assert!(back.isfinite().all().int64_value(&[]) == 1);
        }
    }

    #[test]
    fn decoder_only_weights_refuse_to_encode() {
        let cfg = parse(r#"{"encoder_block_out_channels": [4, 4], "decoder_block_out_channels": [4, 4], "num_encoder_blocks": [1, 1], "num_decoder_blocks": [1, 1]}"#).unwrap();
        let (_dir, vae) = random(&cfg, true);
        assert!(!vae.has_encoder());
        assert_eq!(vae.decode(&Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu))).size(), [1, 3, 4, 4]);
        let err = vae.encode(&Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(err.to_string().contains("only a decoder"), "{err}");
    }
}
