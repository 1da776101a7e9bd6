//! Checks that the committed test fixtures are what the rest of the test suite assumes.
//!
//! weights/tiny-sd (from tools/make_tiny_sd.py) must open with sdgen's loader and hold the
//! tensors its configs declare; tests/fixtures/goldens (from tools/make_goldens.py) must list
//! every case with all keys at shapes that follow from the case's parameters. Expected shapes
//! are derived from the JSON configs and cases.json, not copied from the files themselves, so
//! a regenerated model or golden set that drifts from its description fails here first.

use safetensors::{Dtype, SafeTensors};
use sdgen::loading::Weights;
use serde_json::Value;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

type TestResult = Result<(), Box<dyn Error>>;

const BOS: i64 = 49406;
const EOS: i64 = 49407;
const MAX_FOLDER_BYTES: u64 = 25 * 1024 * 1024;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_dir() -> PathBuf {
    root().join("weights").join("tiny-sd")
}

fn goldens_dir() -> PathBuf {
    root().join("tests").join("fixtures").join("goldens")
}

fn json(path: &Path) -> Result<Value, Box<dyn Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn int(v: &Value, field: &str) -> Result<i64, Box<dyn Error>> {
    v[field].as_i64().ok_or_else(|| format!("config field '{field}' is not an integer: {}", v[field]).into())
}

fn int_list(v: &Value, field: &str) -> Result<Vec<i64>, Box<dyn Error>> {
    let list = v[field].as_array().ok_or_else(|| format!("config field '{field}' is not a list"))?;
    list.iter().map(|x| x.as_i64().ok_or_else(|| format!("'{field}' has a non-integer entry").into())).collect()
}

/// Opens one component's weights and checks every declared tensor's shape, then that all
/// stored tensors are float32 and load through `Weights::get_owned` with nothing left over.
fn check_component(file: &Path, expected: &[(String, Vec<i64>)], absent: &[String]) -> TestResult {
    let w = Weights::open(&[file.to_path_buf()], Device::Cpu, Kind::Float)?;
    for (name, shape) in expected {
        let found = w.shape_of(name).ok_or_else(|| format!("{}: missing tensor '{name}'", file.display()))?;
        assert_eq!(&found, shape, "{}: tensor '{name}'", file.display());
    }
    for name in absent {
        assert!(!w.contains(name), "{}: tensor '{name}' should not exist", file.display());
    }
    let bytes = std::fs::read(file)?;
    let st = SafeTensors::deserialize(&bytes)?;
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{}: '{name}' should be float32", file.display());
    }
    for name in w.names() {
        let shape = w.shape_of(&name).ok_or("name vanished")?;
        let t = w.get_owned(&name, &shape)?;
        assert_eq!(t.kind(), Kind::Float);
        let finite = t.isfinite().all().int64_value(&[]);
        assert_eq!(finite, 1, "{}: '{name}' has non-finite values", file.display());
    }
    w.finish()?;
    Ok(())
}

fn s(name: &str) -> String {
    name.to_string()
}

