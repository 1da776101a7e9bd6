//! The CLIP tokenizer against transformers' `CLIPTokenizer` on tricky prompts
//! (goldens from tools/make_tokenizer_goldens.py), with SD 1.x's and SD 2.x's pad tokens.

use sdgen::tokenizer::Tokenizer;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Goldens {
    tokenizer: String,
    variants: BTreeMap<String, Variant>,
}

#[derive(Deserialize)]
struct Variant {
    pad_id: i64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<i64>,
    removed_text: Option<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn goldens() -> Goldens {
    let text = std::fs::read_to_string(root().join("tests/fixtures/tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A copy of the tokenizer folder with pad token `!`, made as the golden script makes it.
fn bang_copy(src: &Path, dst: &Path) {
    for name in ["vocab.json", "merges.txt"] {
        std::fs::copy(src.join(name), dst.join(name)).unwrap();
    }
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join(name)).unwrap()).unwrap();
        cfg["pad_token"] = serde_json::Value::String("!".into());
        std::fs::write(dst.join(name), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    }
}

fn check(tok: &Tokenizer, variant: &Variant, name: &str) {
    assert_eq!(tok.max_length(), 77);
    assert_eq!(tok.pad_id(), variant.pad_id, "{name}: pad id");
    let mut failures = Vec::new();
    for case in &variant.cases {
        let enc = tok.encode(&case.prompt);
        if enc.ids != case.ids {
            failures.push(format!("{name} {:?}:\n  ours   {:?}\n  theirs {:?}", case.prompt, enc.ids, case.ids));
            continue;
        }
        assert_eq!(enc.truncated, case.removed_text.is_some(), "{name} {:?}: truncated flag", case.prompt);
        assert_eq!(enc.removed_text, case.removed_text.clone().unwrap_or_default(), "{name} {:?}", case.prompt);
        let pads = case.ids.iter().rev().take_while(|&&i| i == variant.pad_id).count();
        assert!(enc.len >= 77 - pads && enc.len <= 77, "{name} {:?}: len {}", case.prompt, enc.len);
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        variant.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn sd1_tokenizer_matches_transformers() {
    let g = goldens();
    let tok = Tokenizer::from_dir(&root().join(&g.tokenizer)).unwrap();
    check(&tok, &g.variants["pad_endoftext"], "pad_endoftext");
}

#[test]
fn sd2_bang_pad_tokenizer_matches_transformers() {
    let g = goldens();
    let dir = tempfile::tempdir().unwrap();
    bang_copy(&root().join(&g.tokenizer), dir.path());
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    check(&tok, &g.variants["pad_bang"], "pad_bang");
}

#[test]
fn missing_and_broken_files_name_the_file() {
    let src = root().join("weights/tiny-sd/tokenizer");
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");

    std::fs::copy(src.join("vocab.json"), dir.path().join("vocab.json")).unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("merges.txt"), "{err}");

    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\ni n\nt h e x\n").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("merges.txt") && err.contains("line 3"), "{err}");

    std::fs::copy(src.join("merges.txt"), dir.path().join("merges.txt")).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "{\"model_max_length\": \"long\"}").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("model_max_length"), "{err}");

    std::fs::write(dir.path().join("tokenizer_config.json"), "{\"pad_token\": \"<|nope|>\"}").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("pad_token") && err.contains("<|nope|>"), "{err}");

    // Without configs transformers falls back to CLIP's defaults.
    std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.max_length()), (49406, 49407, 49407, 77));
}
