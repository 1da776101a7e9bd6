//! The whole pipeline against diffusers with every scheduler of the family, on the tiny
//! model: the cases made by `tools/make_scheduler_pipeline_goldens.py` (4 and 20 steps,
//! deterministic and stochastic samplers), compared after every model evaluation.
//!
//! Latents must agree within 1e-4 × max(1, max |golden latents| at that evaluation): the
//! sigma samplers start at σ_max ≈ 14.6 times the noise, where 1e-4 absolute is a few
//! float32 ulps, so the bound is relative for large latents and absolute once they are
//! below 1. The decoded 8-bit image must agree within 1/255.

mod common;

use common::{get, golden, root};
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::schedulers;
use sdgen::Request;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// Config fields that change what a scheduler computes; they must equal diffusers' where
/// diffusers' config has them.
const CONFIG_KEYS: &[&str] = &[
    "_class_name",
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "timestep_spacing",
    "steps_offset",
    "prediction_type",
    "skip_prk_steps",
    "set_alpha_to_one",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "algorithm_type",
    "solver_order",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "final_sigmas_type",
    "predict_x0",
    "disable_corrector",
    "variance_type",
    "clip_sample",
    "original_inference_steps",
    "timestep_scaling",
];

fn dir() -> PathBuf {
    root().join("tests/fixtures/goldens-schedulers")
}

/// The pipeline, loaded once for all tests of this binary; tests take turns with it (tch
/// tensors are `Send` but not `Sync`).
fn pipeline() -> MutexGuard<'static, Pipeline> {
    static PIPE: OnceLock<Mutex<Pipeline>> = OnceLock::new();
    let pipe = PIPE.get_or_init(|| {
        let opts = LoadOptions {
            model: root().join("weights/tiny-sd"),
            device: "cpu".parse().unwrap(),
            dtype: "fp32".parse().unwrap(),
            ..LoadOptions::default()
        };
        Mutex::new(Pipeline::load(&opts).expect("tiny model loads"))
    });
    // One intra-op thread, as the golden maker runs. On a busy machine libtorch's default
    // thread pool spins in its barriers and these tiny ops take 100× longer. OpenMP keeps
    // the setting per thread, so every test thread sets it.
    tch::set_num_threads(1);
    // A test that failed while holding the lock leaves the pipeline itself intact.
    pipe.lock().unwrap_or_else(|e| e.into_inner())
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("cases.json")).expect("goldens-schedulers/cases.json");
    let index: Value = serde_json::from_str(&text).unwrap();
    index["cases"].as_array().expect("cases list").clone()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// What one case measured; `failures` lists every check that did not hold.
struct Outcome {
    id: String,
    /// The worst latent difference, divided by the case's bound at that evaluation.
    worst_ratio: f64,
    worst_abs: f64,
    worst_px: u8,
    failures: Vec<String>,
}

