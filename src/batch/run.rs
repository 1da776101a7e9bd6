//! Running one shard of a batch: skip what is done, render the rest in groups, record each image.
//!
//! A job whose render fails is recorded as failed and the batch goes on; the next run retries
//! it. Errors that would hit every later job too (the output folder cannot be written, the
//! manifest is locked) stop the run.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde::Serialize;

use super::manifest::{self, sha256_hex, ManifestEntry, ManifestStatus, ManifestWriter};
use super::parse::{BatchInput, Defaults, LineError, Plan};
use super::{Backend, Job, Shard};
use crate::{Error, Result};

/// How a batch runs. Build it with [`BatchOptions::new`] and set the fields that differ.
pub struct BatchOptions<'a> {
    /// Where PNGs and manifests go; created if missing.
    pub out_dir: PathBuf,
    /// The command line's request and base seed.
    pub defaults: Defaults,
    /// Most jobs given to one [`Backend::render`] call. 1 renders image by image.
    pub batch_size: usize,
    /// Which lines this process takes; see [`Shard::select`].
    pub shard: Shard,
    /// Run the valid lines even if others are invalid (they are listed in the summary).
    pub skip_invalid: bool,
    /// No progress bars: one line per finished image on stderr instead (as when stderr is not
    /// a terminal).
    pub quiet: bool,
    /// Checks a scheduler name; `Err` says what is wrong (e.g. lists the known names).
    pub validate_scheduler: &'a dyn Fn(&str) -> std::result::Result<(), String>,
    /// The text encoder's layer count, when known: lines with a larger `clip_skip` are invalid.
    pub clip_layers: Option<usize>,
}

fn any_scheduler(_: &str) -> std::result::Result<(), String> {
    Ok(())
}

impl<'a> BatchOptions<'a> {
    /// Batch size 1, the whole file, invalid lines stop the run, progress bars on a terminal,
    /// and every scheduler name accepted (set `validate_scheduler` to check them).
    pub fn new(out_dir: impl Into<PathBuf>, defaults: Defaults) -> BatchOptions<'a> {
        BatchOptions {
            out_dir: out_dir.into(),
            defaults,
            batch_size: 1,
            shard: Shard::ALL,
            skip_invalid: false,
            quiet: false,
            validate_scheduler: &any_scheduler,
            clip_layers: None,
        }
    }
}

/// An image whose render failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub line: usize,
    pub index: usize,
    pub file: String,
    pub error: String,
}

/// What a run did; serialisable for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub input: String,
    pub out_dir: PathBuf,
    /// This run's shard manifest.
    pub manifest: PathBuf,
    /// `i/n`.
    pub shard: String,
    /// Valid lines in this shard, and their images.
    pub lines: usize,
    pub images: usize,
    /// Images rendered and written by this run.
    pub done: usize,
    /// Images already done by an earlier run, verified by sha256.
    pub skipped: usize,
    /// Images whose render failed in this run.
    pub failed: usize,
    pub failures: Vec<Failure>,
    /// Problems in this shard's lines (only with `skip_invalid`; those lines did not run).
    pub invalid: Vec<LineError>,
    pub seconds: f64,
    /// Rendered images per minute of this run.
    pub images_per_minute: f64,
}

impl Summary {
    /// No image failed. Invalid lines skipped on request do not count: the caller decides.
    pub fn is_success(&self) -> bool {
        self.failed == 0
    }

    /// A short human-readable summary.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{} images: {} done, {} skipped (already done), {} failed in {:.1}s ({:.1} images/min); shard {}, \
             output {}",
            self.images,
            self.done,
            self.skipped,
            self.failed,
            self.seconds,
            self.images_per_minute,
            self.shard,
            self.out_dir.display()
        );
        for f in &self.failures {
            text.push_str(&format!("\nfailed: line {} ({}): {}", f.line, f.file, f.error));
        }
        if !self.invalid.is_empty() {
            text.push_str(&format!("\nskipped {} problem(s):", self.invalid.len()));
            for p in &self.invalid {
                text.push_str(&format!("\n  {p}"));
            }
        }
        text
    }
}

