//! Running one shard of a batch: skip what is done, render the rest in groups, record each image.
//!
//! A job whose render fails is recorded as failed and the batch goes on; the next run retries
//! it. Errors that would hit every later job too (the output folder cannot be written, the
//! manifest is locked) stop the run.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::manifest::{self, sha256_hex, ManifestEntry, ManifestStatus, ManifestWriter};
use super::parse::{BatchInput, Defaults, LineError, Plan};
use super::{Backend, Job, Shard};
use crate::output::atomic::{self, OnExisting, Stale};
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
    /// Hears how the run goes (what starts, each step, each finished image), to draw
    /// progress; the library prints nothing itself.
    pub on_event: &'a dyn Fn(Event<'_>),
    /// Checks a scheduler name; `Err` says what is wrong (e.g. lists the known names).
    pub validate_scheduler: &'a dyn Fn(&str) -> std::result::Result<(), String>,
    /// Replace existing files that no manifest in the folder lists. Without it such a file is
    /// left alone and its job fails (files an earlier run of a batch made are replaced when
    /// their job runs again, as always).
    pub overwrite: bool,
    /// The text encoder's layer count, when known: lines with a larger `clip_skip` are invalid.
    pub clip_layers: Option<usize>,
}

fn any_scheduler(_: &str) -> std::result::Result<(), String> {
    Ok(())
}

impl<'a> BatchOptions<'a> {
    /// Batch size 1, the whole file, invalid lines stop the run, no progress reports, every
    /// scheduler name accepted (set `validate_scheduler` to check them), and files that no
    /// manifest lists never replaced.
    pub fn new(out_dir: impl Into<PathBuf>, defaults: Defaults) -> BatchOptions<'a> {
        BatchOptions {
            out_dir: out_dir.into(),
            defaults,
            batch_size: 1,
            shard: Shard::ALL,
            skip_invalid: false,
            on_event: &|_| {},
            validate_scheduler: &any_scheduler,
            overwrite: false,
            clip_layers: None,
        }
    }
}

