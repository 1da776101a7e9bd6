//! The `sdgen` binary end to end: golden pixels, regeneration from a PNG, the info/show/
//! license commands, and bad input (clear message, non-zero exit, no file written).

mod common;

use assert_cmd::Command;
use common::pngs;
use predicates::prelude::*;
use std::path::Path;

fn sdgen() -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL");
    cmd
}

fn pixels(path: &Path) -> Vec<u8> {
    common::png_pixels(path).2
}

/// Every file (temporary ones too) left in a folder.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn info_names_libtorch_and_exits_zero() {
    sdgen()
        .arg("info")
        .assert()
        .success()
        .stdout(predicate::str::contains("libtorch 2.11.0"))
        .stdout(predicate::str::contains("CPU threads"));
}

#[test]
fn generate_seed_42_gives_the_golden_pixels_and_from_reproduces_them() {
    let out = tempfile::tempdir().unwrap();
    sdgen()
        .args(["generate", "a photograph of an astronaut riding a horse", "--seed", "42", "--steps", "4"])
        .args(["--width", "64", "--height", "64", "--scheduler", "DDIM", "--guidance", "7.5", "--device", "cpu"])
        .arg("--model")
        .arg(common::root().join("weights/tiny-sd"))
        .arg("--out")
        .arg(out.path())
        .assert()
        .success();
    let files = pngs(out.path());
    assert_eq!(files.len(), 1, "{:?}", entries(out.path()));
    let ours = pixels(&files[0]);

    let golden =
        tch::Tensor::read_safetensors(common::root().join("tests/fixtures/goldens/plain_s42_64x64_ddim.safetensors"))
            .unwrap();
    let want =
        golden.iter().find(|(k, _)| k == "image_u8").map(|(_, t)| Vec::<u8>::try_from(t.view([-1])).unwrap()).unwrap();
    assert_eq!(ours.len(), want.len());
    let worst = ours.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "pixels differ from diffusers by {worst}/255");

    // The licence notice file is written once into the output folder.
    assert!(out.path().join("LICENSE-NOTICE.txt").is_file());

    // `show --json` prints the record; `--from` regenerates bit for bit on the same device.
    sdgen()
        .args(["show", "--json"])
        .arg(&files[0])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"seed\": 42"))
        .stdout(predicate::str::contains("CreativeML OpenRAIL-M"));
    let again = tempfile::tempdir().unwrap();
    sdgen().args(["generate", "--from"]).arg(&files[0]).arg("--out").arg(again.path()).assert().success();
    let regenerated = pngs(again.path());
    assert_eq!(regenerated.len(), 1);
    assert_eq!(pixels(&regenerated[0]), ours, "--from did not reproduce the image");
    // An override changes the result.
    let other = tempfile::tempdir().unwrap();
    sdgen()
        .args(["generate", "--seed", "43", "--from"])
        .arg(&files[0])
        .arg("--out")
        .arg(other.path())
        .assert()
        .success();
    assert_ne!(pixels(&pngs(other.path())[0]), ours);
}

#[test]
fn license_prints_the_use_restrictions() {
    sdgen()
        .arg("license")
        .assert()
        .success()
        .stdout(predicate::str::contains("Attachment A"))
        .stdout(predicate::str::contains("CreativeML OpenRAIL-M"));
}

#[test]
fn schedulers_lists_a1111_and_diffusers_names() {
    sdgen()
        .arg("schedulers")
        .assert()
        .success()
        .stdout(predicate::str::contains("Euler a"))
        .stdout(predicate::str::contains("DPMSolverMultistepScheduler"));
}

/// Runs `sdgen generate` with `args` on the tiny model, expecting failure with `message`
/// in stderr and nothing written.
fn refuses(args: &[&str], model: &Path, message: &str) {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("images");
    // Small defaults for the flags the case does not set itself.
    let mut defaults = Vec::new();
    for (flag, value) in [("--width", "64"), ("--height", "64"), ("--steps", "2"), ("--device", "cpu")] {
        if !args.contains(&flag) {
            defaults.extend([flag, value]);
        }
    }
    sdgen()
        .arg("generate")
        .args(defaults)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(&target)
        .args(args)
        .assert()
        .failure()
        .stderr(predicate::str::contains(message))
        .stderr(predicate::str::contains("panicked").not());
    assert!(entries(&target).is_empty(), "files written: {:?}", entries(&target));
}

