//! Measures sdgen's CPU convolution algorithms (see `sdgen::models::conv`): each Stable
//! Diffusion 1.5 UNet (batch 2, as with classifier-free guidance) and VAE decoder (batch 1)
//! 3×3 convolution shape on its own, then whole UNet evaluations of a model, with libtorch's
//! convolution (`direct`) against sdgen's choice (`auto`) and each Winograd tile, run
//! alternately so that a busy machine slows all alike. Each Winograd column also gives its
//! largest difference from `direct`, relative to direct's largest output.
//!
//!     cargo run --release --example conv_speed -- [MODEL_DIR] [--latent 64] [--reps 3] [--only unet|vae]
//!
//! MODEL_DIR is a diffusers folder, e.g. the random SD 1.5-architecture model that
//! `tools/make_sd15_random.py` writes to `weights/sd15-random`; without it only the
//! per-shape table is printed.

mod common;

use anyhow::{bail, Result};
use common::alternate;
use sdgen::models::conv::{Conv2d, ConvAlgo};
use sdgen::models::winograd::Tile;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let common::Options { model, latent, reps, only } = common::Options::parse(64, true)?;
    sdgen::device::keep_freed_memory();
    let _guard = tch::no_grad_guard();
    println!("threads: {}", tch::get_num_threads());
    println!(
        "{:<34} {:>9} {:>9} {:>20} {:>20} {:>20} {:>8}  auto's algorithm",
        "3x3 conv", "direct ms", "auto ms", "F2 ms (rel err)", "F4 ms (rel err)", "F6 ms (rel err)", "speedup"
    );
    let l = latent;
    // (batch, in, out, size): the UNet's levels at batch 2, then the VAE decoder's at batch 1.
    let unet = [
        (2, 320, 320, l),
        (2, 640, 640, l / 2),
        (2, 1280, 1280, l / 4),
        (2, 1280, 1280, l / 8),
        (2, 2560, 1280, l / 4),
        (2, 2560, 1280, l / 8),
        (2, 1920, 640, l / 2),
        (2, 640, 640, l),
        (2, 960, 320, l),
        (2, 640, 320, l),
        (2, 320, 320, l / 2),
    ];
    let vae = [
        (1, 512, 512, l),
        (1, 512, 512, 2 * l),
        (1, 512, 512, 4 * l),
        (1, 512, 256, 4 * l),
        (1, 256, 256, 4 * l),
        (1, 256, 256, 8 * l),
        (1, 256, 128, 8 * l),
        (1, 128, 128, 8 * l),
    ];
    let shapes: Vec<_> = match only.as_deref() {
        None => unet.iter().chain(&vae).copied().collect(),
        Some("unet") => unet.to_vec(),
        Some("vae") => vae.to_vec(),
        Some(other) => bail!("--only takes unet or vae, not {other}"),
    };
    for (batch, cin, cout, size) in shapes {
        let size = size.max(1);
        tch::manual_seed(0);
        let x = Tensor::randn([batch, cin, size, size], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([cout, cin, 3, 3], (Kind::Float, Device::Cpu)) / (9.0 * cin as f64).sqrt();
        let b = Tensor::randn([cout], (Kind::Float, Device::Cpu));
        let direct = Conv2d::new(w.shallow_clone(), Some(b.shallow_clone()), 1, 1, ConvAlgo::Direct);
        let auto = Conv2d::new(w.shallow_clone(), Some(b.shallow_clone()), 1, 1, ConvAlgo::Auto);
        let tiles: Vec<Conv2d> =
            Tile::ALL.iter().map(|&t| Conv2d::with_winograd(w.shallow_clone(), Some(b.shallow_clone()), t)).collect();
        let want = direct.forward(&x);
        let scale = want.abs().max().double_value(&[]);
        let errors: Vec<f64> =
            tiles.iter().map(|c| (c.forward(&x) - &want).abs().max().double_value(&[]) / scale).collect();
        drop(want);
        let mut runs: Vec<Box<dyn FnMut()>> =
            vec![Box::new(|| drop(direct.forward(&x))), Box::new(|| drop(auto.forward(&x)))];
        for c in &tiles {
            runs.push(Box::new(|| drop(c.forward(&x))));
        }
        let mut refs: Vec<&mut dyn FnMut()> = runs.iter_mut().map(|r| &mut **r as &mut dyn FnMut()).collect();
        let t = alternate(reps.max(3), &mut refs);
        let cell = |i: usize| format!("{:.1} ({:.0e})", t[2 + i] * 1e3, errors[i]);
        println!(
            "{:<34} {:>9.1} {:>9.1} {:>20} {:>20} {:>20} {:>8.2}  {}",
            format!("{cin}->{cout} at {size}x{size}, batch {batch}"),
            t[0] * 1e3,
            t[1] * 1e3,
            cell(0),
            cell(1),
            cell(2),
            t[0] / t[1],
            auto.algorithm(size, size)
        );
    }
    let Some(dir) = model else { return Ok(()) };
    let (direct, auto, diff) = common::unet_direct_vs_auto(&dir, Kind::Float, latent, reps)?;
    println!(
        "UNet forward, batch 2, latent {latent}x{latent}: direct {:.3} s, auto {:.3} s, speedup {:.3} \
         (median of {reps}); max |auto - direct| / max |direct| = {diff:.2e}",
        direct,
        auto,
        direct / auto
    );
    Ok(())
}
