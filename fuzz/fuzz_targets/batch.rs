//! libFuzzer target `batch`: see `sdgen_fuzz::batch` (fuzz/src/lib.rs) for what it feeds where.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdgen_fuzz::batch(data));
