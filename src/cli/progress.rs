//! Progress on stderr for what the library reports: hub downloads and batch runs. The library
//! draws nothing; these turn its callbacks into bars on a terminal and lines elsewhere.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use sdgen::batch::{Event, Job, ManifestEntry};
use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A bar per downloaded file, drawn only when stderr is a terminal and not quiet.
pub struct DownloadBar(Option<ProgressBar>);

impl DownloadBar {
    pub fn new(quiet: bool) -> DownloadBar {
        DownloadBar((!quiet && std::io::stderr().is_terminal()).then(|| ProgressBar::new(0)))
    }
}

impl sdgen::loading::hub::DownloadProgress for DownloadBar {
    fn start(&mut self, file: &str, size: u64) {
        if let Some(bar) = &self.0 {
            let style =
                ProgressStyle::with_template("{msg:40} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_length(size);
            bar.set_position(0);
            bar.set_message(file.to_string());
        }
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}

/// Renders a batch run's events: bars on a terminal, else one line per image.
pub struct BatchRenderer {
    quiet: bool,
    progress: RefCell<Option<BatchProgress>>,
}

impl BatchRenderer {
    pub fn new(quiet: bool) -> BatchRenderer {
        BatchRenderer { quiet, progress: RefCell::new(None) }
    }

    pub fn handle(&self, event: Event<'_>) {
        let mut slot = self.progress.borrow_mut();
        match event {
            Event::Start { input, shard, images, skipped, pending } => {
                let progress = BatchProgress::new(pending, skipped, self.quiet);
                if progress.bars.is_none() {
                    eprintln!("{input}: shard {shard}: {images} images, {skipped} already done, {pending} to render");
                }
                *slot = Some(progress);
            }
            Event::Group { jobs } => {
                if let Some(p) = slot.as_ref() {
                    p.start_group(jobs);
                }
            }
            Event::Step { done, total } => {
                if let Some(p) = slot.as_ref() {
                    p.step(done, total);
                }
            }
            Event::Finished { job, entry } => {
                if let Some(p) = slot.as_ref() {
                    p.finished(job, entry);
                }
            }
            Event::End => {
                if let Some(p) = slot.take() {
                    p.clear();
                }
            }
        }
    }
}

const OVERALL_TEMPLATE: &str = "{bar:30.cyan/blue} {pos}/{len} images  {per_min}  ETA {eta}  {msg}";
const STEP_TEMPLATE: &str = "{bar:30.green} step {pos}/{len}  {msg}";

/// Progress on stderr: an overall bar and a step bar on a terminal, else one line per image.
pub struct BatchProgress {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    total: usize,
    started: Instant,
    count: std::cell::Cell<usize>,
    /// Images written (not failed), for the rate.
    written: std::cell::Cell<usize>,
}

impl BatchProgress {
    fn new(total: usize, skipped: usize, quiet: bool) -> BatchProgress {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total as u64));
            // No rate before the first image is done: indicatif's estimate from nothing is noise.
            let per_minute = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                if state.pos() > 0 {
                    let _ = write!(w, "{:.1}/min", state.per_sec() * 60.0);
                }
            };
            let style = ProgressStyle::with_template(OVERALL_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("per_min", per_minute);
            overall.set_style(style);
            if skipped > 0 {
                overall.set_message(format!("({skipped} already done)"));
            }
            let step = multi.add(ProgressBar::new(0));
            step.set_style(
                ProgressStyle::with_template(STEP_TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            overall.enable_steady_tick(Duration::from_millis(500));
            (multi, overall, step)
        });
        BatchProgress {
            bars,
            total,
            started: Instant::now(),
            count: std::cell::Cell::new(0),
            written: std::cell::Cell::new(0),
        }
    }

    fn start_group(&self, group: &[Job]) {
        if let Some((_, _, step)) = &self.bars {
            step.reset();
            step.set_position(0);
            let lines: Vec<String> = group.iter().map(|j| j.line.to_string()).collect();
            let prompt: String = group[0].request.prompt.chars().take(50).collect();
            step.set_message(format!("line {}: {prompt}", lines.join(",")));
        }
    }

    fn step(&self, done: usize, total: usize) {
        if let Some((_, _, step)) = &self.bars {
            step.set_length(total as u64);
            step.set_position(done as u64);
        }
    }

    fn finished(&self, job: &Job, entry: &ManifestEntry) {
        let n = self.count.get() + 1;
        self.count.set(n);
        let outcome = match &entry.error {
            None => format!("{} ({:.1}s)", job.file_name, entry.duration_s),
            Some(e) => format!("FAILED {}: {e}", job.file_name),
        };
        match &self.bars {
            Some((multi, overall, _)) => {
                if entry.error.is_some() {
                    let _ = multi.println(format!("line {}: {outcome}", job.line));
                }
                overall.inc(1);
            }
            None => {
                if entry.error.is_none() {
                    self.written.set(self.written.get() + 1);
                }
                let minutes = self.started.elapsed().as_secs_f64() / 60.0;
                let rate = match self.written.get() {
                    0 => String::new(),
                    w if minutes > 0.0 => format!("  {:.1} images/min", w as f64 / minutes),
                    _ => String::new(),
                };
                eprintln!("[{n}/{}] line {}: {outcome}{rate}", self.total, job.line);
            }
        }
    }

    fn clear(&self) {
        if let Some((multi, overall, step)) = &self.bars {
            step.finish_and_clear();
            overall.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_templates_parse() {
        assert!(ProgressStyle::with_template(OVERALL_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(STEP_TEMPLATE).is_ok());
    }
}
