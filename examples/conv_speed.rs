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

use anyhow::{bail, Context, Result};
use sdgen::models::conv::{Conv2d, ConvAlgo};
use sdgen::models::winograd::Tile;
use sdgen::models::UNet;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs each closure `reps` times, round robin, and returns each one's median seconds.
fn alternate(reps: usize, runs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times = vec![Vec::new(); runs.len()];
    for run in runs.iter_mut() {
        run(); // warm-up
    }
    for _ in 0..reps {
        for (i, run) in runs.iter_mut().enumerate() {
            let t = Instant::now();
            run();
            times[i].push(t.elapsed().as_secs_f64());
        }
    }
    times.into_iter().map(median).collect()
}

fn main() -> Result<()> {
    let mut model = None;
    let (mut latent, mut reps) = (64i64, 3usize);
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--latent" => latent = args.next().context("--latent needs a value")?.parse()?,
            "--reps" => reps = args.next().context("--reps needs a value")?.parse()?,
            "--only" => only = Some(args.next().context("--only needs unet or vae")?),
            s if s.starts_with("--") => bail!("unknown option {s}"),
            s => model = Some(std::path::PathBuf::from(s)),
        }
    }
    if reps == 0 || latent < 1 {
        bail!("--reps and --latent must be at least 1");
    }
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
    let unet_dir = dir.join("unet");
    let cross = {
        let cfg = sdgen::models::UNetConfig::from_file(&unet_dir.join("config.json"))?;
        match &cfg.cross_attention_dim {
            sdgen::models::unet::PerLevel::One(d) => *d,
            sdgen::models::unet::PerLevel::List(l) => *l.first().context("config has no cross_attention_dim")?,
        }
    };
    let direct = UNet::load_with(&unet_dir, Device::Cpu, Kind::Float, ConvAlgo::Direct)?;
    let auto = UNet::load_with(&unet_dir, Device::Cpu, Kind::Float, ConvAlgo::Auto)?;
    tch::manual_seed(0);
    let x = Tensor::randn([2, 4, latent, latent], (Kind::Float, Device::Cpu));
    let ctx = Tensor::randn([2, 77, cross], (Kind::Float, Device::Cpu));
    let diff = (direct.forward(&x, 500.0, &ctx) - auto.forward(&x, 500.0, &ctx)).abs().max().double_value(&[]);
    let t = alternate(
        reps,
        &mut [&mut || drop(direct.forward(&x, 500.0, &ctx)), &mut || drop(auto.forward(&x, 500.0, &ctx))],
    );
    println!(
        "UNet forward, batch 2, latent {latent}x{latent}: direct {:.3} s, auto {:.3} s, speedup {:.3} \
         (median of {reps}); max |auto - direct| = {diff:.2e}",
        t[0],
        t[1],
        t[0] / t[1]
    );
    Ok(())
}
