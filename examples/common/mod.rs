//! What the CPU speed examples (`conv_speed`, `bf16_speed`) share: their options, timing
//! closures alternately, and a whole UNet evaluation with libtorch's convolution against
//! sdgen's choice.

use anyhow::{bail, Context, Result};
use sdgen::models::conv::ConvAlgo;
use sdgen::models::UNet;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// `[MODEL_DIR] [--latent N] [--reps N] [--only unet|vae]`.
pub struct Options {
    pub model: Option<PathBuf>,
    pub latent: i64,
    pub reps: usize,
    /// `--only`, where the example takes it.
    pub only: Option<String>,
}

impl Options {
    /// Reads the command line; `--only` is refused unless `takes_only`.
    pub fn parse(default_latent: i64, takes_only: bool) -> Result<Options> {
        let mut o = Options { model: None, latent: default_latent, reps: 3, only: None };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--latent" => o.latent = args.next().context("--latent needs a value")?.parse()?,
                "--reps" => o.reps = args.next().context("--reps needs a value")?.parse()?,
                "--only" if takes_only => o.only = Some(args.next().context("--only needs unet or vae")?),
                s if s.starts_with("--") => bail!("unknown option {s}"),
                s => o.model = Some(PathBuf::from(s)),
            }
        }
        if o.reps == 0 || o.latent < 1 {
            bail!("--reps and --latent must be at least 1");
        }
        Ok(o)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs each closure `reps` times, round robin, and returns each one's median seconds.
pub fn alternate(reps: usize, runs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
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

/// The model's UNet (batch 2, latent `latent`², timestep 500) in `kind`, with libtorch's
/// convolution and with sdgen's choice, timed alternately: (direct s, auto s, largest
/// difference relative to direct's largest output).
pub fn unet_direct_vs_auto(dir: &std::path::Path, kind: Kind, latent: i64, reps: usize) -> Result<(f64, f64, f64)> {
    let unet_dir = dir.join("unet");
    let cfg = sdgen::models::UNetConfig::from_file(&unet_dir.join("config.json"))?;
    let cross = match &cfg.cross_attention_dim {
        sdgen::models::unet::PerLevel::One(d) => *d,
        sdgen::models::unet::PerLevel::List(l) => *l.first().context("config has no cross_attention_dim")?,
    };
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
    Ok((t[0], t[1], diff))
}
