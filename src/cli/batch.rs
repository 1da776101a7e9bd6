//! `sdgen batch FILE`: many prompts from a file, resumable and shardable.

use super::{GenerationArgs, LimitArgs, ModelArgs};
use anyhow::bail;
use clap::Args;
use sdgen::batch::{self, BatchInput, BatchOptions, Defaults, Shard};
use sdgen::save::PipelineBackend;
use sdgen::Request;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Prompt file: .txt (one prompt a line), .jsonl or .csv; `-` reads standard input.
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Defaults for every line (each line may override them). `--seed` is the base seed from
    /// which lines without a seed get theirs [default: 0].
    #[command(flatten)]
    pub gen: GenerationArgs,
    /// Images per line [default: 1].
    #[arg(long, value_name = "N")]
    pub num_images: Option<usize>,
    /// Output folder (created if missing); the manifests live here too.
    #[arg(long, short = 'o', default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Lines with equal size, steps and scheduler run together in UNet batches of up to N.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch_size: usize,
    /// Take every line whose index mod n == i. Without it, Slurm's SLURM_ARRAY_TASK_ID /
    /// SLURM_ARRAY_TASK_COUNT or Kubernetes' JOB_COMPLETION_INDEX are used.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<String>,
    /// The shard count to go with JOB_COMPLETION_INDEX (or set SDGEN_SHARD_COUNT).
    #[arg(long, value_name = "N")]
    pub shard_count: Option<usize>,
    /// Run the valid lines even when some lines are invalid.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Report what is done, failed and missing across all shards' manifests; render nothing.
    #[arg(long)]
    pub merge: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Runs the batch; `Ok(false)` when some lines failed (the exit code says so).
pub fn run(args: BatchArgs) -> anyhow::Result<bool> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    args.limits.apply();
    let base = Request { prompt: String::new(), negative_prompt: None, seed: 0, ..Request::default() };
    let mut request = super::generate::build_request(None, &args.gen, args.num_images, base);
    let input = BatchInput::read(&args.file)?;
    let validate = |name: &str| sdgen::schedulers::resolve(name).map(|_| ()).map_err(|e| e.to_string());
    let shard = Shard::select(args.shard.as_deref(), args.shard_count)?;

    if args.merge {
        let opts = options(&args, Defaults { request, base_seed: args.gen.seed.unwrap_or(0) }, shard, &validate);
        let report = batch::merge(&input, &opts)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            eprintln!("{}", report.render());
        }
        return Ok(report.is_complete());
    }

    // The whole file is validated before the model is fetched or loaded, then its clip_skip
    // values against the model's text encoder, which needs only its config.
    sdgen::preflight::check_output_dir(&args.out)?;
    let defaults = Defaults { request: request.clone(), base_seed: args.gen.seed.unwrap_or(0) };
    let opts = options(&args, defaults, shard, &validate);
    let mut plan = batch::validate(&input, &opts)?;
    let load = args.model.resolve(args.quiet)?;
    let clip_layers = sdgen::preflight::text_encoder_layers(&load)?;
    plan.check_clip_skip(clip_layers);
    batch::accept(plan, &opts)?;

    let pipe = sdgen::Pipeline::load(&load)?;
    if args.gen.scheduler.is_none() {
        request.scheduler = pipe.default_scheduler();
    }
    let mut opts = options(&args, Defaults { request, base_seed: args.gen.seed.unwrap_or(0) }, shard, &validate);
    opts.clip_layers = Some(clip_layers);
    let summary = batch::run(&input, &opts, &mut PipelineBackend { pipeline: &pipe })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!("{}", summary.render());
    }
    Ok(summary.is_success())
}

fn options<'a>(
    args: &BatchArgs,
    defaults: Defaults,
    shard: Shard,
    validate: &'a dyn Fn(&str) -> Result<(), String>,
) -> BatchOptions<'a> {
    let mut opts = BatchOptions::new(args.out.clone(), defaults);
    opts.batch_size = args.batch_size;
    opts.shard = shard;
    opts.skip_invalid = args.skip_invalid;
    opts.quiet = args.quiet;
    opts.validate_scheduler = validate;
    opts
}
