//! `--vae SOURCE`: another autoencoder in place of the model's own, read without loading
//! weights.
//!
//! A source is a diffusers VAE folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors`),
//! a model folder with a `vae/` subfolder, a single `.safetensors` file, or a hub repo (fetched
//! by [`crate::loading::hub::fetch_vae_with`]). What the weights are comes from the config's
//! `_class_name` or, for a file without config, from its tensor names:
//!
//! - `encoder.down_blocks.…` (diffusers) or `encoder.down.0.block.0.…` (original LDM, with or
//!   without the `first_stage_model.` prefix): an `AutoencoderKL`, configured as the model's
//!   own VAE with the levels, layers and latent channels the shapes show (a KL file carries
//!   no config; `vae-ft-mse-840000-ema-pruned.safetensors` is one);
//! - `encoder.layers.N…`/`decoder.layers.N…`: an `AutoencoderTiny` with diffusers' names, its
//!   config read off the shapes;
//! - `N.weight`, `N.conv.M.weight`: madebyollin's original `taesd_decoder.safetensors` (the
//!   decoder alone; its `nn.Sequential` starts with a clamp, so index N is diffusers' N-1).

use crate::loading::ldm_keys::{self, Header};
use crate::loading::weights::MappedFile;
use crate::loading::{Source, Weights};
use crate::models::autoencoder::AutoencoderConfig;
use crate::models::taesd::TinyVaeConfig;
use crate::models::vae::VaeConfig;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// A swapped autoencoder: what it is, where its weights are, and how its names map.
#[derive(Debug, Clone)]
pub struct VaeSwap {
    /// The source as given (a path or a hub id), for records.
    pub source: String,
    /// A short name: the file's stem, the folder's name, the hub repo's name.
    pub name: String,
    /// The weights file and its sha256.
    pub file: PathBuf,
    pub sha256: String,
    pub config: AutoencoderConfig,
    /// Whether its names say it is for SDXL (`xl` in the file or folder name, the hub repo's
    /// name, or the config's `_name_or_path`; not in the folders above, which may say anything).
    /// TAESD and TAESDXL have the same shapes and configs.
    pub named_xl: bool,
    /// Stored names that differ from diffusers' (LDM or madebyollin files): requested name →
    /// stored tensor.
    sources: Option<BTreeMap<String, Source>>,
}

