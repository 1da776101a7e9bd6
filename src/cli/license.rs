//! `sdgen license`: the use-based restrictions of the model licence and what a recipient
//! of the model or its outputs must be told.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LicenseArgs {
    /// Read the licence from this model folder (model card or LICENSE file), or give a
    /// single-file checkpoint its architecture's licence (without it: CreativeML OpenRAIL-M,
    /// the licence of Stable Diffusion 1.x).
    #[arg(long, short = 'm', value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The licence of SD 2.x / SDXL (CreativeML OpenRAIL++-M) instead.
    #[arg(long, conflicts_with = "model")]
    pub sd2: bool,
}

pub fn run(args: &LicenseArgs) -> anyhow::Result<()> {
    let arch = if args.sd2 { "sd2" } else { "sd1" };
    let license = match &args.model {
        Some(path) => sdgen::output::license::for_model_path(path, arch)?,
        None => sdgen::output::license::detect(None, arch),
    };
    println!("{}", sdgen::output::full_text(&license));
    Ok(())
}
