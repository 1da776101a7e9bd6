//! sdgen against HF diffusers' `StableDiffusionXLPipeline` on the tiny SDXL
//! (`tools/make_goldens_sdxl.py`): both tokenizers' ids, the concatenated text states, the
//! pooled embeddings, the time ids, the latents after every step and the image, for Euler,
//! DDIM and DPM++ 2M Karras with and without a negative prompt (zeros), an empty negative
//! prompt, clip skip, size conditioning, long and messy prompts and Turbo-style few-step runs.

mod common;

use common::{get, golden, ids_of, max_abs_diff, root, Bounds, FP32};
use sdgen::noise::{NoiseSource, SeededNoise};
use sdgen::pipeline::{LoadOptions, Pipeline};
use sdgen::request::{Crop, Size, SizeConditioning};
use sdgen::tokenizer::Tokenizer;
use sdgen::Request;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const GOLDENS: &str = "tests/fixtures/goldens-sdxl";

fn size(v: &Value) -> Option<Size> {
    // diffusers' (height, width).
    let a = v.as_array()?;
    Some(Size { height: a[0].as_u64()? as u32, width: a[1].as_u64()? as u32 })
}

fn crop(v: &Value) -> Option<Crop> {
    let a = v.as_array()?;
    Some(Crop { top: a[0].as_u64()? as u32, left: a[1].as_u64()? as u32 })
}

/// The request a golden case describes.
fn request(case: &Value) -> Request {
    let opts = &case["scheduler_options"];
    let karras = opts.get("use_karras_sigmas").and_then(Value::as_bool).unwrap_or(false);
    let plain = common::golden_request(case);
    Request {
        scheduler: if karras { "DPM++ 2M Karras".into() } else { plain.scheduler.clone() },
        // diffusers counts skipped layers; requests count as A1111 (1 = the last layer).
        clip_skip: case["clip_skip"].as_u64().map(|k| k as usize + 1),
        timestep_spacing: opts.get("timestep_spacing").and_then(Value::as_str).map(|s| s.parse().unwrap()),
        size_conditioning: SizeConditioning {
            original_size: size(&case["original_size"]),
            crop_coords: crop(&case["crops_coords_top_left"]),
            target_size: size(&case["target_size"]),
            negative_original_size: size(&case["negative_original_size"]),
            negative_crop_coords: crop(&case["negative_crops_coords_top_left"]),
            negative_target_size: size(&case["negative_target_size"]),
        },
        ..plain
    }
}

fn has(g: &[(String, Tensor)], key: &str) -> bool {
    g.iter().any(|(k, _)| k == key)
}

