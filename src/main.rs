//! The `sdgen` command line: parse, run, map errors to exit codes.

mod cli;
mod signals;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    signals::remove_temps_on_signal();
    sdgen::device::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cli::generate::run(args).map(|()| true),
        Command::Batch(args) => cli::batch::run(args),
        Command::Show(args) => cli::show::run(&args).map(|()| true),
        Command::License(args) => cli::license::run(&args).map(|()| true),
        Command::Schedulers => cli::schedulers::run().map(|()| true),
        Command::Info(args) => cli::info::run(&args).map(|()| true),
        Command::Bench(args) => cli::bench::run(&args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Some batch lines failed; the rest were written and the summary says which.
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            // A closed stdout (`sdgen ... | head`) is not an error worth reporting.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e}");
            // Messages often end with their cause's text already; print each reason once.
            let mut previous = e.to_string();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !previous.ends_with(&text) {
                    eprintln!("  caused by: {text}");
                }
                previous = text;
            }
            ExitCode::FAILURE
        }
    }
}
