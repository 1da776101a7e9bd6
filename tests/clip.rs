//! The CLIP text encoder (and the tokenizer in front of it) against transformers, using the
//! goldens of tools/make_goldens.py in tests/fixtures/goldens on the tiny model in weights/tiny-sd,
//! and of tools/make_clip_pooled_goldens.py for the pooled output; both tensor layouts
//! (transformers 4's `text_model.…`, transformers 5's bare names) and the projection.

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
        let out = m.forward(ids, skip).unwrap().hidden;
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
            let out = m.forward(&ids, None).unwrap().hidden;
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
    let reference = model().forward(&ids, None).unwrap().hidden;

    let dir = edited_copy(|t| {
        t.push((
            "text_model.embeddings.position_ids".into(),
            Tensor::arange(77, (Kind::Int64, Device::Cpu)).view([1, 77]),
        ))
    });
    let m = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(max_diff(&m.forward(&ids, None).unwrap().hidden, &reference), 0.0);

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
        let d = max_diff(&m.forward(&g["input_ids"], skip).unwrap().hidden, &g[key]);
        assert!(d <= TOLERANCE, "gelu {key}: max abs diff {d:e}");
    }
    // The activation matters at this size: quick_gelu must not pass the same check.
    let d = max_diff(&model().forward(&g["input_ids"], None).unwrap().hidden, &g["last_hidden_state"]);
    assert!(d > TOLERANCE, "quick_gelu output unexpectedly equals the gelu golden ({d:e})");
}

/// A copy of a text encoder folder with its tensors renamed by `rename` (`None` drops one).
fn renamed_copy(src: &Path, rename: impl Fn(&str) -> Option<String>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter_map(|(n, t)| rename(&n).map(|n| (n, t)))
        .collect();
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn bare(name: &str) -> Option<String> {
    Some(name.strip_prefix("text_model.").unwrap_or(name).to_string())
}

/// weights/tiny-sd-tf5 holds tiny-sd's text encoder as transformers 5 saved it, without the
/// `text_model.` prefix: same model, same numbers.
#[test]
fn transformers5_layout_gives_the_same_outputs() {
    let tf5_dir = root().join("weights/tiny-sd-tf5/text_encoder");
    let names: Vec<String> =
        Tensor::read_safetensors(tf5_dir.join("model.safetensors")).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| !n.starts_with("text_model.")), "{names:?}");
    assert!(names.iter().any(|n| n == "encoder.layers.4.mlp.fc2.bias"));

    let tf5 = ClipTextModel::load(&tf5_dir, Device::Cpu, Kind::Float).unwrap();
    assert!(!tf5.has_projection());
    let tf4 = model();
    let g = read_goldens(&root().join("tests/fixtures/goldens/components.safetensors"));
    for skip in [None, Some(1), Some(5)] {
        let (a, b) =
            (tf4.forward(&g["clip.input_ids"], skip).unwrap(), tf5.forward(&g["clip.input_ids"], skip).unwrap());
        assert_eq!(max_diff(&a.hidden, &b.hidden), 0.0, "clip_skip {skip:?}");
        assert_eq!(max_diff(&a.pooled, &b.pooled), 0.0, "clip_skip {skip:?}");
    }
}

#[test]
fn pooled_output_matches_transformers() {
    let g = read_goldens(&root().join("tests/fixtures/clip_pooled.safetensors"));
    let ids = &g["input_ids"];
    let m = model();
    assert_eq!(m.config().eos_token_id, 49407);
    let out = m.forward(ids, None).unwrap();
    assert_eq!(out.pooled.size(), [3, 32]);
    let d = max_diff(&out.hidden, &g["last_hidden_state"]);
    assert!(d <= TOLERANCE, "last_hidden_state: {d:e}");
    let d = max_diff(&out.pooled, &g["pooled_eos"]);
    assert!(d <= TOLERANCE, "pooled (first eos_token_id): {d:e}");
    // Pooling always reads the last layer, as transformers' pooler_output does.
    let skipped = m.forward(ids, Some(2)).unwrap();
    assert_eq!(max_diff(&skipped.pooled, &out.pooled), 0.0);
    assert!(max_diff(&skipped.hidden, &out.hidden) > TOLERANCE);

    // Legacy configs (eos_token_id 2, as SD 1.5's) pool at the largest id.
    let src = text_encoder_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["eos_token_id"] = 2.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let legacy = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let d = max_diff(&legacy.forward(ids, None).unwrap().pooled, &g["pooled_legacy"]);
    assert!(d <= TOLERANCE, "pooled (legacy argmax): {d:e}");
    // Row 2 has no end-of-text token, where the two rules differ.
    assert!(max_diff(&g["pooled_eos"].get(2), &g["pooled_legacy"].get(2)) > 0.1);
}

/// `CLIPTextModelWithProjection` (tests/fixtures/clip_projection): `text_projection` applied
/// to the pooled state, in transformers' layout and with the bare names around it.
#[test]
fn projection_matches_transformers_in_both_layouts() {
    let g = read_goldens(&root().join("tests/fixtures/clip_pooled.safetensors"));
    let src = root().join("tests/fixtures/clip_projection");
    let ids = &g["proj.input_ids"];
    let m = ClipTextModel::load(&src, Device::Cpu, Kind::Float).unwrap();
    assert!(m.has_projection());
    let out = m.forward(ids, None).unwrap();
    assert_eq!(out.pooled.size(), [3, 16]);
    let d = max_diff(&out.hidden, &g["proj.last_hidden_state"]);
    assert!(d <= TOLERANCE, "last_hidden_state: {d:e}");
    let d = max_diff(&out.pooled, &g["proj.text_embeds"]);
    assert!(d <= TOLERANCE, "text_embeds: {d:e}");

    let dir = renamed_copy(&src, bare);
    let m = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert!(m.has_projection());
    let again = m.forward(ids, None).unwrap();
    assert_eq!(max_diff(&again.pooled, &out.pooled), 0.0);
    assert_eq!(max_diff(&again.hidden, &out.hidden), 0.0);

    // A projection of the wrong width is an error naming the tensor.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["projection_dim"] = 8.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let err = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(err.contains("text_projection.weight"), "{err}");
}

#[test]
fn unknown_or_mixed_layouts_are_clear_errors() {
    let src = text_encoder_dir();
    let dir = renamed_copy(&src, |n| Some(n.replace("text_model.", "model.")));
    let err = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors")
            && err.contains("'text_model.embeddings.token_embedding.weight'")
            && err.contains("'embeddings.token_embedding.weight'"),
        "{err}"
    );

    // Mixed: the bare layout is found, and the layer left in the other one is named.
    let dir = renamed_copy(&src, |n| if n.contains("layers.3.") { Some(n.to_string()) } else { bare(n) });
    let err = ClipTextModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(err.contains("encoder.layers.3"), "{err}");
}
