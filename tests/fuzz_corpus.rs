//! The fuzz targets' short run for every `cargo test`, on stable: each committed seed in
//! `fuzz/corpus/<target>/` plus deterministic mutations of them goes through the same entry
//! points as the libFuzzer targets (`fuzz/src/lib.rs`, included here as a module). Long runs
//! with coverage guidance are `tools/fuzz.sh TARGET SECONDS` (nightly).
//!
//! A failing input is written to `target/fuzz-failures/<target>-<n>` so that it can be
//! replayed with `tools/fuzz.sh` or added to the corpus once fixed.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Tokens worth splicing into any input: syntax of the formats read, and numbers at the edges.
const DICTIONARY: &[&str] = &[
    "\n",
    "\r\n",
    ",",
    "\"",
    ":",
    "{",
    "}",
    "[",
    "]",
    "\\u0000",
    "\\ud800",
    "null",
    "-1",
    "0",
    "1e309",
    "18446744073709551616",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "prompt",
    "num_images",
    "filename",
    "steps",
    "Negative prompt:",
    "Steps: ",
    "<|endoftext|>",
    "input_blocks.0.1.weight",
    "model.diffusion_model.",
    "first_stage_model.decoder.up.",
    "cond_stage_model.model.transformer.resblocks.",
    ".attn.in_proj_weight",
    "\u{feff}",
    "猫",
    "🐱",
    "\u{345}",
];

/// SplitMix64: a fixed sequence, so every run tests the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One to four random edits: flip a byte, cut, duplicate or delete a range, insert a
/// dictionary token, overwrite 8 bytes with an extreme integer, or splice in another seed.
fn mutate(rng: &mut Rng, data: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(at),
            2 => {
                let end = (at + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(64)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            4 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                out.splice(at..at, token.iter().copied());
            }
            5 if out.len() >= 8 => {
                let i = rng.below(out.len() - 7);
                let v = [0, 1, u64::MAX, i64::MAX as u64, 1 << 32, 1 << 62][rng.below(6)];
                out[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(256)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            _ => {}
        }
    }
    out
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = harness::repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("directory entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (path.file_name().unwrap_or_default().to_string_lossy().into_owned(), data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    files
}

/// Runs every seed of `target` and `mutations_per_seed` mutations of each (fewer for large
/// seeds, so each target takes about a second), and fails naming every input that panicked.
fn check(target: &str, mutations_per_seed: usize) {
    let seeds = corpus(target);
    let others: Vec<Vec<u8>> = seeds.iter().map(|(_, d)| d.clone()).collect();
    let mut rng = Rng(0x5D6E_4E00 ^ target.len() as u64);
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, data) in &seeds {
        inputs.push((name.clone(), data.clone()));
        let n = if data.len() > 16 << 10 { mutations_per_seed / 20 } else { mutations_per_seed };
        for k in 0..n {
            inputs.push((format!("{name} mutation {k}"), mutate(&mut rng, data, &others)));
        }
    }
    let mut failures = Vec::new();
    for (name, data) in &inputs {
        if catch_unwind(AssertUnwindSafe(|| assert!(harness::run(target, data), "unknown target"))).is_err() {
            let dir = harness::repo_root().join("target/fuzz-failures");
            let path: PathBuf = dir.join(format!("{target}-{}", failures.len()));
            let saved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, data));
            failures.push(format!("{name} (saved as {}: {saved:?})", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs panicked:\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

#[test]
fn fuzz_corpus_safetensors() {
    check("safetensors", 60);
}

#[test]
fn fuzz_corpus_ldm_keys() {
    check("ldm_keys", 60);
}

#[test]
fn fuzz_corpus_batch() {
    check("batch", 400);
}

#[test]
fn fuzz_corpus_png_metadata() {
    check("png_metadata", 200);
}

#[test]
fn fuzz_corpus_tokenizer() {
    check("tokenizer", 40);
}

#[test]
fn every_target_has_a_corpus_and_a_libfuzzer_entry() {
    for target in harness::TARGETS {
        assert!(!corpus(target).is_empty());
        let entry = harness::repo_root().join(format!("fuzz/fuzz_targets/{target}.rs"));
        assert!(entry.is_file(), "{} is missing", entry.display());
    }
}

/// What fuzzing found, each now a clean error. The seeds that trigger them are in the corpus
/// too; these name the expected message.
mod found {
    use super::harness;
    use sdgen::loading::ldm_keys::Header;
    use sdgen::loading::single_file::{inspect_header, Arch};
    use sdgen::loading::weights::MappedFile;

    fn seed(target: &str, name: &str) -> Vec<u8> {
        let path = harness::repo_root().join(format!("fuzz/corpus/{target}/seed-{name}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    fn header(name: &str) -> Header {
        let text = String::from_utf8(seed("ldm_keys", name)).expect("UTF-8 seed");
        Header::new(format!("{name}.safetensors"), harness::parse_header_lines(&text))
    }

    fn err<T: std::fmt::Debug>(r: sdgen::Result<T>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn openclip_layer_count_near_usize_max_is_an_error() {
        let mut sf = inspect_header(&header("tiny-sd2"), None).expect("tiny-sd2 inspects");
        let msg = err(sf.use_openclip_layers(usize::MAX));
        assert!(msg.contains("asks for 18446744073709551615 layers"), "{msg}");
    }

    #[test]
    fn tensors_under_unet_input_block_0_other_than_conv_in_are_unexpected() {
        let msg = err(inspect_header(&header("input-block-0-extra"), None));
        assert!(msg.contains("unexpected UNet tensor 'model.diffusion_model.input_blocks.0.1.weight'"), "{msg}");
    }

    #[test]
    fn openclip_width_whose_triple_overflows_is_an_error() {
        let msg = err(inspect_header(&header("openclip-width-overflow"), Some(Arch::Sd2)));
        assert!(msg.contains("expected 3 × 4611686018427387904 rows"), "{msg}");
    }

    #[test]
    fn empty_tensors_with_unaddressable_dimensions_are_refused() {
        for name in ["empty-huge-dims", "empty-dim-over-i64"] {
            let path = std::env::temp_dir().join(format!("sdgen-fuzz-found-{}-{name}.safetensors", std::process::id()));
            std::fs::write(&path, seed("safetensors", name)).expect("write scratch file");
            let result = MappedFile::open(&path).map(|(_, entries)| entries);
            let _ = std::fs::remove_file(&path);
            let msg = err(result);
            assert!(msg.contains("too large to address"), "{name}: {msg}");
        }
    }
}
