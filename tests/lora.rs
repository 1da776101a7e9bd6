//! LoRA against diffusers (`tools/make_lora_goldens.py`): kohya (with LoCon convolutions),
//! PEFT, kohya SDXL, two stacked, LyCORIS LoHa and LoKr (merged in Python), each with its
//! weight; the latents after every step within the fp32 bounds and the image within 1/255.
//! Also: removing a LoRA gives the original image back, and bad files are clear errors.

mod common;

use common::{cpu_fp32, get, golden, max_abs_diff, root, FP32};
use sdgen::lora::LoraRequest;
use sdgen::pipeline::Pipeline;
use sdgen::{ErrorKind, Request};
use serde_json::Value;
use std::path::PathBuf;

const DIR: &str = "tests/fixtures/lora";

fn index() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(DIR).join("cases.json")).unwrap()).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    root().join(DIR).join(name)
}

fn request(case: &Value) -> Request {
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
        clip_skip: None,
        timestep_spacing: None,
        size_conditioning: Default::default(),
        init_image: None,
        mask: None,
        strength: None,
    }
}

/// Runs a case on `pipe` (LoRAs already set); returns failures and the 8-bit image.
fn run_case(pipe: &Pipeline, case: &Value) -> (Vec<String>, Vec<u8>) {
    let id = case["id"].as_str().unwrap();
    let g = golden(&root().join(DIR).join(case["file"].as_str().unwrap()));
    let req = request(case);
    let want = get(&g, "latents");
    let (mut worst, mut seen) = (0f64, 0);
    let denoised = pipe
        .denoise(std::slice::from_ref(&req), &mut |p| {
            let w = want.get(p.step as i64 - 1);
            let scale = w.abs().max().double_value(&[]).max(1.0);
            worst = worst.max(max_abs_diff(p.latents, &w) / scale);
            seen += 1;
        })
        .unwrap()
        .unwrap();
    let mut failures = Vec::new();
    if seen != req.steps || worst > FP32.latents {
        failures.push(format!("{id}: {seen} steps, latents differ by {worst:e} × max(1, |latents|)"));
    }
    let image = pipe.decode(&denoised.latents).unwrap().remove(0).rgb;
    let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
    let px = image.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
    if image.len() != want_u8.len() || px > FP32.image {
        failures.push(format!("{id}: image differs by {px}/255"));
    }
    eprintln!("{id}: latents {worst:e}, image {px}/255");
    (failures, image)
}

fn loras_of(case: &Value) -> Vec<LoraRequest> {
    case["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| LoraRequest { path: fixture(l["file"].as_str().unwrap()), weight: l["weight"].as_f64().unwrap() })
        .collect()
}

#[test]
fn every_lora_format_matches_diffusers_on_tiny_sd_and_removing_it_restores_the_model() {
    let index = index();
    let cases: Vec<&Value> =
        index["cases"].as_array().unwrap().iter().filter(|c| c["model"] == "weights/tiny-sd").collect();
    assert!(cases.len() >= 7, "expected the LoRA golden grid");
    let mut pipe = Pipeline::load(&cpu_fp32("weights/tiny-sd")).unwrap();
    let mut failures = Vec::new();
    let mut plain = None;
    for case in &cases {
        let loras = loras_of(case);
        let reports = pipe.set_loras(&loras).unwrap();
        for r in &reports {
            eprintln!(
                "{}: {} ({}) applied {} modules, {} unmatched",
                case["id"],
                r.path.display(),
                r.format,
                r.applied,
                r.unmatched.len()
            );
            let file = r.path.file_name().unwrap().to_str().unwrap();
            let want = index["modules_per_file"][file].as_u64().unwrap() as usize;
            if r.applied != want || !r.unmatched.is_empty() {
                failures.push(format!("{}: {file} applied {} of {want}", case["id"], r.applied));
            }
        }
        let (f, image) = run_case(&pipe, case);
        failures.extend(f);
        if loras.is_empty() {
            plain = Some(image);
        } else if plain.as_ref() == Some(&image) {
            failures.push(format!("{}: the LoRA changed nothing", case["id"]));
        }
    }
    // Removing every LoRA gives the model's own image back, byte for byte.
    pipe.set_loras(&[]).unwrap();
    let none = cases.iter().find(|c| c["loras"].as_array().unwrap().is_empty()).unwrap();
    let (f, image) = run_case(&pipe, none);
    failures.extend(f);
    assert_eq!(Some(image), plain, "removing the LoRAs restores the original image");
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} checks failed (see above)", failures.len());
}

#[test]
fn locon_convolutions_patch_winograd_kernels_too() {
    // The tiny model's convolutions are too narrow for Winograd by default: force it, so the
    // LoCon deltas go through the transformed kernels.
    let index = index();
    let case = index["cases"].as_array().unwrap().iter().find(|c| c["id"] == "sd_kohya_w0.8_64x64").unwrap();
    let mut opts = cpu_fp32("weights/tiny-sd");
    opts.conv = sdgen::models::nn::ConvAlgo::Winograd;
    let mut pipe = Pipeline::load(&opts).unwrap();
    pipe.set_loras(&loras_of(case)).unwrap();
    let (failures, _) = run_case(&pipe, case);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn kohya_sdxl_lora_matches_diffusers_on_tiny_sdxl() {
    let index = index();
    let case = index["cases"].as_array().unwrap().iter().find(|c| c["model"] == "weights/tiny-sdxl").unwrap();
    let mut pipe = Pipeline::load(&cpu_fp32("weights/tiny-sdxl")).unwrap();
    let reports = pipe.set_loras(&loras_of(case)).unwrap();
    assert_eq!(reports[0].applied, index["modules_per_file"]["sdxl_kohya.safetensors"].as_u64().unwrap() as usize);
    assert!(reports[0].unmatched.is_empty());
    let (failures, _) = run_case(&pipe, case);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn bad_lora_files_are_clear_errors_and_leave_the_model_as_it_was() {
    let mut pipe = Pipeline::load(&cpu_fp32("weights/tiny-sd")).unwrap();
    let good = LoraRequest { path: fixture("sd_peft.safetensors"), weight: 1.0 };
    pipe.set_loras(std::slice::from_ref(&good)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pickle = dir.path().join("style.pt");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    let cases = [
        (dir.path().join("missing.safetensors"), "missing"),
        (pickle, "pickle"),
        (fixture("sdxl_kohya.safetensors"), "another model architecture"),
        (fixture("sd_unmatched.safetensors"), "matches a layer"),
    ];
    for (path, what) in cases {
        let e = pipe.set_loras(&[LoraRequest { path: path.clone(), weight: 1.0 }]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(path.file_name().unwrap().to_str().unwrap()), "{what}: {msg}");
        assert!(e.kind() == ErrorKind::Model || e.kind() == ErrorKind::Io, "{what}: {:?}", e.kind());
        eprintln!("{what}: {msg}");
        assert_eq!(pipe.loras(), std::slice::from_ref(&good), "{what}: the applied set is unchanged");
    }
    let sdxl = pipe.set_loras(&[LoraRequest { path: fixture("sdxl_kohya.safetensors"), weight: 1.0 }]).unwrap_err();
    assert!(sdxl.to_string().contains("another model architecture"), "{sdxl}");
}
