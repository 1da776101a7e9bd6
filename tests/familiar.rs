//! The binary as people coming from A1111, ComfyUI and stable-diffusion.cpp use it: metadata
//! that round-trips through A1111's parsing rules, `show` on other tools' PNGs, familiar flag
//! and batch-key spellings, the config file, help, completions, man page, and closed pipes.

mod common;

use assert_cmd::Command;
use common::pngs;
use predicates::prelude::*;
use sdgen::output::{self, OnExisting};
use std::path::{Path, PathBuf};

/// `sdgen` with no model from the environment and a config home of its own (empty).
fn sdgen(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL").env("HOME", home).env("XDG_CONFIG_HOME", home.join(".config"));
    cmd
}

fn tiny() -> PathBuf {
    common::root().join("weights/tiny-sd")
}

fn parameters(png: &Path) -> String {
    output::read_text_chunks(png).unwrap().into_iter().find(|(k, _)| k == "parameters").unwrap().1
}

/// One tiny image with `args`, returning its path.
fn generate(home: &Path, out: &Path, args: &[&str]) -> PathBuf {
    sdgen(home)
        .arg("generate")
        .args(args)
        .args(["--steps", "3", "-W", "64", "-H", "64", "--device", "cpu", "--quiet", "-m"])
        .arg(tiny())
        .arg("-o")
        .arg(out)
        .assert()
        .success();
    pngs(out).pop().expect("an image")
}

/// A PNG as A1111 writes it: only the `parameters` chunk.
fn a1111_png(path: &Path, text: &str) {
    let image = sdgen::Image { width: 8, height: 8, rgb: vec![0; 8 * 8 * 3] };
    output::write_png(path, &image, &[("parameters", text)], OnExisting::Overwrite).unwrap();
}

#[test]
fn a1111_text_round_trips_through_a1111_rules() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    for sampler in ["DPM++ 2M", "DPM++ 2M Karras", "Euler a"] {
        let first =
            generate(dir, &dir.join(format!("a-{sampler}")), &["a cat, sitting", "-s", "9", "--sampler", sampler]);
        let text = parameters(&first);
        // A1111's parser (ported regex) finds the fields sdgen always writes.
        let parsed = output::parse_parameters(&text).unwrap();
        assert_eq!(parsed.negative_prompt.as_deref(), Some(""), "{text}");
        assert_eq!(parsed.get("RNG"), Some("CPU"));
        let schedule = if sampler.ends_with("Karras") { "Karras" } else { "Uniform" };
        assert_eq!(parsed.get("Schedule type"), Some(schedule), "{text}");

        // Pasted into a text file, and in a PNG that carries only A1111's chunk: same pixels.
        let txt = dir.join(format!("{sampler}.txt"));
        std::fs::write(&txt, &text).unwrap();
        let png = dir.join(format!("{sampler}-a1111.png"));
        a1111_png(&png, &text);
        for (i, from) in [txt, png].iter().enumerate() {
            let out = dir.join(format!("b-{sampler}-{i}"));
            sdgen(dir)
                .args(["generate", "--quiet", "--device", "cpu", "--from"])
                .arg(from)
                .arg("-m")
                .arg(tiny())
                .arg("-o")
                .arg(&out)
                .assert()
                .success()
                .stderr(predicate::str::contains("warning").not());
            let again = pngs(&out).pop().unwrap();
            assert_eq!(common::png_pixels(&again), common::png_pixels(&first), "{sampler} via {}", from.display());
            assert_eq!(parameters(&again), text);
        }
    }
}

