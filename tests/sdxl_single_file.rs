//! SDXL single-file checkpoints (the original SGM layout): detection, name mapping, configs,
//! and images equal to the diffusers folder's.
//!
//! weights/tiny-sdxl.safetensors is weights/tiny-sdxl in the SGM layout, written by
//! tools/make_tiny_sdxl_single.py and verified there with diffusers' own `from_single_file`.
//! Here every tensor of the four models must load through sdgen's mapping with the folder's
//! values, and the pipeline loaded from the file must make the folder's images, byte for
//! byte. tests/fixtures/ldm-layouts/sdxl.json holds the names and shapes of a full-size SDXL
//! base 1.0 checkpoint (tools/make_ldm_layouts.py), built from the built-in configs.

mod common;

use sdgen::loading::ldm_keys::{Header, TextFormat};
use sdgen::loading::single_file::{
    inspect, inspect_header, inspect_with, prepare, Arch, Component, ConfigSet, Detection, Options, CONFIG_FILES,
    SDXL_CONFIG_FILES,
};
use sdgen::loading::Weights;
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::Request;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const FILE: &str = "weights/tiny-sdxl.safetensors";
const FOLDER: &str = "weights/tiny-sdxl";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn err_text<T: std::fmt::Debug>(r: sdgen::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn header(path: &Path) -> Header {
    let (_file, entries) = sdgen::loading::weights::MappedFile::open(path).unwrap();
    Header::new(path, entries.into_iter().map(|(name, e)| (name, e.shape)).collect())
}

fn full_size() -> Header {
    let path = repo("tests/fixtures/ldm-layouts/sdxl.json");
    let shapes: BTreeMap<String, Vec<i64>> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    Header::new(path, shapes)
}

/// A copy of the tiny file's header with `edit` applied (shapes only: for inspection).
fn edited(edit: impl FnOnce(&mut BTreeMap<String, Vec<i64>>)) -> Header {
    let mut h = header(&repo(FILE));
    edit(&mut h.shapes);
    h
}

#[test]
fn tiny_sdxl_loads_identically_through_the_mapping() {
    let sf = inspect(&repo(FILE)).unwrap();
    for (c, file) in [
        (Component::Unet, "unet/diffusion_pytorch_model.safetensors"),
        (Component::Vae, "vae/diffusion_pytorch_model.safetensors"),
        (Component::TextEncoder, "text_encoder/model.safetensors"),
        (Component::TextEncoder2, "text_encoder_2/model.safetensors"),
    ] {
        let folder = Weights::open(&[repo(FOLDER).join(file)], Device::Cpu, Kind::Float).unwrap();
        let mapped = sf.weights(c, Device::Cpu, Kind::Float).unwrap();
        let names = folder.names();
        let mapped_names: Vec<String> = sf.sources(c).keys().cloned().collect();
        assert_eq!(mapped_names, names, "{c:?}: mapped names differ from the folder's");
        for name in &names {
            let shape = folder.shape_of(name).unwrap();
            if !sf.sources(c)[name].reshape {
                assert_eq!(mapped.shape_of(name), Some(shape.clone()), "{c:?}: '{name}'");
            }
            let want = folder.get_owned(name, &shape).unwrap();
            let got = mapped.get_owned(name, &shape).unwrap();
            assert!(got.equal(&want), "{c:?}: '{name}' differs");
        }
        folder.finish().unwrap();
        mapped.finish().unwrap();
    }
}

#[test]
fn tiny_sdxl_is_detected_by_its_layout() {
    let sf = inspect(&repo(FILE)).unwrap();
    assert_eq!((sf.arch, sf.detected_by), (Arch::Sdxl, Detection::SgmLayout));
    assert!(!sf.inpainting);
    // Values from weights/tiny-sdxl/*/config.json.
    assert_eq!(sf.unet.block_out_channels, vec![32, 64, 64]);
    assert_eq!(sf.unet.attention, vec![false, true, true]);
    assert_eq!(sf.unet.transformer_layers_per_block, vec![0, 1, 2]);
    assert_eq!(sf.unet.mid_transformer_layers, 2);
    assert_eq!(sf.unet.cross_attention_dim, 80);
    assert_eq!(sf.unet.added_conditioning_width, Some(64));
    assert_eq!(sf.text_encoder.format, TextFormat::HfClip);
    let te2 = sf.text_encoder_2.as_ref().unwrap();
    assert_eq!(te2.format, TextFormat::OpenClip);
    // SDXL keeps every OpenCLIP block, and the projection.
    assert_eq!((te2.num_hidden_layers, te2.stored_layers, te2.hidden_size), (10, 10, 48));
    assert_eq!(te2.projection_dim, Some(16));
    assert_eq!(sf.text_encoder.hidden_size + te2.hidden_size, sf.unet.cross_attention_dim);
    assert!(sf.text_encoder_2_sources["text_projection.weight"].transpose);
    let ignored: Vec<&str> = sf.ignored.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        ignored,
        vec![
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            "conditioner.embedders.1.model.logit_scale"
        ]
    );
    ConfigSet::from_dir(&repo(FOLDER)).unwrap().check(&sf).unwrap();
}