#[test]
fn unet_tensors_match_config() -> TestResult {
    let dir = model_dir().join("unet");
    let c = json(&dir.join("config.json"))?;
    let boc = int_list(&c, "block_out_channels")?;
    let (cin, cout, cross, layers) = (
        int(&c, "in_channels")?,
        int(&c, "out_channels")?,
        int(&c, "cross_attention_dim")?,
        int(&c, "layers_per_block")?,
    );
    let n = boc.len();
    let (first, last) = (boc[0], boc[n - 1]);
    let down = c["down_block_types"].as_array().ok_or("down_block_types")?;
    let up = c["up_block_types"].as_array().ok_or("up_block_types")?;
    assert_eq!(down.len(), n);
    assert_eq!(up.len(), n);
    assert_eq!(c["use_linear_projection"], Value::Bool(false), "SD 1.x uses 1x1 conv proj_in/proj_out");

    let mut expected = vec![
        (s("conv_in.weight"), vec![first, cin, 3, 3]),
        (s("conv_out.weight"), vec![cout, first, 3, 3]),
        (s("conv_norm_out.weight"), vec![first]),
        (s("time_embedding.linear_1.weight"), vec![4 * first, first]),
        (s("time_embedding.linear_2.weight"), vec![4 * first, 4 * first]),
        (s("mid_block.attentions.0.proj_in.weight"), vec![last, last, 1, 1]),
        (s("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"), vec![last, cross]),
        (s("mid_block.resnets.1.conv2.weight"), vec![last, last, 3, 3]),
    ];
    let mut absent = vec![
        format!("down_blocks.{}.downsamplers.0.conv.weight", n - 1),
        format!("down_blocks.{n}.resnets.0.conv1.weight"),
    ];
    for (i, kind) in down.iter().enumerate() {
        let ch = boc[i];
        let prev = if i == 0 { first } else { boc[i - 1] };
        expected.push((format!("down_blocks.{i}.resnets.0.conv1.weight"), vec![ch, prev, 3, 3]));
        expected.push((format!("down_blocks.{i}.resnets.0.time_emb_proj.weight"), vec![ch, 4 * first]));
        expected.push((format!("down_blocks.{i}.resnets.{}.conv2.weight", layers - 1), vec![ch, ch, 3, 3]));
        absent.push(format!("down_blocks.{i}.resnets.{layers}.conv1.weight"));
        if i + 1 < n {
            expected.push((format!("down_blocks.{i}.downsamplers.0.conv.weight"), vec![ch, ch, 3, 3]));
        }
        let attn = format!("down_blocks.{i}.attentions.0.transformer_blocks.0.attn2.to_k.weight");
        if kind.as_str() == Some("CrossAttnDownBlock2D") {
            expected.push((attn, vec![ch, cross]));
            expected.push((format!("down_blocks.{i}.attentions.0.proj_out.weight"), vec![ch, ch, 1, 1]));
        } else {
            absent.push(attn);
        }
    }
    let rev: Vec<i64> = boc.iter().rev().copied().collect();
    for (i, kind) in up.iter().enumerate() {
        let ch = rev[i];
        // The first up resnet of each block sees the previous block's output concatenated
        // with the matching down-path skip (the deepest skip for block 0).
        let prev_out = if i == 0 { last } else { rev[i - 1] };
        let skip = rev[(i + 1).min(n - 1)];
        expected.push((format!("up_blocks.{i}.resnets.0.conv1.weight"), vec![ch, prev_out + ch, 3, 3]));
        expected.push((format!("up_blocks.{i}.resnets.{layers}.conv1.weight"), vec![ch, ch + skip, 3, 3]));
        absent.push(format!("up_blocks.{i}.resnets.{}.conv1.weight", layers + 1));
        if i + 1 < n {
            expected.push((format!("up_blocks.{i}.upsamplers.0.conv.weight"), vec![ch, ch, 3, 3]));
        } else {
            absent.push(format!("up_blocks.{i}.upsamplers.0.conv.weight"));
        }
        let attn = format!("up_blocks.{i}.attentions.{layers}.transformer_blocks.0.attn2.to_v.weight");
        if kind.as_str() == Some("CrossAttnUpBlock2D") {
            expected.push((attn, vec![ch, cross]));
        } else {
            absent.push(attn);
        }
    }
    check_component(&dir.join("diffusion_pytorch_model.safetensors"), &expected, &absent)
}

#[test]
fn vae_tensors_match_config() -> TestResult {
    let dir = model_dir().join("vae");
    let c = json(&dir.join("config.json"))?;
    let boc = int_list(&c, "block_out_channels")?;
    let (cin, cout, lat) = (int(&c, "in_channels")?, int(&c, "out_channels")?, int(&c, "latent_channels")?);
    let n = boc.len();
    let (first, last) = (boc[0], boc[n - 1]);
    assert_eq!(c["scaling_factor"].as_f64(), Some(0.18215));
    let mut expected = vec![
        (s("encoder.conv_in.weight"), vec![first, cin, 3, 3]),
        (s("encoder.conv_out.weight"), vec![2 * lat, last, 3, 3]),
        (s("encoder.mid_block.attentions.0.to_q.weight"), vec![last, last]),
        (s("quant_conv.weight"), vec![2 * lat, 2 * lat, 1, 1]),
        (s("post_quant_conv.weight"), vec![lat, lat, 1, 1]),
        (s("decoder.conv_in.weight"), vec![last, lat, 3, 3]),
        (s("decoder.mid_block.attentions.0.to_out.0.weight"), vec![last, last]),
        (s("decoder.conv_norm_out.weight"), vec![first]),
        (s("decoder.conv_out.weight"), vec![cout, first, 3, 3]),
    ];
    let mut absent = vec![format!("encoder.down_blocks.{}.downsamplers.0.conv.weight", n - 1)];
    for i in 0..n {
        let ch = boc[i];
        if i + 1 < n {
            expected.push((format!("encoder.down_blocks.{i}.downsamplers.0.conv.weight"), vec![ch, ch, 3, 3]));
        }
        let rch = boc[n - 1 - i];
        if i + 1 < n {
            expected.push((format!("decoder.up_blocks.{i}.upsamplers.0.conv.weight"), vec![rch, rch, 3, 3]));
        } else {
            absent.push(format!("decoder.up_blocks.{i}.upsamplers.0.conv.weight"));
        }
    }
    // n levels with n-1 downsamplers: one latent covers 2^(n-1) pixels, which sdgen assumes is 8.
    assert_eq!(1 << (n - 1), 8, "the VAE must map one latent to 8 pixels");
    check_component(&dir.join("diffusion_pytorch_model.safetensors"), &expected, &absent)
}

