//! `sdgen generate`: one prompt to PNG files.

use super::{GenerationArgs, LimitArgs, ModelArgs, OutputArgs, PreviewArgs};
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
    /// The text prompt, as a flag (as A1111 and stable-diffusion.cpp spell it).
    #[arg(long = "prompt", short = 'p', value_name = "TEXT", conflicts_with = "prompt")]
    pub prompt_flag: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenerationArgs,
    /// Regenerate the image this PNG records (its prompt, seed, settings, model, device and
    /// dtype); other flags override the recorded values. Also takes A1111 PNGs and text files
    /// holding a pasted A1111 `parameters` text (prompt, sampler, schedule, steps, CFG scale,
    /// seed, size, clip skip; the model comes from --model).
    #[arg(long, value_name = "IMAGE.png")]
    pub from: Option<PathBuf>,
    /// How many images; image i uses seed + i.
    #[arg(long, short = 'b', visible_alias = "batch-count", value_name = "N", default_value = "1")]
    pub num_images: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
    /// Print what was written as one JSON object on stdout (paths, seeds, timings; see the
    /// README) instead of one path a line.
    #[arg(long)]
    pub json: bool,
    /// The arguments the config file set (their ids), which a `--from` record overrides.
    #[arg(skip)]
    pub from_config: Vec<String>,
}

/// `--from`: the flags over what `from` records (sdgen's record, or an A1111 `parameters`
/// text in a PNG or a text file), warning about what an A1111 text has that sdgen cannot use.
fn from_settings(from: &std::path::Path, flags: Settings) -> anyhow::Result<Settings> {
    use sdgen::import::Source;
    let source = Source::read(from).with_context(|| format!("reading how {} was made", from.display()))?;
    match source {
        Source::Sdgen { record, .. } => Ok(flags.over_record(&record)),
        Source::A1111 { parameters } => {
            let imported = sdgen::import::from_parameters(&parameters)?;
            if let Some(e) = imported.sampler_error.filter(|_| flags.scheduler.is_none()) {
                bail!("{}: {e}", from.display());
            }
            for w in &imported.warnings {
                log::warn!("{}: {w}", from.display());
            }
            let mut settings = flags.or(imported.settings);
            // A1111's denoising strength means something only when starting from an image.
            if settings.init_image.is_none() {
                settings.strength = None;
            }
            Ok(settings)
        }
        Source::ComfyUi { .. } => {
            bail!("{} holds a ComfyUI workflow, which --from cannot replay; `sdgen show` summarizes it", from.display())
        }
    }
}

/// What `generate --json` prints: the files written, and how long it all took.
#[derive(serde::Serialize)]
struct Report {
    images: Vec<ImageReport>,
    /// Sampling steps per image, as `--steps` counts them (less those img2img skips).
    steps: usize,
    /// Loading (and checking) the model, before the first image.
    load_seconds: f64,
    /// Denoising, decoding and writing every image.
    generate_seconds: f64,
    /// From start to the last file written.
    total_seconds: f64,
    /// Sampling steps per second over `generate_seconds`.
    steps_per_second: f64,
}

#[derive(serde::Serialize)]
struct ImageReport {
    path: PathBuf,
    seed: u64,
    seconds: f64,
}

