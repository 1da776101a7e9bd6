//! The UNet and the VAE against diffusers on tiny random models.
//!
//! - tiny-sd (SD 1.x layout): `weights/tiny-sd` with goldens in
//!   `tests/fixtures/goldens/components.safetensors` (tools/make_goldens.py).
//! - an SD 2.x-style UNet (linear projections, per-level head counts, an odd-sized latent)
//!   in `tests/fixtures/unet_sd2/` (tools/make_unet_sd2_fixture.py).

use sdgen::loading::Weights;
use sdgen::models::{UNet, UNetConfig, Vae};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The repository root; `SDGEN_TEST_ROOT` overrides it for a test binary run elsewhere.
fn root() -> PathBuf {
    std::env::var_os("SDGEN_TEST_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn get<'a>(t: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    t.get(key).unwrap_or_else(|| panic!("golden '{key}' missing"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let d = max_abs_diff(got, want);
    let scale = want.abs().max().double_value(&[]);
    eprintln!("{what}: max |diff| = {d:.3e} (max |want| = {scale:.3e})");
    assert!(d <= tol, "{what}: max abs diff {d:e} exceeds {tol:e}");
}

fn components() -> HashMap<String, Tensor> {
    read(&root().join("tests/fixtures/goldens/components.safetensors"))
}

fn tiny_sd(part: &str) -> PathBuf {
    root().join("weights/tiny-sd").join(part)
}

/// A scalar golden timestep, as the f64 the pipeline hands the UNet.
fn timestep(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[0])
}

#[test]
fn tiny_sd_unet_matches_diffusers() {
    let _guard = tch::no_grad_guard();
    let g = components();
    let unet = UNet::load(&tiny_sd("unet"), Device::Cpu, Kind::Float).unwrap();
    let sample = get(&g, "unet.sample");
    let ehs = get(&g, "unet.encoder_hidden_states");

    let t_int = timestep(get(&g, "unet.t_int"));
    assert_eq!(t_int, 981.0);
    assert_close("unet t=981", &unet.forward(sample, t_int, ehs), get(&g, "unet.out_t_int"), 1e-5);

    let t_float = timestep(get(&g, "unet.t_float"));
    assert!(t_float.fract() != 0.0, "the float case must be fractional");
    assert_close("unet t=665.33", &unet.forward(sample, t_float, ehs), get(&g, "unet.out_t_float"), 1e-5);

    let tall = unet.forward(
        get(&g, "unet.sample_tall"),
        timestep(get(&g, "unet.t_tall")),
        get(&g, "unet.encoder_hidden_states_tall"),
    );
    assert_close("unet 12x8", &tall, get(&g, "unet.out_tall"), 1e-5);
}

#[test]
fn the_fractional_part_of_a_timestep_matters() {
    // Guards against the timestep being rounded to an integer somewhere on the way: the
    // golden for 665.3333 must not be reproduced by 665.
    let _guard = tch::no_grad_guard();
    let g = components();
    let unet = UNet::load(&tiny_sd("unet"), Device::Cpu, Kind::Float).unwrap();
    let out = unet.forward(get(&g, "unet.sample"), 665.0, get(&g, "unet.encoder_hidden_states"));
    assert!(max_abs_diff(&out, get(&g, "unet.out_t_float")) > 1e-4);
}

