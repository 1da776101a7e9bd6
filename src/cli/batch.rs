//! `sdgen batch FILE`: many prompts from a file, resumable and shardable.

use super::{GenerationArgs, LimitArgs, ModelArgs, PreviewArgs};
use anyhow::bail;
use clap::Args;
use sdgen::batch::{self, BatchInput, BatchOptions, Defaults, Shard};
use sdgen::plan::{run_key, Settings};
use sdgen::save::{BatchPreviews, PipelineBackend};
use sdgen::Request;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Prompt file: .txt (one prompt a line), .jsonl or .csv; `-` reads standard input.
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Defaults for every line (each line may override them). `--seed` is the base seed from
    /// which lines without a seed get theirs (without it: 0).
    #[command(flatten)]
    pub gen: GenerationArgs,
    /// Images per line.
    #[arg(long, short = 'b', visible_alias = "batch-count", value_name = "N", default_value = "1")]
    pub num_images: Option<usize>,
    /// Output folder (created if missing); the manifests live here too.
    #[arg(long, short = 'o', default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Lines with equal size, steps and scheduler run together in UNet batches of up to N.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch_size: usize,
    /// Take every line whose index mod n == i. Without it: SDGEN_SHARD (i/n), then Slurm's
    /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT, then Kubernetes' JOB_COMPLETION_INDEX. To
    /// redo one task of a sharded run, name its shard here or in SDGEN_SHARD.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<String>,
    /// The shard count to go with JOB_COMPLETION_INDEX or SDGEN_SHARD=i, overriding
    /// SLURM_ARRAY_TASK_COUNT (or set SDGEN_SHARD_COUNT).
    #[arg(long, value_name = "N")]
    pub shard_count: Option<usize>,
    /// Run the valid lines even when some lines are invalid.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Replace existing files that no manifest in the output folder lists (a line's
    /// "filename" naming a file already there); without it that line fails.
    #[arg(long)]
    pub overwrite: bool,
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
    #[command(flatten)]
    pub preview: PreviewArgs,
    /// The arguments the config file set (their ids).
    #[arg(skip)]
    pub from_config: Vec<String>,
}

/// Runs the batch; `Ok(false)` when some lines failed (the exit code says so).
pub fn run(args: BatchArgs) -> anyhow::Result<bool> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let limits = args.limits.limits();
    let settings = Settings { num_images: args.num_images, ..args.gen.settings()?.or(args.model.settings()?) };
    let input = BatchInput::read(&args.file)?;
    let validate = |name: &str| sdgen::schedulers::resolve(name).map(|_| ()).map_err(|e| e.to_string());
    let shard = Shard::select(args.shard.as_deref(), args.shard_count)?;
    let base_seed = args.gen.seed.unwrap_or(0);
    let line_defaults = |request: Request, run_key: String| {
        let request = Request { prompt: String::new(), negative_prompt: settings.negative_prompt.clone(), ..request };
        Defaults { request, base_seed, run_key, limits, lora_dir: settings.lora_dir.clone() }
    };

    if !args.merge {
        // The whole file is validated before the model is fetched or loaded (the default
        // scheduler only needs to be a valid name here).
        sdgen::preflight::check_output_dir(&args.out)?;
        let early = settings.request(settings.scheduler.clone().unwrap_or_else(|| "euler".into()), 0);
        batch::validate(&input, &options(&args, line_defaults(early, String::new()), shard, &validate))?;
    }

    // The defaults every line starts from, and the key of this model and precision, come from
    // the model's own files; --merge reads them the same way without loading any weights.
    let load =
        sdgen::LoadOptions { limits, cuda: args.model.gpu.options(), ..super::load_options(&settings, args.quiet)? };
    let spec = load.inspect()?;
    let (request, _) = Settings { seed: Some(0), ..settings.clone() }.resolve_request(&spec, 0)?;
    let defaults = line_defaults(request, run_key(&spec, &load)?);

    let clip_layers = Some(spec.text_encoder.num_hidden_layers);
    if args.merge {
        let mut opts = options(&args, defaults, shard, &validate);
        opts.clip_layers = clip_layers;
        let report = batch::merge(&input, &opts)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            eprintln!("{}", report.render());
        }
        return Ok(report.is_complete());
    }

    let renderer = super::progress::BatchRenderer::new(args.quiet);
    let on_event = |e: batch::Event<'_>| renderer.handle(e);
    let mut opts = options(&args, defaults, shard, &validate);
    // clip_skip against the text encoder's config, still before any weights load.
    opts.clip_layers = clip_layers;
    batch::validate(&input, &opts)?;
    opts.on_event = &on_event;
    let mut pipe = sdgen::Pipeline::from_spec(&load, spec)?;
    args.preview.warn_unused(&args.from_config);
    if let (Some(_), Some(source)) = (args.preview.preview, &args.preview.preview_vae) {
        super::load_preview_vae(&mut pipe, source, args.quiet)?;
    }
    let previews = args.preview.preview.map(|every| BatchPreviews { every, out_dir: args.out.clone() });
    let summary = batch::run(&input, &opts, &mut PipelineBackend { pipeline: &mut pipe, previews })?;
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
    opts.overwrite = args.overwrite;
    opts.validate_scheduler = validate;
    opts
}
