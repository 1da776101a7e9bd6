//! The batch engine as a library: render every line of a prompt file into a folder,
//! resumably (rerun it after a kill and it continues), with a PNG manifest.
//!
//!     cargo run --example batch -- weights/tiny-sd prompts.txt out/

use sdgen::batch::{self, BatchInput, BatchOptions, Defaults, Shard};
use sdgen::save::PipelineBackend;
use sdgen::{LoadOptions, Pipeline, Request};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, prompts, out] = args.as_slice() else {
        anyhow::bail!("usage: batch MODEL_DIR PROMPTS_FILE OUT_DIR");
    };
    let load = LoadOptions { model: model.into(), ..LoadOptions::default() };
    let mut pipeline = Pipeline::load(&load)?;
    let input = BatchInput::read(prompts.as_ref())?;
    let defaults = Request { steps: 20, width: 256, height: 256, scheduler: "Euler a".into(), ..Request::default() };
    let mut opts = BatchOptions::new(
        out,
        Defaults {
            request: defaults,
            base_seed: 1234,
            run_key: sdgen::plan::run_key(pipeline.spec(), &load)?,
            limits: Default::default(),
            lora_dir: None,
        },
    );
    opts.batch_size = 4;
    opts.shard = Shard::select(None, None)?; // honours Slurm / Kubernetes array variables
    let summary = batch::run(&input, &opts, &mut PipelineBackend { pipeline: &mut pipeline, previews: None })?;
    eprintln!("{}", summary.render());
    Ok(())
}
