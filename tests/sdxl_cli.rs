//! SDXL through the `sdgen` binary on the tiny SDXL: generate with its defaults and the size
//! conditioning flags, `--from`, the documented Turbo-style command against diffusers'
//! golden, batch files mixing sizes, and bad input.

mod common;

use assert_cmd::Command;
use common::{only_png, pngs};
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn sdgen() -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL").env("OMP_NUM_THREADS", "1");
    cmd
}

fn model() -> PathBuf {
    common::root().join("weights/tiny-sdxl")
}

fn generate(out: &Path, args: &[&str]) {
    sdgen()
        .arg("generate")
        .arg("--model")
        .arg(model())
        .args(["--device", "cpu", "-q", "--out"])
        .arg(out)
        .args(args)
        .assert()
        .success();
}

#[test]
fn generate_uses_the_models_size_and_from_reproduces_size_conditioning() {
    let out = tempfile::tempdir().unwrap();
    let first = out.path().join("first");
    generate(
        &first,
        &["a fox in the snow", "--seed", "7", "--steps", "3", "--original-size", "128x96", "--crop-coords", "8,4"],
    );
    let png = only_png(&first);
    // tiny-sdxl's UNet sample_size 8 × VAE factor 8: SDXL models default to their trained size.
    let (w, h, pixels) = common::png_pixels(&png);
    assert_eq!((w, h), (64, 64));
    let record = sdgen::output::read_record(&png).unwrap();
    assert_eq!(record.model.architecture, sdgen::plan::Arch::Sdxl);
    assert_eq!(record.model.license.name, "CreativeML OpenRAIL++-M");
    assert_eq!(record.request.negative_prompt, None, "no negative prompt stays none (zeros), not \"\"");
    let c = record.request.size_conditioning;
    assert_eq!(c.original_size, Some(sdgen::request::Size { width: 128, height: 96 }));
    assert_eq!(c.crop_coords, Some(sdgen::request::Crop { top: 8, left: 4 }));
    assert!(record.model.files.iter().any(|f| f.component == "text_encoder_2"));

    let again = out.path().join("again");
    sdgen().arg("generate").arg("--from").arg(&png).args(["-q", "--out"]).arg(&again).assert().success();
    assert!(common::png_pixels(&only_png(&again)).2 == pixels, "--from gave other pixels");

    // Without the size conditioning the image changes: the flags reach the UNet.
    let plain = out.path().join("plain");
    generate(&plain, &["a fox in the snow", "--seed", "7", "--steps", "3"]);
    assert!(common::png_pixels(&only_png(&plain)).2 != pixels);

    // A1111 (the default syntax) zeros an empty negative prompt as it zeros none.
    let a1111 = out.path().join("a1111");
    generate(&a1111, &["a fox in the snow", "--seed", "7", "--steps", "3", "--negative", ""]);
    assert!(common::png_pixels(&only_png(&a1111)).2 == common::png_pixels(&only_png(&plain)).2);

    // With diffusers' syntax an empty negative prompt is encoded (negative_prompt=""), which
    // differs from none (zeros), and the record keeps it.
    let empty = out.path().join("empty");
    generate(
        &empty,
        &["a fox in the snow", "--seed", "7", "--steps", "3", "--negative", "", "--prompt-syntax", "plain"],
    );
    let png = only_png(&empty);
    assert_eq!(sdgen::output::read_record(&png).unwrap().request.negative_prompt.as_deref(), Some(""));
    assert!(common::png_pixels(&png).2 != common::png_pixels(&only_png(&plain)).2);
    let redo = out.path().join("redo");
    sdgen().arg("generate").arg("--from").arg(&png).args(["-q", "--out"]).arg(&redo).assert().success();
    assert!(common::png_pixels(&only_png(&redo)).2 == common::png_pixels(&png).2);
}

#[test]
fn the_documented_turbo_command_gives_diffusers_image() {
    // README: few-step models run with Euler a, trailing spacing, 1-4 steps and no guidance.
    let out = tempfile::tempdir().unwrap();
    generate(
        out.path(),
        &[
            "a photograph of an astronaut riding a horse",
            "--scheduler",
            "Euler a",
            "--timestep-spacing",
            "trailing",
            "--steps",
            "1",
            "--guidance",
            "0",
            "--seed",
            "0",
            "--width",
            "64",
            "--height",
            "96",
        ],
    );
    let png = only_png(out.path());
    let g = common::golden(&common::root().join("tests/fixtures/goldens-sdxl/turbo_1step_64x96.safetensors"));
    let want = Vec::<u8>::try_from(common::get(&g, "image_u8").view([-1])).unwrap();
    let ours = common::png_pixels(&png).2;
    let worst = ours.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(ours.len() == want.len() && worst <= 1, "differs from diffusers by {worst}/255");
    let record = sdgen::output::read_record(&png).unwrap();
    assert_eq!(record.request.timestep_spacing, Some(sdgen::request::TimestepSpacing::Trailing));
    assert_eq!(record.scheduler_config["timestep_spacing"], "trailing");
}