#[test]
fn from_a1111_maps_automatic_and_warns_about_the_rest() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    // A1111 1.9+ without "Schedule type" means Automatic: Karras for DPM++ 2M.
    let txt = dir.join("p.txt");
    std::fs::write(
        &txt,
        "a dog\nNegative prompt: ugly\nSteps: 2, Sampler: DPM++ 2M, CFG scale: 5, Seed: 3, Size: 64x64, \
         Hires upscale: 2, ADetailer model: face_yolov8n.pt, Model: anything-v3, Version: v1.10.1",
    )
    .unwrap();
    let out = dir.join("out");
    sdgen(dir)
        .args(["generate", "--quiet", "--device", "cpu", "--from"])
        .arg(&txt)
        .arg("-m")
        .arg(tiny())
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("not understood, ignored: Hires upscale, ADetailer model"));
    let record = output::read_record(&pngs(&out)[0]).unwrap();
    assert_eq!(record.request.scheduler, "DPM++ 2M Karras");
    assert_eq!(record.request.negative_prompt.as_deref(), Some("ugly"));
    assert_eq!((record.request.steps, record.request.guidance, record.request.seed), (2, 5.0, 3));

    // A sampler sdgen lacks is an error unless --scheduler chooses one.
    std::fs::write(&txt, "x\nSteps: 2, Sampler: DPM fast, Seed: 1, Size: 64x64").unwrap();
    sdgen(dir)
        .args(["generate", "--quiet", "--device", "cpu", "--from"])
        .arg(&txt)
        .arg("-m")
        .arg(tiny())
        .arg("-o")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains("DPM fast").and(predicate::str::contains("--scheduler")));

    // Any other text file is not taken for a prompt.
    std::fs::write(&txt, "just some notes\nabout nothing").unwrap();
    sdgen(dir)
        .args(["generate", "--from"])
        .arg(&txt)
        .assert()
        .failure()
        .stderr(predicate::str::contains("neither a PNG nor an A1111 parameters text"));
}

#[test]
fn show_summarizes_sdgen_a1111_and_comfyui_pngs() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let png = generate(dir, &dir.join("out"), &["a red fox", "-n", "blurry", "-s", "11"]);
    let show = |args: &[&str], p: &Path| {
        let out = sdgen(dir).arg("show").args(args).arg(p).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let summary = show(&[], &png);
    for want in ["record:    sdgen", "prompt:    a red fox", "negative:  blurry", "seed:      11", "size:      64x64"] {
        assert!(summary.contains(want), "{want:?} in {summary}");
    }
    assert!(summary.contains("licence:   CreativeML OpenRAIL-M"), "{summary}");
    let record: sdgen::Record = serde_json::from_str(&show(&["--json"], &png)).unwrap();
    assert_eq!(record.request.seed, 11);
    assert_eq!(show(&["--parameters"], &png).trim_end(), parameters(&png));

    let a1111 = dir.join("a1111.png");
    a1111_png(&a1111, "a castle\nNegative prompt: fog\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x768, Model: dreamshaper_8");
    let summary = show(&[], &a1111);
    for want in [
        "record:    A1111",
        "prompt:    a castle",
        "negative:  fog",
        "sampler:   DPM++ 2M (Karras)",
        "size:      512x768",
        "model:     dreamshaper_8",
    ] {
        assert!(summary.contains(want), "{want:?} in {summary}");
    }
    let json: serde_json::Value = serde_json::from_str(&show(&["--json"], &a1111)).unwrap();
    assert_eq!(json["seed"], "5");

    let comfy = dir.join("comfy.png");
    let graph = serde_json::json!({
        "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 25, "cfg": 6.5, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "model": ["10", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "x"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lake at night", "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["10", 1]}}
    });
    let image = sdgen::Image { width: 8, height: 8, rgb: vec![0; 8 * 8 * 3] };
    output::write_png(&comfy, &image, &[("prompt", &graph.to_string()), ("workflow", "{}")], OnExisting::Overwrite)
        .unwrap();
    let summary = show(&[], &comfy);
    for want in [
        "record:    ComfyUI",
        "prompt:    a lake at night",
        "negative:  text, watermark",
        "sampler:   euler (normal)",
        "steps:     25",
        "seed:      42",
        "size:      512x640",
        "model:     v1-5-pruned-emaonly.safetensors",
    ] {
        assert!(summary.contains(want), "{want:?} in {summary}");
    }
    sdgen(dir)
        .args(["show", "--parameters"])
        .arg(&comfy)
        .assert()
        .failure()
        .stderr(predicate::str::contains("no `parameters`"));
}

/// Runs sdgen with its stdout a pipe whose reading end is already closed: a reader that
/// stopped (`| head`). It must end quietly, not panic.
fn closed_pipe(home: &Path, args: &[&str]) {
    use std::process::Stdio;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("sdgen"))
        .args(args)
        .env_remove("SDGEN_MODEL")
        .env("HOME", home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
}

