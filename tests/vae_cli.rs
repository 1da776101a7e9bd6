//! `--vae` through the `sdgen` binary: a VAE folder, an original LDM single file and a tiny
//! autoencoder; the record, the A1111 text and `show`; `--from` replaying the VAE (or naming
//! why it cannot); `batch`; and bad input (clear message, exit 1, nothing written).

mod common;

use assert_cmd::Command;
use common::{only_png, pngs};
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn sdgen() -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL").env("OMP_NUM_THREADS", "1").env("HF_HUB_OFFLINE", "1");
    cmd
}

fn weights(rel: &str) -> PathBuf {
    common::root().join("weights").join(rel)
}

/// `generate` on `model` with `--vae vae` (if any) into `out`; returns the PNG.
fn generate(model: &str, vae: Option<&Path>, out: &Path) -> PathBuf {
    let mut cmd = sdgen();
    cmd.args(["generate", "a lighthouse", "--steps", "2", "--seed", "3", "-W", "64", "-H", "64", "-q"])
        .args(["--device", "cpu", "--model"])
        .arg(weights(model))
        .arg("--out")
        .arg(out);
    if let Some(v) = vae {
        cmd.arg("--vae").arg(v);
    }
    cmd.assert().success();
    only_png(out)
}

fn parameters(png: &Path) -> String {
    let chunks = sdgen::output::read_text_chunks(png).unwrap();
    chunks.iter().find(|(k, _)| k == sdgen::output::PARAMETERS_KEY).unwrap().1.clone()
}

#[test]
fn a_tiny_autoencoder_is_recorded_shown_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let vae = weights("tiny-taesd");
    let png = generate("tiny-sd", Some(&vae), &dir.path().join("a"));
    let own = generate("tiny-sd", None, &dir.path().join("own"));
    assert_ne!(common::png_pixels(&png).2, common::png_pixels(&own).2, "--vae changed nothing");

    let record = sdgen::output::read_record(&png).unwrap();
    let v = record.model.vae.as_ref().expect("the record names the VAE");
    let sha = sdgen::loading::sha256_file(&vae.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!((v.name.as_str(), v.class.as_str(), v.sha256.as_str()), ("tiny-taesd", "AutoencoderTiny", sha.as_str()));
    assert_eq!(v.source, vae.display().to_string());
    assert!(sdgen::output::read_record(&own).unwrap().model.vae.is_none());

    let text = parameters(&png);
    assert!(text.contains(&format!("VAE hash: {}, VAE: tiny-taesd,", &sha[..10])), "{text}");
    assert!(!parameters(&own).contains("VAE"), "no VAE line without --vae");

    sdgen()
        .arg("show")
        .arg(&png)
        .assert()
        .success()
        .stdout(predicate::str::contains("vae:").and(predicate::str::contains("AutoencoderTiny")));

    let again = dir.path().join("again");
    sdgen().arg("generate").arg("--from").arg(&png).args(["-q", "--out"]).arg(&again).assert().success();
    let replayed = only_png(&again);
    assert_eq!(common::png_pixels(&replayed).2, common::png_pixels(&png).2, "--from lost the VAE");
    assert_eq!(sdgen::output::read_record(&replayed).unwrap().model.vae, record.model.vae);
}

#[test]
fn an_ldm_single_file_equals_its_diffusers_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = generate("tiny-sd", Some(&weights("tiny-sd-vae2")), &dir.path().join("folder"));
    let file = generate("tiny-sd", Some(&weights("tiny-sd-vae2.safetensors")), &dir.path().join("file"));
    assert_eq!(common::png_pixels(&folder).2, common::png_pixels(&file).2);
    let text = parameters(&file);
    assert!(text.contains("VAE: tiny-sd-vae2.safetensors"), "A1111 names the file: {text}");
    let v = sdgen::output::read_record(&file).unwrap().model.vae.unwrap();
    assert_eq!(v.class, "AutoencoderKL");
}

