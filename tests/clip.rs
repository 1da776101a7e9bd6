//! The CLIP text encoder (and the tokenizer in front of it) against transformers, using the
//! goldens of tools/make_goldens.py in tests/fixtures/goldens on the tiny model in weights/tiny-sd.

use sdgen::models::clip::{ClipTextConfig, ClipTextModel};
use sdgen::tokenizer::Tokenizer;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text_encoder_dir() -> PathBuf {
    root().join("weights/tiny-sd/text_encoder")
}

fn read_goldens(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn model() -> ClipTextModel {
    ClipTextModel::load(&text_encoder_dir(), Device::Cpu, Kind::Float).unwrap()
}

#[test]
fn last_hidden_state_and_clip_skip_match_transformers() {
    let g = read_goldens(&root().join("tests/fixtures/goldens/components.safetensors"));
    let m = model();
    let ids = &g["clip.input_ids"];
    let checks = [
        (None, "clip.last_hidden_state"),
        (Some(0), "clip.last_hidden_state"),
        (Some(1), "clip.clip_skip_1"),
        (Some(2), "clip.clip_skip_2"),
    ];
    for (skip, key) in checks {
        let out = m.forward(ids, skip).unwrap();
        let d = max_diff(&out, &g[key]);
        assert!(d <= TOLERANCE, "clip_skip {skip:?} vs {key}: max abs diff {d:e}");
    }
    let layers = m.config().num_hidden_layers;
    assert!(m.forward(ids, Some(layers)).is_ok());
    let err = m.forward(ids, Some(layers + 1)).unwrap_err().to_string();
    assert!(err.contains("clip skip"), "{err}");
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    file: String,
    prompt: String,
    negative_prompt: Option<String>,
}

/// Prompt text → tokenizer → text encoder, as the pipeline's encode_prompt does.
#[test]
fn pipeline_prompts_encode_like_diffusers() {
    let dir = root().join("tests/fixtures/goldens");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let tok = Tokenizer::from_dir(&root().join("weights/tiny-sd/tokenizer")).unwrap();
    let m = model();
    let mut checked = 0;
    for case in &cases.cases {
        let path = dir.join(&case.file);
        if !path.exists() {
            // Only cases whose file is present locally; the merged tree has all of them.
            continue;
        }
        let g = read_goldens(&path);
        let uncond = case.negative_prompt.clone().unwrap_or_default();
        for (text, ids_key, embeds_key) in
            [(&case.prompt, "cond_ids", "cond_embeds"), (&uncond, "uncond_ids", "uncond_embeds")]
        {
            let enc = tok.encode(text);
            let ids = Tensor::from_slice(&enc.ids).view([1, -1]);
            assert!(ids.equal(&g[ids_key]), "{} {ids_key}: ours {:?}", case.id, enc.ids);
            let out = m.forward(&ids, None).unwrap();
            let d = max_diff(&out, &g[embeds_key]);
            assert!(d <= TOLERANCE, "{} {embeds_key}: max abs diff {d:e}", case.id);
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} golden cases found in {}", dir.display());
}

/// A copy of the tiny text encoder with `edit` applied to its tensors.
fn edited_copy(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let src = text_encoder_dir();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join("model.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn position_ids_buffer_is_accepted_and_other_extras_are_not() {
    let ids = Tensor::from_slice(&[49406i64, 320, 1929, 49407]).view([1, 4]);
    let reference = model().forward(&ids, None).unwrap();

    let dir = edited_copy(|t| {
        t.push((
            "text_model.embeddings.position_ids".into(),
            Tensor::arange(77, (Kind::Int64, Device::Cpu)).view([1, 77]),
        ))
    });
    let m = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(max_diff(&m.forward(&ids, None).unwrap(), &reference), 0.0);

    let dir =
        edited_copy(|t| t.push(("text_model.extra.weight".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu)))));
    let err = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(err.contains("text_model.extra.weight"), "{err}");

    let dir = edited_copy(|t| t.retain(|(name, _)| !name.contains("layers.4.mlp.fc2.bias")));
    let err = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(err.contains("text_model.encoder.layers.4.mlp.fc2.bias"), "{err}");
}

#[test]
fn fp16_weights_file_is_used_only_for_fp16() {
    let src = text_encoder_dir();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let half: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::Half)))
        .collect();
    Tensor::write_safetensors(&half, dir.path().join("model.fp16.safetensors")).unwrap();
    let err = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(err.contains("model.fp16.safetensors"), "{err}");
    let m = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Half).unwrap();
    assert_eq!(m.config().hidden_size, 32);
}

#[test]
fn bad_configs_name_file_and_field() {
    let text = std::fs::read_to_string(text_encoder_dir().join("config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();

    cfg["hidden_act"] = "relu".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = ClipTextConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("hidden_act") && err.contains("relu"), "{err}");

    cfg["hidden_act"] = "gelu".into();
    cfg["num_attention_heads"] = 5.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = ClipTextConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("num_attention_heads"), "{err}");

    cfg["num_attention_heads"] = 4.into();
    cfg.as_object_mut().unwrap().remove("layer_norm_eps");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = ClipTextConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("layer_norm_eps"), "{err}");
}

/// SD 2.x's text encoder uses exact GELU; goldens from tools/make_clip_gelu_goldens.py.
#[test]
fn gelu_activation_matches_transformers() {
    let g = read_goldens(&root().join("tests/fixtures/clip_gelu.safetensors"));
    let src = text_encoder_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["hidden_act"] = "gelu".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let m = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    for (skip, key) in [(None, "last_hidden_state"), (Some(1), "clip_skip_1")] {
        let d = max_diff(&m.forward(&g["input_ids"], skip).unwrap(), &g[key]);
        assert!(d <= TOLERANCE, "gelu {key}: max abs diff {d:e}");
    }
    // The activation matters at this size: quick_gelu must not pass the same check.
    let d = max_diff(&model().forward(&g["input_ids"], None).unwrap(), &g["last_hidden_state"]);
    assert!(d > TOLERANCE, "quick_gelu output unexpectedly equals the gelu golden ({d:e})");
}