#[test]
fn a_closed_pipe_is_not_a_panic() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let png = generate(dir, &dir.join("out"), &["a cat", "-s", "1"]);
    let png = png.to_str().unwrap();
    for args in [
        &["show", png][..],
        &["show", "--json", png],
        &["show", "--parameters", png],
        &["schedulers"],
        &["info"],
        &["info", "--json"],
        &["completions", "bash"],
        &["man"],
        &["generate", "--help"],
    ] {
        closed_pipe(dir, args);
    }
    // And with a real `head`, as a user types it.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; '{}' schedulers | head -1", assert_cmd::cargo::cargo_bin("sdgen").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("A1111 name"));
}

#[test]
fn familiar_flags_set_what_they_say() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let out = dir.join("out");
    sdgen(dir)
        .args(["generate", "-p", "a fox", "--negative-prompt", "rain", "--cfg-scale", "4.5", "-s", "21"])
        .args(["--sampling-method", "DDIM", "-b", "2", "-W", "64", "-H", "72", "--steps", "2", "--device", "cpu"])
        .args(["-q", "-m"])
        .arg(tiny())
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let records: Vec<sdgen::Record> = pngs(&out).iter().map(|p| output::read_record(p).unwrap()).collect();
    assert_eq!(records.len(), 2);
    let r = &records[0].request;
    assert_eq!((r.prompt.as_str(), r.negative_prompt.as_deref()), ("a fox", Some("rain")));
    assert_eq!((r.guidance, r.width, r.height, r.scheduler.as_str()), (4.5, 64, 72, "DDIM"));
    let mut seeds: Vec<u64> = records.iter().map(|r| r.request.seed).collect();
    seeds.sort();
    assert_eq!(seeds, [21, 22]);
    // --sampler is the other spelling; the positional prompt and -p are one setting.
    sdgen(dir)
        .args(["generate", "x", "--sampler", "nope", "-m"])
        .arg(tiny())
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown scheduler"));
    sdgen(dir).args(["generate", "x", "-p", "y"]).assert().failure().stderr(predicate::str::contains("cannot be used"));
}

#[test]
fn batch_takes_a1111_and_diffusers_spellings() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let txt = dir.join("prompts.txt");
    std::fs::write(
        &txt,
        "--prompt \"a red fox\" in snow --steps 2 --negative_prompt \"blurry, dark\" --cfg_scale 5 --sampler_name \"Euler a\" --seed 7\n\
         a plain prompt --not an option\n",
    )
    .unwrap();
    let jsonl = dir.join("prompts.jsonl");
    std::fs::write(
        &jsonl,
        "{\"prompt\": \"a\", \"negative_prompt\": \"n\", \"cfg_scale\": 3, \"sampler_name\": \"DDIM\", \"num_inference_steps\": 2}\n\
         {\"prompt\": \"b\", \"guidance_scale\": 4, \"steps\": 2}\n",
    )
    .unwrap();
    let run = |file: &Path, out: &Path| {
        sdgen(dir)
            .arg("batch")
            .arg(file)
            .args(["-W", "64", "-H", "64", "--steps", "2", "--device", "cpu", "-q", "-m"])
            .arg(tiny())
            .arg("-o")
            .arg(out)
            .assert()
            .success();
        pngs(out).iter().map(|p| output::read_record(p).unwrap().request).collect::<Vec<_>>()
    };
    let txt_out = run(&txt, &dir.join("t"));
    assert_eq!(txt_out.len(), 2);
    let fox = txt_out.iter().find(|r| r.prompt == "a red fox in snow").expect("the A1111 line");
    assert_eq!((fox.negative_prompt.as_deref(), fox.guidance, fox.seed), (Some("blurry, dark"), 5.0, 7));
    assert_eq!(fox.scheduler, "Euler a");
    assert!(txt_out.iter().any(|r| r.prompt == "a plain prompt --not an option"));

    let json_out = run(&jsonl, &dir.join("j"));
    let a = json_out.iter().find(|r| r.prompt == "a").unwrap();
    assert_eq!((a.negative_prompt.as_deref(), a.guidance, a.scheduler.as_str(), a.steps), (Some("n"), 3.0, "DDIM", 2));
    assert_eq!(json_out.iter().find(|r| r.prompt == "b").unwrap().guidance, 4.0);
}

