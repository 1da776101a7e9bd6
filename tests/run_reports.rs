//! What sdgen says while and after it runs: `generate`'s lines and closing line without a
//! terminal, progress in sampling steps (not model calls), the JSON of `generate`, `batch`,
//! `info` and `bench` against the shapes the README documents, and batch's rate.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn sdgen(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdgen"));
    cmd.env_remove("SDGEN_MODEL").args(args);
    cmd
}

fn tiny() -> String {
    common::root().join("weights/tiny-sd").to_string_lossy().into_owned()
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run sdgen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sdgen failed\nstdout: {stdout}\nstderr: {stderr}");
    (out, stdout, stderr)
}

/// The JSON example the README gives after `<!-- json: NAME -->`.
fn readme_example(name: &str) -> Value {
    let readme = std::fs::read_to_string(common::root().join("README.md")).expect("README.md");
    let marker = format!("<!-- json: {name} -->");
    let after = &readme[readme.find(&marker).unwrap_or_else(|| panic!("README has no {marker}"))..];
    let start = after.find("```json\n").expect("a json block after the marker") + "```json\n".len();
    let end = start + after[start..].find("```").expect("the block's end");
    serde_json::from_str(&after[start..end]).unwrap_or_else(|e| panic!("README's {name} example: {e}"))
}

/// Objects have the same keys at every level (arrays compared by their first elements where
/// both have one); values may differ, and `null` stands for an absent number.
fn same_shape(documented: &Value, actual: &Value, path: &str) {
    match (documented, actual) {
        (Value::Object(d), Value::Object(a)) => {
            let dk: Vec<&String> = d.keys().collect();
            let ak: Vec<&String> = a.keys().collect();
            assert_eq!(dk, ak, "keys of {path}: README vs the real output");
            for (k, v) in d {
                same_shape(v, &a[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(d), Value::Array(a)) => {
            if let (Some(d), Some(a)) = (d.first(), a.first()) {
                same_shape(d, a, &format!("{path}[0]"));
            }
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => {
            panic!("{path}: README shows {documented}, the output has {actual}")
        }
        _ => {}
    }
}

#[test]
fn generate_without_a_terminal_prints_a_line_per_image_a_closing_line_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_s = out.to_string_lossy().into_owned();
    let model = tiny();
    let args = ["generate", "a cat", "--model", &model, "--steps", "3", "--width", "64", "--height", "64"];
    // Test processes' stderr is a pipe, as in a cluster job's log.
    let (_, stdout, stderr) =
        run(sdgen(&args).args(["--seed", "5", "--num-images", "2", "--scheduler", "PNDM", "--out", &out_s, "--json"]));
    assert!(stderr.contains("image 1/2: ") && stderr.contains("image 2/2: "), "{stderr}");
    assert!(stderr.contains("(seed 5, ") && stderr.contains("(seed 6, "), "{stderr}");
    let closing = stderr.lines().find(|l| l.starts_with("done: 2 images in ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(closing.contains("steps/s") || closing.contains("s/step"), "{closing}");

    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    same_shape(&readme_example("generate"), &report, "generate");
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (image, seed) in images.iter().zip([5, 6]) {
        assert_eq!(image["seed"], seed);
        let path = Path::new(image["path"].as_str().unwrap());
        assert!(path.is_file() && path.starts_with(&out), "{path:?}");
        assert!(image["seconds"].as_f64().unwrap() > 0.0);
    }
    // PLMS calls the UNet 4 times for 3 steps; steps are what is reported.
    assert_eq!(report["steps"], 3);
    assert!(report["steps_per_second"].as_f64().unwrap() > 0.0);
    let total = report["total_seconds"].as_f64().unwrap();
    assert!(total >= report["generate_seconds"].as_f64().unwrap() + report["load_seconds"].as_f64().unwrap() - 1e-3);

    // Quiet: no lines, and stdout is the paths alone.
    let (_, stdout, stderr) = run(sdgen(&args).args(["--seed", "7", "--out", &out_s, "--quiet"]));
    assert!(!stderr.contains("image 1/1") && !stderr.contains("done:"), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}

#[test]
fn progress_counts_sampling_steps_not_model_calls() {
    let pipe = sdgen::Pipeline::load(&common::cpu_fp32("weights/tiny-sd")).unwrap();
    // PLMS makes one warm-up call more than its steps; Heun and DPM2 two calls a step.
    for (scheduler, calls) in [("PNDM", 4), ("Heun", 5), ("euler", 3)] {
        let req = sdgen::Request {
            prompt: "a cat".into(),
            steps: 3,
            width: 64,
            height: 64,
            scheduler: scheduler.into(),
            ..Default::default()
        };
        let mut seen = Vec::new();
        pipe.generate(&req, &mut |p| seen.push((p.step, p.steps, p.sampling_step, p.sampling_steps))).unwrap();
        assert_eq!(seen.len(), calls, "{scheduler}: {seen:?}");
        assert!(seen.iter().all(|s| s.1 == calls && s.3 == 3), "{scheduler}: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0].2 <= w[1].2), "{scheduler}: steps never go back: {seen:?}");
        assert_eq!(seen.last().map(|s| s.2), Some(3), "{scheduler}: ends at the last step: {seen:?}");
    }
}

#[test]
fn batch_json_matches_the_readme_and_has_no_rate_before_an_image_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a cat\na dog\n").unwrap();
    let out = dir.path().join("out");
    let (p, o, model) = (prompts.to_string_lossy(), out.to_string_lossy(), tiny());
    let args = ["batch", &p, "--model", &model, "--out", &o, "--steps", "2", "--width", "64", "--height", "64"];
    let (_, stdout, stderr) = run(sdgen(&args).arg("--json"));
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    same_shape(&readme_example("batch"), &summary, "batch");
    assert_eq!(summary["done"], 2);
    assert!(summary["images_per_minute"].as_f64().is_some_and(|r| r > 0.0), "{summary}");
    assert!(stderr.contains("[1/2] line 1: ") && stderr.contains("images/min"), "{stderr}");

    // Everything already done: nothing was rendered, so there is no rate to report.
    let (_, stdout, _) = run(sdgen(&args).arg("--json"));
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((summary["done"].as_u64(), summary["skipped"].as_u64()), (Some(0), Some(2)));
    assert!(summary["images_per_minute"].is_null(), "{summary}");
    let (_, _, stderr) = run(&mut sdgen(&args));
    assert!(stderr.contains("2 skipped") && !stderr.contains("images/min"), "{stderr}");
}

#[test]
fn info_and_bench_json_match_the_readme() {
    let (_, stdout, _) = run(&mut sdgen(&["info", "--json"]));
    let info: Value = serde_json::from_str(&stdout).unwrap();
    same_shape(&readme_example("info"), &info, "info");
    // This test binary runs from target/, so libtorch is the one it was built against.
    assert!(info["libtorch_path"].as_str().is_some_and(|p| Path::new(p).join("libc10.so").exists()), "{info}");

    let model = tiny();
    let args = ["bench", "--model", &model, "--width", "64", "--height", "64", "--steps", "2", "--json"];
    let (_, stdout, _) = run(&mut sdgen(&args));
    let bench: Value = serde_json::from_str(&stdout).unwrap();
    same_shape(&readme_example("bench"), &bench, "bench");
    assert_eq!(bench["steps"], 2);
}
