//! The image autoencoder: diffusers' `AutoencoderKL` (encoder, decoder, quant convs and the
//! mid-block self-attention), built from `vae/config.json`.

use crate::loading::weights::MapGuard;
use crate::loading::{read_json, Weights};
use crate::models::attention::Attention;
use crate::models::nn::{Conv2d, GroupNorm};
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetSpec, Upsample2D};
use crate::models::unet::diffusers_weights_file;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The VAE's resnets and norms use this epsilon whatever the config says, as in diffusers.
const EPS: f64 = 1e-6;

/// `vae/config.json`, with diffusers' field names and defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<i64>,
    #[serde(default = "one")]
    pub layers_per_block: i64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: i64,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Latents are `scaling_factor · (z - shift_factor)` of the encoder's `z`. Required: the
    /// value belongs to the trained weights, so sdgen does not guess it.
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// The VAE overflows in fp16; diffusers' pipelines then decode in fp32.
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// The file the config came from, for error messages.
    #[serde(skip)]
    pub path: PathBuf,
}

fn one() -> i64 {
    1
}
fn three() -> i64 {
    3
}
fn four() -> i64 {
    4
}
fn thirty_two() -> i64 {
    32
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn default_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn default_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn default_channels() -> Vec<i64> {
    vec![64]
}

impl VaeConfig {
    pub fn from_file(path: &Path) -> Result<VaeConfig> {
        let mut cfg: VaeConfig = read_json(path)?;
        cfg.path = path.to_path_buf();
        cfg.check()?;
        Ok(cfg)
    }

    /// Parses config text; `path` names it in messages.
    pub fn from_json(path: &Path, text: &str) -> Result<VaeConfig> {
        let mut cfg: VaeConfig = crate::loading::config::parse_json(path, text)?;
        cfg.path = path.to_path_buf();
        cfg.check()?;
        Ok(cfg)
    }

    fn err(&self, field: &str, message: impl std::fmt::Display) -> Error {
        Error::config(&self.path, format!("field '{field}': {message}"))
    }

    /// Checks that the config describes an `AutoencoderKL` sdgen can build.
    pub fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(self.err("block_out_channels", "must list at least one level"));
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| c <= 0) {
            return Err(self.err("block_out_channels", format!("channel count {c} must be positive")));
        }
        for (field, types, want) in [
            ("down_block_types", &self.down_block_types, "DownEncoderBlock2D"),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(self.err(
                    field,
                    format!("has {} entries but block_out_channels has {n}; they must match", types.len()),
                ));
            }
            if let Some((i, t)) = types.iter().enumerate().find(|(_, t)| *t != want) {
                return Err(self.err(
                    &format!("{field}[{i}]"),
                    format!("unsupported block type '{t}'; sdgen's AutoencoderKL supports {want}"),
                ));
            }
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(self.err("act_fn", format!("unsupported value '{}'; sdgen supports silu", self.act_fn)));
        }
        if self.layers_per_block < 0 {
            return Err(self.err("layers_per_block", "must not be negative"));
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if v <= 0 {
                return Err(self.err(field, format!("{v} must be positive")));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return Err(
                self.err("scaling_factor", format!("{} must be a finite, non-zero number", self.scaling_factor))
            );
        }
        Ok(())
    }
}

/// The VAE's middle: resnet, optional single-head self-attention over all pixels, resnet.
#[derive(Debug)]
struct VaeMidBlock {
    first: ResnetBlock2D,
    attention: Option<(GroupNorm, Attention)>,
    second: ResnetBlock2D,
}

