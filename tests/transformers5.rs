//! Models saved by transformers 5 (issue 13): weights/tiny-sd-tf5 is tiny-sd with its text
//! encoder (no `text_model.` prefix) and tokenizer (tokenizer.json only) saved by
//! transformers 5 (tools/make_tiny_sd_tf5.py). It must give exactly what tiny-sd gives, and
//! so match the tiny-sd goldens made by diffusers.

mod common;

use common::{check_cases, cpu_fp32, root, FP32};
use sdgen::loading::single_file::ConfigSet;
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::Request;

const TF5: &str = "weights/tiny-sd-tf5";

#[test]
fn tf5_folder_matches_the_tiny_sd_goldens() {
    // Token ids from the tf5 tokenizer identical, embeddings within 1e-5, latents and image
    // within the fp32 bounds of tests/parity.rs.
    let m = check_cases(&cpu_fp32(TF5), TF5, "tests/fixtures/goldens", 4, &FP32);
    assert_eq!(m.cases, 8);
    assert!(m.embeds <= 1e-5, "{m:?}");
}

#[test]
fn tf5_folder_gives_the_same_images_as_tiny_sd() {
    let tf4 = Pipeline::load(&cpu_fp32("weights/tiny-sd")).unwrap();
    let tf5 = Pipeline::load(&cpu_fp32(TF5)).unwrap();
    for (prompt, clip_skip) in [("a photograph of an astronaut riding a horse", None), ("猫 and a dog!", Some(2))] {
        let a = tf4.encode_text(prompt, clip_skip).unwrap();
        let b = tf5.encode_text(prompt, clip_skip).unwrap();
        assert!(a.equal(&b), "{prompt:?}: embeddings differ");
    }
    let req = Request {
        prompt: "a red fox in the snow".into(),
        negative_prompt: Some("blurry".into()),
        seed: 7,
        steps: 3,
        width: 64,
        height: 64,
        scheduler: "EulerDiscreteScheduler".into(),
        ..Request::default()
    };
    let a = tf4.generate(&req, &mut |_| {}).unwrap();
    let b = tf5.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(a.len(), 1);
    assert!(a[0].image.rgb == b[0].image.rgb, "images differ");
}

/// A transformers 5 folder as `--config-dir` for a single-file checkpoint: its tokenizer has
/// tokenizer.json and no vocab.json, merges.txt or special_tokens_map.json.
#[test]
fn tf5_folder_serves_as_config_dir_for_a_single_file() {
    let set = ConfigSet::from_dir(&root().join(TF5)).unwrap();
    assert!(set.text("tokenizer/tokenizer.json").is_some());
    assert!(set.text("tokenizer/vocab.json").is_none());
    let opts = LoadOptions { config_dir: Some(root().join(TF5)), ..cpu_fp32("weights/tiny-sd.safetensors") };
    assert_eq!(check_cases(&opts, TF5, "tests/fixtures/goldens", 8, &FP32).cases, 4);

    // Without any of the tokenizer's vocabulary files the message names both layouts.
    let dir = tempfile::tempdir().unwrap();
    set.write_to(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer/tokenizer.json")).unwrap();
    let err = ConfigSet::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("tokenizer.json"), "{err}");
}