#[test]
fn bad_input_is_a_clear_error_with_nothing_written() {
    let tiny = common::root().join("weights/tiny-sd");
    refuses(&["a cat"], &common::root().join("weights/no-such-model"), "no such file or folder");
    refuses(&["a cat", "--width", "65"], &tiny, "width 65 is not a positive multiple of 8");
    refuses(&["a cat", "--height", "0"], &tiny, "height 0 is not a positive multiple of 8");
    refuses(&["a cat", "--steps", "0"], &tiny, "steps must be at least 1");
    refuses(&["a cat", "--guidance", "-1"], &tiny, "guidance -1");
    refuses(&["a cat", "--scheduler", "warp-drive"], &tiny, "Euler a");
    refuses(&["a cat", "--scheduler", "DDIM Karras"], &tiny, "does not support");
    refuses(&["a cat", "--dtype", "fp8"], &tiny, "unknown dtype");
    refuses(&["a cat", "--cpu-conv", "fast"], &tiny, "unknown convolution algorithm 'fast'; use one of: auto, direct");
    if !tch::Cuda::is_available() {
        refuses(&["a cat", "--device", "cuda"], &tiny, "CUDA is not available");
    }

    // A folder without a component names it.
    let broken = tempfile::tempdir().unwrap();
    common::copy_dir(&tiny, broken.path());
    std::fs::remove_dir_all(broken.path().join("vae")).unwrap();
    refuses(&["a cat"], broken.path(), "vae/");

    // A config.json that can't be parsed names the file and the field.
    let bad = tempfile::tempdir().unwrap();
    common::copy_dir(&tiny, bad.path());
    let cfg = bad.path().join("unet/config.json");
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("\"layers_per_block\": 2", "\"layers_per_block\": \"two\"");
    std::fs::write(&cfg, text).unwrap();
    refuses(&["a cat"], bad.path(), "layers_per_block");
    refuses(&["a cat"], bad.path(), "unet/config.json");

    // Pickle checkpoints are refused without being read.
    let pickle = tempfile::tempdir().unwrap();
    let ckpt = pickle.path().join("model.ckpt");
    std::fs::write(&ckpt, b"not really a pickle").unwrap();
    refuses(&["a cat"], &ckpt, "pickle");
}

#[test]
fn unwritable_output_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    sdgen()
        .args([
            "generate", "a cat", "--width", "64", "--height", "64", "--steps", "1", "--device", "cpu", "--seed", "1",
        ])
        .arg("--model")
        .arg(common::root().join("weights/tiny-sd"))
        .arg("--out")
        .arg(file.join("sub"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("a-file"));
    assert_eq!(entries(dir.path()), vec!["a-file".to_string()]);
}

#[test]
fn offload_is_recorded_and_from_keeps_it() {
    let out = tempfile::tempdir().unwrap();
    sdgen()
        .args(["generate", "a cat", "--seed", "3", "--steps", "2", "--width", "64", "--height", "64"])
        .args(["--device", "cpu", "--offload", "--quiet"])
        .arg("--model")
        .arg(common::root().join("weights/tiny-sd"))
        .arg("--out")
        .arg(out.path())
        .assert()
        .success();
    let first = &pngs(out.path())[0];
    let show = |p: &Path| String::from_utf8(sdgen().args(["show", "--json"]).arg(p).output().unwrap().stdout).unwrap();
    assert!(show(first).contains("\"offload\": true"), "{}", show(first));
    let again = tempfile::tempdir().unwrap();
    sdgen().args(["generate", "--quiet", "--from"]).arg(first).arg("--out").arg(again.path()).assert().success();
    let second = &pngs(again.path())[0];
    assert!(show(second).contains("\"offload\": true"));
    assert_eq!(pixels(second), pixels(first));
}

#[test]
fn cpu_conv_is_recorded_when_not_auto_and_from_keeps_it() {
    let tiny = common::root().join("weights/tiny-sd");
    let run = |extra: &[&str], out: &Path| {
        sdgen()
            .args(["generate", "a cat", "--seed", "5", "--steps", "2", "--width", "64", "--height", "64"])
            .args(["--device", "cpu", "--dtype", "fp32", "--quiet"])
            .args(extra)
            .arg("--model")
            .arg(&tiny)
            .arg("--out")
            .arg(out)
            .assert()
            .success();
        pngs(out)[0].clone()
    };
    let show = |p: &Path| String::from_utf8(sdgen().args(["show", "--json"]).arg(p).output().unwrap().stdout).unwrap();
    let (auto_dir, wino_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let auto = run(&[], auto_dir.path());
    assert!(!show(&auto).contains("\"conv\""), "{}", show(&auto));
    let wino = run(&["--cpu-conv", "winograd"], wino_dir.path());
    assert!(show(&wino).contains("\"conv\": \"winograd\""), "{}", show(&wino));
    // Another algorithm rounds differently, but only at float level: within one 8-bit step.
    let (a, w) = (pixels(&auto), pixels(&wino));
    assert!(a.iter().zip(&w).all(|(x, y)| x.abs_diff(*y) <= 1));
    let again = tempfile::tempdir().unwrap();
    sdgen().args(["generate", "--quiet", "--from"]).arg(&wino).arg("--out").arg(again.path()).assert().success();
    let second = &pngs(again.path())[0];
    assert!(show(second).contains("\"conv\": \"winograd\""));
    assert_eq!(pixels(second), w);
}