/// Runs every golden case through a pipeline loaded with `opts`; returns the cases run.
fn check(opts: &LoadOptions, bounds: &Bounds) -> usize {
    let dir = root().join(GOLDENS);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = index["cases"].as_array().expect("cases list");
    assert!(cases.len() >= 15, "expected the full SDXL golden grid, found {}", cases.len());
    let pipe = Pipeline::load(opts).expect("tiny SDXL loads");
    let folder = root().join("weights/tiny-sdxl");
    let tok1 = Tokenizer::from_dir(&folder.join("tokenizer")).unwrap();
    let tok2 = Tokenizer::from_dir(&folder.join("tokenizer_2")).unwrap();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cases {
        ran += 1;
        let id = case["id"].as_str().unwrap();
        let g = golden(&dir.join(case["file"].as_str().unwrap()));
        let req = request(case);
        let guided = case["classifier_free_guidance"].as_bool().unwrap();
        assert_eq!(guided, req.guidance > 1.0, "{id}");

        // Token ids of both tokenizers: identical (tokenizer_2 pads with "!", id 0).
        if tok1.encode(&req.prompt).ids != ids_of(get(&g, "cond_ids"))
            || tok2.encode(&req.prompt).ids != ids_of(get(&g, "cond_ids_2"))
        {
            failures.push(format!("{id}: prompt token ids differ"));
        }
        if has(&g, "uncond_ids") {
            let neg = req.negative_prompt.as_deref().unwrap_or("");
            if tok1.encode(neg).ids != ids_of(get(&g, "uncond_ids"))
                || tok2.encode(neg).ids != ids_of(get(&g, "uncond_ids_2"))
            {
                failures.push(format!("{id}: negative token ids differ"));
            }
        }

        // Text states, pooled embeddings and time ids, for each pass diffusers ran.
        let one = std::slice::from_ref(&req);
        let mut passes = vec![("cond", pipe.conditioning(one, false).unwrap())];
        if guided {
            passes.insert(0, ("uncond", pipe.conditioning(one, true).unwrap()));
        }
        let ids = get(&g, "add_time_ids");
        for (row, (name, c)) in passes.iter().enumerate() {
            let d = max_abs_diff(&c.context, get(&g, &format!("{name}_embeds")));
            let p = max_abs_diff(c.pooled.as_ref().unwrap(), get(&g, &format!("{name}_pooled")));
            if d > bounds.embeds || p > bounds.embeds {
                failures.push(format!("{id}: {name} states differ by {d:e}, pooled by {p:e}"));
            }
            let want = ids.get(row as i64).unsqueeze(0);
            if max_abs_diff(c.time_ids.as_ref().unwrap(), &want) != 0.0 {
                failures.push(format!("{id}: {name} time ids {:?}, diffusers {:?}", c.time_ids, want));
            }
        }
        if ids.size()[0] != passes.len() as i64 {
            failures.push(format!("{id}: diffusers ran {} passes, sdgen {}", ids.size()[0], passes.len()));
        }

        // Initial noise: identical.
        let noise = SeededNoise::new(req.seed).randn(&get(&g, "noise").size(), Device::Cpu, Kind::Float);
        if !noise.equal(get(&g, "noise")) {
            failures.push(format!("{id}: initial noise differs"));
        }

        // Latents after every step.
        let want = get(&g, "latents");
        let (mut worst, mut seen) = (0f64, 0);
        let denoised = pipe
            .denoise(one, &mut |p| {
                let w = want.get(p.step as i64 - 1);
                let scale = if bounds.relative { w.abs().max().double_value(&[]).max(1.0) } else { 1.0 };
                worst = worst.max(max_abs_diff(p.latents, &w) / scale);
                seen += 1;
            })
            .unwrap()
            .unwrap();
        if seen != req.steps || worst > bounds.latents {
            failures.push(format!("{id}: {seen} steps, latents differ by {worst:e}"));
        }
        for key in ["timestep_spacing", "steps_offset", "prediction_type", "_class_name", "use_karras_sigmas"] {
            let (ours, theirs) = (denoised.scheduler_config.get(key), case["scheduler_config"].get(key));
            if theirs.is_some() && ours != theirs {
                failures.push(format!("{id}: scheduler config {key} = {ours:?}, diffusers used {theirs:?}"));
            }
        }

        // Decoded 8-bit image.
        let images = pipe.decode(&denoised.latents).unwrap();
        let want_u8 = Vec::<u8>::try_from(get(&g, "image_u8").view([-1])).unwrap();
        let px = images[0].rgb.iter().zip(&want_u8).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(255);
        if images[0].rgb.len() != want_u8.len() || px > bounds.image {
            failures.push(format!("{id}: image differs by {px}/255"));
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} checks failed (see above)", failures.len());
    ran
}

#[test]
fn tiny_sdxl_matches_diffusers() {
    assert_eq!(check(&common::cpu_fp32("weights/tiny-sdxl"), &FP32), 15);
}

#[test]
fn sdxl_components_match_diffusers() {
    // Each model alone: every hidden state of both text encoders and the second's projected
    // pooled output; the UNet with added conditioning at an integer and a fractional
    // timestep; the VAE decode.
    use sdgen::models::clip::ClipTextModel;
    use sdgen::models::unet::{Conditioning, UNet};
    use sdgen::models::vae::Vae;
    let g = golden(&root().join(GOLDENS).join("components.safetensors"));
    let dir = root().join("weights/tiny-sdxl");
    for (name, sub, layers) in [("te1", "text_encoder", 5usize), ("te2", "text_encoder_2", 10)] {
        let te = ClipTextModel::load(&dir.join(sub), Device::Cpu, Kind::Float).unwrap();
        let ids = get(&g, &format!("{name}.input_ids"));
        let states = get(&g, &format!("{name}.hidden_states"));
        for from_end in 1..=layers + 1 {
            let out = te.hidden_state(ids, from_end).unwrap();
            let d = max_abs_diff(&out.hidden, &states.get((layers + 1 - from_end) as i64));
            assert!(d < 1e-5, "{name} hidden_states[-{from_end}] differs by {d:e}");
            if name == "te2" {
                let p = max_abs_diff(&out.pooled, get(&g, "te2.text_embeds"));
                assert!(p < 1e-5, "te2 text_embeds differ by {p:e}");
            }
        }
        assert!(te.hidden_state(ids, layers + 2).is_err() && te.hidden_state(ids, 0).is_err());
    }
    let last = ClipTextModel::load(&dir.join("text_encoder_2"), Device::Cpu, Kind::Float).unwrap();
    let out = last.forward(get(&g, "te2.input_ids"), None).unwrap();
    assert!(max_abs_diff(&out.hidden, get(&g, "te2.last_hidden_state")) < 1e-5);

    let unet = UNet::load(&dir.join("unet"), Device::Cpu, Kind::Float).unwrap();
    assert!(unet.has_added_conditioning());
    let cond = Conditioning {
        context: get(&g, "unet.encoder_hidden_states").shallow_clone(),
        pooled: Some(get(&g, "unet.text_embeds").shallow_clone()),
        time_ids: Some(get(&g, "unet.time_ids").shallow_clone()),
    };
    let sample = get(&g, "unet.sample");
    for (t, out) in [("unet.t_int", "unet.out_t_int"), ("unet.t_float", "unet.out_t_float")] {
        let t = get(&g, t).to_kind(Kind::Double).double_value(&[0]);
        let ours = unet.forward_cond(sample, t, &cond).unwrap();
        let d = max_abs_diff(&ours, get(&g, out));
        assert!(d < 1e-4, "UNet at t={t} differs by {d:e}");
    }
    // Without the added conditioning this UNet refuses to run instead of ignoring it.
    let bare = Conditioning::text(cond.context.shallow_clone());
    assert!(unet.forward_cond(sample, 10.0, &bare).is_err());
    let wrong = Conditioning { pooled: Some(Tensor::zeros([2, 7], (Kind::Float, Device::Cpu))), ..cond };
    assert!(unet.forward_cond(sample, 10.0, &wrong).unwrap_err().to_string().contains("[2, 16]"));

    let vae = Vae::load(&dir.join("vae"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(vae.scaling_factor(), 0.13025);
    let d = max_abs_diff(&vae.decode(get(&g, "vae.decode_in")), get(&g, "vae.decode_out"));
    assert!(d < 1e-4, "VAE decode differs by {d:e}");
}

/// fp16 on the CPU against the fp32 goldens, with the bounds of the 1.x fp16 test
/// (`tests/precision.rs`).
#[test]
fn tiny_sdxl_fp16_on_cpu_stays_near_diffusers_fp32() {
    let fp16 = Bounds { embeds: 1.5e-2, latents: 0.5, relative: false, image: 4 };
    assert_eq!(check(&common::cpu("weights/tiny-sdxl", "fp16"), &fp16), 15);
}

#[test]
fn sdxl_decodes_an_fp16_run_in_fp32_as_force_upcast_says() {
    // diffusers' SDXL pipeline upcasts a `force_upcast` VAE to fp32 before decoding an fp16
    // run; so does sdgen: the fp16 pipeline's image is the fp32 pipeline's, byte for byte.
    let g = golden(&root().join(GOLDENS).join("euler_64x96.safetensors"));
    let latents = get(&g, "latents").get(3).to_kind(Kind::Half);
    let half = Pipeline::load(&common::cpu("weights/tiny-sdxl", "fp16")).unwrap();
    let full = Pipeline::load(&common::cpu_fp32("weights/tiny-sdxl")).unwrap();
    let (a, b) = (half.decode(&latents).unwrap(), full.decode(&latents).unwrap());
    assert!(a == b, "the fp16 run's image differs from the fp32 VAE's");
}