#[test]
fn help_has_examples_and_clap_defaults() {
    let home = tempfile::tempdir().unwrap();
    for sub in ["generate", "batch", "show", "license", "schedulers", "info", "bench", "completions", "man", "serve"] {
        let out = sdgen(home.path()).args([sub, "--help"]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Examples:\n  sdgen "), "{sub}: {text}");
    }
    let out = sdgen(home.path()).args(["generate", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["[default: 20]", "[default: 7.5]", "[env: SDGEN_MODEL=]", "[default: auto]", "[default: 1000]"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    for want in ["-p, --prompt", "-m, --model", "-W, --width", "-H, --height", "-s, --seed", "--cfg-scale"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(text.contains("--sampler") && text.contains("--sampling-method") && text.contains("--batch-count"));
}

#[test]
fn version_completions_and_man_page() {
    let home = tempfile::tempdir().unwrap();
    sdgen(home.path())
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::contains("libtorch 2.11.0").and(predicate::str::contains("CUDA")));
    for (shell, want) in [("bash", "_sdgen()"), ("zsh", "#compdef sdgen"), ("fish", "complete -c sdgen")] {
        sdgen(home.path()).args(["completions", shell]).assert().success().stdout(predicate::str::contains(want));
    }
    sdgen(home.path())
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::contains(".TH sdgen").and(predicate::str::contains("generate")));
    let dir = home.path().join("man1");
    sdgen(home.path()).args(["man", "--dir"]).arg(&dir).assert().success();
    assert!(dir.join("sdgen.1").is_file() && dir.join("sdgen-generate.1").is_file());
}

#[test]
fn config_file_gives_defaults_below_flags_and_from() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let cfg = dir.join(".config").join("sdgen");
    std::fs::create_dir_all(&cfg).unwrap();
    let config = serde_json::json!({
        "model": tiny(), "steps": 3, "scheduler": "DDIM", "width": 64, "height": 64, "device": "cpu",
        "quiet": true, "cfg_scale": 5, "stepz": 9
    });
    std::fs::write(cfg.join("config.json"), config.to_string()).unwrap();
    let out = dir.join("out");
    sdgen(dir)
        .args(["generate", "a cat", "-s", "1", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("unknown key \"stepz\""));
    let first = pngs(&out).pop().unwrap();
    let r = output::read_record(&first).unwrap().request;
    assert_eq!((r.steps, r.scheduler.as_str(), r.width, r.guidance), (3, "DDIM", 64, 5.0));

    // The command line wins over the config file.
    let out2 = dir.join("out2");
    sdgen(dir).args(["generate", "a cat", "-s", "1", "--steps", "2", "-o"]).arg(&out2).assert().success();
    let second = pngs(&out2).pop().unwrap();
    assert_eq!(output::read_record(&second).unwrap().request.steps, 2);

    // A --from record wins over the config file: its 2 steps, not the config's 3.
    let out3 = dir.join("out3");
    sdgen(dir).args(["generate", "--from"]).arg(&second).arg("-o").arg(&out3).assert().success();
    let third = pngs(&out3).pop().unwrap();
    assert_eq!(output::read_record(&third).unwrap().request.steps, 2);
    assert_eq!(common::png_pixels(&third), common::png_pixels(&second));

    // A bad value is reported against the config file.
    std::fs::write(cfg.join("config.json"), r#"{"steps": "many"}"#).unwrap();
    sdgen(dir)
        .args(["generate", "a cat"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("config file").and(predicate::str::contains("many")));
}

#[test]
fn a_mistyped_local_path_is_a_missing_folder_and_env_model_names_its_origin() {
    let home = tempfile::tempdir().unwrap();
    sdgen(home.path())
        .current_dir(common::root())
        .args(["generate", "a cat", "-m", "weights/tiny"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("no such file or folder: weights/tiny")
                .and(predicate::str::contains("did you mean weights/tiny-sd?")),
        );
    let out = home.path().join("out");
    sdgen(home.path())
        .env("SDGEN_MODEL", tiny())
        .args(["generate", "a cat", "--steps", "1", "-W", "64", "-H", "64", "--device", "cpu", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("(from $SDGEN_MODEL)"));
}
