//! The typed plan (issue 12): one resolution of request, model and overrides, recorded whole in
//! the PNG. Each test here is a defect that the string-typed settings had.

mod common;

use assert_cmd::Command;
use common::pngs;
use sdgen::plan::{ModelOptions, ModelSpec, PredictionType};
use sdgen::schedulers::SchedulerConfig;
use std::path::{Path, PathBuf};

fn sdgen() -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL");
    cmd
}

fn tiny(name: &str) -> PathBuf {
    common::root().join("weights").join(name)
}

fn batch(prompts: &Path, out: &Path, model: &Path, extra: &[&str]) -> std::process::Output {
    sdgen()
        .arg("batch")
        .arg(prompts)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(["--steps", "2", "--width", "64", "--height", "64", "--seed", "7", "--quiet"])
        .args(extra)
        .output()
        .unwrap()
}

/// A copy of tiny-sd whose scheduler config names `class` (SD 1.5 ships PNDM).
fn tiny_with_scheduler(dir: &Path, config: serde_json::Value) -> PathBuf {
    let model = dir.join("model");
    common::copy_dir(&tiny("tiny-sd"), &model);
    std::fs::write(model.join("scheduler/scheduler_config.json"), config.to_string()).unwrap();
    model
}

#[test]
fn merge_without_scheduler_counts_images_made_with_the_models_own_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_with_scheduler(
        dir.path(),
        serde_json::json!({"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "num_train_timesteps": 1000, "skip_prk_steps": true, "steps_offset": 1}),
    );
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a cat\na dog\na bird\n").unwrap();
    let out = dir.path().join("out");
    let run = batch(&prompts, &out, &model, &[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let merge = batch(&prompts, &out, &model, &["--merge", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&merge.stdout).unwrap();
    assert_eq!(report["done_images"], 3, "{report}");
    assert_eq!(merge.status.code(), Some(0), "{}", String::from_utf8_lossy(&merge.stderr));
    // The images were made with the model's PNDM scheduler, and say so.
    let record = sdgen::output::read_record(&pngs(&out)[0]).unwrap();
    assert_eq!(record.request.scheduler, "PLMS");
    assert_eq!(record.sampler.unwrap().class, "PNDMScheduler");
}

#[test]
fn rerunning_a_batch_with_another_model_renders_again() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a cat\na dog\n").unwrap();
    let out = dir.path().join("out");
    let first = batch(&prompts, &out, &tiny("tiny-sd"), &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let again = batch(&prompts, &out, &tiny("tiny-sd"), &["--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!((summary["skipped"].as_u64(), summary["done"].as_u64()), (Some(2), Some(0)), "{summary}");
    // Another checkpoint (tiny-sd2 has other weights) must not count as done.
    let other = batch(&prompts, &out, &tiny("tiny-sd2"), &["--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    assert_eq!((summary["skipped"].as_u64(), summary["done"].as_u64()), (Some(0), Some(2)), "{summary}");
    let record = sdgen::output::read_record(&out.join(pngs(&out)[0].file_name().unwrap())).unwrap();
    assert_eq!(record.model.architecture, sdgen::plan::Arch::Sd2);
}

#[test]
fn the_recorded_hash_names_the_unet_file_that_was_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::copy_dir(&tiny("tiny-sd"), &model);
    // An fp16 variant with other bytes beside the plain file: the plain one is loaded.
    let unet = model.join("unet");
    let mut other = std::fs::read(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    other.extend_from_slice(b"    ");
    std::fs::write(unet.join("diffusion_pytorch_model.fp16.safetensors"), other).unwrap();
    let plain_hash = sdgen::loading::sha256_file(&unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    for dtype in ["fp32", "fp16"] {
        let spec = ModelSpec::inspect(
            &model,
            &ModelOptions {
                kind: Some(sdgen::device::DType::resolve(dtype.parse().unwrap(), tch::Device::Cpu)),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(spec.hash(), plain_hash, "{dtype}");
        assert_eq!(spec.files[0].path, unet.join("diffusion_pytorch_model.safetensors"));
    }
    let out = dir.path().join("out");
    sdgen()
        .args(["generate", "a cat", "--seed", "1", "--steps", "1", "--width", "64", "--height", "64", "--quiet"])
        .args(["--dtype", "fp16", "--device", "cpu"])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let record = sdgen::output::read_record(&pngs(&out)[0]).unwrap();
    assert_eq!(record.model.hash.as_deref(), Some(plain_hash.as_str()));
    let loaded: Vec<&Path> = record.model.files.iter().map(|f| f.path.as_path()).collect();
    assert!(loaded.contains(&unet.join("diffusion_pytorch_model.safetensors").as_path()), "{loaded:?}");
    for f in &record.model.files {
        assert_eq!(f.sha256, sdgen::loading::sha256_file(&f.path).unwrap(), "{}", f.path.display());
    }
}

#[test]
fn from_replays_vae_tiling_and_prediction_type() {
    let dir = tempfile::tempdir().unwrap();
    let first_out = dir.path().join("first");
    // 576 px: 72 latent columns, more than one 64-latent tile, so tiling changes pixels.
    let args = ["generate", "a lighthouse", "--seed", "11", "--steps", "2", "--width", "576", "--height", "64"];
    sdgen()
        .args(args)
        .args(["--vae-tiling", "--prediction-type", "v_prediction", "--quiet"])
        .arg("--model")
        .arg(tiny("tiny-sd"))
        .arg("--out")
        .arg(&first_out)
        .assert()
        .success();
    let first = pngs(&first_out)[0].clone();
    let record = sdgen::output::read_record(&first).unwrap();
    assert!(record.vae_tiling.is_some());
    assert_eq!(record.prediction_type, Some(PredictionType::VPrediction));
    assert_eq!(record.latent_shape, vec![4, 8, 72]);

    let again_out = dir.path().join("again");
    sdgen().args(["generate", "--quiet", "--from"]).arg(&first).arg("--out").arg(&again_out).assert().success();
    let again = pngs(&again_out)[0].clone();
    assert_eq!(common::png_pixels(&again), common::png_pixels(&first));
    let replayed = sdgen::output::read_record(&again).unwrap();
    assert_eq!(replayed.vae_tiling, record.vae_tiling);
    assert_eq!(replayed.prediction_type, record.prediction_type);

    // Without the two settings the pixels differ, so the test above proves they were replayed.
    let plain_out = dir.path().join("plain");
    sdgen()
        .args(args)
        .arg("--quiet")
        .arg("--model")
        .arg(tiny("tiny-sd"))
        .arg("--out")
        .arg(&plain_out)
        .assert()
        .success();
    assert_ne!(common::png_pixels(&pngs(&plain_out)[0]), common::png_pixels(&first));
}

#[test]
fn from_replays_config_dir_and_arch_of_single_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first");
    sdgen()
        .args(["generate", "a cat", "--seed", "2", "--steps", "2", "--width", "64", "--height", "64", "--quiet"])
        .arg("--model")
        .arg(tiny("tiny-sd.safetensors"))
        .arg("--config-dir")
        .arg(tiny("tiny-sd"))
        .args(["--arch", "sd1"])
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let first = pngs(&out)[0].clone();
    let record = sdgen::output::read_record(&first).unwrap();
    assert_eq!(record.model.config_dir.as_deref(), Some(tiny("tiny-sd").as_path()));
    assert!(record.model.arch_forced);
    let again_out = dir.path().join("again");
    sdgen().args(["generate", "--quiet", "--from"]).arg(&first).arg("--out").arg(&again_out).assert().success();
    let replayed = sdgen::output::read_record(&pngs(&again_out)[0]).unwrap();
    assert_eq!(replayed.model.config_dir, record.model.config_dir);
    assert!(replayed.model.arch_forced);
    assert_eq!(common::png_pixels(&pngs(&again_out)[0]), common::png_pixels(&first));
}

#[test]
fn a_dpm_solver_config_set_to_sde_is_named_dpmpp_2m_sde() {
    let config: SchedulerConfig = serde_json::from_value(serde_json::json!({
        "_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": true
    }))
    .unwrap();
    let sampler = sdgen::plan::sampler_from_config(&config).unwrap();
    assert_eq!(sampler.name(), "DPM++ 2M SDE Karras");
    let plain: SchedulerConfig =
        serde_json::from_value(serde_json::json!({"_class_name": "DPMSolverMultistepScheduler"})).unwrap();
    assert_eq!(sdgen::plan::sampler_from_config(&plain).unwrap().name(), "DPM++ 2M");

    // End to end: a model whose config says SDE records DPM++ 2M SDE.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_with_scheduler(
        dir.path(),
        serde_json::json!({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++",
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}),
    );
    let out = dir.path().join("out");
    sdgen()
        .args(["generate", "a cat", "--seed", "4", "--steps", "3", "--width", "64", "--height", "64", "--quiet"])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let png = pngs(&out)[0].clone();
    let record = sdgen::output::read_record(&png).unwrap();
    assert_eq!(record.request.scheduler, "DPM++ 2M SDE");
    let (sampler, _) = sdgen::save::sampler_names(&record.request.scheduler).unwrap();
    assert_eq!(sampler, "DPM++ 2M SDE");
}

#[test]
fn an_inpainting_folder_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::copy_dir(&tiny("tiny-sd"), &model);
    let cfg_path = model.join("unet/config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["in_channels"] = 9.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = dir.path().join("out");
    let output = sdgen()
        .args(["generate", "a cat", "--seed", "1", "--steps", "1", "--width", "64", "--height", "64", "--quiet"])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("inpainting model") && err.contains("9 input channels"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(pngs(&out).is_empty());
}

#[test]
fn the_pipeline_can_move_to_a_worker_thread_and_a_run_can_be_cancelled() {
    fn assert_send<T: Send>() {}
    assert_send::<sdgen::Pipeline>();

    let pipe = sdgen::Pipeline::load(&common::cpu_fp32("weights/tiny-sd")).unwrap();
    let req = sdgen::Request {
        prompt: "a cat".into(),
        steps: 5,
        width: 64,
        height: 64,
        scheduler: "euler".into(),
        ..Default::default()
    };
    let handle = std::thread::spawn(move || {
        let mut seen = 0;
        let result = pipe.generate(&req, &mut |p| {
            seen = p.step;
            if p.step == 2 {
                p.cancel();
            }
        });
        (result.map(|_| ()), seen)
    });
    let (result, seen) = handle.join().unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.kind(), sdgen::ErrorKind::Cancelled);
    assert_eq!(seen, 2);
}

#[test]
fn a_line_that_libtorch_cannot_allocate_fails_alone_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"a huge cat\", \"width\": 1024, \"height\": 1024, \"filename\": \"huge.png\"}\n\
         {\"prompt\": \"a small dog\", \"filename\": \"small.png\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    // A 1.5 GB address-space cap: the tiny model runs at 64² in under 1 GB, while the VAE
    // decode at 1024² asks libtorch for 256 MB blocks it cannot get.
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1500000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_sdgen"))
        .arg("batch")
        .arg(&prompts)
        .arg("--model")
        .arg(tiny("tiny-sd"))
        .arg("--out")
        .arg(&out)
        .args(["--steps", "1", "--width", "64", "--height", "64", "--quiet", "--json"])
        .env("OMP_NUM_THREADS", "1")
        .env_remove("SDGEN_MODEL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((summary["done"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(1)), "{summary}");
    let error = summary["failures"][0]["error"].as_str().unwrap();
    assert!(error.contains("out of memory") && !error.contains("frame #"), "{error}");
    assert!(out.join("small.png").is_file() && !out.join("huge.png").exists());
}

#[test]
fn run_keys_use_the_device_asked_for_not_the_one_found() {
    let spec = ModelSpec::inspect(&tiny("tiny-sd"), &ModelOptions::default()).unwrap();
    let opts = |device: &str, dtype: &str| sdgen::LoadOptions {
        model: tiny("tiny-sd"),
        device: device.parse().unwrap(),
        dtype: dtype.parse().unwrap(),
        ..Default::default()
    };
    // No CUDA here: a key for CUDA shards is still computed (no device is resolved), and
    // shards on different GPUs share it.
    let cuda0 = sdgen::plan::run_key(&spec, &opts("cuda:0", "auto")).unwrap();
    assert_eq!(cuda0, sdgen::plan::run_key(&spec, &opts("cuda:1", "auto")).unwrap());
    assert_ne!(cuda0, sdgen::plan::run_key(&spec, &opts("cpu", "auto")).unwrap());
    assert_ne!(
        sdgen::plan::run_key(&spec, &opts("auto", "fp32")).unwrap(),
        sdgen::plan::run_key(&spec, &opts("auto", "fp16")).unwrap()
    );
    // Another config (a VAE scaling factor) is another key, even with the same weights.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::copy_dir(&tiny("tiny-sd"), &model);
    let cfg_path = model.join("vae/config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["scaling_factor"] = 0.5.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let edited = ModelSpec::inspect(&model, &ModelOptions::default()).unwrap();
    assert_ne!(
        sdgen::plan::run_key(&spec, &opts("cpu", "auto")).unwrap(),
        sdgen::plan::run_key(&edited, &opts("cpu", "auto")).unwrap()
    );
}

#[test]
fn from_with_another_model_leaves_the_recorded_models_settings_behind() {
    use sdgen::plan::Settings;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    sdgen()
        .args(["generate", "a cat", "--seed", "3", "--steps", "1", "--width", "64", "--height", "64", "--quiet"])
        .args(["--prediction-type", "v_prediction"])
        .arg("--model")
        .arg(tiny("tiny-sd"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let record = sdgen::output::read_record(&pngs(&out)[0]).unwrap();
    let same = Settings::default().over_record(&record);
    assert_eq!(same.prediction_type, Some(PredictionType::VPrediction));
    assert_eq!(same.seed, Some(3));
    let other = Settings { model: Some("weights/tiny-sd2".into()), ..Settings::default() }.over_record(&record);
    assert_eq!(other.prediction_type, None);
    assert_eq!(other.seed, Some(3), "the request itself is still replayed");
    // A flag still wins over the record.
    let flagged = Settings { steps: Some(7), ..Settings::default() }.over_record(&record);
    assert_eq!(flagged.steps, Some(7));
}
