//! `sdgen generate`: one prompt to PNG files.

use super::{GenerationArgs, LimitArgs, ModelArgs, OutputArgs};
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sdgen::pipeline::Pipeline;
use sdgen::plan::Settings;
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

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let limits = args.limits.limits();
    let started = std::time::SystemTime::now();
    // Precedence, decided here once: flags, then the --from record, then the model's and
    // sdgen's defaults (in `Settings::resolve_request`).
    let flags = Settings {
        prompt: args.prompt.clone(),
        num_images: args.num_images,
        ..args.gen.settings()?.or(args.model.settings()?)
    };
    let settings = match &args.from {
        Some(from) => {
            let record = sdgen::output::read_record(from)
                .with_context(|| format!("reading the sdgen record from {}", from.display()))?;
            flags.over_record(&record)
        }
        None => flags,
    };
    if settings.prompt.is_none() {
        bail!("no prompt given: sdgen generate \"a prompt\" (or --from IMAGE.png)");
    }
    let seed_given = settings.seed.is_some();
    let random_seed = rand::random::<u32>() as u64;
    // Everything that needs no model is checked before it is downloaded or loaded.
    let early = settings.request(settings.scheduler.clone().unwrap_or_default(), random_seed);
    sdgen::pipeline::check_request(&early, &limits)?;
    sdgen::preflight::check_output_dir(&args.output.out)?;
    sdgen::preflight::check_names(&args.output.out, args.output.name.as_deref(), &early, args.output.overwrite)?;
    let opts = sdgen::LoadOptions { limits, ..super::load_options(&settings, args.output.quiet)? };
    let spec = opts.inspect()?;
    let (req, _) = settings.resolve_request(&spec, random_seed)?;
    spec.check_start(&req)?;
    sdgen::preflight::check_clip_skip(req.clip_skip, spec.text_encoder.num_hidden_layers)?;
    let mut pipe = Pipeline::from_spec(&opts, spec)?;
    for r in pipe.apply_loras(&req)? {
        if !args.output.quiet {
            let total = r.applied + r.unmatched.len();
            eprintln!("LoRA {} ({}): {} of {total} modules applied", r.path.display(), r.format, r.applied);
        }
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
        let image_started = std::time::Instant::now();
        let out = pipe.generate(&single, &mut |p| {
            if i == 0 && p.step == 1 && !args.output.quiet {
                if let Some(note) = sdgen::limits::slow_notice(image_started.elapsed(), p.steps, req.num_images) {
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
    sdgen::save::remove_stale_temps(&written, started);
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}
