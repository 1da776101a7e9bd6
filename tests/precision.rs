//! Precision and memory options on the tiny models, all on the CPU: fp16 and bf16 against
//! the diffusers fp32 goldens with measured, looser bounds; the fp32 fallback of an fp16 VAE
//! that overflows; `offload` giving the same images; tiled VAE decoding against diffusers'
//! untiled image.

mod common;

use common::{check_cases, cpu, cpu_fp32, get, golden, root, Bounds};
use sdgen::models::conv::ConvAlgo;
use sdgen::models::vae::{Vae, VaeTiling};
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::Request;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// fp16 against the fp32 goldens. Measured on libtorch 2.11 CPU (x86-64) over all 32 cases:
/// embeddings ≤ 6.5e-3, latents ≤ 0.25 (Euler's early latents are ~15 in size, where an fp16
/// step is 0.008), image ≤ 2/255; the bounds leave about 2× room.
const FP16: Bounds = Bounds { embeds: 1.5e-2, latents: 0.5, relative: false, image: 4 };

/// bf16 (8 significant bits) against the fp32 goldens. Measured over all 32 cases:
/// embeddings ≤ 3.4e-2, latents ≤ 1.82, image ≤ 17/255; the bounds leave about 2× room.
const BF16: Bounds = Bounds { embeds: 7e-2, latents: 3.5, relative: false, image: 32 };

#[test]
fn fp16_on_cpu_stays_near_diffusers_fp32() {
    let m = check_cases(&cpu("weights/tiny-sd", "fp16"), "weights/tiny-sd", "tests/fixtures/goldens", 1, &FP16);
    eprintln!("fp16 worst: {m:?}");
    assert_eq!(m.cases, 32);
}

#[test]
fn bf16_on_cpu_stays_near_diffusers_fp32() {
    let m = check_cases(&cpu("weights/tiny-sd", "bf16"), "weights/tiny-sd", "tests/fixtures/goldens", 1, &BF16);
    eprintln!("bf16 worst: {m:?}");
    assert_eq!(m.cases, 32);
}

/// sdgen in bf16 against diffusers' bf16 CPU pipeline (`tools/make_goldens_bf16.py`: the
/// same noise, diffusers keeping its latents in bf16 between steps where sdgen keeps fp32),
/// with libtorch's convolutions and with sdgen's bf16 Winograd/GEMM kernels on every layer
/// they can take (the tiny model's layers are too narrow for `auto` to pick Winograd).
///
/// Two bf16 runs differ by bf16 rounding in different places, which 4 steps of the tiny
/// random model amplify: diffusers' own bf16 images are up to 13/255 (mean 1.6/255) from
/// its fp32 ones. Measured on an AMD EPYC (avx512_bf16) over the 8 cases: libtorch's
/// convolutions latents ≤ 2.53, image ≤ 18/255, mean ≤ 2.09/255; Winograd (three bf16
/// roundings per product instead of one) latents ≤ 2.85, image ≤ 31/255, mean ≤ 2.78/255.
/// The bounds leave about 2× room for other CPUs' bf16 kernels (AMX sums in another
/// order); a wrong kernel (a transposed or shifted tap) moves the mean by tens of levels.
#[test]
fn bf16_on_cpu_stays_near_diffusers_bf16() {
    let dir = root().join("tests/fixtures/goldens-bf16");
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = index["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for (conv, latents_bound, image_bound, mean_bound) in
        [(ConvAlgo::Direct, 5.0, 36, 4.0), (ConvAlgo::Winograd, 5.5, 56, 5.0)]
    {
        let pipe = Pipeline::load(&LoadOptions { conv, ..cpu("weights/tiny-sd", "bf16") }).unwrap();
        let (mut worst_latents, mut worst_px, mut worst_mean) = (0f64, 0u8, 0f64);
        for case in cases {
            let g = golden(&dir.join(case["file"].as_str().unwrap()));
            let req = common::golden_request(case);
            let want = get(&g, "latents");
            let denoised = pipe
                .denoise(std::slice::from_ref(&req), &mut |p| {
                    let w = want.get(p.step as i64 - 1);
                    worst_latents = worst_latents.max(common::max_abs_diff(p.latents, &w));
                })
                .unwrap()
                .unwrap();
            let image = &pipe.decode(&denoised.latents).unwrap()[0].rgb;
            let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
            worst_px = worst_px.max(max_px_diff(image, &want_u8));
            let mean =
                image.iter().zip(&want_u8).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / want_u8.len() as f64;
            worst_mean = worst_mean.max(mean);
        }
        eprintln!("bf16 {conv:?} vs diffusers bf16: latents {worst_latents:.3}, image {worst_px}/255, mean {worst_mean:.3}/255");
        assert!(
            worst_latents <= latents_bound && worst_px <= image_bound && worst_mean <= mean_bound,
            "bf16 {conv:?}: latents {worst_latents}, image {worst_px}/255, mean {worst_mean}/255"
        );
    }
}

/// The first golden case of the given size, with its request and golden tensors.
fn golden_case(width: u64, height: u64) -> (Request, Vec<(String, Tensor)>) {
    let dir = root().join("tests/fixtures/goldens");
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let case = index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["width"].as_u64() == Some(width) && c["height"].as_u64() == Some(height))
        .expect("a golden case of that size");
    let req = common::golden_request(case);
    (req, golden(&dir.join(case["file"].as_str().unwrap())))
}