#[test]
fn tiny_sdxl_needs_its_own_configs() {
    let path = repo(FILE);
    // Built-in configs are SDXL base 1.0's, full size: refused, as for the tiny SD 1.x file.
    let msg = err_text(prepare(&path, &Options::default()));
    assert!(msg.contains("configs do not describe this checkpoint") && msg.contains("--config-dir"), "{msg}");
    assert!(msg.contains("built-in sdxl configs"), "{msg}");
    let dir = repo(FOLDER);
    let p = prepare(&path, &Options { config_dir: Some(&dir), ..Options::default() }).unwrap();
    assert!(p.configs.is_sdxl());
    // The file carries no licence: SDXL's, CreativeML OpenRAIL++-M, is assumed.
    let license = sdgen::output::license::for_model_path(&path, "sd1").unwrap();
    assert_eq!(license.name, sdgen::output::license::OPENRAIL_PLUSPLUS_M);
    assert!(license.source.contains("SDXL"), "{}", license.source);
    assert_eq!(p.configs.prediction_type().unwrap(), "epsilon");
    // An SD 1.x folder's configs have no second text encoder.
    let sd1 = repo("weights/tiny-sd");
    let msg = err_text(prepare(&path, &Options { config_dir: Some(&sd1), ..Options::default() }));
    assert!(msg.contains("do not describe this checkpoint"), "{msg}");
}

