//! `sdgen show IMAGE.png`: how an image was made, from sdgen's record, an A1111 `parameters`
//! text or a ComfyUI prompt graph.

use clap::Args;
use sdgen::import::{Source, Summary};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A PNG written by sdgen, A1111 (or Forge, sd.cpp) or ComfyUI.
    pub image: PathBuf,
    /// Print the full record as JSON: sdgen's record, or the summary of another tool's.
    #[arg(long, conflicts_with = "parameters")]
    pub json: bool,
    /// Print the A1111 `parameters` text (ready to paste into A1111).
    #[arg(long)]
    pub parameters: bool,
}

pub fn run(args: &ShowArgs) -> anyhow::Result<()> {
    let source = Source::read(&args.image)?;
    let text = if args.parameters {
        match &source {
            Source::Sdgen { parameters: Some(p), .. } | Source::A1111 { parameters: p } => p.clone(),
            other => {
                anyhow::bail!("{} has no `parameters` text chunk ({} metadata)", args.image.display(), other.kind())
            }
        }
    } else if args.json {
        match &source {
            Source::Sdgen { record, .. } => serde_json::to_string_pretty(record)?,
            Source::ComfyUi { prompt } => serde_json::to_string_pretty(&serde_json::json!({
                "summary": Summary::of(&source),
                "prompt": prompt,
            }))?,
            Source::A1111 { .. } => serde_json::to_string_pretty(&Summary::of(&source))?,
        }
    } else {
        Summary::of(&source).render().trim_end().to_string()
    };
    // Written at once: a closed pipe (`| head`) is one BrokenPipe error, which main ignores.
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}
