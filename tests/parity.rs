//! sdgen against HF diffusers on the tiny model: every golden case made by
//! `tools/make_goldens.py` (token ids, text embeddings, initial noise, the latents after
//! every step, the decoded image), through the public Pipeline API.

use sdgen::noise::{NoiseSource, SeededNoise};
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::tokenizer::Tokenizer;
use sdgen::Request;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden(file: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn get<'a>(t: &'a [(String, Tensor)], key: &str) -> &'a Tensor {
    &t.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("golden lacks {key}")).1
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn ids_of(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.view([-1])).unwrap()
}

fn cpu_fp32(model: &str) -> LoadOptions {
    LoadOptions {
        model: root().join(model),
        device: "cpu".parse().unwrap(),
        dtype: "fp32".parse().unwrap(),
        ..LoadOptions::default()
    }
}

/// Runs the cases of a goldens folder (every `stride`-th one) through a pipeline loaded with
/// `opts`; `folder` is the diffusers folder whose tokenizer the goldens used. Returns how many
/// cases ran; fails listing every check that did not hold.
fn check_cases(opts: &LoadOptions, folder: &str, goldens: &str, stride: usize) -> usize {
    let dir = root().join(goldens);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = index["cases"].as_array().expect("cases list");
    assert!(cases.len() >= 8, "expected the full golden grid, found {} cases", cases.len());
    let pipe = Pipeline::load(opts).expect("tiny model loads");
    let tokenizer = Tokenizer::from_dir(&root().join(folder).join("tokenizer")).unwrap();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cases.iter().step_by(stride) {
        ran += 1;
        let id = case["id"].as_str().unwrap();
        let g = golden(&dir.join(case["file"].as_str().unwrap()));
        let req = Request {
            prompt: case["prompt"].as_str().unwrap().to_string(),
            negative_prompt: case["negative_prompt"].as_str().map(str::to_string),
            seed: case["seed"].as_u64().unwrap(),
            steps: case["steps"].as_u64().unwrap() as usize,
            guidance: case["guidance"].as_f64().unwrap(),
            width: case["width"].as_u64().unwrap() as u32,
            height: case["height"].as_u64().unwrap() as u32,
            scheduler: case["scheduler"].as_str().unwrap().to_string(),
            num_images: 1,
            clip_skip: None,
        };

        // Token ids: identical.
        let cond = tokenizer.encode(&req.prompt).ids;
        let uncond = tokenizer.encode(req.negative_prompt.as_deref().unwrap_or("")).ids;
        if cond != ids_of(get(&g, "cond_ids")) || uncond != ids_of(get(&g, "uncond_ids")) {
            failures.push(format!("{id}: token ids differ"));
        }

        // Text embeddings: ≤ 1e-5.
        let e = pipe.encode_text(&req.prompt, None).unwrap();
        let d = max_abs_diff(&e, get(&g, "cond_embeds"));
        let e2 = pipe.encode_text(req.negative_prompt.as_deref().unwrap_or(""), None).unwrap();
        let d2 = max_abs_diff(&e2, get(&g, "uncond_embeds"));
        if d > 1e-5 || d2 > 1e-5 {
            failures.push(format!("{id}: embeddings differ by {d:e} / {d2:e}"));
        }

        // Initial noise: identical.
        let shape = get(&g, "noise").size();
        let noise = SeededNoise::new(req.seed).randn(&shape, Device::Cpu, Kind::Float);
        if !noise.equal(get(&g, "noise")) {
            failures.push(format!("{id}: initial noise differs"));
        }

        // Latents after every step: ≤ 1e-4.
        let want = get(&g, "latents");
        let mut worst = 0f64;
        let mut seen = 0;
        let denoised = pipe
            .denoise(std::slice::from_ref(&req), &mut |p| {
                worst = worst.max(max_abs_diff(p.latents, &want.get(p.step as i64 - 1)));
                seen += 1;
            })
            .unwrap()
            .unwrap();
        if seen != req.steps || worst > 1e-4 {
            failures.push(format!("{id}: {seen} steps, latents differ by {worst:e}"));
        }

        // The scheduler ran with the config diffusers used.
        let ours = &denoised.scheduler_config;
        for key in ["timestep_spacing", "steps_offset", "prediction_type", "beta_schedule", "_class_name"] {
            if ours.get(key) != case["scheduler_config"].get(key) {
                failures.push(format!(
                    "{id}: scheduler config {key} = {:?}, diffusers used {:?}",
                    ours.get(key),
                    case["scheduler_config"].get(key)
                ));
            }
        }

        // Decoded 8-bit image: within 1/255.
        let images = pipe.decode(&denoised.latents).unwrap();
        let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
        let worst_px = images[0].rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
        if images[0].rgb.len() != want_u8.len() || worst_px > 1 {
            failures.push(format!("{id}: image differs by {worst_px}/255"));
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} checks failed (see above)", failures.len());
    ran
}

#[test]
fn tiny_sd_matches_diffusers() {
    assert_eq!(check_cases(&cpu_fp32("weights/tiny-sd"), "weights/tiny-sd", "tests/fixtures/goldens", 1), 32);
}

#[test]
fn tiny_sd2_matches_diffusers() {
    // SD 2.x style: v-prediction, linear projections, per-block heads, "!" padding.
    assert_eq!(check_cases(&cpu_fp32("weights/tiny-sd2"), "weights/tiny-sd2", "tests/fixtures/goldens-sd2", 1), 8);
}

#[test]
fn single_file_sd1_gives_the_folder_images() {
    let opts =
        LoadOptions { config_dir: Some(root().join("weights/tiny-sd")), ..cpu_fp32("weights/tiny-sd.safetensors") };
    assert_eq!(check_cases(&opts, "weights/tiny-sd", "tests/fixtures/goldens", 4), 8);
}

#[test]
fn single_file_sd2_gives_the_folder_images() {
    let opts =
        LoadOptions { config_dir: Some(root().join("weights/tiny-sd2")), ..cpu_fp32("weights/tiny-sd2.safetensors") };
    assert_eq!(check_cases(&opts, "weights/tiny-sd2", "tests/fixtures/goldens-sd2", 2), 4);
}