#[test]
fn config_mismatches_name_the_sdxl_fields() {
    let sf = inspect(&repo(FILE)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (rel, field, value) in [
        ("text_encoder_2/config.json", "num_hidden_layers", serde_json::json!(9)),
        ("text_encoder_2/config.json", "projection_dim", serde_json::json!(32)),
        ("unet/config.json", "addition_time_embed_dim", serde_json::json!(16)),
        ("unet/config.json", "projection_class_embeddings_input_dim", serde_json::json!(128)),
        ("unet/config.json", "transformer_layers_per_block", serde_json::json!([1, 2, 2])),
        ("unet/config.json", "transformer_layers_per_block", serde_json::json!(1)),
    ] {
        let dir = tmp.path().join(format!("{field}-{value}"));
        ConfigSet::from_dir(&repo(FOLDER)).unwrap().write_to(&dir).unwrap();
        let path = dir.join(rel);
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v[field] = value.clone();
        std::fs::write(&path, v.to_string()).unwrap();
        let msg = err_text(ConfigSet::from_dir(&dir).unwrap().check(&sf));
        assert!(msg.contains(rel) && msg.contains(field), "{field} = {value}: {msg}");
    }
}

#[test]
fn the_full_size_layout_matches_the_built_in_configs() {
    let sf = inspect_header(&full_size(), None).unwrap();
    assert_eq!((sf.arch, sf.detected_by), (Arch::Sdxl, Detection::SgmLayout));
    assert_eq!(sf.unet.block_out_channels, vec![320, 640, 1280]);
    assert_eq!(sf.unet.transformer_layers_per_block, vec![0, 2, 10]);
    assert_eq!(sf.unet.mid_transformer_layers, 10);
    assert_eq!((sf.unet.cross_attention_dim, sf.unet.added_conditioning_width), (2048, Some(2816)));
    assert_eq!(sf.text_encoder.hidden_size, 768);
    let te2 = sf.text_encoder_2.as_ref().unwrap();
    assert_eq!((te2.hidden_size, te2.num_hidden_layers, te2.projection_dim), (1280, 32, Some(1280)));
    ConfigSet::standard(Arch::Sdxl).check(&sf).unwrap();
    // SD 1.x/2.x configs do not describe it.
    for arch in [Arch::Sd1, Arch::Sd2] {
        assert!(err_text(ConfigSet::standard(arch).check(&sf)).contains("do not describe this checkpoint"));
    }
}

#[test]
fn forcing_another_architecture_is_refused() {
    let msg = err_text(inspect_with(&repo(FILE), Some(Arch::Sd1)));
    assert!(msg.contains("--arch sd1") && msg.contains("SDXL checkpoint"), "{msg}");
    let msg = err_text(inspect_with(&repo("weights/tiny-sd.safetensors"), Some(Arch::Sdxl)));
    assert!(msg.contains("--arch sdxl") && msg.contains("not an SDXL checkpoint"), "{msg}");
    let sf = inspect_with(&repo(FILE), Some(Arch::Sdxl)).unwrap();
    assert_eq!((sf.arch, sf.detected_by), (Arch::Sdxl, Detection::Override));
}

#[test]
fn incomplete_or_foreign_files_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let all = Tensor::read_safetensors(repo(FILE)).unwrap();
    let write = |name: &str, keep: &dyn Fn(&str) -> bool| {
        let path = tmp.path().join(name);
        let kept: Vec<(&str, &Tensor)> = all.iter().filter(|(k, _)| keep(k)).map(|(k, t)| (k.as_str(), t)).collect();
        Tensor::write_safetensors(&kept, &path).unwrap();
        path
    };
    let unet_only = write("unet-only.safetensors", &|k| k.starts_with("model.diffusion_model."));
    let msg = err_text(inspect(&unet_only));
    assert!(msg.contains("only a UNet") && msg.contains("unet-only.safetensors"), "{msg}");

    let no_te2 = write("no-te2.safetensors", &|k| !k.starts_with("conditioner.embedders.1."));
    let msg = err_text(inspect(&no_te2));
    assert!(msg.contains("second text encoder") && msg.contains("conditioner.embedders.1.model."), "{msg}");

    // One diffusers model's weights given as a checkpoint.
    let msg = err_text(inspect(&repo(FOLDER).join("unet/diffusion_pytorch_model.safetensors")));
    assert!(msg.contains("no UNet tensors") && msg.contains("model.diffusion_model.") && msg.contains("diffusers"));
    assert!(msg.contains("conditioner.embedders.0.transformer."), "names what SDXL files hold: {msg}");

    // Header-level edits: a refiner-style conditioner, a stray conditioner, mixed layouts,
    // unknown UNet tensors, and 9 input channels (inpainting).
    let h = edited(|s| {
        s.insert("conditioner.embedders.0.model.ln_final.weight".into(), vec![48]);
    });
    assert!(err_text(inspect_header(&h, None)).contains("refiner"));
    let h = edited(|s| {
        s.insert("conditioner.embedders.2.model.x".into(), vec![4]);
    });
    assert!(err_text(inspect_header(&h, None)).contains("conditioner.embedders.2.model.x"));
    let h = edited(|s| {
        s.insert("cond_stage_model.transformer.text_model.final_layer_norm.weight".into(), vec![32]);
    });
    assert!(err_text(inspect_header(&h, None)).contains("both"));
    let h = edited(|s| {
        s.insert("model.diffusion_model.label_emb.0.1.weight".into(), vec![4]);
    });
    assert!(err_text(inspect_header(&h, None)).contains("label_emb.0.1.weight"));
    let h = edited(|s| {
        s.insert("model.diffusion_model.input_blocks.0.0.weight".into(), vec![32, 9, 3, 3]);
    });
    assert!(inspect_header(&h, None).unwrap().inpainting);
    let h = edited(|s| {
        s.insert("conditioner.embedders.1.model.text_projection".into(), vec![16, 48]);
    });
    assert!(err_text(inspect_header(&h, None)).contains("text_projection"));
}

#[test]
fn sdxl_config_sets_round_trip_through_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let standard = ConfigSet::standard(Arch::Sdxl);
    assert!(standard.is_sdxl() && !ConfigSet::standard(Arch::Sd1).is_sdxl());
    standard.write_to(dir.path()).unwrap();
    let back = ConfigSet::from_dir(dir.path()).unwrap();
    for rel in CONFIG_FILES.iter().chain(&SDXL_CONFIG_FILES) {
        assert!(standard.text(rel).is_some(), "{rel}");
        assert_eq!(back.text(rel), standard.text(rel), "{rel}");
    }
    let special: serde_json::Value = back.parse("tokenizer_2/special_tokens_map.json").unwrap();
    assert_eq!(special["pad_token"], "!");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("model_index.json")).unwrap()).unwrap();
    assert_eq!(index["_class_name"], "StableDiffusionXLPipeline");
    assert_eq!(index["text_encoder_2"][1], "CLIPTextModelWithProjection");
    assert_eq!(index["tokenizer_2"][1], "CLIPTokenizer");
    // An SDXL folder missing its second tokenizer's vocabulary says what it needs.
    std::fs::remove_file(dir.path().join("tokenizer_2/vocab.json")).unwrap();
    let msg = err_text(ConfigSet::from_dir(dir.path()));
    assert!(msg.contains("tokenizer_2/vocab.json") && msg.contains("SDXL"), "{msg}");
}

