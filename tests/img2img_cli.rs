//! img2img and inpainting through the `sdgen` binary: the record and `--from`, batch lines
//! with images relative to the batch file, and bad input (clear message, non-zero exit,
//! nothing written).

mod common;

use assert_cmd::Command;
use common::{only_png, pngs};
use predicates::prelude::*;
use std::path::PathBuf;

fn sdgen() -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL").env("OMP_NUM_THREADS", "1");
    cmd
}

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/img2img").join(name)
}

#[test]
fn inpainting_is_recorded_and_from_redoes_it_or_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let (init, mask) = (dir.path().join("init.png"), dir.path().join("mask.png"));
    std::fs::copy(fixture("init_72x100.png"), &init).unwrap();
    std::fs::copy(fixture("mask_40x40.png"), &mask).unwrap();
    let first = dir.path().join("first");
    sdgen()
        .args(["generate", "a red door", "--steps", "4", "--seed", "5", "--strength", "0.8", "-q", "--device", "cpu"])
        .arg("--model")
        .arg(common::root().join("weights/tiny-sd"))
        .arg("--init-image")
        .arg(&init)
        .arg("--mask")
        .arg(&mask)
        .arg("--out")
        .arg(&first)
        .assert()
        .success()
        // A square mask on a tall image is stretched, and the user is told.
        .stderr(predicate::str::contains("stretched"));
    let png = only_png(&first);
    // Without --width/--height: the init image's size rounded down to a multiple of 8.
    let (w, h, pixels) = common::png_pixels(&png);
    assert_eq!((w, h), (72, 96));
    let record = sdgen::output::read_record(&png).unwrap();
    let req = &record.request;
    assert_eq!(req.strength, Some(0.8));
    let recorded = req.init_image.as_ref().unwrap();
    assert_eq!(recorded.path, init);
    assert_eq!(recorded.sha256, sdgen::loading::sha256_file(&init).unwrap());
    assert_eq!(req.mask.as_ref().unwrap().sha256, sdgen::loading::sha256_file(&mask).unwrap());
    let chunks = sdgen::output::read_text_chunks(&png).unwrap();
    let text = &chunks.iter().find(|(k, _)| k == sdgen::output::PARAMETERS_KEY).unwrap().1;
    assert!(text.contains("Denoising strength: 0.8"), "{text}");

    let again = dir.path().join("again");
    sdgen().arg("generate").arg("--from").arg(&png).args(["-q", "--out"]).arg(&again).assert().success();
    assert!(common::png_pixels(&only_png(&again)).2 == pixels, "--from gave other pixels");

    // The mask gone: --from says which file it needs; nothing is written.
    std::fs::remove_file(&mask).unwrap();
    let gone = dir.path().join("gone");
    sdgen()
        .arg("generate")
        .arg("--from")
        .arg(&png)
        .args(["-q", "--out"])
        .arg(&gone)
        .assert()
        .failure()
        .stderr(predicate::str::contains("mask").and(predicate::str::contains("is missing")));
    assert!(pngs(&gone).is_empty());
    // The init image changed: --from refuses rather than make another image.
    std::fs::copy(fixture("mask_40x40.png"), &mask).unwrap();
    std::fs::copy(fixture("init_64x96.png"), &init).unwrap();
    sdgen()
        .arg("generate")
        .arg("--from")
        .arg(&png)
        .args(["-q", "--out"])
        .arg(&gone)
        .assert()
        .failure()
        .stderr(predicate::str::contains("init image").and(predicate::str::contains("has changed")));
}

#[test]
fn batch_lines_take_images_relative_to_the_batch_file() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    std::fs::copy(fixture("init_64x96.png"), inputs.join("init.png")).unwrap();
    std::fs::copy(fixture("mask_64x96.png"), inputs.join("mask.png")).unwrap();
    let file = inputs.join("lines.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"prompt\": \"a house\", \"init_image\": \"init.png\", \"strength\": 0.5}\n",
            "{\"prompt\": \"a door\", \"init_image\": \"init.png\", \"mask\": \"mask.png\"}\n",
            "{\"prompt\": \"plain text to image\"}\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    sdgen()
        .arg("batch")
        .arg(&file)
        .arg("--model")
        .arg(common::root().join("weights/tiny-sd"))
        .args(["--device", "cpu", "--steps", "4", "--width", "64", "--height", "64", "-q", "--out"])
        .arg(&out)
        .assert()
        .success();
    let records: Vec<_> = pngs(&out).iter().map(|f| sdgen::output::read_record(f).unwrap().request).collect();
    assert_eq!(records.len(), 3);
    let house = records.iter().find(|r| r.prompt == "a house").unwrap();
    assert_eq!((house.strength, house.width, house.height), (Some(0.5), 64, 96), "the line's image gives the size");
    let door = records.iter().find(|r| r.prompt == "a door").unwrap();
    assert_eq!(door.strength, Some(1.0), "inpainting defaults to strength 1");
    assert!(door.mask.is_some());
    let plain = records.iter().find(|r| r.prompt == "plain text to image").unwrap();
    assert!(plain.init_image.is_none() && plain.strength.is_none() && plain.width == 64 && plain.height == 64);

    // A line whose image is missing names the line and the key.
    let bad = inputs.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"x\", \"init_image\": \"nope.png\"}\n").unwrap();
    sdgen()
        .arg("batch")
        .arg(&bad)
        .arg("--model")
        .arg(common::root().join("weights/tiny-sd"))
        .args(["--device", "cpu", "-q", "--out"])
        .arg(dir.path().join("bad-out"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("init_image").and(predicate::str::contains("nope.png")));
}

fn refuses(model: &str, args: &[&str], message: &str) {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("images");
    sdgen()
        .arg("generate")
        .arg("--model")
        .arg(common::root().join(model))
        .args(["--device", "cpu", "--steps", "4", "--out"])
        .arg(&target)
        .args(args)
        .assert()
        .failure()
        .stderr(predicate::str::contains(message))
        .stderr(predicate::str::contains("panicked").not());
    assert!(pngs(&target).is_empty());
}

#[test]
fn img2img_bad_input_is_a_clear_error() {
    let init = fixture("init_64x96.png");
    let init = init.to_str().unwrap();
    let mask = fixture("mask_64x96.png");
    let mask = mask.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "this is not a picture").unwrap();
    let text = text.to_str().unwrap();

    refuses("weights/tiny-sd", &["a", "--init-image", "/no/such/image.png"], "cannot read the init image");
    refuses("weights/tiny-sd", &["a", "--init-image", text], "is not an image sdgen can read");
    refuses("weights/tiny-sd", &["a", "--init-image", init, "--mask", text], "mask");
    refuses("weights/tiny-sd", &["a", "--init-image", init, "--strength", "0"], "strength 0 is out of range");
    refuses("weights/tiny-sd", &["a", "--init-image", init, "--strength", "1.5"], "strength 1.5 is out of range");
    refuses("weights/tiny-sd", &["a", "--mask", mask], "a mask needs an init image");
    refuses("weights/tiny-sd", &["a", "--strength", "0.5"], "applies to an init image");
    refuses("weights/tiny-sd", &["a", "--init-image", init, "--strength", "0.1"], "runs no step");
    refuses("weights/tiny-sd-inpaint", &["a"], "is an inpainting model");
    refuses("weights/tiny-sd-inpaint", &["a", "--init-image", init], "needs --init-image and --mask");
}
