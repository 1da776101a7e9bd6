//! The `sdgen` command line: parse, run, map errors to exit codes.

mod cli;
mod signals;

use cli::Command;
use std::process::ExitCode;

/// Renders the library's warnings (the `log` facade) on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn || metadata.target() == sdgen::serve::ACCESS_LOG
    }

    fn log(&self, record: &log::Record) {
        // The server's access log is already one JSON object a line.
        if record.target() == sdgen::serve::ACCESS_LOG {
            eprintln!("{}", record.args());
            return;
        }
        if self.enabled(record.metadata()) {
            let level = if record.level() == log::Level::Error { "error" } else { "warning" };
            eprintln!("{level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    sdgen::device::keep_freed_memory();
    // Info only for the server's access log (see `StderrLog::enabled`).
    let _ = log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info));
    if let Some(problem) = sdgen::mkl::env_problem() {
        eprintln!("warning: {problem}");
    }
    // libtorch failures inside a run panic in tch and come back from the library as errors
    // (reported once, below); only other panics are bugs worth the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // `println!` into a closed pipe (`sdgen ... | head`) panics; the reader has what it
        // wanted, so end quietly, as for the BrokenPipe errors below.
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        if !sdgen::error::panic_is_caught(message) {
            default_hook(info);
        }
    }));
    let cli = match cli::config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The server shuts down gracefully on the signals itself and writes no files.
    if !matches!(cli.command, Command::Serve(_)) {
        signals::remove_temps_on_signal();
    }
    let result = match cli.command {
        Command::Generate(args) => cli::generate::run(args).map(|()| true),
        Command::Batch(args) => cli::batch::run(args),
        Command::Show(args) => cli::show::run(&args).map(|()| true),
        Command::License(args) => cli::license::run(&args).map(|()| true),
        Command::Schedulers => cli::schedulers::run().map(|()| true),
        Command::Info(args) => cli::info::run(&args).map(|()| true),
        Command::Bench(args) => cli::bench::run(&args).map(|()| true),
        Command::Completions(args) => cli::tools::completions(&args).map(|()| true),
        Command::Man(args) => cli::tools::man(&args).map(|()| true),
        Command::Serve(args) => cli::serve::run(args).map(|()| true),
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