/// Built from JSON, so that fields added to `Request` later take their defaults.
fn request(prompt: &str, negative: Option<&str>, seed: u64, scheduler: &str) -> Request {
    serde_json::from_value(serde_json::json!({
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": seed,
        "steps": 3,
        "guidance": 5.0,
        "width": 64,
        "height": 96,
        "scheduler": scheduler,
    }))
    .unwrap()
}

/// The image bytes and every step's latents of one request.
fn run(pipe: &Pipeline, req: &Request) -> (Vec<u8>, Vec<Tensor>) {
    let mut latents = Vec::new();
    let out = pipe.generate(req, &mut |p| latents.push(p.latents.copy())).unwrap();
    assert_eq!(out.len(), 1);
    (out[0].image.rgb.clone(), latents)
}

#[test]
fn the_file_makes_the_folders_images() {
    let cpu = |model: PathBuf| LoadOptions {
        model,
        device: "cpu".parse().unwrap(),
        dtype: "fp32".parse().unwrap(),
        ..LoadOptions::default()
    };
    let folder = Pipeline::load(&cpu(repo(FOLDER))).unwrap();
    let file = Pipeline::load(&LoadOptions { config_dir: Some(repo(FOLDER)), ..cpu(repo(FILE)) }).expect("file loads");
    assert_eq!(file.spec().arch, Arch::Sdxl);
    assert!(file.spec().force_zeros_for_empty_prompt);
    assert_eq!(file.spec().license.name, folder.spec().license.name);
    for req in [
        request("a red fox in the snow", None, 7, "EulerDiscreteScheduler"),
        request("a lighthouse at dusk", Some("blurry, low quality"), 42, "DPMSolverMultistepScheduler"),
        request("", None, 3, "DDIMScheduler"),
    ] {
        let (want_rgb, want_latents) = run(&folder, &req);
        let (got_rgb, got_latents) = run(&file, &req);
        assert_eq!(want_latents.len(), req.steps);
        assert_eq!(got_latents.len(), want_latents.len());
        for (i, (a, b)) in got_latents.iter().zip(&want_latents).enumerate() {
            assert_eq!(a.size(), vec![1, 4, 12, 8]);
            assert!(a.equal(b), "'{}': latents after step {} differ", req.prompt, i + 1);
        }
        assert!(got_rgb == want_rgb, "'{}': images differ", req.prompt);
    }
}

/// The command line: the file with `--config-dir` draws the folder's pixels; without it, or
/// with `--arch sd1`, it exits non-zero with the reason and writes nothing.
#[test]
fn the_command_line_runs_the_file() {
    let run = |model: &str, extra: &[&str]| {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = assert_cmd::Command::cargo_bin("sdgen").unwrap();
        cmd.env_remove("SDGEN_MODEL")
            .args(["generate", "a fox", "--seed", "5", "--steps", "2", "--width", "64", "--height", "96"])
            .args(["--device", "cpu", "--model"])
            .arg(repo(model))
            .args(extra)
            .arg("--out")
            .arg(out.path());
        let output = cmd.output().unwrap();
        let pngs: Vec<PathBuf> = std::fs::read_dir(out.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .collect();
        let pixels = match pngs.as_slice() {
            [one] => Some(common::png_pixels(one).2),
            [] => None,
            many => panic!("{} images", many.len()),
        };
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned(), pixels)
    };
    let dir = repo(FOLDER);
    let dir = dir.to_str().unwrap();
    let (ok, err, folder) = run(FOLDER, &[]);
    assert!(ok && folder.is_some(), "{err}");
    let (ok, err, file) = run(FILE, &["--config-dir", dir]);
    assert!(ok, "{err}");
    assert!(file == folder, "the file's image differs from the folder's");

    let (ok, err, none) = run(FILE, &[]);
    assert!(!ok && none.is_none() && err.contains("do not describe this checkpoint"), "{err}");
    let (ok, err, none) = run(FILE, &["--config-dir", dir, "--arch", "sd1"]);
    assert!(!ok && none.is_none() && err.contains("--arch sd1"), "{err}");
}
