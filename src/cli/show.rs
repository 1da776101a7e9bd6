//! `sdgen show IMAGE.png`: the record (and parameters) stored in an sdgen PNG.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A PNG written by sdgen.
    pub image: PathBuf,
    /// Print the A1111 `parameters` text instead of the JSON record.
    #[arg(long)]
    pub parameters: bool,
}

pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    if args.parameters {
        let chunks = sdgen::output::read_text_chunks(&args.image)?;
        let Some((_, text)) = chunks.iter().find(|(k, _)| k == sdgen::output::PARAMETERS_KEY) else {
            anyhow::bail!("{} has no `parameters` text chunk", args.image.display());
        };
        println!("{text}");
        return Ok(());
    }
    let record = sdgen::output::read_record(&args.image)?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}
