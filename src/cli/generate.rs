//! `sdgen generate`: one prompt to PNG files.

use super::{GenerationArgs, LimitArgs, ModelArgs, OutputArgs};
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sdgen::pipeline::Pipeline;
use sdgen::Request;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The text prompt (optional with --from).
    pub prompt: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenerationArgs,
    /// Regenerate the image this PNG records (its prompt, seed, settings, model, device and
    /// dtype); other flags override the recorded values.
    #[arg(long, value_name = "IMAGE.png")]
    pub from: Option<PathBuf>,
    /// How many images; image i uses seed + i.
    #[arg(long, value_name = "N")]
    pub num_images: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The request the flags describe, on top of `base` (defaults, or a record from --from).
pub fn build_request(
    prompt: Option<String>,
    gen: &GenerationArgs,
    num_images: Option<usize>,
    base: Request,
) -> Request {
    Request {
        prompt: prompt.unwrap_or(base.prompt),
        negative_prompt: gen.negative.clone().or(base.negative_prompt).filter(|s| !s.is_empty()),
        seed: gen.seed.unwrap_or(base.seed),
        steps: gen.steps.unwrap_or(base.steps),
        guidance: gen.guidance.unwrap_or(base.guidance),
        width: gen.width.unwrap_or(base.width),
        height: gen.height.unwrap_or(base.height),
        scheduler: gen.scheduler.clone().unwrap_or(base.scheduler),
        num_images: num_images.unwrap_or(base.num_images),
        clip_skip: gen.clip_skip.or(base.clip_skip),
    }
}

pub fn progress_bar(quiet: bool) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

pub fn run(mut args: GenerateArgs) -> anyhow::Result<()> {
    args.limits.apply();
    let mut base = Request { seed: rand::random::<u32>() as u64, ..Request::default() };
    let mut seed_given = args.gen.seed.is_some();
    if let Some(from) = &args.from {
        let record = sdgen::output::read_record(from)
            .with_context(|| format!("reading the sdgen record from {}", from.display()))?;
        base = record.request.clone();
        seed_given = true;
        args.model.model.get_or_insert_with(|| record.model.source.clone());
        args.model.device.get_or_insert(record.device.clone());
        args.model.dtype.get_or_insert(record.dtype.clone());
        args.model.memory.offload |= record.offload;
        if !record.conv.is_auto() {
            args.model.memory.cpu_conv.get_or_insert_with(|| record.conv.name().to_string());
        }
        if args.prompt.is_none() {
            args.prompt = Some(record.request.prompt.clone());
        }
        if args.gen.scheduler.is_none() {
            args.gen.scheduler = Some(record.request.scheduler.clone());
        }
    }
    if args.prompt.is_none() {
        bail!("no prompt given: sdgen generate \"a prompt\" (or --from IMAGE.png)");
    }
    let mut req = build_request(args.prompt.clone(), &args.gen, args.num_images, base);
    sdgen::pipeline::check_request(&req)?;
    sdgen::preflight::check_output_dir(&args.output.out)?;
    sdgen::preflight::check_names(&args.output.out, args.output.name.as_deref(), &req, args.output.overwrite)?;
    let load = args.model.resolve(args.output.quiet)?;
    sdgen::preflight::check_clip_skip(req.clip_skip, sdgen::preflight::text_encoder_layers(&load)?)?;
    let pipe = Pipeline::load(&load)?;
    if args.gen.scheduler.is_none() {
        req.scheduler = pipe.default_scheduler();
    }
    pipe.check(&req)?;
    if !seed_given {
        eprintln!("seed: {}", req.seed);
    }
    let bar = progress_bar(args.output.quiet);
    bar.set_length(req.steps as u64);
    let timestamp = sdgen::save::run_timestamp();
    let mut written = Vec::new();
    for i in 0..req.num_images {
        let single = Request { seed: req.image_seed(i), num_images: 1, ..req.clone() };
        bar.set_prefix(format!("image {}/{}", i + 1, req.num_images));
        bar.reset();
        let started = std::time::Instant::now();
        let out = pipe.generate(&single, &mut |p| {
            if i == 0 && p.step == 1 && !args.output.quiet {
                if let Some(note) = sdgen::limits::slow_notice(started.elapsed(), p.steps, req.num_images) {
                    bar.suspend(|| eprintln!("{note}"));
                }
            }
            bar.set_length(p.steps as u64);
            bar.set_position(p.step as u64);
        })?;
        for g in out {
            let path = sdgen::save::save(
                &g,
                &args.output.out,
                args.output.name.as_deref(),
                i,
                &timestamp,
                args.output.overwrite,
            )
            .with_context(|| format!("writing image {} of {}", i + 1, req.num_images))?;
            written.push(path);
        }
    }
    bar.finish_and_clear();
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