/// What a run reports as it goes, through [`BatchOptions::on_event`].
#[derive(Debug, Clone, Copy)]
pub enum Event<'e> {
    /// The run starts: this shard's images, those already done, those to render.
    Start { input: &'e str, shard: Shard, images: usize, skipped: usize, pending: usize },
    /// A group of jobs goes to the backend as one batch.
    Group { jobs: &'e [Job] },
    /// The current group's denoising step.
    Step { done: usize, total: usize },
    /// One image is written (or failed) and recorded.
    Finished { job: &'e Job, entry: &'e ManifestEntry },
    /// The run is over.
    End,
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
    /// Images written per minute of this run; `None` (null) until one is written, since a
    /// rate over skipped or failed images only would be meaningless.
    pub images_per_minute: Option<f64>,
}

impl Summary {
    /// No image failed. Invalid lines skipped on request do not count: the caller decides.
    pub fn is_success(&self) -> bool {
        self.failed == 0
    }

    /// A short human-readable summary.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{} images: {} done, {} skipped (already done), {} failed in {:.1}s{}; shard {}, output {}",
            self.images,
            self.done,
            self.skipped,
            self.failed,
            self.seconds,
            self.images_per_minute.map(|r| format!(" ({r:.1} images/min)")).unwrap_or_default(),
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

    // Manifests of another shard count: their tasks own (and may still be rendering) the
    // images this run would render, so it is refused, unless it has nothing to do (a whole
    // run after every shard finished only confirms them). Checked before this run's manifest
    // exists, so a refused run leaves nothing behind.
    if let Err(e) = super::shard::check_shard_count(&opts.out_dir, opts.shard) {
        let (pending, _, _) = pending_jobs(plan.jobs(opts.shard), &opts.out_dir, &opts.defaults.run_key)?;
        if !pending.is_empty() {
            return Err(e);
        }
    }

    let started_at = SystemTime::now();
    atomic::create_folder(&opts.out_dir)?;
    let mut writer = ManifestWriter::open(&opts.out_dir, opts.shard)?;
    manifest::remove_stale_temps(&opts.out_dir, opts.shard)?;
    if let Some(license) = backend.license() {
        crate::output::ensure_notice_file(&opts.out_dir, &license)?;
    }

    let jobs = plan.jobs(opts.shard);
    let images = jobs.len();
    let lines = plan.lines.iter().filter(|l| opts.shard.contains(l.index)).count();
    let (pending, skipped, listed) = pending_jobs(jobs, &opts.out_dir, &opts.defaults.run_key)?;

    let report = opts.on_event;
    report(Event::Start { input: &input.name, shard: opts.shard, images, skipped, pending: pending.len() });
    let mut done = 0;
    let mut failures = Vec::new();
    for group in group_jobs(&pending, opts.batch_size) {
        let group: Vec<Job> = group.into_iter().cloned().collect();
        report(Event::Group { jobs: &group });
        let render_started = Instant::now();
        let mut results = backend.render(&group, &mut |done, total| report(Event::Step { done, total }));
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
            let result = match result {
                Ok(bytes) => write_image(opts, &listed, job, &bytes)?.map(|()| bytes),
                Err(error) => Err(error),
            };
            let entry = match result {
                Ok(bytes) => {
                    done += 1;
                    record(job, &opts.defaults.run_key, opts.shard, per_image, Ok(&bytes))
                }
                Err(error) => {
                    failures.push(Failure {
                        line: job.line,
                        index: job.index,
                        file: job.file_name.clone(),
                        error: error.clone(),
                    });
                    record(job, &opts.defaults.run_key, opts.shard, per_image, Err(error))
                }
            };
            writer.append(&entry)?;
            report(Event::Finished { job, entry: &entry });
        }
    }
    report(Event::End);
    // Other shards' and older versions' leftovers: any that has not changed since this run
    // started belongs to a process that is gone. Failing to tidy up does not fail the run.
    let _ = atomic::remove_stale_temps(&opts.out_dir, Stale::OlderThan(started_at));

    let seconds = started.elapsed().as_secs_f64();
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
        images_per_minute: (done > 0 && seconds > 0.0).then(|| done as f64 * 60.0 / seconds),
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

/// Writes a job's PNG. A file that a manifest records as written was made by this batch and
/// is replaced (its line was edited, or its file damaged); so is any file with `overwrite`.
/// Any other existing file is someone else's: the job fails with `Ok(Err(message))` and the
/// file stays, unless it already holds exactly these bytes, which is this job's own image from
/// a run killed between writing it and recording it. `Err` is a write failure that stops the
/// run.
fn write_image(
    opts: &BatchOptions<'_>,
    listed: &HashSet<String>,
    job: &Job,
    bytes: &[u8],
) -> Result<std::result::Result<(), String>> {
    let on_existing =
        if opts.overwrite || listed.contains(&job.file_name) { OnExisting::Overwrite } else { OnExisting::Fail };
    match manifest::write_atomically(&opts.out_dir, &job.file_name, bytes, opts.shard, on_existing) {
        Ok(_) => Ok(Ok(())),
        Err(e) if atomic::is_already_exists(&e) => {
            let path = opts.out_dir.join(&job.file_name);
            if std::fs::read(&path).is_ok_and(|existing| existing == bytes) {
                return Ok(Ok(()));
            }
            Ok(Err(format!(
                "{} already exists and no manifest in {} lists it, so it was not made by this batch; it was \
                 left alone: move it away, choose another filename, or pass --overwrite to replace it",
                path.display(),
                opts.out_dir.display()
            )))
        }
        Err(e) => Err(e),
    }
}

fn record(
    job: &Job,
    run_key: &str,
    shard: Shard,
    duration_s: f64,
    result: std::result::Result<&[u8], String>,
) -> ManifestEntry {
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
        key: job.key(run_key),
        status,
        sha256,
        bytes,
        duration_s,
        error,
        shard: shard.to_string(),
        finished: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// Splits jobs into those still to do and a count of those done, and lists every file name
/// the manifests record as written. A job is done when any manifest (of any shard, so a change
/// of shard count loses nothing) has an ok record for the same file and request key whose
/// sha256 matches the file now on disk. A missing or altered file, a failed record or no record
/// means the job runs again.
fn pending_jobs(
    jobs: Vec<Job>,
    out_dir: &std::path::Path,
    run_key: &str,
) -> Result<(Vec<Job>, usize, HashSet<String>)> {
    let set = manifest::read_all(out_dir)?;
    // Only ok records prove this batch wrote a file; a failed one may be about someone else's.
    let listed: HashSet<String> =
        set.entries.iter().filter(|e| e.status == ManifestStatus::Ok).map(|e| e.file.clone()).collect();
    let mut ok: HashMap<(&str, &str), HashSet<&str>> = HashMap::new();
    for e in &set.entries {
        if let (ManifestStatus::Ok, Some(sha)) = (e.status, &e.sha256) {
            ok.entry((e.file.as_str(), e.key.as_str())).or_default().insert(sha.as_str());
        }
    }
    let mut pending = Vec::new();
    let mut skipped = 0;
    for job in jobs {
        let key = job.key(run_key);
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
    Ok((pending, skipped, listed))
}

/// Groups jobs that can share one UNet batch: equal width, height, steps, scheduler, guidance
/// and clip_skip, at most `batch_size` each. Each group keeps file order, and groups are ordered
/// by their first job, so output appears roughly in file order.
pub fn group_jobs(jobs: &[Job], batch_size: usize) -> Vec<Vec<&Job>> {
    type Start = (bool, bool, u64);
    type Key<'k> =
        (u32, u32, usize, &'k str, u64, Option<usize>, Option<crate::request::TimestepSpacing>, Start, String);
    let batch_size = batch_size.max(1);
    let mut open: HashMap<Key<'_>, Vec<usize>> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let r = &job.request;
        // img2img, inpainting and text-to-image lines never share a UNet batch.
        let start = (r.init_image.is_some(), r.mask.is_some(), r.strength.unwrap_or(0.0).to_bits());
        let key = (
            r.width,
            r.height,
            r.steps,
            r.scheduler.as_str(),
            r.guidance.to_bits(),
            r.clip_skip,
            r.timestep_spacing,
            start,
            // Lines with other LoRAs run on other weights.
            r.loras
                .iter()
                .map(|l| format!("{}:{}:{}", l.path.display(), l.weight, l.sha256))
                .collect::<Vec<_>>()
                .join("|"),
        );
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
