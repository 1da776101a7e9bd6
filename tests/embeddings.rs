//! Textual-inversion embeddings against diffusers' `load_textual_inversion`
//! (`tools/make_embedding_goldens.py`): A1111 files (`emb_params`, `string_to_param.*`, a
//! 3-vector one), diffusers' `learned_embeds` and SDXL `clip_l`/`clip_g` files on the tiny
//! models — token ids, text embeddings, latents after every step and the image — then the
//! embeddings folder, the records and run keys, the CLI flags end to end, and bad input.

mod common;

use assert_cmd::Command;
use common::only_png;
use common::{get, golden, ids_of, max_abs_diff, root, FP32};
use predicates::prelude::*;
use sdgen::embeddings::Embedding;
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::tokenizer::Tokenizer;
use sdgen::Request;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const GOLDENS: &str = "tests/fixtures/goldens-embeddings";

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(GOLDENS).join("cases.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    index["cases"].as_array().unwrap().clone()
}

/// The case's embedding files, in the order diffusers loaded them.
fn files(case: &Value) -> Vec<PathBuf> {
    case["embeddings"].as_array().unwrap().iter().map(|e| root().join(e["file"].as_str().unwrap())).collect()
}

/// diffusers' reading of the prompt (plain syntax): the truncated case cuts at 77 tokens.
fn request(case: &Value) -> Request {
    common::golden_request(case)
}

/// A tokenizer of the model's with the case's embeddings added, as the pipeline adds them;
/// checks that each token got diffusers' ids.
fn tokenizer(case: &Value, folder: &str, second: bool) -> Tokenizer {
    let mut tok = Tokenizer::from_dir(&root().join(case["model"].as_str().unwrap()).join(folder)).unwrap();
    let want = &case[if second { "added_tokens_2" } else { "added_tokens" }];
    for file in files(case) {
        let e = Embedding::read(&file).unwrap();
        let ids = tok.add_embedding_token(&e.token, e.count()).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let name = if i == 0 { e.token.clone() } else { format!("{}_{i}", e.token) };
            assert_eq!(want[&name].as_i64(), Some(*id), "{}: id of {name}", case["id"]);
        }
    }
    tok
}

/// Latents after every step and the decoded image against the golden; returns the worst
/// relative latent difference and the worst pixel difference.
fn run(pipe: &Pipeline, req: &Request, g: &[(String, Tensor)]) -> (f64, u8) {
    let want = get(g, "latents");
    let (mut worst, mut seen) = (0f64, 0);
    let denoised = pipe
        .denoise(std::slice::from_ref(req), &mut |p| {
            let w = want.get(p.step as i64 - 1);
            worst = worst.max(max_abs_diff(p.latents, &w) / w.abs().max().double_value(&[]).max(1.0));
            seen += 1;
        })
        .unwrap()
        .unwrap();
    assert_eq!(seen, req.steps);
    let image = &pipe.decode(&denoised.latents).unwrap()[0];
    let want_u8 = Vec::<u8>::try_from(get(g, "image_u8").view([-1])).unwrap();
    assert_eq!(image.rgb.len(), want_u8.len());
    (worst, image.rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255))
}

fn load(model: &str, embeddings: Vec<PathBuf>) -> Pipeline {
    tch::set_num_threads(1);
    Pipeline::load(&LoadOptions { embeddings, ..common::cpu_fp32(model) }).expect("model with embeddings loads")
}

