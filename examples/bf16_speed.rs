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

mod common;

use anyhow::Result;
use common::alternate;
use sdgen::models::conv::{Conv2d, ConvAlgo};
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let common::Options { model, latent, reps, .. } = common::Options::parse(32, false)?;
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
    let (direct, auto, diff) = common::unet_direct_vs_auto(&dir, Kind::BFloat16, latent, reps)?;
    println!(
        "bf16 UNet forward, batch 2, latent {latent}x{latent}: direct {:.3} s, auto {:.3} s, speedup {:.3} \
         (median of {reps}); max |auto - direct| / max |direct| = {diff:.2e}",
        direct,
        auto,
        direct / auto
    );
    Ok(())
}
