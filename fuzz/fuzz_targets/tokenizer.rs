//! libFuzzer target `tokenizer`: see `sdgen_fuzz::tokenizer` (fuzz/src/lib.rs) for what it feeds where.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdgen_fuzz::tokenizer(data));