/// Runs this shard of `input`: parses and validates the whole file, then renders every job of
/// the shard that the manifests do not prove done.
///
/// Without `skip_invalid`, any problem in the file returns `Error::InvalidInput` listing them
/// all (up to 100) and nothing runs. A failed render does not stop the run: see
/// [`Summary::is_success`].
pub fn run(input: &BatchInput, opts: &BatchOptions<'_>, backend: &mut dyn Backend) -> Result<Summary> {
    let started = Instant::now();
    let plan = validate(input, opts)?;
    if opts.batch_size == 0 {
        return Err(Error::invalid("the batch size must be at least 1"));
    }

    std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, e))?;
    let mut writer = ManifestWriter::open(&opts.out_dir, opts.shard)?;
    manifest::remove_stale_temps(&opts.out_dir, opts.shard)?;

    let jobs = plan.jobs(opts.shard);
    let images = jobs.len();
    let lines = plan.lines.iter().filter(|l| opts.shard.contains(l.index)).count();
    let (pending, skipped) = pending_jobs(jobs, &opts.out_dir)?;

    let progress = Progress::new(pending.len(), skipped, opts.quiet);
    if progress.bars.is_none() {
        eprintln!(
            "{}: shard {}: {images} images, {skipped} already done, {} to render",
            input.name,
            opts.shard,
            pending.len()
        );
    }
    let mut done = 0;
    let mut failures = Vec::new();
    for group in group_jobs(&pending, opts.batch_size) {
        let group: Vec<Job> = group.into_iter().cloned().collect();
        progress.start_group(&group);
        let render_started = Instant::now();
        let mut results = backend.render(&group, &mut |step, total| progress.step(step, total));
        let per_image = render_started.elapsed().as_secs_f64() / group.len() as f64;
        if results.len() != group.len() {
            let message = format!("the backend returned {} results for {} jobs", results.len(), group.len());
            results = group.iter().map(|_| Err(message.clone())).collect();
        }
        for (job, result) in group.iter().zip(results) {
            let result = result.and_then(|bytes| {
                if bytes.starts_with(PNG_SIGNATURE) {
                    Ok(bytes)
                } else {
                    Err(format!("the backend returned {} bytes that are not a PNG file", bytes.len()))
                }
            });
            let entry = match result {
                Ok(bytes) => {
                    manifest::write_atomically(&opts.out_dir, &job.file_name, &bytes, opts.shard)?;
                    done += 1;
                    record(job, opts.shard, per_image, Ok(&bytes))
                }
                Err(error) => {
                    failures.push(Failure {
                        line: job.line,
                        index: job.index,
                        file: job.file_name.clone(),
                        error: error.clone(),
                    });
                    record(job, opts.shard, per_image, Err(error))
                }
            };
            writer.append(&entry)?;
            progress.finished(job, &entry);
        }
    }
    progress.clear();

    let seconds = started.elapsed().as_secs_f64();
    let rendered = done + failures.len();
    Ok(Summary {
        input: input.name.clone(),
        out_dir: opts.out_dir.clone(),
        manifest: writer.path().to_path_buf(),
        shard: opts.shard.to_string(),
        lines,
        images,
        done,
        skipped,
        failed: failures.len(),
        failures,
        invalid: plan.problems.iter().filter(|p| p.index.is_none_or(|i| opts.shard.contains(i))).cloned().collect(),
        seconds,
        images_per_minute: if seconds > 0.0 { rendered as f64 * 60.0 / seconds } else { 0.0 },
    })
}

/// Parses and validates the whole of `input` as [`run`] does, without touching the output
/// folder or a model: callers run it before loading the model, so a bad line 9,000 is
/// reported in a second. Errors as [`run`] does; with `skip_invalid`, the plan lists them.
pub fn validate(input: &BatchInput, opts: &BatchOptions<'_>) -> Result<Plan> {
    let mut plan = Plan::new(input, &opts.defaults, opts.validate_scheduler);
    if let Some(layers) = opts.clip_layers {
        plan.check_clip_skip(layers);
    }
    accept(plan, opts)
}

