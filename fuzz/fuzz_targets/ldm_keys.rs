//! libFuzzer target `ldm_keys`: see `sdgen_fuzz::ldm_keys` (fuzz/src/lib.rs) for what it feeds where.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdgen_fuzz::ldm_keys(data));