#[test]
fn sd1_embeddings_match_diffusers() {
    let sd1: Vec<Value> = cases().into_iter().filter(|c| c["model"] == "weights/tiny-sd").collect();
    assert_eq!(sd1.len(), 4);
    let pipe = load("weights/tiny-sd", files(&sd1[0]));
    let mut failures = Vec::new();
    for case in &sd1 {
        let id = case["id"].as_str().unwrap();
        let g = golden(&root().join(GOLDENS).join(case["file"].as_str().unwrap()));
        let req = request(case);
        let tok = tokenizer(case, "tokenizer", false);
        let negative = req.negative_prompt.as_deref().unwrap_or("");
        if tok.encode(&req.prompt).ids != ids_of(get(&g, "cond_ids"))
            || tok.encode(negative).ids != ids_of(get(&g, "uncond_ids"))
        {
            failures.push(format!("{id}: token ids differ"));
        }
        let d = max_abs_diff(&pipe.encode_text(&req.prompt, None).unwrap(), get(&g, "cond_embeds"));
        let d2 = max_abs_diff(&pipe.encode_text(negative, None).unwrap(), get(&g, "uncond_embeds"));
        if d > FP32.embeds || d2 > FP32.embeds {
            failures.push(format!("{id}: embeddings differ by {d:e} / {d2:e}"));
        }
        let (latents, px) = run(&pipe, &req, &g);
        if latents > FP32.latents || px > FP32.image {
            failures.push(format!("{id}: latents differ by {latents:e} (relative), image by {px}/255"));
        }
        eprintln!("{id}: embeds {:e}, latents {latents:e}, image {px}", d.max(d2));
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The record lists each embedding, in loading order, with its file's sha256.
    let records = &pipe.model().embeddings;
    let tokens: Vec<(&str, usize)> = records.iter().map(|r| (r.token.as_str(), r.vectors)).collect();
    assert_eq!(tokens, [("tinystyle", 1), ("tinyneg", 2), ("tinytriple", 3), ("<cat-toy>", 1)]);
    for r in records {
        assert_eq!(r.sha256, sdgen::loading::sha256_file(&r.file).unwrap());
    }
}

#[test]
fn sdxl_clip_l_and_clip_g_match_diffusers() {
    let xl: Vec<Value> = cases().into_iter().filter(|c| c["model"] == "weights/tiny-sdxl").collect();
    assert_eq!(xl.len(), 2);
    let pipe = load("weights/tiny-sdxl", files(&xl[0]));
    let mut failures = Vec::new();
    for case in &xl {
        let id = case["id"].as_str().unwrap();
        let g = golden(&root().join(GOLDENS).join(case["file"].as_str().unwrap()));
        let req = request(case);
        let (tok1, tok2) = (tokenizer(case, "tokenizer", false), tokenizer(case, "tokenizer_2", true));
        if tok1.encode(&req.prompt).ids != ids_of(get(&g, "cond_ids"))
            || tok2.encode(&req.prompt).ids != ids_of(get(&g, "cond_ids_2"))
        {
            failures.push(format!("{id}: prompt token ids differ"));
        }
        if let Some(neg) = &req.negative_prompt {
            if tok1.encode(neg).ids != ids_of(get(&g, "uncond_ids"))
                || tok2.encode(neg).ids != ids_of(get(&g, "uncond_ids_2"))
            {
                failures.push(format!("{id}: negative token ids differ"));
            }
        }
        let one = std::slice::from_ref(&req);
        for (name, negative) in [("cond", false), ("uncond", true)] {
            let c = pipe.conditioning(one, negative).unwrap();
            let d = max_abs_diff(&c.context, get(&g, &format!("{name}_embeds")));
            let p = max_abs_diff(c.pooled.as_ref().unwrap(), get(&g, &format!("{name}_pooled")));
            if d > FP32.embeds || p > FP32.embeds {
                failures.push(format!("{id}: {name} states differ by {d:e}, pooled by {p:e}"));
            }
        }
        let (latents, px) = run(&pipe, &req, &g);
        if latents > FP32.latents || px > FP32.image {
            failures.push(format!("{id}: latents differ by {latents:e} (relative), image by {px}/255"));
        }
        eprintln!("{id}: latents {latents:e}, image {px}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_folder_loads_what_fits_and_skips_the_rest() {
    // The fixtures folder holds SD 1.x and SDXL embeddings: on tiny-sd the SDXL ones are
    // skipped (warnings) and the others load in path order; a prompt's encoding does not
    // depend on the order (tiny-sd pools at its end token).
    tch::set_num_threads(1);
    let dir = root().join("tests/fixtures/embeddings");
    let opts = LoadOptions { embeddings_dir: Some(dir.clone()), ..common::cpu_fp32("weights/tiny-sd") };
    let pipe = Pipeline::load(&opts).unwrap();
    let tokens: Vec<&str> = pipe.model().embeddings.iter().map(|r| r.token.as_str()).collect();
    assert_eq!(tokens, ["<cat-toy>", "tinyneg", "tinystyle", "tinytriple"]);
    let case = &cases()[0];
    let g = golden(&root().join(GOLDENS).join(case["file"].as_str().unwrap()));
    let d = max_abs_diff(&pipe.encode_text(case["prompt"].as_str().unwrap(), None).unwrap(), get(&g, "cond_embeds"));
    assert!(d <= FP32.embeds, "{d:e}");

    // Tokens match in any case, as A1111 finds them; a name that is not loaded is plain text.
    let upper = pipe.encode_text("a photo of <CAT-TOY> in TinyStyle", None).unwrap();
    assert!(max_abs_diff(&upper, get(&g, "cond_embeds")) <= FP32.embeds);
    let plain = load("weights/tiny-sd", Vec::new());
    let text = "a photo of notloaded in tinystyle";
    assert!(max_abs_diff(&plain.encode_text(text, None).unwrap(), &pipe.encode_text(text, None).unwrap()) > 1e-3);
    let without = "a photograph of an astronaut riding a horse";
    assert_eq!(
        max_abs_diff(&plain.encode_text(without, None).unwrap(), &pipe.encode_text(without, None).unwrap()),
        0.0,
        "prompts without tokens are unchanged"
    );

    // The same file given again, or found again in the folder, is not loaded twice.
    let mut pipe = pipe;
    let again = pipe.load_embeddings(&[dir.join("sd1/tinystyle.safetensors")]).unwrap();
    assert!(again.is_empty() && pipe.model().embeddings.len() == 4);

    // The SDXL folder on SDXL loads both files; on the SD 1.x model an SDXL file given by
    // itself is an error.
    let xl = Pipeline::load(&LoadOptions {
        embeddings_dir: Some(dir.join("sdxl")),
        ..common::cpu_fp32("weights/tiny-sdxl")
    })
    .unwrap();
    assert_eq!(xl.model().embeddings.len(), 2);
    let e = pipe.load_embeddings(&[dir.join("sdxl/tinyxl.safetensors")]).unwrap_err().to_string();
    assert!(e.contains("tinyxl.safetensors") && e.contains("SDXL embedding"), "{e}");
}

#[test]
fn run_keys_and_records_name_the_embeddings() {
    let spec = common::cpu_fp32("weights/tiny-sd").inspect().unwrap();
    let dir = root().join("tests/fixtures/embeddings/sd1");
    let with = |files: Vec<PathBuf>| LoadOptions { embeddings: files, ..common::cpu_fp32("weights/tiny-sd") };
    let none = sdgen::plan::run_key(&spec, &with(Vec::new())).unwrap();
    let one = sdgen::plan::run_key(&spec, &with(vec![dir.join("tinystyle.safetensors")])).unwrap();
    let other = sdgen::plan::run_key(&spec, &with(vec![dir.join("tinyneg.safetensors")])).unwrap();
    assert!(none != one && one != other);
    let folder = LoadOptions { embeddings_dir: Some(dir.clone()), ..common::cpu_fp32("weights/tiny-sd") };
    assert_ne!(sdgen::plan::run_key(&spec, &folder).unwrap(), none);

    // Settings from a record give back the files, each by itself.
    let mut record: sdgen::Record = serde_json::from_value(serde_json::json!({
        "sdgen_version": "0.1.0",
        "request": {"prompt": "tinystyle", "seed": 1, "steps": 4, "guidance": 7.5, "width": 64, "height": 64,
                    "scheduler": "Euler"},
        "model": {"source": "weights/tiny-sd", "name": "tiny-sd", "hash": null, "architecture": "sd1",
                  "license": {"name": "x", "url": "x", "source": "x"}},
        "scheduler_config": {},
        "device": "cpu",
        "dtype": "fp32"
    }))
    .unwrap();
    assert!(sdgen::plan::Settings::from_record(&record).embeddings.is_none());
    record.model.embeddings.push(sdgen::embeddings::EmbeddingRecord {
        token: "tinystyle".into(),
        file: dir.join("tinystyle.safetensors"),
        sha256: "00".into(),
        vectors: 1,
    });
    let s = sdgen::plan::Settings::from_record(&record);
    assert_eq!(s.embeddings, Some(vec![dir.join("tinystyle.safetensors")]));
}

fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
    Tensor::write_safetensors(&refs, &path).unwrap();
    path
}

#[test]
fn bad_embeddings_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let v = |n: i64, w: i64| Tensor::ones([n, w], (Kind::Float, Device::Cpu)) * 0.01;
    let opts = |files: Vec<PathBuf>| LoadOptions { embeddings: files, ..common::cpu_fp32("weights/tiny-sd") };
    let fails = |files: Vec<PathBuf>, words: &[&str]| {
        // Checked when the model is inspected, before any weights load, and again at load.
        for e in [opts(files.clone()).inspect().map(|_| ()), Pipeline::load(&opts(files)).map(|_| ())] {
            let e = e.unwrap_err().to_string();
            assert!(words.iter().all(|w| e.contains(w)), "{words:?} not in: {e}");
        }
    };
    fails(vec![tmp.path().join("missing.safetensors")], &["missing.safetensors", "does not exist"]);
    let pt = tmp.path().join("oldstyle.pt");
    std::fs::write(&pt, b"PK\x03\x04").unwrap();
    fails(vec![pt], &["oldstyle.pt", "pickle", "oldstyle.safetensors"]);
    // An SD 2.x embedding (1024 wide; the tiny model's SD 2.x twin is 32 wide, so 64 here).
    fails(vec![write(tmp.path(), "wide.safetensors", &[("emb_params", v(1, 64))])], &["wide.safetensors", "64 wide"]);
    fails(
        vec![write(tmp.path(), "xl.safetensors", &[("clip_l", v(1, 32)), ("clip_g", v(1, 48))])],
        &["xl.safetensors", "SDXL embedding"],
    );
    fails(vec![write(tmp.path(), "junk.safetensors", &[("a", v(1, 32)), ("b", v(1, 32))])], &["junk.safetensors"]);

    // Tokens taken: a word of the vocabulary, or the same token from two files.
    let cat = write(tmp.path(), "cat.safetensors", &[("emb_params", v(1, 32))]);
    let e = Pipeline::load(&opts(vec![cat])).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("cat.safetensors") && e.contains("vocabulary"), "{e}");
    let sub = tmp.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let a = write(tmp.path(), "mytoken.safetensors", &[("emb_params", v(1, 32))]);
    let b = write(&sub, "MyToken.safetensors", &[("emb_params", v(2, 32))]);
    let e = Pipeline::load(&opts(vec![a, b.clone()])).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("MyToken.safetensors") && e.contains("already taken"), "{e}");

    // In a folder the same problems are warnings, and the rest loads.
    let pipe =
        Pipeline::load(&LoadOptions { embeddings_dir: Some(tmp.path().into()), ..common::cpu_fp32("weights/tiny-sd") })
            .unwrap();
    let tokens: Vec<&str> = pipe.model().embeddings.iter().map(|r| r.token.as_str()).collect();
    assert_eq!(tokens, ["mytoken"], "MyToken clashes, cat is a word, the others do not fit");
    let e = Pipeline::load(&LoadOptions {
        embeddings_dir: Some(tmp.path().join("nowhere")),
        ..common::cpu_fp32("weights/tiny-sd")
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("nowhere") && e.contains("does not exist"), "{e}");
}