impl VaeSwap {
    /// Reads a local VAE source. `label` is what records call it (the path as given, or the
    /// hub id); `model_vae` is the model's own VAE config, the base for KL files without one;
    /// `fp16` prefers a folder's `.fp16.safetensors` weights.
    pub fn inspect(path: &Path, label: &str, model_vae: &VaeConfig, fp16: bool) -> Result<VaeSwap> {
        let name = short_name(label, path);
        if path.is_dir() {
            let dir = if path.join("config.json").is_file() {
                path.to_path_buf()
            } else if path.join("vae").join("config.json").is_file() {
                path.join("vae")
            } else {
                return Err(Error::invalid(format!(
                    "--vae {}: the folder has neither config.json (a diffusers VAE folder) nor vae/config.json (a model \
                     folder); give a VAE folder, a model folder, a .safetensors file or a hub id",
                    path.display()
                )));
            };
            return Self::inspect_folder(&dir, label, name, fp16);
        }
        if !path.is_file() {
            return Err(Error::invalid(format!(
                "--vae {}: no such file or folder; give a diffusers VAE folder, a model folder with vae/, a \
                 .safetensors file or a hub id like stabilityai/sd-vae-ft-mse",
                path.display()
            )));
        }
        if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
            if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
                crate::loading::weights::refuse_pickle(path)?;
                return Err(Error::invalid(format!(
                    "--vae {}: a .{ext} file is not a .safetensors file; sdgen reads VAEs from .safetensors",
                    path.display()
                )));
            }
        }
        Self::inspect_file(path, label, name, model_vae)
    }

    fn inspect_folder(dir: &Path, label: &str, name: String, fp16: bool) -> Result<VaeSwap> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let value: serde_json::Value = crate::loading::config::parse_json(&config_path, &text)?;
        let half = dir.join("diffusion_pytorch_model.fp16.safetensors");
        let file = if fp16 && half.is_file() { half } else { crate::models::unet::diffusers_weights_file(dir)? };
        let class = value.get("_class_name").and_then(|v| v.as_str()).map(str::to_string);
        let class = match class {
            Some(c) => c,
            None => match classify(&header(&file)?) {
                Layout::Tiny => "AutoencoderTiny".into(),
                _ => "AutoencoderKL".into(),
            },
        };
        let config = match class.as_str() {
            "AutoencoderKL" => AutoencoderConfig::Kl(VaeConfig::from_json(&config_path, &text)?),
            "AutoencoderTiny" => AutoencoderConfig::Tiny(TinyVaeConfig::from_json(&config_path, &text)?),
            other => {
                return Err(Error::invalid(format!(
                    "--vae {}: {} describes a {other}, not an autoencoder (AutoencoderKL or AutoencoderTiny)",
                    label,
                    config_path.display()
                )))
            }
        };
        let name_or_path = value.get("_name_or_path").and_then(|v| v.as_str()).unwrap_or("");
        let named_xl = is_xl(&name) || is_xl(name_or_path);
        let sha256 = crate::loading::sha256_file_cached(&file)?;
        Ok(VaeSwap { source: label.to_string(), name, file, sha256, config, named_xl, sources: None })
    }

    fn inspect_file(path: &Path, label: &str, name: String, model_vae: &VaeConfig) -> Result<VaeSwap> {
        let h = header(path)?;
        let (config, sources) = match classify(&h) {
            Layout::DiffusersKl => (AutoencoderConfig::Kl(kl_config(&h, model_vae, "")?), None),
            Layout::Ldm(prefix) => {
                // ldm_keys reads names under `first_stage_model.`; give it that view.
                let shapes = h
                    .shapes
                    .iter()
                    .filter_map(|(k, s)| {
                        k.strip_prefix(prefix).map(|r| (format!("{}{r}", ldm_keys::VAE_PREFIX), s.clone()))
                    })
                    .collect();
                let (layout, mut map) = ldm_keys::vae(&Header::new(path, shapes))?;
                for src in map.values_mut() {
                    src.key = format!("{prefix}{}", &src.key[ldm_keys::VAE_PREFIX.len()..]);
                }
                let mut cfg = model_vae.clone();
                cfg.path = path.to_path_buf();
                let n = layout.block_out_channels.len();
                cfg.block_out_channels = layout.block_out_channels;
                cfg.layers_per_block = layout.layers_per_block as i64;
                cfg.latent_channels = layout.latent_channels;
                cfg.down_block_types = vec!["DownEncoderBlock2D".into(); n];
                cfg.up_block_types = vec!["UpDecoderBlock2D".into(); n];
                cfg.use_quant_conv = map.contains_key("quant_conv.weight");
                cfg.use_post_quant_conv = map.contains_key("post_quant_conv.weight");
                cfg.mid_block_add_attention = map.keys().any(|k| k.starts_with("encoder.mid_block.attentions."));
                cfg.check()?;
                (AutoencoderConfig::Kl(cfg), Some(map))
            }
            Layout::Tiny => (AutoencoderConfig::Tiny(tiny_config(&h, "encoder.layers.", "decoder.layers.", 0)?), None),
            Layout::MadebyollinDecoder => {
                let cfg = tiny_config(&h, "", "", 1)?;
                let map = h
                    .shapes
                    .keys()
                    .filter_map(|k| {
                        let (i, rest) = k.split_once('.')?;
                        let i: usize = i.parse().ok()?;
                        Some((format!("decoder.layers.{}.{rest}", i - 1), Source::direct(k.clone())))
                    })
                    .collect();
                (AutoencoderConfig::Tiny(cfg), Some(map))
            }
            Layout::MadebyollinEncoder => {
                return Err(Error::invalid(format!(
                    "--vae {label}: this is a TAESD encoder alone (taesd_encoder.safetensors); sdgen needs the \
                     decoder to make images: pass taesd_decoder.safetensors, or the diffusers folder"
                )))
            }
            Layout::Checkpoint => {
                return Err(Error::invalid(format!(
                    "--vae {label}: this is a whole Stable Diffusion checkpoint (it has a UNet), not a VAE file; \
                     pass it as --model, or give a VAE-only file"
                )))
            }
            Layout::Unknown(examples) => {
                return Err(Error::invalid(format!(
                    "--vae {label}: the file holds no autoencoder: expected AutoencoderKL names \
                     (encoder.down_blocks.…), original LDM names (encoder.down.0.block.…, optionally under \
                     first_stage_model.) or AutoencoderTiny names (decoder.layers.N…), but found e.g. {examples}"
                )))
            }
        };
        let named_xl = is_xl(&name);
        let sha256 = crate::loading::sha256_file_cached(path)?;
        Ok(VaeSwap { source: label.to_string(), name, file: path.to_path_buf(), sha256, config, named_xl, sources })
    }

    /// The swapped VAE's weights under diffusers' names, on `device` in `kind`.
    pub fn weights(&self, device: Device, kind: Kind) -> Result<Weights> {
        match &self.sources {
            Some(map) => Weights::open_mapped(std::slice::from_ref(&self.file), device, kind, map.clone()),
            None => Weights::open(std::slice::from_ref(&self.file), device, kind),
        }
    }

    /// The record of it, for images' metadata.
    pub fn record(&self) -> crate::request::VaeRecord {
        crate::request::VaeRecord {
            source: self.source.clone(),
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            class: self.config.class_name().to_string(),
        }
    }
}

