//! img2img and inpainting against diffusers (`tools/make_goldens_img2img.py`):
//! `StableDiffusionImg2ImgPipeline`, `StableDiffusionInpaintPipeline` (9-channel and ordinary
//! UNets), `StableDiffusionXLImg2ImgPipeline` and `StableDiffusionXLInpaintPipeline`, with
//! Euler, Euler a and DDIM: the preprocessed image and mask, the latents after every step and
//! the image. The generator's draws (encoder sample, noise, masked-image sample, ancestral
//! noise) must come in diffusers' order for any of it to match.

mod common;

use common::{get, golden, max_abs_diff, root, Bounds, FP32};
use sdgen::init_image::{image_tensor, mask_tensor, InputImage};
use sdgen::pipeline::Pipeline;
use sdgen::Request;
use serde_json::Value;
use std::collections::HashMap;
use tch::Tensor;

const GOLDENS: &str = "tests/fixtures/goldens-img2img";

fn has(g: &[(String, Tensor)], key: &str) -> bool {
    g.iter().any(|(k, _)| k == key)
}

fn request(case: &Value) -> Request {
    let open = |key: &str, what: &str| {
        case[key].as_str().map(|p| InputImage::open(&root().join(p), what, true).expect("fixture image"))
    };
    Request {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().map(str::to_string),
        seed: case["seed"].as_u64().unwrap(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap(),
        width: case["processed_width"].as_u64().unwrap() as u32,
        height: case["processed_height"].as_u64().unwrap() as u32,
        scheduler: case["scheduler"].as_str().unwrap().to_string(),
        init_image: open("init_image", "init image"),
        mask: open("mask", "mask"),
        strength: case["strength"].as_f64(),
        ..Request::default()
    }
}

/// Runs every case (or those `pick` accepts); returns how many ran.
fn check(pick: &dyn Fn(&Value) -> bool, bounds: &Bounds, resized: &Bounds) -> usize {
    check_with(pick, bounds, resized, &|model| common::cpu_fp32(model))
}

/// [`check`] with the load options for each case's model folder chosen by `load`.
fn check_with(
    pick: &dyn Fn(&Value) -> bool,
    bounds: &Bounds,
    resized: &Bounds,
    load: &dyn Fn(&str) -> sdgen::pipeline::LoadOptions,
) -> usize {
    let dir = root().join(GOLDENS);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut pipes: HashMap<String, Pipeline> = HashMap::new();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in index["cases"].as_array().unwrap().iter().filter(|c| pick(c)) {
        ran += 1;
        let id = case["id"].as_str().unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let pipe =
            pipes.entry(model.clone()).or_insert_with(|| Pipeline::load(&load(&model)).expect("tiny model loads"));
        let g = golden(&dir.join(case["file"].as_str().unwrap()));
        let req = request(case);
        let image_resized = case["image_resized"].as_bool().unwrap_or(false);
        let b = if image_resized { resized } else { bounds };

        // The preprocessed inputs: exact without a resize; Lanczos against PIL's otherwise.
        let init = req.init_image.as_ref().unwrap().pixels("init image").unwrap();
        let ours = image_tensor(&init, req.width, req.height).unwrap();
        let d = max_abs_diff(&ours, get(&g, "image_in"));
        if image_resized {
            eprintln!("{id}: resized init image differs from PIL's by {d:e}");
        }
        // Lanczos in 8-bit on both sides: at most a few levels apart (2/255 = 4/255 here).
        if d > if image_resized { 4.0 / 255.0 } else { 0.0 } {
            failures.push(format!("{id}: preprocessed image differs by {d:e}"));
        }
        if let Some(mask) = &req.mask {
            let ours = mask_tensor(&mask.pixels("mask").unwrap(), req.width, req.height).unwrap();
            if max_abs_diff(&ours, get(&g, "mask_in")) != 0.0 {
                failures.push(format!("{id}: binarized mask differs"));
            }
        }
        pipe.check(&req).unwrap_or_else(|e| panic!("{id}: {e}"));

        // Latents after every step that runs.
        let want = get(&g, "latents");
        let steps_run = case["steps_run"].as_u64().unwrap() as usize;
        let (mut worst, mut seen) = (0f64, 0);
        let denoised = pipe
            .denoise(std::slice::from_ref(&req), &mut |p| {
                assert_eq!(p.steps, steps_run, "{id}: steps that run");
                let w = want.get(p.step as i64 - 1);
                let scale = w.abs().max().double_value(&[]).max(1.0);
                worst = worst.max(max_abs_diff(p.latents, &w) / scale);
                seen += 1;
            })
            .unwrap_or_else(|e| panic!("{id}: {e}"))
            .unwrap();
        if seen != steps_run || worst > b.latents {
            failures.push(format!("{id}: {seen} steps, latents differ by {worst:e} × max(1, |latents|)"));
        }
        let images = pipe.decode(&denoised.latents).unwrap();
        let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
        let px = images[0].rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
        if images[0].rgb.len() != want_u8.len() || px > b.image {
            failures.push(format!("{id}: image differs by {px}/255"));
        }
        assert!(has(&g, "timesteps"), "{id}: golden without timesteps");
        eprintln!("{id}: latents {worst:.2e}, image {px}/255");
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} checks failed (see above)", failures.len());
    ran
}

/// A resized init image may differ from PIL's Lanczos by rounding, which the steps carry on.
/// Measured: the `image` crate's Lanczos3 gives the same latents as PIL's to 2.4e-6; the bound
/// leaves room for a level of rounding.
const RESIZED: Bounds = Bounds { embeds: 1e-5, latents: 1e-3, relative: true, image: 2 };

#[test]
fn sd_img2img_matches_diffusers() {
    let n = check(&|c| c["pipeline"] == "StableDiffusionImg2ImgPipeline", &FP32, &RESIZED);
    assert_eq!(n, 7);
}

#[test]
fn sd_inpainting_matches_diffusers_for_inpainting_and_ordinary_unets() {
    let n = check(&|c| c["pipeline"] == "StableDiffusionInpaintPipeline", &FP32, &RESIZED);
    assert_eq!(n, 7);
}

#[test]
fn sdxl_img2img_and_inpainting_match_diffusers() {
    let n = check(&|c| c["pipeline"].as_str().unwrap().starts_with("StableDiffusionXL"), &FP32, &RESIZED);
    assert_eq!(n, 7);
}

#[test]
fn a_single_file_inpainting_checkpoint_gives_the_folders_results() {
    // weights/tiny-sd-inpaint.safetensors is the folder in the original layout (9-channel
    // UNet), with the folder's configs as diffusers' `from_single_file(config=...)` takes them.
    let load = |model: &str| sdgen::pipeline::LoadOptions {
        config_dir: Some(root().join(model)),
        ..common::cpu_fp32(&format!("{model}.safetensors"))
    };
    let n = check_with(&|c| c["model"] == "weights/tiny-sd-inpaint", &FP32, &FP32, &load);
    assert_eq!(n, 4);
}
