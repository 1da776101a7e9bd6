//! Swapped autoencoders against HF diffusers (`tools/make_goldens_vae.py`): the tiny
//! `AutoencoderTiny` (TAESD, TAESDXL) and a second `AutoencoderKL` alone (a fixed latent
//! decoded, a fixed image encoded).

mod common;

use common::{get, golden, max_abs_diff, root};
use sdgen::models::{TinyVae, Vae};
use tch::{Device, Kind};

const GOLDENS: &str = "tests/fixtures/goldens-vae";

/// Measured (fp32, sdgen's CPU convolutions vs libtorch's): TAESD decode
/// 0, encode 3.6e-7; KL decode 0, encode 5.6e-6. The bound leaves room for another
/// summation order (AMD's kernels) without letting a wrong layer pass: a missing bias or a
/// swapped layer moves values by 1e-2 or more.
const COMPONENT_TOL: f64 = 5e-5;

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