/// `xl` anywhere in a name: `taesdxl`, `sdxl-vae-fp16-fix`, `vae_xl`.
fn is_xl(name: &str) -> bool {
    name.to_ascii_lowercase().contains("xl")
}

/// The last part of a hub id (a label that is no local path), else the file's name (with
/// its extension, as A1111's `VAE:` shows it) or the folder's.
fn short_name(label: &str, path: &Path) -> String {
    if !Path::new(label).exists() {
        let repo = label.split('@').next().unwrap_or(label);
        return repo.rsplit('/').next().unwrap_or(repo).to_string();
    }
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| label.to_string())
}

fn header(path: &Path) -> Result<Header> {
    let (_file, entries) = MappedFile::open(path)?;
    Ok(Header::new(path, entries.into_iter().map(|(n, e)| (n, e.shape)).collect()))
}

#[derive(Debug)]
enum Layout {
    DiffusersKl,
    /// Original names under this prefix (`""` or `first_stage_model.`).
    Ldm(&'static str),
    Tiny,
    MadebyollinDecoder,
    MadebyollinEncoder,
    Checkpoint,
    /// A few of the names, for the message.
    Unknown(String),
}

fn classify(h: &Header) -> Layout {
    let any = |p: &str| h.shapes.keys().any(|k| k.starts_with(p));
    if any(ldm_keys::UNET_PREFIX) || any("conditioner.") || any(ldm_keys::TEXT_PREFIX) {
        return Layout::Checkpoint;
    }
    if any("encoder.down_blocks.") || any("decoder.up_blocks.") {
        return Layout::DiffusersKl;
    }
    if any("encoder.down.") || any("decoder.up.") {
        return Layout::Ldm("");
    }
    if any("first_stage_model.encoder.down.") || any("first_stage_model.decoder.up.") {
        return Layout::Ldm(ldm_keys::VAE_PREFIX);
    }
    if any("decoder.layers.") || any("encoder.layers.") {
        return Layout::Tiny;
    }
    let numbered = !h.shapes.is_empty()
        && h.shapes.keys().all(|k| k.split_once('.').is_some_and(|(i, _)| i.parse::<usize>().is_ok()));
    if numbered {
        // madebyollin's decoder starts with a clamp (no tensors at 0); its encoder with a conv.
        return if h.shapes.contains_key("0.weight") { Layout::MadebyollinEncoder } else { Layout::MadebyollinDecoder };
    }
    let examples: Vec<String> = h.shapes.keys().take(3).map(|k| format!("'{k}'")).collect();
    Layout::Unknown(if examples.is_empty() { "no tensors at all".into() } else { examples.join(", ") })
}

/// A diffusers-named KL file without config: the model's VAE config with the levels, layers
/// and latent channels the shapes show.
fn kl_config(h: &Header, model_vae: &VaeConfig, prefix: &str) -> Result<VaeConfig> {
    let shape = |k: &str| h.shapes.get(&format!("{prefix}{k}")).cloned();
    let mut levels = Vec::new();
    while let Some(s) = shape(&format!("encoder.down_blocks.{}.resnets.0.conv2.weight", levels.len())) {
        levels.push(s[0]);
    }
    let layers: BTreeSet<&str> = h
        .shapes
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{prefix}encoder.down_blocks.0.resnets.")))
        .filter_map(|r| r.split_once('.').map(|(i, _)| i))
        .collect();
    let latent = shape("decoder.conv_in.weight").map(|s| s[1]);
    let (Some(latent), false) = (latent, levels.is_empty()) else {
        return Err(Error::weights(
            &h.path,
            "AutoencoderKL names without encoder.down_blocks.0.resnets.0 or decoder.conv_in: not a whole VAE",
        ));
    };
    let mut cfg = model_vae.clone();
    cfg.path = h.path.clone();
    let n = levels.len();
    cfg.block_out_channels = levels;
    cfg.layers_per_block = layers.len() as i64;
    cfg.latent_channels = latent;
    cfg.down_block_types = vec!["DownEncoderBlock2D".into(); n];
    cfg.up_block_types = vec!["UpDecoderBlock2D".into(); n];
    cfg.use_quant_conv = shape("quant_conv.weight").is_some();
    cfg.use_post_quant_conv = shape("post_quant_conv.weight").is_some();
    cfg.mid_block_add_attention = h.shapes.keys().any(|k| k.contains("mid_block.attentions."));
    cfg.check()?;
    Ok(cfg)
}

/// An `AutoencoderTiny` config read off tensor shapes. `enc`/`dec` are the layer-name
/// prefixes; `offset` is added to diffusers' layer index (1 in madebyollin's decoder files).
/// Without encoder tensors the encoder side copies the decoder's (it is never built).
fn tiny_config(h: &Header, enc: &str, dec: &str, offset: usize) -> Result<TinyVaeConfig> {
    let bad = |why: String| Error::weights(&h.path, format!("not a tiny autoencoder (TAESD) layout: {why}"));
    // Per layer index: Some(conv weight shape) for a convolution, None for a block.
    let layers = |prefix: &str| -> BTreeMap<usize, Option<Vec<i64>>> {
        let mut out = BTreeMap::new();
        for (k, s) in &h.shapes {
            let Some(rest) = k.strip_prefix(prefix) else { continue };
            let Some((i, tail)) = rest.split_once('.') else { continue };
            let Ok(i) = i.parse::<usize>() else { continue };
            if tail == "weight" {
                out.insert(i, Some(s.clone()));
            } else if tail.starts_with("conv.") {
                out.entry(i).or_insert(None);
            }
        }
        out
    };
    let mut cfg = TinyVaeConfig::taesd();
    cfg.path = h.path.clone();
    // Decoder: conv (index 0+offset), act, then per level blocks, [upsample], conv.
    let d = layers(dec);
    let first = d.get(&offset).cloned().flatten().ok_or_else(|| bad(format!("no {dec}{offset}.weight")))?;
    cfg.latent_channels = first[1];
    let (mut widths, mut blocks, mut count) = (Vec::new(), Vec::new(), 0i64);
    let mut out = 3;
    for (_, layer) in d.range(offset + 2..) {
        match layer {
            None => count += 1,
            Some(s) => {
                widths.push(s[1]);
                blocks.push(count);
                count = 0;
                out = s[0];
            }
        }
    }
    if widths.is_empty() {
        return Err(bad("the decoder has no level convolutions".into()));
    }
    cfg.out_channels = out;
    cfg.decoder_block_out_channels = widths;
    cfg.num_decoder_blocks = blocks;
    // Encoder: per level conv then blocks; a final conv to the latents.
    let e = layers(enc);
    if e.is_empty() || enc.is_empty() {
        cfg.encoder_block_out_channels = cfg.decoder_block_out_channels.clone();
        cfg.num_encoder_blocks = cfg.num_decoder_blocks.iter().rev().copied().collect();
    } else {
        let convs: Vec<&Vec<i64>> = e.values().flatten().collect();
        let (Some(first), Some(last)) = (convs.first(), convs.last()) else {
            return Err(bad("the encoder has no convolutions".into()));
        };
        cfg.in_channels = first[1];
        let (mut widths, mut blocks) = (Vec::new(), Vec::new());
        let n_convs = convs.len();
        let mut seen = 0;
        for layer in e.values() {
            match layer {
                Some(s) => {
                    seen += 1;
                    if seen < n_convs {
                        widths.push(s[0]);
                        blocks.push(0);
                    }
                }
                None => {
                    if let Some(b) = blocks.last_mut() {
                        *b += 1;
                    }
                }
            }
        }
        if last[0] != cfg.latent_channels {
            return Err(bad(format!(
                "the encoder makes {} channels, the decoder takes {}",
                last[0], cfg.latent_channels
            )));
        }
        cfg.encoder_block_out_channels = widths;
        cfg.num_encoder_blocks = blocks;
    }
    cfg.check()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn model_vae() -> VaeConfig {
        VaeConfig::from_file(&root().join("weights/tiny-sd/vae/config.json")).unwrap()
    }

    #[test]
    fn every_layout_is_recognised() {
        let w = root().join("weights");
        let cases = [
            ("tiny-taesd", "AutoencoderTiny", false),
            ("tiny-taesdxl", "AutoencoderTiny", true),
            ("tiny-sd-vae2", "AutoencoderKL", false),
            ("tiny-sd-vae2.safetensors", "AutoencoderKL", false),
            ("tiny-sd-vae2/diffusion_pytorch_model.safetensors", "AutoencoderKL", false),
            ("tiny-taesd/diffusion_pytorch_model.safetensors", "AutoencoderTiny", false),
            ("tiny-taesd-madebyollin/taesd_decoder.safetensors", "AutoencoderTiny", false),
            ("tiny-sd", "AutoencoderKL", false),
            // Only the file's own name counts, and it says nothing of SDXL.
            ("tiny-sdxl/vae/diffusion_pytorch_model.safetensors", "AutoencoderKL", false),
        ];
        for (rel, class, xl) in cases {
            let p = w.join(rel);
            let swap = VaeSwap::inspect(&p, &p.display().to_string(), &model_vae(), false)
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert_eq!((swap.config.class_name(), swap.named_xl), (class, xl), "{rel}");
            assert_eq!(swap.config.scale_factor(), 8, "{rel}");
            // Every tensor is used by the network the config describes.
            let weights = swap.weights(Device::Cpu, Kind::Float).unwrap();
            crate::models::autoencoder::Autoencoder::new(&weights, &swap.config)
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
            weights.finish().unwrap_or_else(|e| panic!("{rel}: {e}"));
        }
    }

    #[test]
    fn configs_read_off_shapes_match_the_saved_ones() {
        let w = root().join("weights");
        let saved = TinyVaeConfig::from_file(&w.join("tiny-taesd/config.json")).unwrap();
        let file = w.join("tiny-taesd/diffusion_pytorch_model.safetensors");
        let read = VaeSwap::inspect(&file, "x", &model_vae(), false).unwrap();
        let AutoencoderConfig::Tiny(read) = read.config else { panic!("tiny") };
        assert_eq!(read.encoder_block_out_channels, saved.encoder_block_out_channels);
        assert_eq!(read.decoder_block_out_channels, saved.decoder_block_out_channels);
        assert_eq!(read.num_encoder_blocks, saved.num_encoder_blocks);
        assert_eq!(read.num_decoder_blocks, saved.num_decoder_blocks);
        let kl = VaeSwap::inspect(&w.join("tiny-sd-vae2.safetensors"), "x", &model_vae(), false).unwrap();
        let saved = VaeConfig::from_file(&w.join("tiny-sd-vae2/config.json")).unwrap();
        let AutoencoderConfig::Kl(kl) = kl.config else { panic!("kl") };
        assert_eq!(
            (kl.block_out_channels, kl.layers_per_block, kl.latent_channels),
            (saved.block_out_channels, saved.layers_per_block, saved.latent_channels)
        );
    }

    #[test]
    fn ldm_names_under_first_stage_model_load_the_same_tensors() {
        let plain = root().join("weights/tiny-sd-vae2.safetensors");
        let tmp = tempfile::tempdir().unwrap();
        let prefixed = tmp.path().join("vae.safetensors");
        let tensors = tch::Tensor::read_safetensors(&plain).unwrap();
        let renamed: Vec<(String, tch::Tensor)> =
            tensors.iter().map(|(k, t)| (format!("first_stage_model.{k}"), t.shallow_clone())).collect();
        tch::Tensor::write_safetensors(&renamed, &prefixed).unwrap();
        let a = VaeSwap::inspect(&plain, "a", &model_vae(), false).unwrap();
        let b = VaeSwap::inspect(&prefixed, "b", &model_vae(), false).unwrap();
        let (wa, wb) = (a.weights(Device::Cpu, Kind::Float).unwrap(), b.weights(Device::Cpu, Kind::Float).unwrap());
        for name in ["decoder.up_blocks.0.resnets.0.conv1.weight", "encoder.mid_block.attentions.0.to_q.weight"] {
            let shape = wa.shape_of(name).unwrap();
            let (x, y) = (wa.get(name, &shape).unwrap(), wb.get(name, &shape).unwrap());
            assert!(x.equal(&y), "{name}");
        }
        crate::models::autoencoder::Autoencoder::new(&wb, &b.config).unwrap();
        wb.finish().unwrap();
    }

    /// Full-size TAESD (`tests/fixtures/vae-layouts/taesd.json`, shapes only): the config
    /// read off the shapes is TAESD's published one, from diffusers' names and from
    /// madebyollin's decoder file.
    #[test]
    fn full_size_taesd_layouts_give_taesd_config() {
        let text = std::fs::read_to_string(root().join("tests/fixtures/vae-layouts/taesd.json")).unwrap();
        let layouts: BTreeMap<String, BTreeMap<String, Vec<i64>>> = serde_json::from_str(&text).unwrap();
        let want = TinyVaeConfig::taesd();
        let h = Header::new("taesd.safetensors", layouts["diffusers"].clone());
        assert!(matches!(classify(&h), Layout::Tiny));
        let cfg = tiny_config(&h, "encoder.layers.", "decoder.layers.", 0).unwrap();
        assert_eq!(cfg.encoder_block_out_channels, want.encoder_block_out_channels);
        assert_eq!(cfg.num_encoder_blocks, want.num_encoder_blocks);
        assert_eq!(cfg.decoder_block_out_channels, want.decoder_block_out_channels);
        assert_eq!(cfg.num_decoder_blocks, want.num_decoder_blocks);
        assert_eq!((cfg.latent_channels, cfg.in_channels, cfg.out_channels), (4, 3, 3));
        let h = Header::new("taesd_decoder.safetensors", layouts["madebyollin_decoder"].clone());
        assert!(matches!(classify(&h), Layout::MadebyollinDecoder));
        let cfg = tiny_config(&h, "", "", 1).unwrap();
        assert_eq!(cfg.decoder_block_out_channels, want.decoder_block_out_channels);
        assert_eq!(cfg.num_decoder_blocks, want.num_decoder_blocks);
    }

    /// madebyollin/taesd's published config.json parses to the defaults.
    #[test]
    fn published_taesd_config_parses() {
        let text = r#"{"_class_name": "AutoencoderTiny", "_diffusers_version": "0.20.0.dev0", "act_fn": "relu",
            "decoder_block_out_channels": [64, 64, 64, 64], "encoder_block_out_channels": [64, 64, 64, 64],
            "force_upcast": false, "in_channels": 3, "latent_channels": 4, "latent_magnitude": 3,
            "latent_shift": 0.5, "num_decoder_blocks": [3, 3, 3, 1], "num_encoder_blocks": [1, 3, 3, 3],
            "out_channels": 3, "scaling_factor": 1.0, "upsampling_scaling_factor": 2}"#;
        let cfg = TinyVaeConfig::from_json(Path::new("config.json"), text).unwrap();
        assert_eq!(cfg.num_decoder_blocks, TinyVaeConfig::taesd().num_decoder_blocks);
        assert_eq!(cfg.scale_factor(), 8);
    }