#[test]
fn tokenizer_added_tokens_are_whole_and_numbered_after_the_vocabulary() {
    let mut tok = Tokenizer::from_dir(&root().join("weights/tiny-sd/tokenizer")).unwrap();
    assert_eq!(tok.len(), 49408);
    assert_eq!(tok.add_embedding_token("<x>", 2).unwrap(), [49408, 49409]);
    assert_eq!(tok.add_embedding_token("zq", 1).unwrap(), [49410]);
    assert_eq!(tok.len(), 49411);
    // Split out before cleaning and BPE, anywhere in a word, in any case; `<x>` stands for
    // both its vectors, `<x>_1` written out for its second alone.
    assert_eq!(tok.tokenize("<x>"), [49408, 49409]);
    assert_eq!(tok.tokenize("a<X>b"), [tok.tokenize("a")[0], 49408, 49409, tok.tokenize("b")[0]]);
    assert_eq!(tok.tokenize("<x>_1 ZQ"), [49409, 49410]);
    assert!(tok.add_embedding_token("ZQ", 1).unwrap_err().contains("already taken"));
    assert!(tok.add_embedding_token("cat", 1).unwrap_err().contains("vocabulary"));
    assert!(tok.add_embedding_token(" pad", 1).is_err() && tok.add_embedding_token("y", 0).is_err());
    // Truncation counts the expanded ids; the cut text decodes the added names.
    let long = format!("{} <x> zq", "red ".repeat(74));
    let enc = tok.encode(&long);
    assert_eq!(enc.ids[75..], [49408, tok.eos_id()]);
    assert!(enc.truncated && enc.removed_text.contains("zq"), "{:?}", enc.removed_text);
}