/// How often a run without a terminal says where it is within one image.
const STEP_LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A step bar when stderr is a terminal (and not quiet); hidden otherwise, where [`run`]
/// prints lines instead.
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
    let clock = std::time::Instant::now();
    // Precedence, decided here once: flags, then the --from record, then the config file,
    // then the model's and sdgen's defaults (in `Settings::resolve_request`).
    let mut flags = Settings {
        prompt: args.prompt.clone().or(args.prompt_flag.clone()),
        num_images: args.num_images,
        ..args.gen.settings()?.or(args.model.settings()?)
    };
    let config = super::config::take_config(&mut flags, &args.from_config);
    let settings = match &args.from {
        Some(from) => from_settings(from, flags)?,
        None => flags,
    }
    .or(config);
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
    let opts = sdgen::LoadOptions {
        limits,
        cuda: args.model.gpu.options(),
        ..super::load_options(&settings, args.output.quiet)?
    };
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
    args.preview.warn_unused(&args.from_config);
    if let (Some(_), Some(source)) = (args.preview.preview, &args.preview.preview_vae) {
        super::load_preview_vae(&mut pipe, source, args.output.quiet)?;
    }
    if !seed_given {
        eprintln!("seed: {}", req.seed);
    }
    let loaded = std::time::Instant::now();
    let load_seconds = loaded.duration_since(clock).as_secs_f64();
    // A terminal gets a bar; a log file (stderr not a terminal) gets lines, as batch does.
    let lines = !args.output.quiet && !std::io::stderr().is_terminal();
    let bar = progress_bar(args.output.quiet);
    bar.set_length(req.steps as u64);
    let timestamp = sdgen::save::run_timestamp();
    let mut images = Vec::new();
    let mut steps_run = 0;
    let mut steps_per_image = req.steps;
    for i in 0..req.num_images {
        let single = Request { seed: req.image_seed(i), num_images: 1, ..req.clone() };
        bar.set_prefix(format!("image {}/{}", i + 1, req.num_images));
        bar.reset();
        let image_started = std::time::Instant::now();
        let mut last_line = image_started;
        let mut image_steps = 0;
        // Dropped after the image is written, or on an early return: the preview goes then.
        let mut previews = match args.preview.preview {
            Some(every) => {
                let path =
                    sdgen::save::image_path(&single, &args.output.out, args.output.name.as_deref(), i, &timestamp)?;
                Some(sdgen::save::PreviewFiles::new(every, &[path]))
            }
            None => None,
        };
        let out = pipe.generate(&single, &mut |p| {
            if let Some(previews) = &mut previews {
                previews.on_step(&pipe, &p);
            }
            if i == 0 && p.step == 1 && !args.output.quiet {
                if let Some(note) = sdgen::limits::slow_notice(image_started.elapsed(), p.steps, req.num_images) {
                    bar.suspend(|| eprintln!("{note}"));
                }
            }
            image_steps = p.sampling_steps;
            bar.set_length(p.sampling_steps as u64);
            bar.set_position(p.sampling_step as u64);
            if lines && p.sampling_step < p.sampling_steps && last_line.elapsed() >= STEP_LINE_INTERVAL {
                last_line = std::time::Instant::now();
                eprintln!(
                    "image {}/{}: step {}/{} ({:.1}s)",
                    i + 1,
                    req.num_images,
                    p.sampling_step,
                    p.sampling_steps,
                    image_started.elapsed().as_secs_f64()
                );
            }
        })?;
        steps_run += image_steps;
        steps_per_image = image_steps;
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
            let seconds = image_started.elapsed().as_secs_f64();
            if lines {
                eprintln!(
                    "image {}/{}: {} (seed {}, {seconds:.1}s, {})",
                    i + 1,
                    req.num_images,
                    path.display(),
                    single.seed,
                    rate(image_steps, seconds)
                );
            }
            images.push(ImageReport { path, seed: single.seed, seconds });
        }
        drop(previews);
    }
    bar.finish_and_clear();
    let written: Vec<PathBuf> = images.iter().map(|r| r.path.clone()).collect();
    sdgen::save::remove_stale_temps(&written, started);
    let generate_seconds = loaded.elapsed().as_secs_f64();
    let report = Report {
        steps: steps_per_image,
        load_seconds,
        generate_seconds,
        total_seconds: clock.elapsed().as_secs_f64(),
        steps_per_second: if generate_seconds > 0.0 { steps_run as f64 / generate_seconds } else { 0.0 },
        images,
    };
    if !args.output.quiet {
        eprintln!(
            "done: {} image{} in {:.1}s ({}; model load {:.1}s)",
            report.images.len(),
            if report.images.len() == 1 { "" } else { "s" },
            report.total_seconds,
            rate(steps_run, generate_seconds),
            report.load_seconds
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report.images {
            println!("{}", r.path.display());
        }
    }
    Ok(())
}

/// `12.3 steps/s`, or `0.41 s/step` when slower than a step a second.
fn rate(steps: usize, seconds: f64) -> String {
    if steps == 0 || seconds <= 0.0 {
        return "no steps".into();
    }
    let per_second = steps as f64 / seconds;
    if per_second >= 1.0 {
        format!("{per_second:.1} steps/s")
    } else {
        format!("{:.2} s/step", 1.0 / per_second)
    }
}