#[test]
fn tiny_sd_vae_matches_diffusers() {
    let _guard = tch::no_grad_guard();
    let g = components();
    let vae = Vae::load(&tiny_sd("vae"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(vae.scaling_factor(), 0.18215);
    assert_close("vae decode", &vae.decode(get(&g, "vae.decode_in")), get(&g, "vae.decode_out"), 1e-4);
    assert_close("vae encode", &vae.encode(get(&g, "vae.encode_in")), get(&g, "vae.encode_mean"), 1e-4);
}

/// Copies a component folder to a temp dir, with `edit` applied to the tensors before saving.
fn edited_copy(src: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.path().join("diffusion_pytorch_model.safetensors")).unwrap();
    dir
}

#[test]
fn vae_accepts_legacy_attention_names() {
    let _guard = tch::no_grad_guard();
    let g = components();
    let renames = [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")];
    let dir = edited_copy(&tiny_sd("vae"), |tensors| {
        for (name, t) in tensors.iter_mut() {
            for (new, old) in renames {
                let marker = format!("mid_block.attentions.0.{new}.");
                if name.contains(&marker) {
                    *name = name.replace(&marker, &format!("mid_block.attentions.0.{old}."));
                    // Some converted checkpoints keep these as 1x1 convolutions.
                    if name.ends_with(".weight") && new == "to_q" {
                        *t = t.unsqueeze(-1).unsqueeze(-1);
                    }
                }
            }
        }
    });
    let vae = Vae::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_close("vae decode (legacy names)", &vae.decode(get(&g, "vae.decode_in")), get(&g, "vae.decode_out"), 1e-4);
}

#[test]
fn fp16_weights_file_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_sd("unet");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    std::fs::copy(
        src.join("diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    assert!(UNet::load(dir.path(), Device::Cpu, Kind::Float).is_ok());
    std::fs::remove_file(dir.path().join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    let msg = UNet::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let key = "down_blocks.1.attentions.0.proj_in.weight";
    let dir = edited_copy(&tiny_sd("unet"), |tensors| {
        for (name, t) in tensors.iter_mut() {
            if name == key {
                *t = Tensor::zeros([64, 32, 1, 1], (Kind::Float, Device::Cpu));
            }
        }
    });
    let msg = UNet::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(msg.contains(key) && msg.contains("[64, 32, 1, 1]") && msg.contains("[64, 64, 1, 1]"), "{msg}");
}

#[test]
fn config_that_disagrees_with_weights_is_an_error() {
    // The weights have conv projections; a config asking for linear ones must not load.
    let src = tiny_sd("unet");
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let text = text.replace("\"use_linear_projection\": false", "\"use_linear_projection\": true");
    let cfg = UNetConfig::from_json(Path::new("unet/config.json"), &text).unwrap();
    assert!(cfg.use_linear_projection);
    let w = Weights::open(&[src.join("diffusion_pytorch_model.safetensors")], Device::Cpu, Kind::Float).unwrap();
    let msg = UNet::new(&w, &cfg).unwrap_err().to_string();
    assert!(msg.contains("proj_in.weight") && msg.contains("expected [64, 64]"), "{msg}");

    let extra = edited_copy(&src, |tensors| {
        tensors.push(("stray.weight".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))));
    });
    let msg = UNet::load(extra.path(), Device::Cpu, Kind::Float).unwrap_err().to_string();
    assert!(msg.contains("stray.weight"), "{msg}");
}

#[test]
fn sd2_style_unet_matches_diffusers() {
    let _guard = tch::no_grad_guard();
    let dir = root().join("tests/fixtures/unet_sd2");
    let unet = UNet::load(&dir, Device::Cpu, Kind::Float).unwrap();
    assert!(unet.config.use_linear_projection);
    assert_eq!(unet.config.heads_per_level().unwrap(), [2, 4, 4]);
    let g = read(&dir.join("goldens.safetensors"));
    let mut cases: Vec<&String> = g.keys().filter(|k| k.ends_with(".sample")).collect();
    cases.sort();
    assert!(cases.len() >= 3, "fixture has too few cases");
    for case in cases {
        let name = case.trim_end_matches(".sample");
        let out = unet.forward(
            get(&g, case),
            timestep(get(&g, &format!("{name}.timestep"))),
            get(&g, &format!("{name}.encoder_hidden_states")),
        );
        assert_close(&format!("sd2 {name}"), &out, get(&g, &format!("{name}.out")), 1e-5);
    }
}

/// Runs only where CUDA is usable (`cargo test --test unet_vae -- --ignored`): the same
/// models on the GPU in fp32 and fp16 against the CPU fp32 goldens. The tolerances allow for
/// TF32 convolutions (libtorch's default on CUDA, as in PyTorch) and half precision; the
/// point is that every tensor lands on the right device and dtype and nothing overflows.
#[test]
#[ignore = "needs a CUDA device"]
fn cuda_fp32_and_fp16_run_and_agree() {
    assert!(tch::Cuda::is_available(), "CUDA is not available");
    let _guard = tch::no_grad_guard();
    let g = components();
    let dev = Device::Cuda(0);
    for (kind, tol_unet, tol_vae) in [(Kind::Float, 5e-3, 1e-2), (Kind::Half, 3e-2, 6e-2)] {
        let on = |key: &str| get(&g, key).to_device(dev).to_kind(kind);
        let unet = UNet::load(&tiny_sd("unet"), dev, kind).unwrap();
        for (t_key, out_key, s, e) in [
            ("unet.t_int", "unet.out_t_int", "unet.sample", "unet.encoder_hidden_states"),
            ("unet.t_float", "unet.out_t_float", "unet.sample", "unet.encoder_hidden_states"),
            ("unet.t_tall", "unet.out_tall", "unet.sample_tall", "unet.encoder_hidden_states_tall"),
        ] {
            let out = unet.forward(&on(s), timestep(get(&g, t_key)), &on(e));
            assert_eq!((out.device(), out.kind()), (dev, kind));
            assert_close(&format!("cuda {kind:?} {out_key}"), &out.to_device(Device::Cpu), get(&g, out_key), tol_unet);
        }
        let sd2 = root().join("tests/fixtures/unet_sd2");
        let unet2 = UNet::load(&sd2, dev, kind).unwrap();
        let g2 = read(&sd2.join("goldens.safetensors"));
        let on2 = |key: &str| get(&g2, key).to_device(dev).to_kind(kind);
        let t = timestep(get(&g2, "b_9x7_t665.timestep"));
        let out = unet2.forward(&on2("b_9x7_t665.sample"), t, &on2("b_9x7_t665.encoder_hidden_states"));
        let want = get(&g2, "b_9x7_t665.out");
        assert_close(&format!("cuda {kind:?} sd2 9x7"), &out.to_device(Device::Cpu), want, tol_unet * 4.0);

        let vae = Vae::load(&tiny_sd("vae"), dev, kind).unwrap();
        let dec = vae.decode(&on("vae.decode_in")).to_device(Device::Cpu);
        assert_close(&format!("cuda {kind:?} vae decode"), &dec, get(&g, "vae.decode_out"), tol_vae);
        let enc = vae.encode(&on("vae.encode_in")).to_device(Device::Cpu);
        assert_close(&format!("cuda {kind:?} vae encode"), &enc, get(&g, "vae.encode_mean"), tol_vae);
    }
}