fn sdgen() -> Command {
    let mut cmd = Command::cargo_bin("sdgen").expect("binary");
    cmd.env_remove("SDGEN_MODEL").env_remove("SDGEN_EMBEDDINGS_DIR").env("OMP_NUM_THREADS", "1");
    cmd
}

#[test]
fn cli_embedding_flags_give_the_golden_image_and_from_replays_them() {
    let case = &cases()[0];
    assert_eq!(case["id"], "tokens_s0");
    let g = golden(&root().join(GOLDENS).join(case["file"].as_str().unwrap()));
    let want = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
    let out = tempfile::tempdir().unwrap();
    let args = |cmd: &mut Command| {
        cmd.args(["generate", case["prompt"].as_str().unwrap(), "-n", case["negative_prompt"].as_str().unwrap()])
            .args(["--seed", "0", "--steps", "4", "--width", "64", "--height", "64", "--scheduler", "euler"])
            .args(["--guidance", "7.5", "--device", "cpu", "-q", "--model"])
            .arg(root().join("weights/tiny-sd"));
    };
    let mut cmd = sdgen();
    args(&mut cmd);
    for f in files(case) {
        cmd.arg("--embedding").arg(f);
    }
    cmd.arg("--out").arg(out.path().join("flags")).assert().success();
    let png = only_png(&out.path().join("flags"));
    let (_, _, ours) = common::png_pixels(&png);
    let worst = ours.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(ours.len() == want.len() && worst <= 1, "pixels differ from diffusers by {worst}/255");
    let record = sdgen::output::read_record(&png).unwrap();
    let tokens: Vec<&str> = record.model.embeddings.iter().map(|e| e.token.as_str()).collect();
    assert_eq!(tokens, ["tinystyle", "tinyneg", "tinytriple", "<cat-toy>"]);
    // The A1111 text names the embeddings the prompts use, with A1111's 12-digit hashes.
    let chunks = sdgen::output::read_text_chunks(&png).unwrap();
    let text = &chunks.iter().find(|(k, _)| k == sdgen::output::PARAMETERS_KEY).unwrap().1;
    let params = sdgen::output::parse_parameters(text).unwrap();
    let short = |i: usize| record.model.embeddings[i].sha256[..12].to_string();
    let want_hashes = format!("tinystyle: {}, tinyneg: {}, <cat-toy>: {}", short(0), short(1), short(3));
    assert_eq!(params.get("TI hashes"), Some(want_hashes.as_str()), "{text}");

    // --from loads the recorded files again.
    sdgen().args(["generate", "-q", "--from"]).arg(&png).arg("--out").arg(out.path().join("from")).assert().success();
    assert_eq!(common::png_pixels(&only_png(&out.path().join("from"))).2, ours, "--from gave other pixels");

    // $SDGEN_EMBEDDINGS_DIR (the sd1 folder: same tokens in another order, same image).
    let mut cmd = sdgen();
    args(&mut cmd);
    cmd.env("SDGEN_EMBEDDINGS_DIR", root().join("tests/fixtures/embeddings/sd1"));
    cmd.arg("--out").arg(out.path().join("env")).assert().success();
    assert_eq!(common::png_pixels(&only_png(&out.path().join("env"))).2, ours);

    // Without the embeddings the tokens are plain text: another image.
    let mut cmd = sdgen();
    args(&mut cmd);
    cmd.arg("--out").arg(out.path().join("none")).assert().success();
    assert_ne!(common::png_pixels(&only_png(&out.path().join("none"))).2, ours);
}