impl VaeMidBlock {
    fn load(w: &Weights, channels: i64, groups: i64, add_attention: bool) -> Result<VaeMidBlock> {
        let spec = resnet_spec(channels, channels, groups);
        let attention = if add_attention {
            let a = w.pp("attentions.0");
            // Older checkpoints name the projections query/key/value/proj_attn.
            Some((
                GroupNorm::load(&a.pp("group_norm"), groups, channels, EPS)?,
                Attention::load(&a, channels, None, 1, channels, true, true)?,
            ))
        } else {
            None
        };
        Ok(VaeMidBlock {
            first: ResnetBlock2D::load(&w.pp("resnets.0"), spec)?,
            attention,
            second: ResnetBlock2D::load(&w.pp("resnets.1"), spec)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.first.forward(x, None);
        if let Some((norm, attn)) = &self.attention {
            let size = h.size();
            let (b, c, height, width) = (size[0], size[1], size[2], size[3]);
            let tokens = norm.forward(&h.view([b, c, height * width])).transpose(1, 2);
            let out = attn.forward(&tokens, None).transpose(-1, -2).reshape([b, c, height, width]);
            h = out + h;
        }
        self.second.forward(&h, None)
    }
}

fn resnet_spec(cin: i64, cout: i64, groups: i64) -> ResnetSpec {
    ResnetSpec { in_channels: cin, out_channels: cout, temb_channels: None, groups, eps: EPS, output_scale_factor: 1.0 }
}

fn resnets(w: &Weights, n: i64, cin: i64, cout: i64, groups: i64) -> Result<Vec<ResnetBlock2D>> {
    (0..n)
        .map(|i| {
            ResnetBlock2D::load(&w.pp("resnets").pp(i), resnet_spec(if i == 0 { cin } else { cout }, cout, groups))
        })
        .collect()
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    /// Each level's resnets and, except at the last level, its downsampler.
    down: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid: VaeMidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn load(w: &Weights, cfg: &VaeConfig) -> Result<Encoder> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let n = ch.len();
        let mut down = Vec::with_capacity(n);
        let mut prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let b = w.pp("down_blocks").pp(i);
            let sampler = if i + 1 < n { Some(Downsample2D::load(&b.pp("downsamplers.0"), c, 0)?) } else { None };
            down.push((resnets(&b, cfg.layers_per_block, prev, c, g)?, sampler));
            prev = c;
        }
        let last = ch[n - 1];
        Ok(Encoder {
            conv_in: Conv2d::load(&w.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down,
            mid: VaeMidBlock::load(&w.pp("mid_block"), last, g, cfg.mid_block_add_attention)?,
            norm_out: GroupNorm::load(&w.pp("conv_norm_out"), g, last, EPS)?,
            conv_out: Conv2d::load(&w.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for (resnets, sampler) in &self.down {
            for r in resnets {
                h = r.forward(&h, None);
            }
            if let Some(s) = sampler {
                h = s.forward(&h);
            }
        }
        let h = self.mid.forward(&h);
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid: VaeMidBlock,
    /// Each level's resnets and, except at the last level, its upsampler.
    up: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn load(w: &Weights, cfg: &VaeConfig) -> Result<Decoder> {
        let ch: Vec<i64> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let n = ch.len();
        let mut up = Vec::with_capacity(n);
        let mut prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let b = w.pp("up_blocks").pp(i);
            let sampler = if i + 1 < n { Some(Upsample2D::load(&b.pp("upsamplers.0"), c)?) } else { None };
            up.push((resnets(&b, cfg.layers_per_block + 1, prev, c, g)?, sampler));
            prev = c;
        }
        Ok(Decoder {
            conv_in: Conv2d::load(&w.pp("conv_in"), cfg.latent_channels, ch[0], 3, 1, 1)?,
            mid: VaeMidBlock::load(&w.pp("mid_block"), ch[0], g, cfg.mid_block_add_attention)?,
            up,
            norm_out: GroupNorm::load(&w.pp("conv_norm_out"), g, ch[n - 1], EPS)?,
            conv_out: Conv2d::load(&w.pp("conv_out"), ch[n - 1], cfg.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid.forward(&self.conv_in.forward(z));
        for (resnets, sampler) in &self.up {
            for r in resnets {
                h = r.forward(&h, None);
            }
            if let Some(s) = sampler {
                h = s.forward(&h, None);
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }
}

/// How [`Vae::decode_tiled`] splits latents into tiles (sizes in latent pixels; the image
/// tile is 8× larger for SD's VAE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VaeTiling {
    /// Tile edge.
    pub tile: i64,
    /// How many latent rows/columns neighbouring tiles share and blend across.
    pub overlap: i64,
}

impl Default for VaeTiling {
    /// diffusers' defaults for SD: 64-latent (512-pixel) tiles, a quarter of them shared.
    fn default() -> VaeTiling {
        VaeTiling { tile: 64, overlap: 16 }
    }
}

impl VaeTiling {
    pub fn check(&self) -> Result<()> {
        if self.tile < 1 || self.overlap < 0 || self.overlap >= self.tile {
            return Err(Error::invalid(format!(
                "VAE tiling with tile {} and overlap {} is impossible: the tile must be at least 1 and the \
                 overlap between 0 and tile - 1",
                self.tile, self.overlap
            )));
        }
        Ok(())
    }
}

/// Tile starts covering `0..len` with stride `tile - overlap`; the last tile ends at `len`.
fn tile_starts(len: i64, tile: i64, overlap: i64) -> Vec<i64> {
    if len <= tile {
        return vec![0];
    }
    let mut starts = Vec::new();
    let mut s = 0;
    while s + tile < len {
        starts.push(s);
        s += tile - overlap;
    }
    starts.push(len - tile);
    starts
}

/// Blend weights along one axis of a decoded tile that starts at latent `start`, spans `n`
/// of the axis's `len` latents, and is `f` times larger once decoded.
fn edge_weights(start: i64, n: i64, len: i64, f: i64, overlap: i64) -> Vec<f32> {
    let out = (n * f) as usize;
    let ramp = (overlap * f) as f32;
    (0..out)
        .map(|k| {
            let mut w = 1f32;
            if ramp > 0.0 {
                // Half-pixel offsets keep every weight positive, so no pixel divides by zero.
                if start > 0 {
                    w *= ((k as f32 + 0.5) / ramp).min(1.0);
                }
                if start + n < len {
                    w *= ((out - k) as f32 - 0.5).min(ramp) / ramp;
                }
            }
            w
        })
        .collect()
}

/// [`Vae::decode_tiled`] with any decoder that maps a latent tile to an image `f` times
/// larger; kept apart from the VAE so the blending can be tested with a known decoder.
fn decode_in_tiles(z: &Tensor, tiling: VaeTiling, decode: impl Fn(&Tensor) -> Tensor) -> Result<Tensor> {
    tiling.check()?;
    let (b, _, h, w) = z.size4()?;
    if h <= tiling.tile && w <= tiling.tile {
        return Ok(decode(z).to_kind(Kind::Float));
    }
    let (th, tw) = (h.min(tiling.tile), w.min(tiling.tile));
    // Sums of weighted tiles and of weights, both fp32 at full image size (3 channels: small
    // next to one tile's activations).
    let mut sums: Option<(Tensor, Tensor)> = None;
    for &y in &tile_starts(h, tiling.tile, tiling.overlap) {
        for &x in &tile_starts(w, tiling.tile, tiling.overlap) {
            let part = decode(&z.narrow(2, y, th).narrow(3, x, tw)).to_kind(Kind::Float);
            let (_, c, ph, pw) = part.size4()?;
            let f = ph / th;
            let (acc, weight) = sums.get_or_insert_with(|| {
                let opts = (Kind::Float, part.device());
                (Tensor::zeros([b, c, h * f, w * f], opts), Tensor::zeros([1, 1, h * f, w * f], opts))
            });
            let wy = Tensor::from_slice(&edge_weights(y, th, h, f, tiling.overlap)).view([ph, 1]);
            let wx = Tensor::from_slice(&edge_weights(x, tw, w, f, tiling.overlap)).view([1, pw]);
            let mask = (wy * wx).to_device(part.device()).view([1, 1, ph, pw]);
            let mut a = acc.narrow(2, y * f, ph).narrow(3, x * f, pw);
            a += &part * &mask;
            let mut m = weight.narrow(2, y * f, ph).narrow(3, x * f, pw);
            m += mask;
        }
    }
    let (acc, weight) = sums.ok_or_else(|| Error::Model("tiled VAE decode: the latents are empty".into()))?;
    Ok(acc / weight)
}

/// The VAE, ready to run on the device and dtype its weights were loaded with.
#[derive(Debug)]
pub struct Vae {
    pub config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    device: Device,
    kind: Kind,
    /// Last: dropped after the tensors that may borrow the mapped weights.
    _map: MapGuard,
}

impl Vae {
    /// Loads `dir/config.json` and the weights beside it; every stored tensor must be used.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Vae> {
        let cfg = VaeConfig::from_file(&dir.join("config.json"))?;
        let w = Weights::open(&[diffusers_weights_file(dir)?], device, kind)?;
        let vae = Vae::new(&w, &cfg)?;
        w.finish()?;
        Ok(vae)
    }

    /// Builds the VAE from already-opened weights with diffusers' names; the mid-block
    /// attention may use either the current or the pre-0.14 names.
    pub fn new(w: &Weights, cfg: &VaeConfig) -> Result<Vae> {
        cfg.check()?;
        w.set_feature_maps(crate::models::conv::FeatureMaps::Large);
        let l2 = 2 * cfg.latent_channels;
        let l = cfg.latent_channels;
        Ok(Vae {
            config: cfg.clone(),
            encoder: Encoder::load(&w.pp("encoder"), cfg)?,
            decoder: Decoder::load(&w.pp("decoder"), cfg)?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::load(&w.pp("quant_conv"), l2, l2, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::load(&w.pp("post_quant_conv"), l, l, 1, 1, 0)?)
            } else {
                None
            },
            device: w.device(),
            kind: w.kind(),
            _map: w.map_guard(),
        })
    }

    /// The factor latents were multiplied by in training (`vae.config.scaling_factor`).
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// The shift subtracted before scaling, if the model has one (not in SD 1.x/2.x).
    pub fn shift_factor(&self) -> Option<f64> {
        self.config.shift_factor
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// diffusers' `vae.decode(z).sample`: `z` is the latent already divided by the scaling
    /// factor; the image comes back in about [-1, 1], unclamped.
    pub fn decode(&self, z: &Tensor) -> Tensor {
        match &self.post_quant_conv {
            Some(c) => self.decoder.forward(&c.forward(z)),
            None => self.decoder.forward(z),
        }
    }

    /// Like [`Vae::decode`], but for latents larger than one tile: decodes overlapping tiles
    /// one at a time and blends them, so peak activation memory is that of one tile. Latents
    /// no larger than a tile are decoded whole. The result is fp32.
    ///
    /// Every output pixel is a weighted mean of the tiles covering it. A tile's weight ramps
    /// linearly from near 0 to 1 across `overlap` latent pixels at each edge it shares with a
    /// neighbour (edges on the image border keep weight 1), so tile borders, where zero
    /// padding distorts the decoder most, count least and the weights change smoothly: no
    /// seams. Tiles keep their full size; the last one along an axis is moved back to end at
    /// the border, so any size works. (diffusers' `tiled_decode` crops tiles to a grid and
    /// blends each into its predecessor instead; the idea, not the arithmetic, is the same.)
    pub fn decode_tiled(&self, z: &Tensor, tiling: VaeTiling) -> Result<Tensor> {
        decode_in_tiles(z, tiling, |t| self.decode(t))
    }

    /// diffusers' `vae.encode(x).latent_dist.mean` for an image in [-1, 1]; not yet scaled.
    /// The encoder's distribution for `x`: its mean and standard deviation (the log-variance
    /// clamped to [-30, 20], as diffusers' `DiagonalGaussianDistribution`). img2img samples
    /// `mean + std · ε` with the request's generator.
    pub fn encode_distribution(&self, x: &Tensor) -> (Tensor, Tensor) {
        let moments = self.encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(c) => c.forward(&moments),
            None => moments,
        };
        let c = self.config.latent_channels;
        let logvar = moments.narrow(1, c, c).clamp(-30.0, 20.0);
        (moments.narrow(1, 0, c), (logvar * 0.5).exp())
    }

    pub fn encode(&self, x: &Tensor) -> Tensor {
        let moments = self.encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(c) => c.forward(&moments),
            None => moments,
        };
        moments.narrow(1, 0, self.config.latent_channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VaeConfig> {
        VaeConfig::from_json(Path::new("vae/config.json"), text)
    }

    #[test]
    fn reads_scaling_factor_and_flags() {
        let cfg = parse(
            r#"{"scaling_factor": 0.13025, "use_quant_conv": false, "block_out_channels": [8, 16],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"#,
        )
        .unwrap();
        assert_eq!(cfg.scaling_factor, 0.13025);
        assert!(!cfg.use_quant_conv && cfg.use_post_quant_conv && cfg.mid_block_add_attention && cfg.force_upcast);
        assert_eq!(cfg.shift_factor, None);
    }

    #[test]
    fn tiles_cover_every_size() {
        assert_eq!(tile_starts(8, 8, 2), vec![0]);
        assert_eq!(tile_starts(5, 8, 2), vec![0]);
        assert_eq!(tile_starts(12, 4, 2), vec![0, 2, 4, 6, 8]);
        // 11 is no multiple of the stride: the last tile moves back to end at the border.
        assert_eq!(tile_starts(11, 4, 1), vec![0, 3, 6, 7]);
        assert!(VaeTiling { tile: 4, overlap: 4 }.check().is_err());
        assert!(VaeTiling { tile: 0, overlap: 0 }.check().is_err());
    }

    #[test]
    fn edge_weights_ramp_only_inside() {
        // A middle tile: ramps at both ends; a border tile keeps weight 1 at the border.
        let mid = edge_weights(2, 4, 12, 2, 1);
        assert_eq!(mid, vec![0.25, 0.75, 1.0, 1.0, 1.0, 1.0, 0.75, 0.25]);
        let first = edge_weights(0, 4, 12, 2, 1);
        assert_eq!(first, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.25]);
        assert!(edge_weights(0, 4, 4, 2, 0).iter().all(|&w| w == 1.0));
    }

    #[test]
    fn blending_exact_tiles_gives_the_whole_image() {
        // A decoder without borders effects (each latent becomes a 2×2 block): tiles are exact
        // crops of the whole decode, so placement and normalised weights must reproduce it.
        let decode = |t: &Tensor| t.upsample_nearest2d([t.size()[2] * 2, t.size()[3] * 2], None, None) * 3.0 - 1.0;
        let z = Tensor::randn([2, 4, 9, 11], (Kind::Float, Device::Cpu));
        let whole = decode(&z);
        for (tile, overlap) in [(4, 1), (4, 2), (5, 3), (3, 0), (9, 4)] {
            let tiled = decode_in_tiles(&z, VaeTiling { tile, overlap }, decode).unwrap();
            let diff = (tiled - &whole).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "tile {tile}/{overlap}: {diff}");
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (r#"{"scaling_factor": 0.2, "down_block_types": ["AttnDownEncoderBlock2D"]}"#, "down_block_types[0]"),
            (r#"{"scaling_factor": 0.2, "block_out_channels": [64, 128]}"#, "down_block_types"),
            (r#"{"scaling_factor": "big"}"#, "scaling_factor"),
            (r#"{}"#, "scaling_factor"),
            (r#"{"scaling_factor": 0.2, "act_fn": "relu"}"#, "act_fn"),
        ];
        for (text, field) in cases {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.starts_with("vae/config.json: ") && msg.contains(field), "{text} -> {msg}");
        }
    }
}
