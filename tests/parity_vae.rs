//! Swapped autoencoders against HF diffusers (`tools/make_goldens_vae.py`): the tiny
//! `AutoencoderTiny` (TAESD, TAESDXL) and a second `AutoencoderKL` alone (a fixed latent
//! decoded, a fixed image encoded), and whole pipeline runs with `vae=` swapped: SD with
//! TAESD (folder and madebyollin's decoder file) and with the second KL VAE (folder and LDM
//! file), SDXL with TAESDXL, img2img and 4-channel inpainting with TAESD and SDXL img2img with
//! TAESDXL (whose encoders draw nothing from the generator); and SDXL's fp16 decode, upcast
//! or not as the swapped VAE's `force_upcast` says.

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
/// rounding flip), decoding diffusers' own final latents 0 levels (SDXL img2img with
/// TAESDXL: latents 1.2e-6, image 1, alone 1). The bounds are
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
fn sdxl_img2img_with_taesdxl_encodes_without_drawing() {
    assert_case("xl_i2i_taesdxl", "weights/tiny-taesdxl");
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

/// A twin of tiny-sdxl's own VAE in a temporary folder: the same weights, with the config's
/// `force_upcast` set to `upcast` (`false` as madebyollin/sdxl-vae-fp16-fix says, named so).
fn sdxl_vae_twin(dir: &std::path::Path, upcast: bool) -> std::path::PathBuf {
    let own = root().join("weights/tiny-sdxl/vae");
    let twin = dir.join(if upcast { "tiny-sdxl-vae-upcast" } else { "tiny-sdxl-vae-fp16-fix" });
    common::copy_dir(&own, &twin);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(own.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["force_upcast"], true, "tiny-sdxl's own VAE says force_upcast");
    cfg["force_upcast"] = serde_json::Value::Bool(upcast);
    std::fs::write(twin.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    twin
}

/// `z` (the UNet's latents) decoded by `vae` in `kind` as the pipeline turns it into 8-bit
/// RGB (`(x / 2 + 0.5).clamp(0, 1) · 255`, rounded), HWC.
fn decode_u8(vae: &Vae, z: &tch::Tensor, kind: Kind) -> Vec<u8> {
    let x = vae.decode(&(z.to_kind(kind) / vae.config.scaling_factor));
    let x = (x / 2.0 + 0.5).clamp(0.0, 1.0).to_kind(Kind::Float);
    let u8s = (x.permute([0, 2, 3, 1]) * 255.0).round().to_kind(Kind::Uint8).contiguous();
    Vec::<u8>::try_from(u8s.view([-1])).unwrap()
}

/// diffusers' SDXL pipelines decode an fp16 run with the VAE upcast to fp32 only when the
/// VAE's config says `force_upcast` (`needs_upcasting = vae.dtype == float16 and
/// vae.config.force_upcast` in `StableDiffusionXLPipeline.__call__`), and with `vae=` swapped
/// it is the swapped VAE's config that says it: madebyollin/sdxl-vae-fp16-fix says `false`
/// and decodes in fp16. The twins share tiny-sdxl's VAE weights, so only the flag differs:
/// - `force_upcast: false`: the fp16 pipeline's image is the VAE's own fp16 decode, byte for
///   byte, and differs from the fp32 decode (measured on an AMD EPYC: by 1 level in 1076 of
///   18432 values; the test asks only that they differ, which any fp16 decode of these
///   latents does by hundreds of values);
/// - `force_upcast: true` (the model's own VAE, or a swapped twin saying so): the fp16
///   pipeline's image is the fp32 pipeline's, byte for byte.
#[test]
fn sdxl_fp16_decode_upcasts_only_as_the_swapped_vae_config_says() {
    use sdgen::pipeline::{LoadOptions, Pipeline};
    let g = golden(&root().join("tests/fixtures/goldens-sdxl/euler_64x96.safetensors"));
    // An fp16 run's latents are fp16: the fp32 decodes below start from the same values.
    let latents = get(&g, "latents").get(3).to_kind(Kind::Half);
    let dir = tempfile::tempdir().unwrap();
    let (fix, upcast) = (sdxl_vae_twin(dir.path(), false), sdxl_vae_twin(dir.path(), true));
    let load = |vae: Option<&std::path::Path>, dtype: &str| {
        let opts = LoadOptions { vae: vae.map(|p| p.to_path_buf()), ..common::cpu("weights/tiny-sdxl", dtype) };
        Pipeline::load(&opts).unwrap_or_else(|e| panic!("{vae:?} {dtype}: {e}"))
    };
    let image = |p: &Pipeline| p.decode(&latents).unwrap().remove(0).rgb;
    let fp32 = image(&load(None, "fp32"));

    let vae = Vae::load(&fix, Device::Cpu, Kind::Half).unwrap();
    assert!(!vae.config.force_upcast);
    let own_fp16 = decode_u8(&vae, &latents, Kind::Half);
    let fixed = image(&load(Some(&fix), "fp16"));
    let differ = fixed.iter().zip(&fp32).filter(|(a, b)| a != b).count();
    let worst = fixed.iter().zip(&fp32).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    eprintln!(
        "force_upcast false: fp16 image differs from fp32 in {differ} of {} values, by up to {worst}",
        fp32.len()
    );
    assert!(fixed == own_fp16, "with force_upcast false the fp16 run's image is not the VAE's fp16 decode");
    assert!(differ > 0, "with force_upcast false the fp16 run's image equals the fp32 decode: it was upcast");
    // The same twin in an fp32 run decodes as the model's own VAE (the weights are the same).
    assert!(image(&load(Some(&fix), "fp32")) == fp32);

    for (what, vae) in [("the model's own VAE", None), ("a swapped VAE saying force_upcast", Some(upcast.as_path()))] {
        let half = image(&load(vae, "fp16"));
        assert!(half == fp32, "fp16 with {what}: the image is not the fp32 decode (not upcast)");
    }

    // And diffusers' fp16 SDXL pipeline itself, decoding the same latents with each twin (its
    // script checks the decoder ran in fp32 and fp16 respectively). Measured on an AMD EPYC:
    // byte-identical, both. Another CPU's kernels may flip some roundings (1 level); the
    // bound on how many is half the values an fp16 decode changes against the fp32 one
    // (`differ`, 1076 here), so an upcast decode cannot pass for an fp16 one or the reverse.
    let d = golden(&root().join(GOLDENS).join("xl_fp16_decode.safetensors"));
    assert!(get(&d, "latents").to_kind(Kind::Half).equal(&latents), "the golden decodes other latents");
    for (key, ours) in [("upcast", &fp32), ("fp16_fix", &fixed)] {
        let want = Vec::<u8>::try_from(get(&d, &format!("{key}.image_u8")).view([-1])).unwrap();
        let worst = ours.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        eprintln!("{key}: sdgen vs diffusers' fp16 pipeline: up to {worst} levels");
        let (n, bound) = (ours.iter().zip(&want).filter(|(a, b)| a != b).count(), differ / 2);
        assert!(worst <= 1 && n < bound, "{key}: {n} values differ from diffusers (bound {bound}), by up to {worst}");
    }
}

/// diffusers' SDXL img2img and inpainting encode the init image with a `force_upcast` VAE in
/// fp32 whatever the pipeline's dtype (`prepare_latents` tests the flag alone), bf16 included;
/// one that says `false` encodes in the pipeline's dtype. With twins of the same weights in a
/// bf16 run the first step's latents differ only by the encoder's dtype, so they must differ
/// (measured on an AMD EPYC: by 9.4e-2; equal would mean the flag was ignored, as it was
/// before sdgen upcast for bf16).
#[test]
fn sdxl_bf16_img2img_encodes_in_fp32_as_force_upcast_says() {
    use sdgen::init_image::InputImage;
    use sdgen::pipeline::{LoadOptions, Pipeline};
    use sdgen::Request;
    let dir = tempfile::tempdir().unwrap();
    let init = InputImage::open(&root().join("tests/fixtures/img2img/init_64x96.png"), "init image", true).unwrap();
    let req = Request {
        prompt: "a photograph of an astronaut riding a horse".into(),
        steps: 4,
        guidance: 5.0,
        width: init.width,
        height: init.height,
        scheduler: "EulerDiscreteScheduler".into(),
        init_image: Some(init),
        strength: Some(0.75),
        ..Request::default()
    };
    let first_step = |upcast: bool| {
        let opts =
            LoadOptions { vae: Some(sdxl_vae_twin(dir.path(), upcast)), ..common::cpu("weights/tiny-sdxl", "bf16") };
        let pipe = Pipeline::load(&opts).unwrap();
        let mut first = None;
        pipe.denoise(std::slice::from_ref(&req), &mut |p| {
            first.get_or_insert_with(|| p.latents.to_kind(Kind::Float));
        })
        .unwrap()
        .unwrap();
        first.unwrap()
    };
    let d = max_abs_diff(&first_step(true), &first_step(false));
    eprintln!("bf16 img2img, first step's latents, force_upcast true vs false: {d:e}");
    assert!(d > 0.0, "a force_upcast VAE encoded in bf16 (as one without the flag)");
}