/// The verdict on a validated plan: an error when the file has no prompts, or has problems
/// and `skip_invalid` is off; else the plan.
pub fn accept(plan: Plan, opts: &BatchOptions<'_>) -> Result<Plan> {
    if plan.entries == 0 && plan.problems.is_empty() {
        return Err(Error::invalid(format!(
            "{} has no prompts (blank lines and lines starting with # are skipped)",
            plan.input
        )));
    }
    if !plan.problems.is_empty() && !opts.skip_invalid {
        return Err(Error::invalid(format!(
            "{}\nNothing was rendered. Fix these lines, or pass --skip-invalid to run the valid ones.",
            plan.report(100)
        )));
    }
    Ok(plan)
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn record(job: &Job, shard: Shard, duration_s: f64, result: std::result::Result<&[u8], String>) -> ManifestEntry {
    let (status, sha256, bytes, error) = match result {
        Ok(png) => (ManifestStatus::Ok, Some(sha256_hex(png)), Some(png.len() as u64), None),
        Err(e) => (ManifestStatus::Failed, None, None, Some(e)),
    };
    ManifestEntry {
        line: job.line,
        index: job.index,
        image: job.image,
        seed: job.request.seed,
        file: job.file_name.clone(),
        key: job.key(),
        status,
        sha256,
        bytes,
        duration_s,
        error,
        shard: shard.to_string(),
        finished: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// Splits jobs into those still to do and a count of those done. A job is done when any
/// manifest (of any shard, so a change of shard count loses nothing) has an ok record for the
/// same file and request key whose sha256 matches the file now on disk. A missing or altered
/// file, a failed record or no record means the job runs again.
fn pending_jobs(jobs: Vec<Job>, out_dir: &std::path::Path) -> Result<(Vec<Job>, usize)> {
    let set = manifest::read_all(out_dir)?;
    let mut ok: HashMap<(&str, &str), HashSet<&str>> = HashMap::new();
    for e in &set.entries {
        if let (ManifestStatus::Ok, Some(sha)) = (e.status, &e.sha256) {
            ok.entry((e.file.as_str(), e.key.as_str())).or_default().insert(sha.as_str());
        }
    }
    let mut pending = Vec::new();
    let mut skipped = 0;
    for job in jobs {
        let key = job.key();
        let done = match ok.get(&(job.file_name.as_str(), key.as_str())) {
            None => false,
            Some(hashes) => match std::fs::read(out_dir.join(&job.file_name)) {
                Ok(bytes) => hashes.contains(sha256_hex(&bytes).as_str()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(Error::io(out_dir.join(&job.file_name), e)),
            },
        };
        if done {
            skipped += 1;
        } else {
            pending.push(job);
        }
    }
    Ok((pending, skipped))
}

/// Groups jobs that can share one UNet batch: equal width, height, steps, scheduler, guidance
/// and clip_skip, at most `batch_size` each. Each group keeps file order, and groups are ordered
/// by their first job, so output appears roughly in file order.
pub fn group_jobs(jobs: &[Job], batch_size: usize) -> Vec<Vec<&Job>> {
    type Key<'k> = (u32, u32, usize, &'k str, u64, Option<usize>);
    let batch_size = batch_size.max(1);
    let mut open: HashMap<Key<'_>, Vec<usize>> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let r = &job.request;
        let key = (r.width, r.height, r.steps, r.scheduler.as_str(), r.guidance.to_bits(), r.clip_skip);
        let group = open.entry(key).or_default();
        group.push(i);
        if group.len() == batch_size {
            groups.push(std::mem::take(group));
        }
    }
    groups.extend(open.into_values().filter(|g| !g.is_empty()));
    groups.sort_by_key(|g| g[0]);
    groups.into_iter().map(|g| g.into_iter().map(|i| &jobs[i]).collect()).collect()
}

const OVERALL_TEMPLATE: &str = "{bar:30.cyan/blue} {pos}/{len} images  {per_min}  ETA {eta}  {msg}";
const STEP_TEMPLATE: &str = "{bar:30.green} step {pos}/{len}  {msg}";

/// Progress on stderr: an overall bar and a step bar on a terminal, else one line per image.
struct Progress {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    total: usize,
    started: Instant,
    count: std::cell::Cell<usize>,
}

impl Progress {
    fn new(total: usize, skipped: usize, quiet: bool) -> Progress {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total as u64));
            let per_minute = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/min", state.per_sec() * 60.0);
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
        Progress { bars, total, started: Instant::now(), count: std::cell::Cell::new(0) }
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
                let minutes = self.started.elapsed().as_secs_f64() / 60.0;
                let rate = if minutes > 0.0 { n as f64 / minutes } else { 0.0 };
                eprintln!("[{n}/{}] line {}: {outcome}  {rate:.1} images/min", self.total, job.line);
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
