//! Hostile sizes and untrusted input, end to end with the real binary: each is a clear error
//! (exit 1, fast, nothing written), never an abort, a panic or a silently black image.
#![cfg(unix)]

mod common;

use assert_cmd::Command;
use common::pngs;
use predicates::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sdgen() -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL");
    cmd
}

fn tiny() -> PathBuf {
    common::root().join("weights/tiny-sd")
}

/// `sdgen generate` on the tiny model, 64×64, 2 steps (unless `extra` sets them), into
/// `out`, plus `extra`.
fn generate(model: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = sdgen();
    cmd.args(["generate", "a cat", "--seed", "1"]);
    for (flag, value) in [("--steps", "2"), ("--width", "64"), ("--height", "64")] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(["--device", "cpu", "--quiet", "--model"]).arg(model).arg("--out").arg(out).args(extra);
    cmd
}

/// Runs `cmd`, expecting exit 1 within `secs` with every piece of `parts` in stderr.
fn fails_fast(mut cmd: Command, parts: &[&str], secs: u64) -> String {
    let started = Instant::now();
    let out = cmd.output().expect("run sdgen");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for p in parts {
        assert!(stderr.contains(p), "stderr lacks {p:?}: {stderr}");
    }
    assert!(took < Duration::from_secs(secs), "took {took:?}: {stderr}");
    stderr
}

#[test]
fn hostile_sizes_are_clear_errors_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for (args, parts) in [
        (&["--steps", "1000000000"][..], &["steps 1000000000", "limit of 1000", "--max-steps"][..]),
        (&["--num-images", "1000000000"], &["num_images 1000000000", "--max-images"]),
        (&["--width", "100000", "--height", "100000"], &["width 100000", "--max-side"]),
        (&["--width", "100000", "--height", "64"], &["width 100000", "--max-side"]),
        (&["--width", "8192", "--height", "8192"], &["8192×8192", "4096×4096", "--max-pixels"]),
        (&["--max-steps", "1"], &["steps 2", "limit of 1"]),
    ] {
        let e = fails_fast(generate(&tiny(), &out, args), parts, 10);
        assert!(e.contains("--no-limits"), "{e}");
    }
    assert!(!out.exists(), "the output folder was created");
}

#[test]
fn batch_lines_over_the_limits_or_bad_are_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        [
            r#"{"prompt": "a", "steps": 1000000000}"#,
            r#"{"prompt": "b", "num_images": 1000000000}"#,
            r#"{"prompt": "c", "width": 100000, "height": 64}"#,
            r#"{"prompt": "d", "seed": 1, "seed": 2}"#,
            r#"{"prompt": "e"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    // A model folder that cannot load: the file's problems are reported first.
    let broken = dir.path().join("broken-model");
    std::fs::create_dir(&broken).unwrap();
    let mut cmd = sdgen();
    cmd.arg("batch").arg(&prompts).arg("--model").arg(&broken).arg("--out").arg(&out).arg("--quiet");
    let e = fails_fast(
        cmd,
        &[
            "line 1: steps 1000000000",
            "--max-steps",
            "line 2: num_images 1000000000",
            "line 3: width 100000",
            "line 4: key \"seed\" appears more than once",
        ],
        10,
    );
    assert!(!e.contains("broken-model"), "{e}");
    assert!(pngs(&out).is_empty());
}

#[test]
fn batch_clip_skip_is_checked_against_the_text_encoder_config_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    // Configs intact but every weights file garbage: loading the model would fail,
    // validating (which reads configs only) does not.
    let model = dir.path().join("model");
    common::copy_dir(&tiny(), &model);
    for file in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        std::fs::write(model.join(file), b"not weights").unwrap();
    }
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"clip_skip\": 99}\n").unwrap();
    let out = dir.path().join("out");
    let mut cmd = sdgen();
    cmd.arg("batch").arg(&prompts).arg("--model").arg(&model).arg("--out").arg(&out).arg("--quiet");
    fails_fast(cmd, &["line 2: clip_skip 99 is out of range", "5 layers", "1..=5", "Nothing was rendered"], 10);
    assert!(pngs(&out).is_empty());
}

#[test]
fn output_names_and_folders_are_checked_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A model that cannot load: each error below must come first.
    let broken = dir.path().join("broken-model");
    std::fs::create_dir(&broken).unwrap();
    for (args, part) in [
        (&["--name", "../x"][..], "not inside the output folder"),
        (&["--name", "/abs"], "not inside the output folder"),
        (&["--name", "{bogus}"], "unknown placeholder {bogus}"),
        (&["--name", "fixed", "--num-images", "2"], "the same name"),
    ] {
        let e = fails_fast(generate(&broken, &out, args), &[part], 10);
        assert!(!e.contains("broken-model"), "{e}");
    }
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    fails_fast(generate(&broken, &file, &[]), &["is a file, not a folder"], 10);
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("taken.png"), b"x").unwrap();
    fails_fast(generate(&broken, &out, &["--name", "taken"]), &["taken.png already exists", "--overwrite"], 10);
}

#[cfg(unix)]
#[test]
fn model_that_is_a_symlink_loop_or_a_fifo_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let out = dir.path().join("out");
    fails_fast(generate(&a, &out, &[]), &["symbolic link loop"], 10);
    let fifo = dir.path().join("model.safetensors");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    fails_fast(generate(&fifo, &out, &[]), &["named pipe (FIFO)"], 10);
}

