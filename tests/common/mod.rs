//! Helpers shared by the integration tests that compare sdgen with the diffusers goldens
//! (`tests/fixtures/goldens*`, made by `tools/make_goldens.py`): loading goldens, and running
//! every golden case through a pipeline with bounds on each stage; reading PNG pixels.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

use sdgen::noise::{NoiseSource, SeededNoise};
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::tokenizer::Tokenizer;
use sdgen::Request;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The PNG files in `dir`, sorted (none where it does not exist).
pub fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "png")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The one PNG file in `dir` (fails the test if there is not exactly one).
pub fn only_png(dir: &Path) -> PathBuf {
    let files = pngs(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Copies a folder tree (a model folder, so that a test can damage or edit its copy).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn golden(file: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

pub fn get<'a>(t: &'a [(String, Tensor)], key: &str) -> &'a Tensor {
    &t.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("golden lacks {key}")).1
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

pub fn ids_of(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.view([-1])).unwrap()
}

/// Load options for a model under the crate root, on the CPU in `dtype` (fp32, fp16, bf16).
pub fn cpu(model: &str, dtype: &str) -> LoadOptions {
    LoadOptions {
        model: root().join(model),
        device: "cpu".parse().unwrap(),
        dtype: dtype.parse().unwrap(),
        ..LoadOptions::default()
    }
}

pub fn cpu_fp32(model: &str) -> LoadOptions {
    cpu(model, "fp32")
}

/// The largest differences from the goldens a run may show.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Text embeddings, absolute.
    pub embeds: f64,
    /// Latents after any step: absolute, or with `relative` times max(1, max |golden
    /// latents| at that step), as in `parity_schedulers.rs`.
    pub latents: f64,
    pub relative: bool,
    /// Decoded 8-bit image, in levels.
    pub image: u8,
}

/// fp32 on the CPU: sdgen equals diffusers up to float reassociation. The latents bound
/// is relative because sdgen's CPU convolutions sum in another order than libtorch's
/// (`sdgen::models::conv`), and Euler-family latents are scaled by sigma (up to ~15).
pub const FP32: Bounds = Bounds { embeds: 1e-5, latents: 1e-4, relative: true, image: 1 };

/// The largest differences a run showed, over all cases.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    pub cases: usize,
    pub embeds: f64,
    pub latents: f64,
    pub image: u8,
}

/// The request of a diffusers golden case from its `cases.json` entry (plain prompt syntax,
/// as diffusers reads prompts).
pub fn golden_request(case: &Value) -> Request {
    Request {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().map(str::to_string),
        seed: case["seed"].as_u64().unwrap(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap(),
        width: case["width"].as_u64().unwrap() as u32,
        height: case["height"].as_u64().unwrap() as u32,
        scheduler: case["scheduler"].as_str().unwrap().to_string(),
        num_images: 1,
        prompt_syntax: sdgen::request::PromptSyntax::Plain,
        ..Request::default()
    }
}

/// Runs the cases of a goldens folder (every `stride`-th one) through a pipeline loaded with
/// `opts`; `folder` is the diffusers folder whose tokenizer the goldens used. Returns how many
/// cases ran and the worst differences; fails listing every check that exceeded `bounds`.
pub fn check_cases(opts: &LoadOptions, folder: &str, goldens: &str, stride: usize, bounds: &Bounds) -> Measured {
    let dir = root().join(goldens);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = index["cases"].as_array().expect("cases list");
    assert!(cases.len() >= 8, "expected the full golden grid, found {} cases", cases.len());
    let pipe = Pipeline::load(opts).expect("tiny model loads");
    let tokenizer = Tokenizer::from_dir(&root().join(folder).join("tokenizer")).unwrap();
    let mut failures = Vec::new();
    let mut m = Measured::default();
    for case in cases.iter().step_by(stride) {
        m.cases += 1;
        let id = case["id"].as_str().unwrap();
        let g = golden(&dir.join(case["file"].as_str().unwrap()));
        let req = golden_request(case);

        // Token ids: identical.
        let cond = tokenizer.encode(&req.prompt).ids;
        let uncond = tokenizer.encode(req.negative_prompt.as_deref().unwrap_or("")).ids;
        if cond != ids_of(get(&g, "cond_ids")) || uncond != ids_of(get(&g, "uncond_ids")) {
            failures.push(format!("{id}: token ids differ"));
        }

        // Text embeddings.
        let e = pipe.encode_text(&req.prompt, None).unwrap();
        let d = max_abs_diff(&e, get(&g, "cond_embeds"));
        let e2 = pipe.encode_text(req.negative_prompt.as_deref().unwrap_or(""), None).unwrap();
        let d2 = max_abs_diff(&e2, get(&g, "uncond_embeds"));
        m.embeds = m.embeds.max(d).max(d2);
        if d > bounds.embeds || d2 > bounds.embeds {
            failures.push(format!("{id}: embeddings differ by {d:e} / {d2:e}"));
        }

        // Initial noise: identical.
        let shape = get(&g, "noise").size();
        let noise = SeededNoise::new(req.seed).randn(&shape, Device::Cpu, Kind::Float);
        if !noise.equal(get(&g, "noise")) {
            failures.push(format!("{id}: initial noise differs"));
        }

        // Latents after every step.
        let want = get(&g, "latents");
        let mut worst = 0f64;
        let mut seen = 0;
        let denoised = pipe
            .denoise(std::slice::from_ref(&req), &mut |p| {
                let w = want.get(p.step as i64 - 1);
                let scale = if bounds.relative { w.abs().max().double_value(&[]).max(1.0) } else { 1.0 };
                worst = worst.max(max_abs_diff(p.latents, &w) / scale);
                seen += 1;
            })
            .unwrap()
            .unwrap();
        m.latents = m.latents.max(worst);
        if seen != req.steps || worst > bounds.latents {
            let how = if bounds.relative { " × max(1, |latents|)" } else { "" };
            failures.push(format!("{id}: {seen} steps, latents differ by {worst:e}{how}"));
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

        // Decoded 8-bit image.
        let images = pipe.decode(&denoised.latents).unwrap();
        let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
        let worst_px = images[0].rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
        m.image = m.image.max(worst_px);
        if images[0].rgb.len() != want_u8.len() || worst_px > bounds.image {
            failures.push(format!("{id}: image differs by {worst_px}/255"));
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} checks failed (see above)", failures.len());
    m
}

/// Width, height and RGB bytes of a PNG file.
pub fn png_pixels(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("png")));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}