#[test]
fn text_encoder_tensors_match_config() -> TestResult {
    let dir = model_dir().join("text_encoder");
    let c = json(&dir.join("config.json"))?;
    let (hidden, layers, inter) =
        (int(&c, "hidden_size")?, int(&c, "num_hidden_layers")?, int(&c, "intermediate_size")?);
    let (vocab, positions) = (int(&c, "vocab_size")?, int(&c, "max_position_embeddings")?);
    assert_eq!(c["hidden_act"].as_str(), Some("quick_gelu"));
    let mut expected = vec![
        (s("text_model.embeddings.token_embedding.weight"), vec![vocab, hidden]),
        (s("text_model.embeddings.position_embedding.weight"), vec![positions, hidden]),
        (s("text_model.final_layer_norm.weight"), vec![hidden]),
    ];
    for i in 0..layers {
        let p = format!("text_model.encoder.layers.{i}");
        expected.push((format!("{p}.self_attn.q_proj.weight"), vec![hidden, hidden]));
        expected.push((format!("{p}.self_attn.out_proj.bias"), vec![hidden]));
        expected.push((format!("{p}.mlp.fc1.weight"), vec![inter, hidden]));
        expected.push((format!("{p}.mlp.fc2.weight"), vec![hidden, inter]));
        expected.push((format!("{p}.layer_norm2.weight"), vec![hidden]));
    }
    let absent = vec![format!("text_model.encoder.layers.{layers}.mlp.fc1.weight"), s("text_projection.weight")];
    check_component(&dir.join("model.safetensors"), &expected, &absent)?;

    // The tokenizer's vocabulary must cover exactly the embedding table, with the special ids
    // the config declares.
    let vocab_json = json(&model_dir().join("tokenizer").join("vocab.json"))?;
    let map = vocab_json.as_object().ok_or("vocab.json is not an object")?;
    assert_eq!(map.len() as i64, vocab);
    assert_eq!(map.get("<|startoftext|>").and_then(Value::as_i64), Some(int(&c, "bos_token_id")?));
    assert_eq!(map.get("<|endoftext|>").and_then(Value::as_i64), Some(int(&c, "eos_token_id")?));
    Ok(())
}

#[test]
fn scheduler_and_index_are_sd15() -> TestResult {
    let sched = json(&model_dir().join("scheduler").join("scheduler_config.json"))?;
    let want: Value = serde_json::from_str(
        r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
            "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
            "trained_betas": null, "clip_sample": false}"#,
    )?;
    assert_eq!(sched, want);
    let index = json(&model_dir().join("model_index.json"))?;
    assert_eq!(index["_class_name"], "StableDiffusionPipeline");
    assert_eq!(index["safety_checker"], serde_json::json!([null, null]));
    assert_eq!(index["requires_safety_checker"], Value::Bool(false));
    for part in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        assert!(index[part].is_array(), "model_index.json lacks '{part}'");
        assert!(model_dir().join(part).is_dir(), "weights/tiny-sd/{part} is missing");
    }
    Ok(())
}

