//! `sdgen completions SHELL` and `sdgen man`: generated from the clap definitions, so they
//! never drift from the flags.

use clap::{Args, CommandFactory};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write sdgen.1 and one page per subcommand (sdgen-generate.1, ...) into this folder
    /// instead of printing sdgen.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut super::Cli::command(), "sdgen", &mut buf);
    // Written at once, so a closed pipe is one error rather than a panic.
    std::io::stdout().lock().write_all(&buf)?;
    Ok(())
}

pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let cmd = super::Cli::command();
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| sdgen::Error::io(dir, e))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| sdgen::Error::io(dir, e))?;
            Ok(())
        }
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            std::io::stdout().lock().write_all(&buf)?;
            Ok(())
        }
    }
}
