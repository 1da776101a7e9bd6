//! `sdgen bench`: time one generation (load, first step, steps/s, decode, memory).

use super::ModelArgs;
use clap::Args;
use sdgen::Request;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image width (without it: 512; SDXL models: their trained size, 1024).
    #[arg(long)]
    pub width: Option<u32>,
    /// Image height (without it: 512; SDXL models: their trained size, 1024).
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// The scheduler (DDIM by default, as tools/bench_diffusers.py).
    #[arg(long, default_value = "DDIMScheduler")]
    pub scheduler: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Time only the VAE decode: seeded random latents of the size, decoded twice.
    #[arg(long)]
    pub decode_only: bool,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let opts = super::load_options(&args.model.settings()?, true)?;
    let (width, height) = match (args.width, args.height) {
        (Some(w), Some(h)) => (w, h),
        (w, h) => {
            let (dw, dh) = opts.inspect()?.default_size();
            (w.unwrap_or(dw), h.unwrap_or(dh))
        }
    };
    let req = Request {
        prompt: "a photo of an astronaut riding a horse".into(),
        seed: 0,
        steps: args.steps,
        guidance: args.guidance,
        width,
        height,
        scheduler: args.scheduler.clone(),
        ..Request::default()
    };
    sdgen::pipeline::check_request(&req, &Default::default())?;
    if args.decode_only {
        let r = sdgen::bench::run_decode(&opts, width, height)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("VAE decode of {}x{} on {} ({}), {} threads", r.width, r.height, r.device, r.dtype, r.threads);
            println!("load            {:.3} s", r.load_s);
            println!("VAE decode      {:.3} s, again {:.3} s", r.vae_decode_s, r.vae_decode_again_s);
            println!("peak RSS        {:.1} MiB", r.peak_rss_bytes as f64 / (1u64 << 20) as f64);
        }
        return Ok(());
    }
    let r = sdgen::bench::run(&opts, &req)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        println!(
            "model weights   {:.1} MiB on {} ({}), {}x{}, {} steps",
            mib(r.weights_bytes),
            r.device,
            r.dtype,
            r.width,
            r.height,
            r.steps
        );
        println!(
            "load            {:.3} s, peak RSS {:.1} MiB (before load {:.1} MiB)",
            r.load_s,
            mib(r.load_peak_rss_bytes),
            mib(r.rss_before_load_bytes)
        );
        println!("first step      {:.3} s", r.first_step_s);
        println!("speed           {:.3} steps/s", r.steps_per_s);
        println!("VAE decode      {:.3} s", r.vae_decode_s);
        println!("peak RSS, run   {:.1} MiB", mib(r.peak_rss_bytes));
        if let Some(v) = r.peak_vram_bytes {
            println!("peak VRAM       {:.1} MiB", mib(v));
        }
    }
    Ok(())
}