#[test]
fn cli_refuses_bad_embeddings_before_loading_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let xl = root().join("tests/fixtures/embeddings/sdxl/tinyxl.safetensors");
    let pt = tmp.path().join("charturner.pt");
    std::fs::write(&pt, [0x80, 0x04, b'K']).unwrap();
    let missing = tmp.path().join("gone.safetensors");
    for (flag, file, words) in [
        ("--embedding", &missing, &["gone.safetensors", "does not exist"][..]),
        ("--embedding", &pt, &["charturner.pt", "pickle", "charturner.safetensors"]),
        ("--embedding", &xl, &["tinyxl.safetensors", "SDXL embedding"]),
        ("--embeddings-dir", &missing, &["gone.safetensors", "does not exist"]),
    ] {
        let mut assert = sdgen()
            .args(["generate", "a cat", "--steps", "1", "--width", "64", "--height", "64", "--device", "cpu", "-q"])
            .arg("--model")
            .arg(root().join("weights/tiny-sd"))
            .arg("--out")
            .arg(tmp.path().join("out"))
            .arg(flag)
            .arg(file)
            .assert()
            .failure()
            .stderr(predicate::str::contains("panicked").not());
        for w in words {
            assert = assert.stderr(predicate::str::contains(*w));
        }
    }
    assert!(!tmp.path().join("out").exists() || std::fs::read_dir(tmp.path().join("out")).unwrap().next().is_none());
}

#[test]
fn embeddings_load_in_half_precision() {
    // The token table is fp16 there: the vectors are cast into it, as diffusers does.
    tch::set_num_threads(1);
    let case = &cases()[0];
    let opts = LoadOptions { embeddings: files(case), ..common::cpu("weights/tiny-sd", "fp16") };
    let pipe = Pipeline::load(&opts).unwrap();
    let g = golden(&root().join(GOLDENS).join(case["file"].as_str().unwrap()));
    let e = pipe.encode_text(case["prompt"].as_str().unwrap(), None).unwrap();
    assert_eq!(e.kind(), Kind::Half);
    let d = max_abs_diff(&e, get(&g, "cond_embeds"));
    assert!(d < 2e-2, "fp16 embeddings differ from diffusers' fp32 by {d:e}");
}