fn run_case(case: &Value) -> Outcome {
    let pipe = pipeline();
    let id = case["id"].as_str().unwrap().to_string();
    let g = golden(&dir().join(case["file"].as_str().unwrap()));
    let name = case["sdgen_scheduler"].as_str().unwrap();
    let req = Request { scheduler: name.to_string(), ..common::golden_request(case) };
    let mut failures = Vec::new();

    // The name resolves to the diffusers class the golden ran, with the same timesteps.
    let (info, _) = schedulers::resolve(name).unwrap_or_else(|e| panic!("{id}: {name} does not resolve: {e}"));
    if info.diffusers_name != case["scheduler"].as_str().unwrap() {
        failures.push(format!("{id}: {name} resolves to {}", info.diffusers_name));
    }
    let scheduler = schedulers::build(name, None, pipe.scheduler_config(), req.steps).unwrap();
    let want_t = Vec::<f64>::try_from(get(&g, "timesteps")).unwrap();
    let ts_diff = if scheduler.timesteps().len() == want_t.len() {
        scheduler.timesteps().iter().zip(&want_t).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    } else {
        f64::INFINITY
    };
    if ts_diff > 1e-3 {
        failures.push(format!("{id}: timesteps {:?}, diffusers {want_t:?}", scheduler.timesteps()));
    }

    // Latents after every model evaluation.
    let want = get(&g, "latents");
    let evaluations = want.size()[0] as usize;
    let (mut worst_ratio, mut worst_abs, mut seen) = (0f64, 0f64, 0usize);
    let denoised = pipe
        .denoise(std::slice::from_ref(&req), &mut |p| {
            seen += 1;
            if p.step > evaluations {
                return;
            }
            let w = want.get(p.step as i64 - 1);
            let d = max_abs(&(p.latents.to_kind(Kind::Double) - w.to_kind(Kind::Double)));
            let bound = TOLERANCE * max_abs(&w).max(1.0);
            worst_abs = worst_abs.max(d);
            worst_ratio = worst_ratio.max(d / bound);
        })
        .unwrap()
        .unwrap();
    if seen != evaluations || worst_ratio.is_nan() || worst_ratio > 1.0 {
        failures.push(format!(
            "{id}: {seen} evaluations (diffusers {evaluations}), latents differ by {worst_abs:e} ({worst_ratio:.2} × bound)"
        ));
    }

    // The scheduler ran with the config diffusers used.
    let ours = &denoised.scheduler_config;
    let theirs = &case["scheduler_config"];
    for key in CONFIG_KEYS {
        let Some(t) = theirs.get(*key) else { continue };
        let same = match (ours.get(*key), t) {
            (Some(a), b) if a.is_number() && b.is_number() => a.as_f64() == b.as_f64(),
            (a, b) => a == Some(b),
        };
        if !same {
            failures.push(format!("{id}: scheduler config {key} = {:?}, diffusers used {t}", ours.get(*key)));
        }
    }

    // Decoded 8-bit image.
    let images = pipe.decode(&denoised.latents).unwrap();
    let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
    let worst_px = images[0].rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
    if images[0].rgb.len() != want_u8.len() || worst_px > 1 {
        failures.push(format!("{id}: image differs by {worst_px}/255"));
    }
    Outcome { id, worst_ratio, worst_abs, worst_px, failures }
}

/// Runs every case whose sdgen scheduler is `name`, at both step counts.
fn check(name: &str) {
    let cases: Vec<Value> = cases().into_iter().filter(|c| c["sdgen_scheduler"] == name).collect();
    let counts: Vec<u64> = cases.iter().filter_map(|c| c["steps"].as_u64()).collect();
    assert!(counts.contains(&4) && counts.contains(&20), "{name}: goldens lack 4- or 20-step cases");
    let mut failures = Vec::new();
    for case in &cases {
        let o = run_case(case);
        eprintln!(
            "{}: latents max |diff| {:.2e} ({:.3} × bound), image {}/255",
            o.id, o.worst_abs, o.worst_ratio, o.worst_px
        );
        failures.extend(o.failures);
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{name}: {} checks failed (see above)", failures.len());
}

#[test]
fn every_golden_scheduler_has_a_test() {
    let tested = [
        "PNDMScheduler",
        "Euler a",
        "DPM++ 2M Karras",
        "UniPC",
        "LMS",
        "Heun",
        "DPM2",
        "DPM2 a",
        "DPM++ 2M SDE",
        "DDPM",
        "LCM",
    ];
    for case in cases() {
        let name = case["sdgen_scheduler"].as_str().unwrap();
        assert!(tested.contains(&name), "{}: no test for scheduler {name}", case["id"]);
    }
}

#[test]
fn pndm() {
    check("PNDMScheduler");
}

#[test]
fn euler_ancestral() {
    check("Euler a");
}

#[test]
fn dpmpp_2m_karras() {
    check("DPM++ 2M Karras");
}

#[test]
fn unipc() {
    check("UniPC");
}

#[test]
fn lms() {
    check("LMS");
}

#[test]
fn heun() {
    check("Heun");
}

#[test]
fn dpm2() {
    check("DPM2");
}

#[test]
fn dpm2_ancestral() {
    check("DPM2 a");
}

#[test]
fn dpmpp_2m_sde() {
    check("DPM++ 2M SDE");
}

#[test]
fn ddpm() {
    check("DDPM");
}

#[test]
fn lcm() {
    check("LCM");
}
