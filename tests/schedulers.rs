//! Scheduler parity with diffusers: every case in tests/fixtures/schedulers/*.json (made by
//! tools/make_scheduler_goldens.py from diffusers' own classes) is replayed through sdgen's
//! scheduler with the same dummy sample and model, and compared step by step.

use sdgen::noise::SeededNoise;
use sdgen::schedulers::{self, SchedulerConfig, SigmaSchedule};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn schedule(v: &Value) -> Option<SigmaSchedule> {
    match v.as_str() {
        Some("karras") => Some(SigmaSchedule::Karras),
        Some("exponential") => Some(SigmaSchedule::Exponential),
        _ => None,
    }
}

fn config(v: &Value) -> SchedulerConfig {
    serde_json::from_value(v.clone()).expect("config")
}

/// The same values as the golden script's `dummy_sample`.
fn dummy_sample(shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) / n as f64 - 0.5).reshape(shape)
}

/// The golden script's `dummy_model`: x · t / (t + 1) with Python-float scalars.
fn dummy_model(x_in: &Tensor, t: f64) -> Tensor {
    x_in * t / (t + 1.0)
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1.0);
    (a - b).abs().max().double_value(&[]) / scale
}

/// Numbers compare by value (1000 and 1000.0 are equal); everything else exactly.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        _ => a == b,
    }
}

/// Timesteps agree within a few float32 ulps of t (2⁻²¹·|t|, 4.8e-4 at 999), and within
/// 1e-4 near 0. The UNet sees timesteps in float32, so that is the precision that matters.
/// sdgen's schedule math is plain f32/f64 arithmetic, identical on every CPU (see
/// `schedulers::sigmas`); what is left is the last bits of the goldens' own logs and exps
/// (numpy's and libtorch's vectorised float32 `log`/`exp` are not correctly rounded), which
/// move a fractional timestep from `_sigma_to_t` by about one ulp of log σ over the slope
/// d log σ / dt (≈ 2.4e-7 / 0.005 ≈ 5e-5). A real disagreement (0.0 for 913.79) is far above.
fn timesteps_match(ours: &[f64], theirs: &[Value]) -> bool {
    timesteps_mismatch(ours, theirs).is_none()
}

/// The first (index, ours, theirs) that differs by more than the tolerance, or a length mismatch.
fn timesteps_mismatch(ours: &[f64], theirs: &[Value]) -> Option<(usize, f64, f64)> {
    if ours.len() != theirs.len() {
        return Some((ours.len().min(theirs.len()), f64::NAN, f64::NAN));
    }
    ours.iter().zip(theirs).enumerate().find_map(|(i, (&a, b))| {
        let b = b.as_f64().unwrap_or(f64::NAN);
        let tol = (b.abs() * 2f64.powi(-21)).max(1e-4);
        ((a - b).abs() > tol || (a - b).is_nan()).then_some((i, a, b))
    })
}

