//! Starting late, as img2img does, against diffusers: `add_noise` at several evaluations and a
//! begun-late run (10 steps, strength 0.6: `set_begin_index(4 · order)`, the image latents
//! noised to that step, then the loop over the remaining timesteps) for every scheduler of
//! the table. Goldens from tools/make_scheduler_img2img_goldens.py.
//!
//! Latents must agree within 1e-5 × max(1, |golden|), as in tests/schedulers_b.rs.

use sdgen::noise::SeededNoise;
use sdgen::schedulers::{self, SchedulerConfig, SigmaSchedule};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-5;

fn fixtures() -> (Value, HashMap<String, Tensor>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedulers_img2img");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let tensors = Tensor::read_safetensors(dir.join("tensors.safetensors")).unwrap().into_iter().collect();
    (doc, tensors)
}

fn dummy_model(x: &Tensor, t: f64) -> Tensor {
    (x * t) / (t + 1.0)
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    ((&a - &b).abs() / b.abs().clamp_min(1.0)).max().double_value(&[])
}

fn check(case: &Value, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
    let id = case["id"].as_str().unwrap();
    let config: SchedulerConfig = serde_json::from_value(case["config"].clone()).unwrap();
    let class = config.class_name.clone().unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let build = || schedulers::build(&class, None, &config, steps).map_err(|e| e.to_string());
    let (original, noise) = (&tensors["original"], &tensors["noise"]);

    let sched = build()?;
    let theirs: Vec<f64> = case["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let ours = sched.timesteps();
    if ours.len() != theirs.len() || ours.iter().zip(&theirs).any(|(a, b)| (a - b).abs() > 1e-4) {
        return Err(format!("timesteps: ours {ours:?}, diffusers {theirs:?}"));
    }
    for i in case["add_noise_at"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize) {
        let noisy = sched.add_noise(original, noise, i).map_err(|e| format!("add_noise at {i}: {e}"))?;
        let d = max_rel_diff(&noisy, &tensors[&format!("{id}.add_noise.{i}")]);
        if d.is_nan() || d > TOL {
            return Err(format!("add_noise at evaluation {i}: max relative difference {d:e}"));
        }
    }

    let begin = case["begin"].as_u64().unwrap() as usize;
    let golden = &tensors[&format!("{id}.run")];
    let mut sched = build()?;
    let t_start = 4;
    if begin != t_start * sched.order() {
        return Err(format!("order {} does not give diffusers' begin index {begin}", sched.order()));
    }
    sched.set_begin_index(begin).map_err(|e| e.to_string())?;
    let mut x = sched.add_noise(original, noise, begin).map_err(|e| e.to_string())?;
    let d = max_rel_diff(&x, &golden.get(0));
    if d > TOL {
        return Err(format!("noised start differs by {d:e}"));
    }
    let mut rng = SeededNoise::new(case["seed"].as_u64().unwrap());
    let timesteps = sched.timesteps().to_vec();
    for (k, i) in (begin..timesteps.len()).enumerate() {
        let eps = dummy_model(&sched.scale_model_input(&x, i), timesteps[i]);
        x = sched.step(&eps, i, &x, &mut rng).map_err(|e| format!("step {i}: {e}"))?;
        let d = max_rel_diff(&x, &golden.get(k as i64 + 1));
        if d.is_nan() || d > TOL {
            return Err(format!("begun at {begin}, step {i} of {}: max relative difference {d:e}", timesteps.len()));
        }
    }
    Ok(())
}

#[test]
fn add_noise_and_late_start_match_diffusers() {
    let (doc, tensors) = fixtures();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 18, "expected a case per scheduler");
    // Every row of the table is covered.
    let classes: Vec<&str> = cases.iter().map(|c| c["config"]["_class_name"].as_str().unwrap()).collect();
    for info in schedulers::all() {
        assert!(classes.contains(&info.diffusers_name), "no img2img golden for {}", info.diffusers_name);
    }
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check(c, &tensors).err().map(|e| format!("{}: {e}", c["id"].as_str().unwrap())))
        .collect();
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn begin_index_is_checked() {
    let cfg = SchedulerConfig::default();
    for name in ["Euler", "DPM++ 2M", "UniPC", "DPM++ SDE", "DDIM"] {
        let mut s = schedulers::build(name, None, &cfg, 10).unwrap();
        let n = s.timesteps().len();
        assert!(s.set_begin_index(n).is_err(), "{name}: begin past the end");
        assert!(s
            .add_noise(
                &Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
                &Tensor::ones([1], (Kind::Float, tch::Device::Cpu)),
                n
            )
            .is_err());
        s.set_begin_index(3).unwrap();
    }
    // Samplers with history start where they are told, and only before their first step.
    let x = Tensor::ones([1, 4, 2, 2], (Kind::Float, tch::Device::Cpu));
    let mut noise = SeededNoise::new(0);
    for name in ["DPM++ 2M", "UniPC", "DPM++ SDE"] {
        let mut s = schedulers::build(name, None, &cfg, 10).unwrap();
        s.set_begin_index(4).unwrap();
        assert!(s.step(&x, 0, &x, &mut noise).is_err(), "{name}: step 0 after begin 4");
        assert!(s.step(&x, 4, &x, &mut noise).is_ok(), "{name}: step 4 after begin 4");
        assert!(s.set_begin_index(2).is_err(), "{name}: begin after a step");
    }
}

#[test]
fn model_config_names_its_own_row() {
    let cfg = |json: &str| -> SchedulerConfig { serde_json::from_str(json).unwrap() };
    let name = |c: &SchedulerConfig| schedulers::from_model_config(c).map(|(i, s)| (i.a1111_name, s));
    let d = SigmaSchedule::Default;
    assert_eq!(name(&cfg(r#"{"_class_name": "PNDMScheduler"}"#)), Some(("PLMS", d)));
    assert_eq!(name(&cfg(r#"{"_class_name": "DPMSolverMultistepScheduler"}"#)), Some(("DPM++ 2M", d)));
    assert_eq!(
        name(&cfg(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}"#)),
        Some(("DPM++ 2M SDE", d))
    );
    assert_eq!(
        name(&cfg(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": true}"#
        )),
        Some(("DPM++ 2M SDE", SigmaSchedule::Karras))
    );
    assert_eq!(
        name(&cfg(r#"{"_class_name": "EulerDiscreteScheduler", "use_exponential_sigmas": true}"#)),
        Some(("Euler", SigmaSchedule::Exponential))
    );
    // A flag the class does not have is ignored, as diffusers ignores it.
    assert_eq!(
        name(&cfg(r#"{"_class_name": "EulerAncestralDiscreteScheduler", "use_karras_sigmas": true}"#)),
        Some(("Euler a", d))
    );
    assert_eq!(name(&cfg(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"}"#)), None);
    assert_eq!(name(&cfg(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler"}"#)), None);
    assert_eq!(name(&cfg("{}")), None);
    // Every row is found from its own class name and algorithm.
    for info in schedulers::all() {
        let mut c = cfg(&format!(r#"{{"_class_name": "{}"}}"#, info.diffusers_name));
        if info.a1111_name == "DPM++ 2M SDE" {
            c.extra.insert("algorithm_type".into(), "sde-dpmsolver++".into());
        }
        assert_eq!(name(&c), Some((info.a1111_name, d)), "{}", info.a1111_name);
    }
}
