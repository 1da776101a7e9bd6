//! Swapped autoencoders against HF diffusers (`tools/make_goldens_vae.py`): the tiny
//! `AutoencoderTiny` (TAESD, TAESDXL) and a second `AutoencoderKL` alone (a fixed latent
//! decoded, a fixed image encoded), and whole pipeline runs with `vae=` swapped: SD with
//! TAESD (folder and madebyollin's decoder file) and with the second KL VAE (folder and LDM
//! file), SDXL with TAESDXL, img2img and 4-channel inpainting with TAESD (whose encoder draws
//! nothing from the generator).

mod common;

use common::{get, golden, max_abs_diff, root};
use sdgen::models::{TinyVae, Vae};
use tch::{Device, Kind};

const GOLDENS: &str = "tests/fixtures/goldens-vae";

/// Measured on an AMD EPYC (fp32, sdgen's CPU convolutions vs libtorch's): TAESD decode 0,
/// encode 3.6e-7; KL decode 0, encode 1.1e-5 (values of magnitude ~1). The bound leaves room
/// for another summation order (AMD's kernels) without letting a wrong layer pass: a missing
/// bias or a swapped layer moves values by 1e-2 or more.
const COMPONENT_TOL: f64 = 1e-4;

#[test]
fn tiny_autoencoders_decode_and_encode_as_diffusers() {
    let g = golden(&root().join(GOLDENS).join("components.safetensors"));
    let (z, image) = (get(&g, "z"), get(&g, "image"));
    for name in ["tiny-taesd", "tiny-taesdxl"] {
        let vae = TinyVae::load(&root().join("weights").join(name), Device::Cpu, Kind::Float).unwrap();
        let key = name.replace('-', "_");
        let decoded = vae.decode(z);
        let d = max_abs_diff(&decoded, get(&g, &format!("{key}.decoded")));
        let encoded = vae.encode(image).unwrap();
        let e = max_abs_diff(&encoded, get(&g, &format!("{key}.encoded")));
        eprintln!("{name}: decode {d:e}, encode {e:e}");
        assert!(d < COMPONENT_TOL && e < COMPONENT_TOL, "{name}: decode differs by {d:e}, encode by {e:e}");
    }
}

#[test]
fn second_kl_autoencoder_decodes_and_encodes_as_diffusers() {
    let g = golden(&root().join(GOLDENS).join("components.safetensors"));
    let vae = Vae::load(&root().join("weights/tiny-sd-vae2"), Device::Cpu, Kind::Float).unwrap();
    let d = max_abs_diff(&vae.decode(get(&g, "z")), get(&g, "tiny_sd_vae2.decoded"));
    let e = max_abs_diff(&vae.encode(get(&g, "image")), get(&g, "tiny_sd_vae2.encoded"));
    eprintln!("tiny-sd-vae2: decode {d:e}, encode {e:e}");
    assert!(d < COMPONENT_TOL && e < COMPONENT_TOL, "decode differs by {d:e}, encode by {e:e}");
}

/// Latents after every step (relative to max(1, |latents|), as `common::FP32`) and the 8-bit
/// image. Measured on an AMD EPYC: latents 2.1e-6 at most, whole-run images 1 level (a
/// rounding flip), decoding diffusers' own final latents 0 levels. The bounds are
/// `common::FP32`'s (another CPU's summation order moves latents by ~1e-6, and may flip a
/// pixel's rounding by one level).
const LATENTS_TOL: f64 = 1e-4;
const IMAGE_TOL: u8 = 1;

/// Runs a golden case with the VAE at `vae` (relative to the crate root) and returns the
/// worst latent difference and image difference.
fn run_case(id: &str, vae: &str) -> (f64, u8) {
    run_case_in(id, vae, "fp32", IMAGE_TOL)
}