#[test]
fn from_refuses_a_changed_or_missing_vae() {
    let dir = tempfile::tempdir().unwrap();
    let vae = dir.path().join("my-vae.safetensors");
    std::fs::copy(weights("tiny-sd-vae2.safetensors"), &vae).unwrap();
    let png = generate("tiny-sd", Some(&vae), &dir.path().join("a"));

    // Other weights under the same name: refused, nothing written.
    std::fs::copy(weights("tiny-sd-vae2/diffusion_pytorch_model.safetensors"), &vae).unwrap();
    let out = dir.path().join("changed");
    sdgen()
        .arg("generate")
        .arg("--from")
        .arg(&png)
        .args(["-q", "--out"])
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has changed since the image was made"));
    assert!(pngs(&out).is_empty());
    // Named on the command line, the file is taken as it is now.
    sdgen()
        .arg("generate")
        .arg("--from")
        .arg(&png)
        .arg("--vae")
        .arg(&vae)
        .args(["-q", "--out"])
        .arg(dir.path().join("explicit"))
        .assert()
        .success();

    std::fs::remove_file(&vae).unwrap();
    sdgen()
        .arg("generate")
        .arg("--from")
        .arg(&png)
        .args(["-q", "--out"])
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--vae").and(predicate::str::contains("my-vae.safetensors")));
    assert!(pngs(&out).is_empty());

    // --vae on the command line wins over the record (and its hash).
    sdgen()
        .arg("generate")
        .arg("--from")
        .arg(&png)
        .arg("--vae")
        .arg(weights("tiny-sd-vae2"))
        .args(["-q", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(pngs(&out).len(), 1);
}

#[test]
fn batch_records_the_vae() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.txt");
    std::fs::write(&prompts, "a red fox\n").unwrap();
    let out = dir.path().join("out");
    sdgen()
        .arg("batch")
        .arg(&prompts)
        .arg("--model")
        .arg(weights("tiny-sd"))
        .arg("--vae")
        .arg(weights("tiny-taesd"))
        .arg("--out")
        .arg(&out)
        .args(["--steps", "2", "-W", "64", "-H", "64", "--seed", "1", "--quiet", "--device", "cpu"])
        .assert()
        .success();
    let png = only_png(&out);
    assert_eq!(sdgen::output::read_record(&png).unwrap().model.vae.unwrap().class, "AutoencoderTiny");
}

#[test]
fn serve_takes_vae() {
    sdgen().args(["serve", "--help"]).assert().success().stdout(predicate::str::contains("--vae <SOURCE>"));
    // The server's images carry the VAE like generate's.
    let load = sdgen::LoadOptions {
        model: weights("tiny-sd"),
        vae: Some(weights("tiny-taesd")),
        device: "cpu".parse().unwrap(),
        ..Default::default()
    };
    let mut opts = sdgen::serve::ServeOptions::new(load);
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = sdgen::serve::Server::start(opts).expect("server starts");
    let resp = ureq::post(&format!("http://{}/sdapi/v1/txt2img", server.addr()))
        .set("Content-Type", "application/json")
        .send_string(r#"{"prompt": "a fox", "steps": 2, "seed": 3, "width": 64, "height": 64}"#)
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
    let info: serde_json::Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert!(info["infotexts"][0].as_str().unwrap().contains("VAE: tiny-taesd"), "{info}");
    server.shutdown().unwrap();
}

#[test]
fn bad_vaes_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, PathBuf, &str); 9] = [
        ("tiny-sd", weights("tiny-taesd-16ch"), "16-channel latents"),
        ("tiny-sd", weights("tiny-sdxl/vae"), "scaling_factor 0.13025"),
        ("tiny-sd", weights("tiny-taesdxl"), "TAESDXL"),
        ("tiny-sdxl", weights("tiny-taesd"), "TAESD for SD 1.x/2.x"),
        ("tiny-sdxl", weights("tiny-sd-vae2"), "scaling_factor 0.18215"),
        ("tiny-sd", weights("no-such-vae.safetensors"), "no such file"),
        ("tiny-sd", weights("tiny-sd/unet/diffusion_pytorch_model.safetensors"), "holds no autoencoder"),
        ("tiny-sd", weights("tiny-sd/unet"), "not an autoencoder"),
        ("tiny-sd", weights("tiny-sd.safetensors"), "whole Stable Diffusion checkpoint"),
    ];
    for (i, (model, vae, says)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        sdgen()
            .args(["generate", "a cat", "--steps", "1", "-W", "64", "-H", "64", "-q", "--device", "cpu", "--model"])
            .arg(weights(model))
            .arg("--vae")
            .arg(vae)
            .arg("--out")
            .arg(&out)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(*says));
        assert!(pngs(&out).is_empty(), "{vae:?}: something was written");
    }
    // A decoder-only TAESD file makes images but cannot encode an init image.
    let out = dir.path().join("decoder-only");
    sdgen()
        .args(["generate", "a cat", "--steps", "2", "-q", "--device", "cpu", "--model"])
        .arg(weights("tiny-sd"))
        .arg("--vae")
        .arg(weights("tiny-taesd-madebyollin/taesd_decoder.safetensors"))
        .arg("--init-image")
        .arg(common::root().join("tests/fixtures/img2img/init_64x96.png"))
        .arg("--out")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("only a decoder"));
    assert!(pngs(&out).is_empty());
}

#[test]
fn a_hub_vae_missing_offline_says_what_to_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    sdgen()
        .env("HF_HUB_CACHE", dir.path().join("hub"))
        .args(["generate", "a cat", "--steps", "1", "-W", "64", "-H", "64", "-q", "--device", "cpu", "--model"])
        .arg(weights("tiny-sd"))
        .args(["--vae", "madebyollin/taesd", "--out"])
        .arg(&out)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("HF_HUB_OFFLINE")
                .and(predicate::str::contains("madebyollin/taesd"))
                .and(predicate::str::contains("config.json")),
        );
    assert!(pngs(&out).is_empty());
}
