//! The `sdgen` command line: parse, run, map errors to exit codes.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sdgen", version, about = "Stable Diffusion text-to-image on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the sdgen and libtorch versions, CUDA devices and CPU threads.
    Info {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { json } => {
            let info = sdgen::info::Info::gather();
            if json {
                println!("{}", serde_json::to_string_pretty(&info).unwrap_or_default());
            } else {
                print!("{}", info.render());
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