#[test]
fn batch_lines_may_mix_sizes_and_size_conditioning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"prompt\": \"a red cube\", \"width\": 64, \"height\": 96}\n",
            "{\"prompt\": \"a blue cube\", \"width\": 96, \"height\": 64, \"original_size\": \"192x128\", \"crop_coords\": \"0,16\"}\n",
            "{\"prompt\": \"a green cube\", \"steps\": 1, \"guidance\": 0, \"scheduler\": \"Euler a\", \"timestep_spacing\": \"trailing\"}\n",
            "{\"prompt\": \"a cube\", \"negative\": \"\", \"negative_target_size\": \"32x32\"}\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    sdgen()
        .arg("batch")
        .arg(&file)
        .arg("--model")
        .arg(model())
        .args(["--device", "cpu", "--steps", "2", "-q", "--out"])
        .arg(&out)
        .assert()
        .success();
    let files = pngs(&out);
    assert_eq!(files.len(), 4, "{files:?}");
    let mut sizes: Vec<(u32, u32)> = files.iter().map(|f| (common::png_pixels(f).0, common::png_pixels(f).1)).collect();
    sizes.sort();
    assert_eq!(sizes, [(64, 64), (64, 64), (64, 96), (96, 64)]);
    let records: Vec<_> = files.iter().map(|f| sdgen::output::read_record(f).unwrap().request).collect();
    let blue = records.iter().find(|r| r.prompt == "a blue cube").unwrap();
    assert_eq!(blue.size_conditioning.crop_coords, Some(sdgen::request::Crop { top: 0, left: 16 }));
    let green = records.iter().find(|r| r.prompt == "a green cube").unwrap();
    assert_eq!((green.steps, green.timestep_spacing.map(|s| s.name())), (1, Some("trailing")));
    let cube = records.iter().find(|r| r.prompt == "a cube").unwrap();
    assert_eq!(cube.negative_prompt.as_deref(), Some(""));

    // A bad value names its key and line, and nothing runs.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"x\", \"original_size\": \"huge\"}\n").unwrap();
    sdgen()
        .arg("batch")
        .arg(&bad)
        .arg("--model")
        .arg(model())
        .args(["--device", "cpu", "-q", "--out"])
        .arg(dir.path().join("bad-out"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("original_size").and(predicate::str::contains("WIDTHxHEIGHT")));
}

fn refuses(model: &Path, args: &[&str], message: &str) {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("images");
    sdgen()
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--device", "cpu", "--steps", "1", "--out"])
        .arg(&target)
        .args(args)
        .assert()
        .failure()
        .stderr(predicate::str::contains(message))
        .stderr(predicate::str::contains("panicked").not());
    assert!(pngs(&target).is_empty());
}

#[test]
fn sdxl_bad_input_is_a_clear_error() {
    refuses(&model(), &["a cat", "--width", "60"], "width 60 is not a positive multiple of 8");
    refuses(&model(), &["a cat", "--original-size", "12"], "WIDTHxHEIGHT");
    refuses(&model(), &["a cat", "--crop-coords", "1;2"], "TOP,LEFT");
    refuses(&model(), &["a cat", "--timestep-spacing", "sideways"], "leading, linspace or trailing");
    // SD 1.x has nothing to feed size conditioning to.
    refuses(&common::root().join("weights/tiny-sd"), &["a cat", "--target-size", "64x64"], "not an SDXL model");

    // A folder with one text encoder or tokenizer missing says which.
    for missing in ["text_encoder_2", "tokenizer_2"] {
        let broken = tempfile::tempdir().unwrap();
        common::copy_dir(&model(), broken.path());
        std::fs::remove_dir_all(broken.path().join(missing)).unwrap();
        refuses(broken.path(), &["a cat"], &format!("no {missing}/ folder"));
    }
    // Encoders that do not fit the UNet.
    let mixed = tempfile::tempdir().unwrap();
    common::copy_dir(&model(), mixed.path());
    std::fs::remove_dir_all(mixed.path().join("text_encoder_2")).unwrap();
    common::copy_dir(&model().join("text_encoder"), &mixed.path().join("text_encoder_2"));
    refuses(mixed.path(), &["a cat"], "do not belong together");
}

#[test]
fn bench_offload_and_vae_tiling_run_sdxl() {
    // `sdgen bench` on an SDXL model measures at the model's own size.
    let out =
        sdgen().args(["bench", "--device", "cpu", "--steps", "2", "--json", "--model"]).arg(model()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["width"].as_u64(), r["height"].as_u64(), r["steps"].as_u64()), (Some(64), Some(64), Some(2)));
    assert!(r["steps_per_s"].as_f64().unwrap() > 0.0);

    // Offload (no effect on a CPU-only run) and tiled decoding give the plain run's image
    // at this size (one tile), and are recorded.
    let dir = tempfile::tempdir().unwrap();
    let args = ["a fox", "--seed", "2", "--steps", "2"];
    generate(&dir.path().join("plain"), &args);
    let plain = common::png_pixels(&only_png(&dir.path().join("plain"))).2;
    for flag in ["--offload", "--vae-tiling"] {
        let target = dir.path().join(flag.trim_start_matches('-'));
        let mut a = args.to_vec();
        a.push(flag);
        generate(&target, &a);
        let png = only_png(&target);
        assert!(common::png_pixels(&png).2 == plain, "{flag} changed the image");
        let record = sdgen::output::read_record(&png).unwrap();
        assert!(record.offload || record.vae_tiling.is_some(), "{flag} not recorded");
    }
}