/// A tiny-sd folder whose `component` folder is a copy (the rest are links), with the
/// safetensors header and data of `file` in it changed by `edit`.
fn model_with(
    dir: &Path,
    component: &str,
    file: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut [u8]),
) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(tiny()).unwrap().flatten() {
        let name = entry.file_name();
        if name == component {
            std::fs::create_dir(model.join(&name)).unwrap();
            for f in std::fs::read_dir(entry.path()).unwrap().flatten() {
                std::fs::copy(f.path(), model.join(&name).join(f.file_name())).unwrap();
            }
        } else {
            std::os::unix::fs::symlink(entry.path(), model.join(&name)).unwrap();
        }
    }
    let path = model.join(component).join(file);
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    edit(&mut header, &mut data);
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    std::fs::write(&path, out).unwrap();
    model
}

/// Fills tensor `name` with NaN.
fn nan_tensor(name: &str) -> impl FnOnce(&mut serde_json::Value, &mut [u8]) + '_ {
    move |header, data| {
        let offsets = &header[name]["data_offsets"];
        let (start, end) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
        for chunk in data[start..end].chunks_mut(4) {
            chunk.copy_from_slice(&f32::NAN.to_le_bytes());
        }
    }
}

#[test]
fn a_tensor_whose_dtype_was_changed_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with(dir.path(), "unet", "diffusion_pytorch_model.safetensors", |header, _| {
        header["conv_in.weight"]["dtype"] = "I32".into();
    });
    fails_fast(
        generate(&model, &dir.path().join("out"), &[]),
        &["diffusion_pytorch_model.safetensors", "conv_in.weight", "I32", "floating point"],
        30,
    );
}

#[test]
fn nan_weights_are_an_error_naming_the_component_unless_allowed() {
    for (component, file, tensor, named) in [
        ("unet", "diffusion_pytorch_model.safetensors", "conv_out.bias", "denoising loop"),
        ("vae", "diffusion_pytorch_model.safetensors", "decoder.conv_out.bias", "VAE decoder"),
        ("text_encoder", "model.safetensors", "text_model.final_layer_norm.bias", "text encoder"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let model = model_with(dir.path(), component, file, nan_tensor(tensor));
        let out = dir.path().join("out");
        fails_fast(generate(&model, &out, &[]), &[named, "--allow-nan"], 60);
        assert!(pngs(&out).is_empty(), "{component}: a NaN image was written");
        generate(&model, &out, &["--allow-nan"])
            .assert()
            .success()
            .stderr(predicate::str::contains(named).and(predicate::str::contains("warning")));
        assert_eq!(pngs(&out).len(), 1);
    }
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    out.extend_from_slice(&h.finalize().to_be_bytes());
    out
}

/// A PNG whose header claims `w`×`h` pixels, with the given text chunks and no real pixels.
fn claimed_png(w: u32, h: u32, texts: &[(&str, &str)]) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    for (k, v) in texts {
        png.extend(chunk(b"tEXt", format!("{k}\0{v}").as_bytes()));
    }
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(chunk(b"IEND", b""));
    png
}

#[test]
fn show_reads_a_png_claiming_100000_squared_pixels_without_decoding_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    let png = claimed_png(100_000, 100_000, &[("parameters", "a cat\nSteps: 20")]);
    assert!(png.len() < 120);
    std::fs::write(&path, png).unwrap();
    sdgen().arg("show").arg("--parameters").arg(&path).assert().success().stdout("a cat\nSteps: 20\n");
    // The summary reads the A1111 text, still without decoding the image.
    let started = Instant::now();
    sdgen().arg("show").arg(&path).assert().success().stdout(predicate::str::contains("prompt:    a cat"));
    sdgen()
        .args(["show", "--json"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains("\"a cat\\nSteps: 20\""));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn from_records_are_held_to_the_same_limits() {
    let dir = tempfile::tempdir().unwrap();
    let record = serde_json::json!({
        "sdgen_version": "0.1.0",
        "request": {"prompt": "a cat", "seed": 1, "steps": 1_000_000_000u64, "guidance": 7.5, "width": 64,
                    "height": 64, "scheduler": "euler", "num_images": 1},
        "model": {"source": tiny().display().to_string(), "name": "tiny-sd", "hash": null, "architecture": "sd1",
                  "license": {"name": "CreativeML OpenRAIL-M", "url": "", "source": "test"}},
        "scheduler_config": {},
        "device": "cpu",
        "dtype": "fp32"
    });
    let path = dir.path().join("record.png");
    std::fs::write(&path, claimed_png(64, 64, &[("sdgen", &record.to_string())])).unwrap();
    let mut cmd = sdgen();
    cmd.arg("generate").arg("--from").arg(&path).arg("--out").arg(dir.path().join("out"));
    fails_fast(cmd, &["steps 1000000000", "--max-steps"], 10);
}

#[test]
fn license_of_a_missing_path_is_an_error_and_single_files_get_their_architecture() {
    let mut cmd = sdgen();
    cmd.args(["license", "--model", "/nonexistent-folder"]);
    fails_fast(cmd, &["/nonexistent-folder"], 10);
    sdgen()
        .args(["license", "--model"])
        .arg(common::root().join("weights/tiny-sd2.safetensors"))
        .assert()
        .success()
        .stdout(predicate::str::contains("OpenRAIL++-M"));
    sdgen()
        .args(["license", "--model"])
        .arg(common::root().join("weights/tiny-sd.safetensors"))
        .assert()
        .success()
        .stdout(predicate::str::contains("OpenRAIL-M").and(predicate::str::contains("OpenRAIL++").not()));
}

#[test]
fn a_10000_word_prompt_warns_with_a_short_excerpt() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "word ".repeat(10_000);
    let out = sdgen()
        .args(["generate", &prompt, "--seed", "1", "--steps", "1", "--width", "64", "--height", "64"])
        .args(["--device", "cpu", "--quiet", "--model"])
        .arg(tiny())
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("cut off") && stderr.contains("words in all"), "{stderr}");
    assert!(stderr.len() < 1000, "{} bytes of stderr", stderr.len());
}
