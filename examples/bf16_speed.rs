//! Measures sdgen's bf16 CPU convolutions (see `sdgen::models::conv`): each Stable
//! Diffusion 1.5 UNet convolution shape (batch 2, as with classifier-free guidance) in bf16
//! with libtorch's convolution (`direct`, oneDNN) against sdgen's choice (`auto`), then whole
//! bf16 UNet evaluations of a model, run alternately so that a busy machine slows both alike.
//! Each row also gives the largest difference of each from libtorch's fp32 convolution of the
//! same bf16 values, relative to its largest output.
//!
//!     cargo run --release --example bf16_speed -- [MODEL_DIR] [--latent 32] [--reps 3]
//!
//! MODEL_DIR is a diffusers folder, e.g. the random SD 1.5-architecture model that
//! `tools/make_sd15_random.py` writes; without it only the per-shape table is printed.

use anyhow::{bail, Context, Result};
use sdgen::models::conv::{Conv2d, ConvAlgo};
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
    let (mut latent, mut reps) = (32i64, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--latent" => latent = args.next().context("--latent needs a value")?.parse()?,
            "--reps" => reps = args.next().context("--reps needs a value")?.parse()?,
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
        "{:<30} {:>9} {:>9} {:>8} {:>10} {:>10}  auto's algorithm",
        "bf16 conv, batch 2", "direct ms", "auto ms", "speedup", "direct err", "auto err"
    );
    let l = latent;
    // (in, out, kernel, stride, size): the UNet's 3×3 layers, its 1×1 shortcuts and
    // projections, its downsamplers.
    let shapes = [
        (320, 320, 3, 1, l),
        (640, 640, 3, 1, l / 2),
        (1280, 1280, 3, 1, l / 4),
        (1280, 1280, 3, 1, l / 8),
        (2560, 1280, 3, 1, l / 4),
        (2560, 1280, 3, 1, l / 8),
        (1920, 1280, 3, 1, l / 4),
        (1920, 640, 3, 1, l / 2),
        (1280, 640, 3, 1, l / 2),
        (960, 640, 3, 1, l / 2),
        (960, 320, 3, 1, l),
        (640, 320, 3, 1, l),
        (320, 640, 3, 1, l / 2),
        (640, 1280, 3, 1, l / 4),
        (4, 320, 3, 1, l),
        (320, 4, 3, 1, l),
        (320, 320, 3, 2, l),
        (640, 640, 3, 2, l / 2),
        (1280, 1280, 3, 2, l / 4),
        (320, 320, 1, 1, l),
        (640, 640, 1, 1, l / 2),
        (1280, 1280, 1, 1, l / 4),
        (1280, 1280, 1, 1, l / 8),
        (2560, 1280, 1, 1, l / 8),
        (960, 320, 1, 1, l),
    ];
    for (cin, cout, k, stride, size) in shapes {
        let size = size.max(1);
        let pad = k / 2;
        tch::manual_seed(0);
        let x = Tensor::randn([2, cin, size, size], (Kind::BFloat16, Device::Cpu));
        let w = (Tensor::randn([cout, cin, k, k], (Kind::Float, Device::Cpu)) / ((k * k * cin) as f64).sqrt())
            .to_kind(Kind::BFloat16);
        let b = Tensor::randn([cout], (Kind::BFloat16, Device::Cpu));
        let want = x.to_kind(Kind::Float).conv2d(
            &w.to_kind(Kind::Float),
            Some(&b.to_kind(Kind::Float)),
            [stride],
            [pad],
            [1],
            1,
        );
        let scale = want.abs().max().double_value(&[]);
        let direct = Conv2d::new(w.shallow_clone(), Some(b.shallow_clone()), stride, pad, ConvAlgo::Direct);
        let auto = Conv2d::new(w, Some(b), stride, pad, ConvAlgo::Auto);
        let err = |c: &Conv2d| (c.forward(&x).to_kind(Kind::Float) - &want).abs().max().double_value(&[]) / scale;
        let (e_direct, e_auto) = (err(&direct), err(&auto));
        let t = alternate(reps.max(3), &mut [&mut || drop(direct.forward(&x)), &mut || drop(auto.forward(&x))]);
        println!(
            "{:<30} {:>9.2} {:>9.2} {:>8.2} {:>10.1e} {:>10.1e}  {}",
            format!("{cin}->{cout} {k}x{k}/{stride} at {size}x{size}"),
            t[0] * 1e3,
            t[1] * 1e3,
            t[0] / t[1],
            e_direct,
            e_auto,
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
    let kind = Kind::BFloat16;
    let direct = UNet::load_with(&unet_dir, Device::Cpu, kind, ConvAlgo::Direct)?;
    let auto = UNet::load_with(&unet_dir, Device::Cpu, kind, ConvAlgo::Auto)?;
    tch::manual_seed(0);
    let x = Tensor::randn([2, 4, latent, latent], (kind, Device::Cpu));
    let ctx = Tensor::randn([2, 77, cross], (kind, Device::Cpu));
    let a = direct.forward(&x, 500.0, &ctx).to_kind(Kind::Float);
    let b = auto.forward(&x, 500.0, &ctx).to_kind(Kind::Float);
    let diff = (&a - &b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]);
    let t = alternate(
        reps,
        &mut [&mut || drop(direct.forward(&x, 500.0, &ctx)), &mut || drop(auto.forward(&x, 500.0, &ctx))],
    );
    println!(
        "bf16 UNet forward, batch 2, latent {latent}x{latent}: direct {:.3} s, auto {:.3} s, speedup {:.3} \
         (median of {reps}); max |auto - direct| / max |direct| = {diff:.2e}",
        t[0],
        t[1],
        t[0] / t[1]
    );
    Ok(())
}