/// diffusers' final latents for a golden case, `[1, 4, h/8, w/8]`.
fn final_latents(g: &[(String, Tensor)]) -> Tensor {
    let all = get(g, "latents");
    all.get(all.size()[0] - 1)
}

fn max_px_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "image sizes differ");
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn overflowing_fp16_vae_falls_back_to_fp32() {
    let (_, g) = golden_case(64, 64);
    // Latents this large (|z| up to ~3e4 after scaling) are representable in fp16, but the
    // VAE's activations are not.
    let latents = (final_latents(&g) * 2000.0).to_kind(Kind::Half);
    let half_vae = Vae::load(&root().join("weights/tiny-sd/vae"), Device::Cpu, Kind::Half).unwrap();
    let raw = half_vae.decode(&(&latents / half_vae.scaling_factor()));
    assert!(!bool::try_from(raw.isfinite().all()).unwrap(), "precondition: the fp16 VAE must overflow here");

    let half = Pipeline::load(&cpu("weights/tiny-sd", "fp16")).unwrap();
    let full = Pipeline::load(&cpu_fp32("weights/tiny-sd")).unwrap();
    let got = half.decode(&latents).unwrap();
    let want = full.decode(&latents.to_kind(Kind::Float)).unwrap();
    assert_eq!(max_px_diff(&got[0].rgb, &want[0].rgb), 0, "the fallback must be the fp32 decode");
    // Not the black (or NaN → 0) image of an overflowed decode.
    assert!(got[0].rgb.iter().any(|&p| p > 0));

    // The single-file loader rebuilds its fp32 VAE from the checkpoint.
    let opts =
        LoadOptions { config_dir: Some(root().join("weights/tiny-sd")), ..cpu("weights/tiny-sd.safetensors", "fp16") };
    let single = Pipeline::load(&opts).unwrap();
    assert_eq!(max_px_diff(&single.decode(&latents).unwrap()[0].rgb, &want[0].rgb), 0);
}

#[test]
fn offload_gives_the_same_images() {
    let (req, _) = golden_case(64, 96);
    for dtype in ["fp32", "fp16"] {
        let plain = Pipeline::load(&cpu("weights/tiny-sd", dtype)).unwrap();
        let off = Pipeline::load(&LoadOptions { offload: true, ..cpu("weights/tiny-sd", dtype) }).unwrap();
        assert!(off.offloaded() && !plain.offloaded());
        let a = plain.generate(&req, &mut |_| {}).unwrap();
        let b = off.generate(&req, &mut |_| {}).unwrap();
        assert_eq!(a[0].image.rgb, b[0].image.rgb, "{dtype}: offload changed the image");
        assert_eq!(a[0].record.dtype, b[0].record.dtype);
    }
}

/// Tiled decoding of diffusers' final latents against diffusers' untiled image, with tiles
/// so small (4, 5 or 8 latents) that many tiles and overlaps occur. The tiny VAE's mid-block
/// attention sees only its own tile, so tiles cannot match exactly; the bound is what
/// diffusers' own `tiled_decode` gives for the same latents and tile size
/// (`tools/tiled_decode_reference.py`): sdgen's blending must be no worse. Measured for sdgen:
/// tile 4/2 worst 156, mean 21.0; tile 5/2 (tiles do not divide the 12×8 latents) 114, 14.7;
/// tile 8/2 51, 5.1 (in 1/255).
#[test]
fn tiled_decode_matches_untiled() {
    let (_, g) = golden_case(64, 96);
    let latents = final_latents(&g);
    let want = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
    let mut pipe = Pipeline::load(&cpu_fp32("weights/tiny-sd")).unwrap();
    let untiled = pipe.decode(&latents).unwrap();
    assert!(max_px_diff(&untiled[0].rgb, &want) <= 1);
    // (tile, overlap, diffusers' worst and mean with that tile and overlap fraction)
    for (tile, overlap, worst_max, mean_max) in [(4, 2, 158, 22.36), (5, 2, 158, 22.36), (8, 2, 110, 8.43)] {
        pipe.set_vae_tiling(Some(VaeTiling { tile, overlap })).unwrap();
        let tiled = pipe.decode(&latents).unwrap();
        let worst = max_px_diff(&tiled[0].rgb, &want);
        let mean = tiled[0].rgb.iter().zip(&want).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / want.len() as f64;
        eprintln!("tile {tile}/{overlap}: worst {worst}/255, mean {mean:.3}/255");
        assert!(worst <= worst_max && mean <= mean_max, "tile {tile}/{overlap}: worst {worst}/255, mean {mean:.3}/255");
    }
    // Latents no larger than a tile decode whole, exactly as without tiling.
    pipe.set_vae_tiling(Some(VaeTiling { tile: 12, overlap: 2 })).unwrap();
    assert_eq!(pipe.decode(&latents).unwrap()[0].rgb, untiled[0].rgb);
    assert!(pipe.set_vae_tiling(Some(VaeTiling { tile: 4, overlap: 4 })).is_err());
}