#[test]
fn schedulers_match_diffusers_step_by_step() {
    let files = fixtures();
    assert!(!files.is_empty(), "no scheduler fixtures; run tools/make_scheduler_goldens.py");
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        let shape: Vec<i64> =
            doc["shape"].as_array().expect("shape").iter().map(|v| v.as_i64().expect("dim")).collect();
        let tensors: HashMap<String, Tensor> =
            Tensor::read_safetensors(file.with_extension("safetensors")).expect("safetensors").into_iter().collect();
        for case in doc["cases"].as_array().expect("cases") {
            let id = case["id"].as_str().expect("id");
            let steps = case["steps"].as_u64().expect("steps") as usize;
            let name = case["scheduler"].as_str().expect("scheduler");
            let mut s = match schedulers::build(name, schedule(&case["schedule"]), &config(&case["config"]), steps) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{id}: build failed: {e}"));
                    continue;
                }
            };
            checked += 1;
            if !timesteps_match(s.timesteps(), case["timesteps"].as_array().expect("timesteps")) {
                let at = timesteps_mismatch(s.timesteps(), case["timesteps"].as_array().expect("timesteps"));
                failures.push(format!(
                    "{id}: timesteps differ at {at:?}: {:?} != {}",
                    s.timesteps(),
                    case["timesteps"]
                ));
                continue;
            }
            let init = case["init_noise_sigma"].as_f64().expect("init");
            if (s.init_noise_sigma() - init).abs() > 1e-6 * init.max(1.0) {
                failures.push(format!("{id}: init_noise_sigma {} != {init}", s.init_noise_sigma()));
            }
            let mut ours_cfg = s.config_json();
            if let Some(m) = ours_cfg.as_object_mut() {
                m.remove("_class_name");
            }
            let theirs_cfg = &case["effective_config"];
            let cfg_ok = theirs_cfg.as_object().zip(ours_cfg.as_object()).is_some_and(|(t, o)| {
                t.len() == o.len() && t.iter().all(|(k, v)| o.get(k).is_some_and(|w| json_eq(v, w)))
            });
            if !cfg_ok {
                let (t, o) = (
                    theirs_cfg.as_object().cloned().unwrap_or_default(),
                    ours_cfg.as_object().cloned().unwrap_or_default(),
                );
                let keys: std::collections::BTreeSet<&String> = t.keys().chain(o.keys()).collect();
                let diff: Vec<String> = keys
                    .into_iter()
                    .filter(|k| !matches!((t.get(*k), o.get(*k)), (Some(a), Some(b)) if json_eq(a, b)))
                    .map(|k| format!("{k}: diffusers {:?} vs sdgen {:?}", t.get(k), o.get(k)))
                    .collect();
                failures.push(format!("{id}: effective config differs: {}", diff.join("; ")));
            }
            let golden = &tensors[id];
            let mut noise = SeededNoise::new(case["seed"].as_u64().expect("seed"));
            let mut x = dummy_sample(&shape) * s.init_noise_sigma();
            let ts = s.timesteps().to_vec();
            for (i, &t) in ts.iter().enumerate() {
                let x_in = s.scale_model_input(&x, i);
                let eps = dummy_model(&x_in, t);
                x = match s.step(&eps, i, &x, &mut noise) {
                    Ok(x) => x,
                    Err(e) => {
                        failures.push(format!("{id}: step {i} failed: {e}"));
                        break;
                    }
                };
                let d = max_rel_diff(&x, &golden.get(i as i64));
                if d.is_nan() || d > TOLERANCE {
                    failures.push(format!("{id}: step {i} (t = {t}) differs by {d:e}"));
                    break;
                }
            }
        }
        // Timesteps and initial sigma alone, over many step counts.
        for entry in doc["sweep"].as_array().expect("sweep") {
            let steps = entry["steps"].as_u64().expect("steps") as usize;
            let name = doc["cases"][0]["scheduler"].as_str().expect("scheduler");
            let label =
                format!("{} sweep {} {:?} steps={steps}", name, entry["config"]["timestep_spacing"], entry["schedule"]);
            let built = schedulers::build(name, schedule(&entry["schedule"]), &config(&entry["config"]), steps);
            if let Some(reason) = entry.get("error") {
                if built.is_ok() {
                    failures.push(format!("{label}: diffusers refuses ({reason}) but sdgen accepts"));
                }
                continue;
            }
            match built {
                Ok(s) => {
                    if !timesteps_match(s.timesteps(), entry["timesteps"].as_array().expect("timesteps")) {
                        let theirs = entry["timesteps"].as_array().expect("timesteps");
                        let at = timesteps_mismatch(s.timesteps(), theirs);
                        failures.push(format!(
                            "{label}: timesteps differ at {at:?}: {:?} != {}",
                            s.timesteps(),
                            entry["timesteps"]
                        ));
                    }
                    let init = entry["init_noise_sigma"].as_f64().expect("init");
                    if (s.init_noise_sigma() - init).abs() > 1e-6 * init.max(1.0) {
                        failures.push(format!("{label}: init_noise_sigma {} != {init}", s.init_noise_sigma()));
                    }
                }
                Err(e) => failures.push(format!("{label}: build failed: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of the checks failed:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 0);
}

fn err_text<T>(r: sdgen::Result<T>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what}: expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_name_lists_the_known_ones() {
    let e = err_text(schedulers::resolve("warp-drive"), "unknown name must fail");
    for info in schedulers::all() {
        assert!(e.contains(info.a1111_name), "{e}");
    }
    assert!(e.contains("EulerDiscreteScheduler") && e.contains("euler_a"), "{e}");
}

#[test]
fn a1111_and_diffusers_names_meet() {
    let pairs = [
        ("Euler a", "EulerAncestralDiscreteScheduler"),
        ("Euler", "EulerDiscreteScheduler"),
        ("DDIM", "DDIMScheduler"),
        ("PLMS", "PNDMScheduler"),
        ("DPM++ 2M", "DPMSolverMultistepScheduler"),
        ("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        ("LMS", "LMSDiscreteScheduler"),
    ];
    for (a, d) in pairs {
        let x = schedulers::resolve(a).expect(a).0;
        let y = schedulers::resolve(d).expect(d).0;
        let z = schedulers::resolve(&a.to_uppercase()).expect(a).0;
        assert!(std::ptr::eq(x, y) && std::ptr::eq(x, z), "{a} vs {d}");
        assert_eq!(x.diffusers_name, d);
    }
    let (info, s) = schedulers::resolve("DPM++ 2M Karras").expect("combined name");
    assert_eq!((info.a1111_name, s), ("DPM++ 2M", Some(SigmaSchedule::Karras)));
    assert_eq!(info.schedule_label(s), "Karras");
    assert_eq!(info.schedule_label(None), "Uniform");
    let (info, s) = schedulers::resolve("euler_exponential").expect("alias with schedule");
    assert_eq!((info.a1111_name, s), ("Euler", Some(SigmaSchedule::Exponential)));
}

#[test]
fn unsupported_combinations_and_zero_steps_fail() {
    let cfg = SchedulerConfig::default();
    let e = err_text(schedulers::build("DDIM", Some(SigmaSchedule::Karras), &cfg, 10), "DDIM + Karras");
    assert!(e.contains("DDIM") && e.contains("karras"), "{e}");
    assert!(schedulers::build("DDIM Karras", None, &cfg, 10).is_err());
    let e = err_text(schedulers::build("Euler", None, &cfg, 0), "zero steps");
    assert!(e.contains("at least 1"), "{e}");
    assert!(schedulers::build("Euler", None, &cfg, 10).is_ok());
}

#[test]
fn unsupported_config_values_name_the_field() {
    let cfg: SchedulerConfig = serde_json::from_str(r#"{"timestep_spacing": "sideways"}"#).expect("cfg");
    let e = err_text(schedulers::build("DDIM", None, &cfg, 10), "bad spacing");
    assert!(e.contains("timestep_spacing") && e.contains("trailing"), "{e}");
    let cfg: SchedulerConfig = serde_json::from_str(r#"{"beta_schedule": "sigmoid"}"#).expect("cfg");
    let e = err_text(schedulers::build("Euler", None, &cfg, 10), "bad betas");
    assert!(e.contains("beta_schedule"), "{e}");
    let cfg: SchedulerConfig = serde_json::from_str(r#"{"prediction_type": "flow"}"#).expect("cfg");
    let e = err_text(schedulers::build("Euler", None, &cfg, 10), "bad prediction");
    assert!(e.contains("prediction_type"), "{e}");
}

/// Issue 13: DPM2 a on a cosine-schedule model wrote an all-black image on an AMD CPU (a NaN
/// midpoint from σ_up rounding above σ_to). Every step count and schedule must stay finite,
/// with v-prediction too, on whatever CPU runs this.
#[test]
fn dpm2_ancestral_runs_are_finite() {
    let mut checked = 0;
    for config in [
        r#"{"beta_schedule": "squaredcos_cap_v2"}"#,
        r#"{"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}"#,
        r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#,
        r#"{"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}"#,
    ] {
        let cfg: SchedulerConfig = serde_json::from_str(config).expect("cfg");
        for schedule in [None, Some(SigmaSchedule::Karras), Some(SigmaSchedule::Exponential)] {
            for steps in 1..=40 {
                let mut s = schedulers::build("DPM2 a", schedule, &cfg, steps).expect("build");
                assert!(
                    s.timesteps().iter().all(|t| t.is_finite()),
                    "{config} {schedule:?} {steps}: {:?}",
                    s.timesteps()
                );
                let mut noise = SeededNoise::new(29);
                let mut x = dummy_sample(&[1, 4, 8, 8]) * s.init_noise_sigma();
                for (i, &t) in s.timesteps().to_vec().iter().enumerate() {
                    let eps = dummy_model(&s.scale_model_input(&x, i), t);
                    x = s.step(&eps, i, &x, &mut noise).expect("step");
                }
                let finite = x.isfinite().all().int64_value(&[]) == 1;
                assert!(finite, "{config} {schedule:?} {steps} steps: non-finite latents");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 40);
}