fn folder_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { folder_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

#[test]
fn tiny_model_stays_small() -> TestResult {
    let size = folder_size(&model_dir())?;
    assert!(size < MAX_FOLDER_BYTES, "weights/tiny-sd is {size} bytes, over the 25 MB budget");
    let goldens = folder_size(&goldens_dir())?;
    assert!(goldens < 8 * 1024 * 1024, "tests/fixtures/goldens is {goldens} bytes; keep goldens a few MB");
    Ok(())
}

/// dtype and shape of every key of a safetensors file.
type Header = BTreeMap<String, (Dtype, Vec<i64>)>;

fn header(path: &Path) -> Result<Header, Box<dyn Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().iter().map(|&d| d as i64).collect())))
        .collect())
}

fn check_ids(ids: &Tensor, what: &str) {
    let v: Vec<i64> = Vec::<i64>::try_from(ids.flatten(0, -1)).unwrap_or_default();
    assert_eq!(v.len(), 77, "{what}: expected 77 ids");
    assert_eq!(v[0], BOS, "{what}: must start with BOS");
    let eos = v.iter().position(|&x| x == EOS).unwrap_or(usize::MAX);
    assert!(eos < 77, "{what}: no EOS");
    assert!(v[eos..].iter().all(|&x| x == EOS), "{what}: padding after EOS must be EOS ids");
    assert!(v[1..eos].iter().all(|&x| (0..BOS).contains(&x)), "{what}: ids out of range");
}

#[test]
fn goldens_are_well_formed() -> TestResult {
    let dir = goldens_dir();
    let index = json(&dir.join("cases.json"))?;
    for field in ["versions", "tokenizer", "clip_skip_convention", "noise", "latents", "image"] {
        assert!(!index[field].is_null(), "cases.json lacks '{field}'");
    }
    let cases = index["cases"].as_array().ok_or("cases.json has no 'cases' list")?;
    assert_eq!(cases.len(), 32, "4 prompts x 2 seeds x 2 sizes x 2 schedulers");
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let id = case["id"].as_str().ok_or("case without id")?;
        assert!(seen.insert(id.to_string()), "duplicate case id {id}");
        let file = dir.join(case["file"].as_str().ok_or("case without file")?);
        let (w, h, steps) = (int(case, "width")?, int(case, "height")?, int(case, "steps")?);
        let (lh, lw) = (h / 8, w / 8);
        assert!(case["prompt"].is_string(), "{id}: prompt");
        assert!(case["negative_prompt"].is_string() || case["negative_prompt"].is_null(), "{id}: negative_prompt");
        assert!(case["guidance"].as_f64().is_some() && case["seed"].as_u64().is_some(), "{id}: guidance/seed");
        let sched = case["scheduler"].as_str().ok_or("scheduler")?;
        let cfg = &case["scheduler_config"];
        assert_eq!(cfg["_class_name"].as_str(), Some(sched), "{id}: scheduler_config names another class");
        let spacing = cfg["timestep_spacing"].as_str();
        let is_euler = match sched {
            "DDIMScheduler" => {
                assert_eq!(spacing, Some("leading"), "{id}");
                false
            }
            "EulerDiscreteScheduler" => {
                assert_eq!(spacing, Some("linspace"), "{id}");
                true
            }
            other => return Err(format!("{id}: unexpected scheduler {other}").into()),
        };

        let keys = header(&file)?;
        let mut want: Vec<(&str, Dtype, Vec<i64>)> = vec![
            ("cond_ids", Dtype::I64, vec![1, 77]),
            ("uncond_ids", Dtype::I64, vec![1, 77]),
            ("cond_embeds", Dtype::F32, vec![1, 77, 32]),
            ("uncond_embeds", Dtype::F32, vec![1, 77, 32]),
            ("noise", Dtype::F32, vec![1, 4, lh, lw]),
            ("timesteps", Dtype::F64, vec![steps]),
            ("latents", Dtype::F32, vec![steps, 1, 4, lh, lw]),
            ("image", Dtype::F32, vec![1, h, w, 3]),
            ("image_u8", Dtype::U8, vec![1, h, w, 3]),
        ];
        if is_euler {
            want.push(("sigmas", Dtype::F64, vec![steps + 1]));
        }
        assert_eq!(keys.len(), want.len(), "{id}: keys {:?}", keys.keys().collect::<Vec<_>>());
        for (key, dtype, shape) in &want {
            let got = keys.get(*key).ok_or_else(|| format!("{id}: missing key '{key}'"))?;
            assert_eq!(&got.0, dtype, "{id}: dtype of '{key}'");
            assert_eq!(&got.1, shape, "{id}: shape of '{key}'");
        }

        let t: BTreeMap<String, Tensor> = Tensor::read_safetensors(&file)?.into_iter().collect();
        check_ids(&t["cond_ids"], &format!("{id} cond_ids"));
        check_ids(&t["uncond_ids"], &format!("{id} uncond_ids"));
        if case["negative_prompt"].is_null() {
            // The uncond prompt is "": BOS then nothing but EOS.
            assert_eq!(t["uncond_ids"].int64_value(&[0, 1]), EOS, "{id}: empty uncond prompt");
        }
        let ts = Vec::<f64>::try_from(&t["timesteps"])?;
        assert!(ts.windows(2).all(|p| p[0] > p[1]), "{id}: timesteps must decrease: {ts:?}");
        let image = &t["image"];
        assert!(image.min().double_value(&[]) >= 0.0 && image.max().double_value(&[]) <= 1.0, "{id}: image range");
        let rounded = (image * 255.0).round().to_kind(Kind::Uint8);
        assert!(rounded.equal(&t["image_u8"]), "{id}: image_u8 is not round(image*255)");
        assert!(image.std(true).double_value(&[]) > 0.05, "{id}: image is nearly constant");
    }
    Ok(())
}

