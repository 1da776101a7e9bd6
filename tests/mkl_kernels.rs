//! sdgen's answer to MKL's CPU-vendor question (`src/mkl.rs`): every binary of the package
//! exports it so MKL inside libtorch calls it, and the images are the same (to float
//! rounding) whichever kernels MKL then runs.

mod common;

use std::process::Command;
use tch::{Device, Kind, Tensor};

#[test]
fn mkl_calls_sdgens_answer_in_this_test_binary() {
    assert!(sdgen::mkl::override_active(), "the test binary does not export mkl_serv_intel_cpu_true");
    // An fp32 matrix product large enough for MKL's GEMM; MKL asks on its first one.
    let a = Tensor::randn([256, 256], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&a);
    assert!(sdgen::mkl::asked(), "MKL ran a product without asking sdgen which CPU this is");
}

/// The `sdgen` binary with the override on, or turned off by its variable.
fn sdgen(override_off: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdgen"));
    cmd.env_remove("SDGEN_MODEL");
    if override_off {
        cmd.env(sdgen::mkl::ENV, "0");
    } else {
        cmd.env_remove(sdgen::mkl::ENV);
    }
    cmd
}

fn info(env_off: bool) -> serde_json::Value {
    let out = sdgen(env_off).args(["info", "--json"]).output().expect("run sdgen info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("info JSON")
}

#[test]
fn info_says_which_kernels_and_the_variable_turns_the_override_off() {
    let on = info(false)["cpu_blas"].as_str().expect("cpu_blas").to_string();
    let off = info(true)["cpu_blas"].as_str().expect("cpu_blas").to_string();
    if sdgen::mkl::genuine_intel() {
        // MKL's own answer on Intel CPUs: nothing to turn off.
        assert!(on.starts_with("Intel kernels") && off.starts_with("Intel kernels"), "{on} / {off}");
    } else {
        assert!(off.starts_with("generic kernels"), "{off}");
        assert_eq!(on.starts_with("Intel kernels"), sdgen::mkl::intel_kernels(), "{on}");
    }
}

/// The same seeded image with and without the override: on an AMD CPU with AVX-512 these are
/// MKL's AVX-512 and AVX2 kernels, which sum in different orders. Measured on an AMD EPYC:
/// identical PNGs or at most 1 level apart.
#[test]
fn images_agree_whichever_kernels_mkl_runs() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::root().join("weights/tiny-sd");
    let mut pixels = Vec::new();
    for (name, off) in [("on", false), ("off", true)] {
        let out = dir.path().join(name);
        let mut cmd = sdgen(off);
        cmd.args(["generate", "-m"]).arg(&model);
        cmd.args(["--device", "cpu", "--steps", "4", "--seed", "7", "--width", "64", "--height", "64", "-o"]);
        cmd.arg(&out).arg("a red cube on a table");
        let o = cmd.output().expect("run sdgen");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        pixels.push(common::png_pixels(&common::only_png(&out)));
    }
    let ((w1, h1, a), (w2, h2, b)) = (&pixels[0], &pixels[1]);
    assert_eq!((w1, h1), (w2, h2));
    let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    assert!(worst <= 1, "images differ by {worst} levels between MKL's kernels");
}

#[test]
fn a_value_of_the_variable_that_is_not_a_switch_is_named_and_ignored() {
    let out = sdgen(false).env(sdgen::mkl::ENV, "maybe").args(["info", "--json"]).output().expect("run sdgen info");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SDGEN_MKL_INTEL_KERNELS=\"maybe\" is not understood"), "{stderr}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert_eq!(info["cpu_blas"], self::info(false)["cpu_blas"], "ignored: as if unset");
}
