//! The CLIP tokenizer against transformers' `CLIPTokenizer` on tricky prompts
//! (goldens from tools/make_tokenizer_goldens.py), with SD 1.x's and SD 2.x's pad tokens,
//! from a transformers 4 folder (vocab.json, merges.txt) and a transformers 5 one
//! (tokenizer.json only, weights/tiny-sd-tf5 from tools/make_tiny_sd_tf5.py).

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

const TF5: &str = "weights/tiny-sd-tf5/tokenizer";

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string(v).unwrap()).unwrap();
}

/// A copy of the transformers 5 tokenizer folder, with `edit` applied to its tokenizer.json.
fn tf5_copy(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = root().join(TF5);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("tokenizer_config.json"), dir.path().join("tokenizer_config.json")).unwrap();
    let mut json = read_json(&src.join("tokenizer.json"));
    edit(&mut json);
    write_json(&dir.path().join("tokenizer.json"), &json);
    dir
}

#[test]
fn transformers5_folder_is_what_transformers5_saves() {
    let names: Vec<String> = std::fs::read_dir(root().join(TF5))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LICENSE-CLIP")
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["tokenizer.json", "tokenizer_config.json"]);
    let merges = &read_json(&root().join(TF5).join("tokenizer.json"))["model"]["merges"];
    assert!(merges[0].is_array(), "transformers 5 writes merges as pairs: {}", merges[0]);
}

#[test]
fn tokenizer_json_matches_transformers() {
    let g = goldens();
    let tok = Tokenizer::from_dir(&root().join(TF5)).unwrap();
    check(&tok, &g.variants["pad_endoftext"], "tf5 pad_endoftext");
}

/// SD 2.x's pad token `!` in a transformers 5 folder: transformers 5 lists it in
/// tokenizer.json's `added_tokens` as well as in the config; both, and the config alone,
/// give the slow tokenizer's ids.
#[test]
fn tokenizer_json_bang_pad_matches_transformers() {
    let g = goldens();
    for listed in [false, true] {
        let dir = tf5_copy(|j| {
            if listed {
                let bang = serde_json::json!({"id": 0, "content": "!", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true});
                j["added_tokens"].as_array_mut().unwrap().insert(0, bang);
            }
        });
        let cfg_path = dir.path().join("tokenizer_config.json");
        let mut cfg = read_json(&cfg_path);
        cfg["pad_token"] = "!".into();
        write_json(&cfg_path, &cfg);
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        check(&tok, &g.variants["pad_bang"], &format!("tf5 pad_bang (listed in added_tokens: {listed})"));
    }
}

/// Older tokenizer.json files write merges as "a b" strings; the ranks are the same.
#[test]
fn tokenizer_json_merges_as_strings_give_the_same_ids() {
    let g = goldens();
    let dir = tf5_copy(|j| {
        let merges = j["model"]["merges"].as_array_mut().unwrap();
        for m in merges.iter_mut() {
            let pair = m.as_array().unwrap();
            *m = format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()).into();
        }
    });
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    check(&tok, &g.variants["pad_endoftext"], "tf5 string merges");
}

#[test]
fn vocab_and_merges_win_over_tokenizer_json() {
    let src = root().join("weights/tiny-sd/tokenizer");
    let dir = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer.json"), "not json").unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.encode("a cat").ids[..4], [49406, 320, 2368, 49407]);
}

#[test]
fn bad_tokenizer_json_names_file_and_field() {
    let err = |dir: &tempfile::TempDir| Tokenizer::from_dir(dir.path()).unwrap_err().to_string();

    let dir = tf5_copy(|j| j["model"]["type"] = "WordPiece".into());
    let e = err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("model.type") && e.contains("WordPiece"), "{e}");

    // A GPT-2 style BPE without `</w>` would tokenize every word differently.
    let dir = tf5_copy(|j| j["model"]["end_of_word_suffix"] = serde_json::Value::Null);
    let e = err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("end_of_word_suffix"), "{e}");

    let dir = tf5_copy(|j| j["model"]["merges"][5] = "a b c".into());
    let e = err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("model.merges[5]"), "{e}");

    let dir = tf5_copy(|j| j["model"]["merges"] = serde_json::json!([]));
    let e = err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("no BPE merges"), "{e}");

    let dir = tf5_copy(|j| j["model"].as_object_mut().unwrap().retain(|k, _| k != "vocab"));
    let e = err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("vocab"), "{e}");

    // An empty folder names both layouts.
    let dir = tempfile::tempdir().unwrap();
    let e = err(&dir);
    assert!(e.contains("vocab.json") && e.contains("merges.txt") && e.contains("tokenizer.json"), "{e}");
}