/// [`run_case`] in `dtype`; decoding diffusers' final latents alone may differ by `alone_tol`.
fn run_case_in(id: &str, vae: &str, dtype: &str, alone_tol: u8) -> (f64, u8) {
    use sdgen::init_image::InputImage;
    use sdgen::noise::{NoiseSource, SeededNoise};
    use sdgen::pipeline::Pipeline;
    use sdgen::Request;
    let dir = root().join(GOLDENS);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let case = index["cases"].as_array().unwrap().iter().find(|c| c["id"] == id).expect("case");
    let g = golden(&dir.join(case["file"].as_str().unwrap()));
    let model = format!("weights/{}", case["model"].as_str().unwrap());
    let opts = sdgen::pipeline::LoadOptions { vae: Some(root().join(vae)), ..common::cpu(&model, dtype) };
    let pipe = Pipeline::load(&opts).unwrap_or_else(|e| panic!("{id} with {vae}: {e}"));
    let init = case["init_image"].as_str().map(|p| InputImage::open(&root().join(p), "init image", true).unwrap());
    let (width, height) = match &init {
        Some(i) => (i.width, i.height),
        None => (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32),
    };
    let req = Request {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        seed: case["seed"].as_u64().unwrap(),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap(),
        width,
        height,
        scheduler: case["scheduler"].as_str().unwrap().to_string(),
        init_image: init,
        mask: case["mask"].as_str().map(|p| InputImage::open(&root().join(p), "mask", true).unwrap()),
        strength: case["strength"].as_f64(),
        ..Request::default()
    };
    // The noise is the generator's first draw: with the tiny autoencoder's encoder nothing is
    // drawn before it, even in img2img (the golden script checks diffusers does so too).
    let shape = get(&g, "noise").size();
    assert!(SeededNoise::new(req.seed).randn(&shape, Device::Cpu, Kind::Float).equal(get(&g, "noise")));
    let want = get(&g, "latents");
    let mut worst = 0f64;
    let mut seen = 0;
    let denoised = pipe
        .denoise(std::slice::from_ref(&req), &mut |p| {
            let w = want.get(seen);
            let scale = w.abs().max().double_value(&[]).max(1.0);
            worst = worst.max(max_abs_diff(p.latents, &w) / scale);
            seen += 1;
        })
        .unwrap()
        .unwrap();
    assert_eq!(seen, want.size()[0], "{id}: steps run");
    let images = pipe.decode(&denoised.latents).unwrap();
    let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
    assert_eq!(images[0].rgb.len(), want_u8.len(), "{id}: image size");
    let px = images[0].rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
    // The decode alone, from diffusers' own final latents.
    let last = want.get(want.size()[0] - 1);
    let alone = pipe.decode(&last).unwrap();
    let px_alone = alone[0].rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
    eprintln!("{id} with {vae} in {dtype}: latents {worst:e}, image {px}, decode alone {px_alone}");
    assert!(px_alone <= alone_tol, "{id}: decoding diffusers' latents differs by {px_alone}");
    (worst, px)
}

fn assert_case(id: &str, vae: &str) {
    let (latents, px) = run_case(id, vae);
    assert!(latents <= LATENTS_TOL && px <= IMAGE_TOL, "{id} with {vae}: latents {latents:e}, image {px}/255");
}

#[test]
fn sd_with_taesd_matches_diffusers() {
    assert_case("sd_taesd", "weights/tiny-taesd");
    // The same decoder from madebyollin's original file (text-to-image needs no encoder).
    assert_case("sd_taesd", "weights/tiny-taesd-madebyollin/taesd_decoder.safetensors");
}

#[test]
fn sd_with_another_kl_vae_matches_diffusers() {
    assert_case("sd_vae2", "weights/tiny-sd-vae2");
    // The same weights as one file with original LDM names and no config.
    assert_case("sd_vae2", "weights/tiny-sd-vae2.safetensors");
}

#[test]
fn sdxl_with_taesdxl_matches_diffusers() {
    assert_case("xl_taesdxl", "weights/tiny-taesdxl");
}

#[test]
fn img2img_with_taesd_encodes_without_drawing() {
    assert_case("sd_i2i_taesd", "weights/tiny-taesd");
}

#[test]
fn inpainting_with_taesd_encodes_without_drawing() {
    assert_case("sd_inp4_taesd", "weights/tiny-taesd");
}

/// fp16 on the CPU with the tiny autoencoder (which diffusers never upcasts, SDXL included)
/// against the fp32 goldens. Measured on an AMD EPYC: SD latents 3.1e-3 relative, image 12
/// levels, decoding the golden latents alone 2; SDXL latents 1.6e-3, image 2, alone 1. The
/// random tiny TAESD (kernels scaled up so that its image is not flat) magnifies the fp16
/// latents' error more than a trained one; the bounds leave 2× room (latents 1e-2, image 24,
/// alone 4) and still fail for a wrong VAE (the second KL VAE's image of the same latents
/// differs by 255 levels).
#[test]
fn taesd_in_fp16_stays_near_diffusers_fp32() {
    for (id, vae) in [("sd_taesd", "weights/tiny-taesd"), ("xl_taesdxl", "weights/tiny-taesdxl")] {
        let (latents, px) = run_case_in(id, vae, "fp16", 4);
        assert!(latents <= 1e-2 && px <= 24, "{id} fp16: latents {latents:e}, image {px}/255");
    }
}