#[test]
fn component_goldens_are_well_formed() -> TestResult {
    let keys = header(&goldens_dir().join("components.safetensors"))?;
    let want: Vec<(&str, Dtype, Vec<i64>)> = vec![
        ("clip.input_ids", Dtype::I64, vec![2, 77]),
        ("clip.last_hidden_state", Dtype::F32, vec![2, 77, 32]),
        ("clip.pooler_output", Dtype::F32, vec![2, 32]),
        ("clip.hidden_states", Dtype::F32, vec![6, 2, 77, 32]),
        ("clip.clip_skip_1", Dtype::F32, vec![2, 77, 32]),
        ("clip.clip_skip_2", Dtype::F32, vec![2, 77, 32]),
        ("unet.sample", Dtype::F32, vec![2, 4, 8, 8]),
        ("unet.encoder_hidden_states", Dtype::F32, vec![2, 77, 32]),
        ("unet.t_int", Dtype::I64, vec![1]),
        ("unet.t_float", Dtype::F32, vec![1]),
        ("unet.out_t_int", Dtype::F32, vec![2, 4, 8, 8]),
        ("unet.out_t_float", Dtype::F32, vec![2, 4, 8, 8]),
        ("unet.sample_tall", Dtype::F32, vec![1, 4, 12, 8]),
        ("unet.encoder_hidden_states_tall", Dtype::F32, vec![1, 77, 32]),
        ("unet.t_tall", Dtype::I64, vec![1]),
        ("unet.out_tall", Dtype::F32, vec![1, 4, 12, 8]),
        ("vae.decode_in", Dtype::F32, vec![1, 4, 12, 8]),
        ("vae.decode_out", Dtype::F32, vec![1, 3, 96, 64]),
        ("vae.encode_in", Dtype::F32, vec![1, 3, 64, 64]),
        ("vae.encode_mean", Dtype::F32, vec![1, 4, 8, 8]),
        ("vae.encode_std", Dtype::F32, vec![1, 4, 8, 8]),
    ];
    assert_eq!(keys.len(), want.len(), "keys {:?}", keys.keys().collect::<Vec<_>>());
    for (key, dtype, shape) in &want {
        let got = keys.get(*key).ok_or_else(|| format!("components: missing key '{key}'"))?;
        assert_eq!(&got.0, dtype, "dtype of '{key}'");
        assert_eq!(&got.1, shape, "shape of '{key}'");
    }
    let t: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(goldens_dir().join("components.safetensors"))?.into_iter().collect();
    check_ids(&t["clip.input_ids"].get(0), "clip.input_ids[0]");
    check_ids(&t["clip.input_ids"].get(1), "clip.input_ids[1]");
    assert_eq!(t["unet.t_int"].int64_value(&[0]), 981);
    assert!((t["unet.t_float"].double_value(&[0]) - 665.3333).abs() < 1e-3);
    // The last hidden state is the final layer norm of the last layer's output, which the
    // clip-skip goldens must not equal (they skip layers).
    assert!(!t["clip.clip_skip_1"].allclose(&t["clip.last_hidden_state"], 1e-4, 1e-4, false));
    Ok(())
}