    #[test]
    fn xl_is_read_from_the_vae_own_name_only() {
        let tmp = tempfile::tempdir().unwrap();
        let src = root().join("weights/tiny-taesd");
        for (rel, xl) in [("sdxl-stuff/taesd", false), ("models/my-taesdxl", true), ("models/TAESD_XL", true)] {
            let dir = tmp.path().join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
                std::fs::copy(src.join(f), dir.join(f)).unwrap();
            }
            let swap = VaeSwap::inspect(&dir, &dir.display().to_string(), &model_vae(), false).unwrap();
            assert_eq!(swap.named_xl, xl, "{rel}");
        }
        // A hub repo: its name.
        assert_eq!(short_name("madebyollin/taesdxl@0123", Path::new("/nonexistent")), "taesdxl");
    }

    #[test]
    fn non_vaes_are_refused_with_what_they_are() {
        let w = root().join("weights");
        let model = model_vae();
        for (rel, says) in [
            ("tiny-sd/unet/diffusion_pytorch_model.safetensors", "holds no autoencoder"),
            ("tiny-sd.safetensors", "whole Stable Diffusion checkpoint"),
            ("tiny-sd/unet", "not an autoencoder"),
            ("tiny-sd/tokenizer", "neither config.json"),
            ("no-such-vae", "no such file"),
        ] {
            let p = w.join(rel);
            let err = VaeSwap::inspect(&p, rel, &model, false).unwrap_err().to_string();
            assert!(err.contains(says), "{rel}: {err}");
        }
    }
}
