//! Single-file (original LDM layout) checkpoints: detection, name mapping and robustness.
//!
//! weights/tiny-sd.safetensors and weights/tiny-sd2.safetensors are the tiny folder models in
//! LDM layout, written by tools/make_single_files.py and verified there with diffusers' own
//! `from_single_file`. Here every diffusers tensor must load through sdgen's mapping with the
//! same values as from the folder. tests/fixtures/ldm-layouts holds the names and shapes of
//! full-size SD 1.5 / 2.1 checkpoints (tools/make_ldm_layouts.py) for detection at real sizes.

use sdgen::loading::ldm_keys::{Header, TextFormat};
use sdgen::loading::single_file::{
    inspect, inspect_header, inspect_with, prepare, Arch, Component, ConfigSet, Detection, Options, CONFIG_FILES,
};
use sdgen::loading::Weights;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn folder_files(model: &str, c: Component) -> PathBuf {
    let file = match c {
        Component::TextEncoder => "model.safetensors",
        _ => "diffusion_pytorch_model.safetensors",
    };
    repo(&format!("weights/{model}/{}/{file}", c.folder()))
}

fn layout(name: &str) -> Header {
    let path = repo(&format!("tests/fixtures/ldm-layouts/{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let shapes: BTreeMap<String, Vec<i64>> = serde_json::from_str(&text).unwrap();
    Header::new(path, shapes)
}

fn err_text<T: std::fmt::Debug>(r: sdgen::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// Every tensor of the folder model, loaded through the single file's mapping, is identical.
fn assert_same_as_folder(model: &str) {
    let sf = inspect(&repo(&format!("weights/{model}.safetensors"))).unwrap();
    for c in [Component::Unet, Component::Vae, Component::TextEncoder] {
        let folder = Weights::open(&[folder_files(model, c)], Device::Cpu, Kind::Float).unwrap();
        let mapped = sf.weights(c, Device::Cpu, Kind::Float).unwrap();
        let names = folder.names();
        let mapped_names: Vec<String> = sf.sources(c).keys().cloned().collect();
        assert_eq!(mapped_names, names, "{model} {c:?}: mapped names differ from the folder's");
        for name in &names {
            let shape = folder.shape_of(name).unwrap();
            let want = folder.get_owned(name, &shape).unwrap();
            let got = mapped.get_owned(name, &shape).unwrap();
            assert!(got.equal(&want), "{model} {c:?}: '{name}' differs");
        }
        folder.finish().unwrap();
        mapped.finish().unwrap();
    }
}

#[test]
fn tiny_sd_loads_identically_through_the_mapping() {
    assert_same_as_folder("tiny-sd");
}

#[test]
fn tiny_sd2_loads_identically_through_the_mapping() {
    assert_same_as_folder("tiny-sd2");
}

#[test]
fn tiny_sd_is_detected_as_sd1_by_its_text_encoder() {
    let sf = inspect(&repo("weights/tiny-sd.safetensors")).unwrap();
    assert_eq!(sf.arch, Arch::Sd1);
    assert_eq!(sf.detected_by, Detection::TextEncoderFormat);
    assert!(!sf.inpainting);
    // Values from weights/tiny-sd/*/config.json.
    assert_eq!(sf.unet.block_out_channels, vec![32, 64]);
    assert_eq!(sf.unet.layers_per_block, 2);
    assert_eq!(sf.unet.attention, vec![false, true]);
    assert_eq!(sf.unet.cross_attention_dim, 32);
    assert!(!sf.unet.use_linear_projection);
    assert_eq!(sf.vae.block_out_channels, vec![32, 64, 64, 64]);
    assert_eq!(sf.vae.layers_per_block, 1);
    assert_eq!(sf.text_encoder.format, TextFormat::HfClip);
    assert_eq!((sf.text_encoder.num_hidden_layers, sf.text_encoder.hidden_size), (5, 32));
    let ignored: Vec<&str> = sf.ignored.iter().map(|i| i.key.as_str()).collect();
    for key in ["betas", "model_ema.decay", "cond_stage_model.transformer.text_model.embeddings.position_ids"] {
        assert!(ignored.contains(&key), "{key} should be ignored: {ignored:?}");
    }
    ConfigSet::from_dir(&repo("weights/tiny-sd")).unwrap().check(&sf).unwrap();
}

#[test]
fn tiny_sd2_is_detected_as_sd2_and_skips_the_last_openclip_block() {
    let sf = inspect(&repo("weights/tiny-sd2.safetensors")).unwrap();
    assert_eq!(sf.arch, Arch::Sd2);
    assert_eq!(sf.detected_by, Detection::TextEncoderFormat);
    assert_eq!(sf.unet.attention, vec![true, false]);
    assert!(sf.unet.use_linear_projection);
    assert_eq!(sf.text_encoder.format, TextFormat::OpenClip);
    assert_eq!((sf.text_encoder.num_hidden_layers, sf.text_encoder.stored_layers), (5, 6));
    let ignored: Vec<&str> = sf.ignored.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "cond_stage_model.model.text_projection",
        "cond_stage_model.model.logit_scale",
        "cond_stage_model.model.transformer.resblocks.5.attn.in_proj_weight",
    ] {
        assert!(ignored.contains(&key), "{key} should be ignored: {ignored:?}");
    }
    assert!(!sf.text_encoder_sources.values().any(|s| s.key.contains("resblocks.5.")));
    ConfigSet::from_dir(&repo("weights/tiny-sd2")).unwrap().check(&sf).unwrap();
}

#[test]
fn arch_override_wins_and_mismatched_configs_are_refused() {
    let path = repo("weights/tiny-sd.safetensors");
    let sf = inspect_with(&path, Some(Arch::Sd2)).unwrap();
    assert_eq!((sf.arch, sf.detected_by), (Arch::Sd2, Detection::Override));
    // The tiny model is not SD 1.5-sized: the built-in configs must not be accepted for it.
    let msg = err_text(prepare(&path, &Options::default()));
    assert!(msg.contains("unet/config.json") && msg.contains("--config-dir"), "{msg}");
    let dir = repo("weights/tiny-sd");
    prepare(&path, &Options { config_dir: Some(&dir), ..Options::default() }).unwrap();
}

#[test]
fn prediction_type_defaults_and_override() {
    assert_eq!(ConfigSet::standard(Arch::Sd1).prediction_type().unwrap(), "epsilon");
    assert_eq!(ConfigSet::standard(Arch::Sd2).prediction_type().unwrap(), "v_prediction");
    assert_eq!(Arch::Sd2.default_prediction_type(), "v_prediction");
    let path = repo("weights/tiny-sd2.safetensors");
    let dir = repo("weights/tiny-sd2");
    let p = prepare(&path, &Options { config_dir: Some(&dir), ..Options::default() }).unwrap();
    assert_eq!(p.configs.prediction_type().unwrap(), "v_prediction");
    let opts = Options { config_dir: Some(&dir), prediction_type: Some("epsilon"), ..Options::default() };
    let p = prepare(&path, &opts).unwrap();
    assert_eq!(p.configs.prediction_type().unwrap(), "epsilon");
    let v: serde_json::Value = p.configs.parse("scheduler/scheduler_config.json").unwrap();
    assert_eq!(v["_class_name"], "DDIMScheduler", "other fields survive the override");
    let opts = Options { config_dir: Some(&dir), prediction_type: Some("eps"), ..Options::default() };
    assert!(err_text(prepare(&path, &opts)).contains("unknown prediction type"));
}

#[test]
fn full_size_layouts_are_detected_by_cross_attention_width() {
    let sd15 = inspect_header(&layout("sd15"), None).unwrap();
    assert_eq!((sd15.arch, sd15.detected_by), (Arch::Sd1, Detection::CrossAttentionWidth));
    assert_eq!(sd15.unet.block_out_channels, vec![320, 640, 1280, 1280]);
    assert_eq!(sd15.unet.attention, vec![true, true, true, false]);
    ConfigSet::standard(Arch::Sd1).check(&sd15).unwrap();

    let sd21 = inspect_header(&layout("sd21"), None).unwrap();
    assert_eq!((sd21.arch, sd21.detected_by), (Arch::Sd2, Detection::CrossAttentionWidth));
    assert!(sd21.unet.use_linear_projection);
    assert_eq!((sd21.text_encoder.num_hidden_layers, sd21.text_encoder.stored_layers), (23, 24));
    assert_eq!(sd21.text_encoder.hidden_size, 1024);
    ConfigSet::standard(Arch::Sd2).check(&sd21).unwrap();

    let msg = err_text(ConfigSet::standard(Arch::Sd1).check(&sd21));
    assert!(msg.contains("cross_attention_dim") || msg.contains("use_linear_projection"), "{msg}");
}

#[test]
fn inpainting_unets_are_flagged() {
    let mut h = layout("sd15");
    h.shapes.insert("model.diffusion_model.input_blocks.0.0.weight".into(), vec![320, 9, 3, 3]);
    let sf = inspect_header(&h, None).unwrap();
    assert!(sf.inpainting);
    assert_eq!(sf.unet.in_channels, 9);
    // The built-in SD 1.5 configs describe SD 1.5 inpainting once in_channels is 9, as
    // diffusers' inpainting config differs only there.
    let mut configs = ConfigSet::standard(Arch::Sd1);
    assert!(err_text(configs.check(&sf)).contains("in_channels"));
    configs.set_unet_in_channels(9).unwrap();
    configs.check(&sf).unwrap();
    h.shapes.insert("model.diffusion_model.input_blocks.0.0.weight".into(), vec![320, 8, 3, 3]);
    assert!(err_text(inspect_header(&h, None)).contains("8 input channels"));
}

#[test]
fn unknown_tensors_in_model_prefixes_are_errors_naming_them() {
    for key in [
        "model.diffusion_model.input_blocks.1.0.mystery.weight",
        "model.diffusion_model.output_blocks.0.1.conv.weight",
        "first_stage_model.loss.logvar",
        "cond_stage_model.transformer.text_model.encoder.layers.0.adapter.weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.extra",
        "cond_stage_model.something.weight",
    ] {
        let mut h = layout(if key.contains(".model.") { "sd21" } else { "sd15" });
        h.shapes.insert(key.to_string(), vec![4]);
        let msg = err_text(inspect_header(&h, None));
        assert!(msg.contains(key), "error should name '{key}': {msg}");
    }
    let mut h = layout("sd15");
    h.shapes.insert("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into(), vec![768]);
    assert!(err_text(inspect_header(&h, None)).contains("SDXL"));
    let h = Header::new(
        "diffusers-unet",
        layout("sd15").shapes.into_iter().filter(|(k, _)| !k.starts_with("model.")).collect(),
    );
    assert!(err_text(inspect_header(&h, None)).contains("no UNet tensors"));
}

#[test]
fn config_set_writes_a_loadable_folder() {
    let dir = tempfile::tempdir().unwrap();
    ConfigSet::standard(Arch::Sd2).write_to(dir.path()).unwrap();
    let back = ConfigSet::from_dir(dir.path()).unwrap();
    for rel in CONFIG_FILES {
        assert_eq!(back.text(rel), ConfigSet::standard(Arch::Sd2).text(rel), "{rel}");
    }
    let special: serde_json::Value = back.parse("tokenizer/special_tokens_map.json").unwrap();
    assert_eq!(special["pad_token"], "!");
    // The shared vocabulary is the tiny models' tokenizer file.
    let tiny = std::fs::read_to_string(repo("weights/tiny-sd/tokenizer/vocab.json")).unwrap();
    assert_eq!(back.text("tokenizer/vocab.json"), Some(tiny.as_str()));
    assert!(dir.path().join("model_index.json").exists());
    let msg = err_text(ConfigSet::from_dir(&dir.path().join("nope")));
    assert!(msg.contains("unet/config.json"), "{msg}");
}

#[test]
fn mapped_weights_see_only_their_own_tensors() {
    let sf = inspect(&repo("weights/tiny-sd.safetensors")).unwrap();
    let w = sf.weights(Component::Vae, Device::Cpu, Kind::Float).unwrap();
    let names = w.names();
    assert!(!names.is_empty() && names.iter().all(|n| n.starts_with("first_stage_model.")));
    // Nothing loaded yet: finish() names a VAE tensor, never a UNet or CLIP one.
    let msg = err_text(w.finish());
    assert!(msg.contains("first_stage_model."), "{msg}");
    assert!(!w.contains("model.diffusion_model.out.2.weight"), "no fallback to raw stored names");
    let mut sources = sf.vae_sources.clone();
    sources.insert("extra".into(), sdgen::loading::Source::direct("not.in.the.file"));
    let opened = Weights::open_mapped(std::slice::from_ref(&sf.path), Device::Cpu, Kind::Float, sources);
    let msg = err_text(opened.map(|w| w.names()));
    assert!(msg.contains("not.in.the.file"), "{msg}");
}

#[test]
fn pickles_are_refused_with_an_explanation() {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["ckpt", "pt", "bin", "CKPT"] {
        let path = dir.path().join(format!("model.{ext}"));
        std::fs::write(&path, b"not really a pickle").unwrap();
        let msg = err_text(inspect(&path));
        assert!(msg.contains("pickle") && msg.contains(".safetensors"), "{msg}");
    }
}

/// A safetensors file from a raw header and data, lengths as given.
fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    out
}

#[test]
fn corrupt_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = std::fs::read(repo("weights/tiny-sd.safetensors")).unwrap();
    let one = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![1, 2, 3]),
        ("header_past_end", {
            let mut b = 1000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("header_huge", u64::MAX.to_le_bytes().to_vec()),
        ("garbage_json", raw("{this is not json", 0)),
        ("not_an_object", raw("[1, 2, 3]", 0)),
        ("offsets_out_of_range", raw(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,1000]}}"#, 16)),
        ("data_missing", raw(one, 8)),
        (
            "overlapping",
            raw(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                16,
            ),
        ),
        ("size_lies", raw(r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,16]}}"#, 16)),
        ("reversed_offsets", raw(r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}}"#, 16)),
        (
            "shape_overflow",
            raw(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#, 16),
        ),
        ("unknown_dtype", raw(r#"{"a":{"dtype":"Q9","shape":[4],"data_offsets":[0,16]}}"#, 16)),
        ("truncated_checkpoint", tiny[..tiny.len() / 2].to_vec()),
        ("valid_but_not_ldm", raw(one, 16)),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        let msg = err_text(inspect(&path));
        assert!(msg.contains(&path.display().to_string()), "{name}: error should name the file: {msg}");
        let expected = if name == "valid_but_not_ldm" { "no UNet tensors" } else { "not a valid safetensors file" };
        assert!(msg.contains(expected), "{name}: {msg}");
    }
    let msg = err_text(inspect(&dir.path().join("missing.safetensors")));
    assert!(msg.contains("missing.safetensors"), "{msg}");
}

#[test]
fn arch_names_parse() {
    assert_eq!(Arch::parse("SD1").unwrap(), Arch::Sd1);
    assert_eq!(Arch::parse("sd2.1").unwrap(), Arch::Sd2);
    assert_eq!(Arch::parse("v2").unwrap(), Arch::Sd2);
    assert_eq!(Arch::parse("SDXL").unwrap(), Arch::Sdxl);
    assert!(err_text(Arch::parse("sd3")).contains("sdxl"));
    assert_eq!(Arch::Sd2.to_string(), "SD 2.x");
}

#[test]
fn a_pruned_openclip_tower_follows_the_config() {
    // Some SD 2.x files already lack the unused final block; the 23-layer config then takes all 23.
    let mut h = layout("sd21");
    h.shapes.retain(|k, _| !k.starts_with("cond_stage_model.model.transformer.resblocks.23."));
    let mut sf = inspect_header(&h, None).unwrap();
    assert_eq!((sf.text_encoder.num_hidden_layers, sf.text_encoder.stored_layers), (22, 23));
    assert!(err_text(ConfigSet::standard(Arch::Sd2).check(&sf)).contains("num_hidden_layers"));
    sf.use_openclip_layers(23).unwrap();
    assert_eq!(sf.text_encoder.num_hidden_layers, 23);
    assert!(sf.text_encoder_sources.contains_key("text_model.encoder.layers.22.mlp.fc2.weight"));
    assert!(!sf.ignored.iter().any(|i| i.key.contains("resblocks.22.")));
    ConfigSet::standard(Arch::Sd2).check(&sf).unwrap();
    assert!(err_text(sf.use_openclip_layers(5)).contains("5 layers"));
}
