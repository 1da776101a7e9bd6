//! libFuzzer target `png_metadata`: see `sdgen_fuzz::png_metadata` (fuzz/src/lib.rs) for what it feeds where.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdgen_fuzz::png_metadata(data));
