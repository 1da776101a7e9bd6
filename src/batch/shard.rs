//! Splitting a batch across processes, and the status of the whole file across all shards.
//!
//! Shard `i/n` takes the lines whose index mod n == i. Indices do not depend on validity or on
//! the run, so shards 0..n cover every line exactly once. The shard comes from `--shard i/n`,
//! else from a Slurm job array (`SLURM_ARRAY_TASK_ID`), else from a Kubernetes indexed Job
//! (`JOB_COMPLETION_INDEX`, with the count from `--shard-count` or `SDGEN_SHARD_COUNT`).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::manifest::{self, ManifestEntry, ManifestStatus};
use super::parse::{BatchInput, LineError, Plan};
use super::run::BatchOptions;
use crate::output::atomic::{self, OnExisting};
use crate::{Error, Result};

/// The variable that gives the shard count next to `JOB_COMPLETION_INDEX`, or overrides
/// `SLURM_ARRAY_TASK_COUNT`.
pub const SHARD_COUNT_ENV: &str = "SDGEN_SHARD_COUNT";
/// The variable that names the shard (`i/n`, or `i` with [`SHARD_COUNT_ENV`]) ahead of Slurm's
/// and Kubernetes' variables: how one task of an array is redone.
pub const SHARD_ENV: &str = "SDGEN_SHARD";

/// Shard `index` of `count`: the lines whose index mod `count` == `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::ALL
    }
}

impl Shard {
    /// The whole file in one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            return Err(Error::invalid("the shard count must be at least 1"));
        }
        if index >= count {
            return Err(Error::invalid(format!(
                "shard index {index} is out of range for {count} shards: use 0 to {}",
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }

    /// Parses `i/n`, as in `--shard 2/8`.
    pub fn parse(text: &str) -> Result<Shard> {
        let bad =
            || Error::invalid(format!("--shard \"{text}\": expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse::<usize>().map_err(|_| bad())?;
        let n = n.trim().parse::<usize>().map_err(|_| bad())?;
        Shard::new(i, n).map_err(|e| Error::invalid(format!("--shard \"{text}\": {e}")))
    }

    /// Whether a line with this entry index belongs to the shard.
    pub fn contains(&self, index: usize) -> bool {
        index % self.count == self.index
    }

    /// The shard's manifest file name: `manifest-shard-<i>-of-<n>.jsonl`.
    pub fn manifest_name(&self) -> String {
        format!("{}{}-of-{}.jsonl", manifest::MANIFEST_PREFIX, self.index, self.count)
    }

    /// The shard to run: `flag` (`--shard i/n`) if given, else from the process environment.
    /// `count` is `--shard-count`, used with `JOB_COMPLETION_INDEX`. See [`Shard::select_with`].
    pub fn select(flag: Option<&str>, count: Option<usize>) -> Result<Shard> {
        Shard::select_with(flag, count, &|name| std::env::var(name).ok())
    }

    /// [`Shard::select`] with the environment given as a lookup, in this order:
    /// 1. `flag` (`i/n`);
    /// 2. `SDGEN_SHARD`: `i/n`, or `i` with the count from `count` or `SDGEN_SHARD_COUNT`;
    /// 3. a Slurm job array: index `(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / STEP`
    ///    (`SLURM_ARRAY_TASK_STEP`, default 1), count `SLURM_ARRAY_TASK_COUNT`. A count from
    ///    `count` or `SDGEN_SHARD_COUNT` overrides it; when it differs from the array's, the array
    ///    is a resubmission of some tasks (`sbatch --array=2`), whose minimum is not the original
    ///    one, so the index is `SLURM_ARRAY_TASK_ID` itself (ids numbered from 0, as shards);
    /// 4. a Kubernetes indexed Job: index `JOB_COMPLETION_INDEX`, count `count` or
    ///    `SDGEN_SHARD_COUNT`, which must be the Job's `completions`;
    /// 5. otherwise the whole file.
    pub fn select_with(
        flag: Option<&str>,
        count: Option<usize>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Shard> {
        if let Some(flag) = flag {
            let shard = Shard::parse(flag)?;
            if count.is_some_and(|c| c != shard.count) {
                return Err(Error::invalid(format!(
                    "--shard {flag} and --shard-count {} disagree; give only --shard",
                    count.unwrap_or_default()
                )));
            }
            return Ok(shard);
        }
        let number = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::invalid(format!("environment variable {name}={v:?} is not a whole number of 0 or more"))
                }),
            }
        };

        let explicit_count = match count {
            Some(c) => Some(c),
            None => number(SHARD_COUNT_ENV)?,
        };
        if let Some(text) = env(SHARD_ENV).filter(|v| !v.trim().is_empty()) {
            let shard = if text.contains('/') {
                Shard::parse(&text).map_err(|e| Error::invalid(format!("{SHARD_ENV}: {e}")))?
            } else {
                let index = number(SHARD_ENV)?.unwrap_or_default();
                let count = explicit_count.ok_or_else(|| {
                    Error::invalid(format!(
                        "{SHARD_ENV}={text} needs a shard count: write {SHARD_ENV}={text}/N, or set {SHARD_COUNT_ENV}"
                    ))
                })?;
                Shard::new(index, count).map_err(|e| Error::invalid(format!("{SHARD_ENV}={text}: {e}")))?
            };
            if explicit_count.is_some_and(|c| c != shard.count) {
                return Err(Error::invalid(format!(
                    "{SHARD_ENV}={text} and the shard count {} (--shard-count or {SHARD_COUNT_ENV}) disagree",
                    explicit_count.unwrap_or_default()
                )));
            }
            return Ok(shard);
        }

        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let array_count = number("SLURM_ARRAY_TASK_COUNT")?;
            if let Some(count) = explicit_count.filter(|c| array_count != Some(*c)) {
                return Shard::new(id, count).map_err(|e| {
                    Error::invalid(format!(
                        "SLURM_ARRAY_TASK_ID={id} with {count} shards ({SHARD_COUNT_ENV} or --shard-count, which \
                         differs from SLURM_ARRAY_TASK_COUNT, so the task id is taken as the shard index): {e}; \
                         set {SHARD_ENV}=i/{count} to name the shard"
                    ))
                });
            }
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let count = array_count.ok_or_else(|| {
                Error::invalid("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard i/n")
            })?;
            if id < min || (id - min) % step != 0 {
                return Err(Error::invalid(format!(
                    "SLURM_ARRAY_TASK_ID={id} does not fit SLURM_ARRAY_TASK_MIN={min} and \
                     SLURM_ARRAY_TASK_STEP={step}; use a contiguous array such as --array=0-{} or pass --shard i/n",
                    count.saturating_sub(1)
                )));
            }
            return Shard::new((id - min) / step, count).map_err(|e| {
                Error::invalid(format!(
                    "Slurm array task {id} (min {min}, step {step}, count {count}): {e}; \
                     the array must be contiguous, e.g. --array=0-{}",
                    count.saturating_sub(1)
                ))
            });
        }

        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = explicit_count.ok_or_else(|| {
                Error::invalid(format!(
                    "JOB_COMPLETION_INDEX is set but the shard count is not: pass --shard-count N or set \
                     {SHARD_COUNT_ENV} to the Job's spec.completions"
                ))
            })?;
            return Shard::new(index, count)
                .map_err(|e| Error::invalid(format!("JOB_COMPLETION_INDEX={index} with {count} shards: {e}")));
        }

        if let Some(count) = count {
            return Err(Error::invalid(format!(
                "--shard-count {count} needs a shard index: run inside a Slurm array or Kubernetes indexed Job, \
                 or pass --shard i/{count}"
            )));
        }
        Ok(Shard::ALL)
    }
}

/// An error when `dir` holds manifests from splitting the file into a different number of
/// shards than `shard`'s. Their shards cover other lines than this run's, so it would render
/// images that they did or are still doing: the classic case is a Slurm task redone with
/// `sbatch --array=2`, which Slurm reports as an array of one task (shard 0/1). [`run`]
/// refuses such a run when it has images to render.
///
/// [`run`]: super::run()
pub fn check_shard_count(dir: &std::path::Path, shard: Shard) -> Result<()> {
    let Some((count, example)) = manifest::shard_counts(dir)?.into_iter().find(|(c, _)| *c != shard.count) else {
        return Ok(());
    };
    Err(Error::invalid(format!(
        "{} holds manifests of this batch split into {count} shards ({example}), but this run is shard {shard}: \
         it would render images those shards did or are doing. To redo one task of that run, pass --shard \
         i/{count}, or set {SHARD_ENV}=i/{count} (in a Slurm array resubmitted for some tasks, \
         {SHARD_COUNT_ENV}={count} is enough when the array ids are the shard numbers). To split the file \
         differently, use a new output folder.",
        dir.display()
    )))
}

/// One image's state across all manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedImage {
    pub line: usize,
    pub index: usize,
    pub file: String,
    pub error: String,
}

/// Where a whole batch file stands, over every shard's manifest in the output folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub input: String,
    pub out_dir: PathBuf,
    /// Valid lines in the file, and their images.
    pub lines: usize,
    pub images: usize,
    pub done_images: usize,
    pub failed_images: usize,
    pub missing_images: usize,
    /// Lines whose every image is done.
    pub done_lines: usize,
    /// Images whose last attempt failed and that have no finished file.
    pub failed: Vec<FailedImage>,
    /// Line numbers with at least one image neither done nor failed.
    pub missing_lines: Vec<usize>,
    /// Problems in the file; those lines are in no count above.
    pub invalid: Vec<LineError>,
    /// The manifests read, by file name.
    pub manifests: Vec<String>,
    /// Manifest lines that could not be read (a crash mid-write leaves at most one per file).
    pub unreadable_manifest_lines: usize,
    /// The merged manifest written by [`merge`].
    pub merged: Option<PathBuf>,
}

impl StatusReport {
    /// Every valid line done and the file free of problems.
    pub fn is_complete(&self) -> bool {
        self.done_images == self.images && self.invalid.is_empty()
    }

    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{} in {}: {}/{} lines done; images: {} done, {} failed, {} missing (of {})",
            self.input,
            self.out_dir.display(),
            self.done_lines,
            self.lines,
            self.done_images,
            self.failed_images,
            self.missing_images,
            self.images
        );
        if !self.missing_lines.is_empty() {
            text.push_str(&format!("\nmissing lines: {}", ranges(&self.missing_lines)));
        }
        for f in &self.failed {
            text.push_str(&format!("\nfailed: line {} ({}): {}", f.line, f.file, f.error));
        }
        if !self.invalid.is_empty() {
            text.push_str(&format!("\n{} problem(s) in the file:", self.invalid.len()));
            for p in &self.invalid {
                text.push_str(&format!("\n  {p}"));
            }
        }
        if let Some(merged) = &self.merged {
            text.push_str(&format!("\nmerged manifest: {}", merged.display()));
        }
        text
    }
}

/// `1, 3-7, 9` from sorted numbers.
fn ranges(numbers: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        let mut end = start;
        while i + 1 < numbers.len() && numbers[i + 1] == end + 1 {
            i += 1;
            end = numbers[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(", ")
}

/// Reads every shard's manifest in `opts.out_dir` and reports done / failed / missing lines of
/// the whole file. An image counts as done when a manifest records it as ok for the same request
/// and the file is there with the recorded size (a run also checks the sha256; status does not
/// read every PNG). `opts.shard` and `opts.batch_size` are not used.
pub fn status(input: &BatchInput, opts: &BatchOptions<'_>) -> Result<StatusReport> {
    Ok(collect(input, opts)?.0)
}

/// [`status`], and also writes `manifest.jsonl` in the output folder: one record per image of
/// the file, in file order: its ok record if done, else its last failed record; missing images
/// have none. It replaces an earlier `manifest.jsonl` atomically. Before any run (no folder, or
/// no shard manifest in it) there is nothing to merge: the report says 0 done and no file is
/// written.
pub fn merge(input: &BatchInput, opts: &BatchOptions<'_>) -> Result<StatusReport> {
    let (mut report, records) = collect(input, opts)?;
    if report.manifests.is_empty() {
        return Ok(report);
    }
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).map_err(|e| Error::invalid(format!("manifest record: {e}")))?);
        text.push('\n');
    }
    // Its own temp tag: a shard run removes its shard's temps, which may not be ours.
    let path = atomic::write_file_tagged(
        &opts.out_dir.join(manifest::MERGED_NAME),
        text.as_bytes(),
        OnExisting::Overwrite,
        Some("merge"),
    )?;
    report.merged = Some(path);
    Ok(report)
}

fn collect(input: &BatchInput, opts: &BatchOptions<'_>) -> Result<(StatusReport, Vec<ManifestEntry>)> {
    let mut plan = Plan::new(input, &opts.defaults, opts.validate_scheduler);
    if let Some(layers) = opts.clip_layers {
        plan.check_clip_skip(layers);
    }
    let set = manifest::read_all(&opts.out_dir)?;
    let mut by_file: HashMap<&str, Vec<&ManifestEntry>> = HashMap::new();
    for e in &set.entries {
        by_file.entry(e.file.as_str()).or_default().push(e);
    }

    let mut report = StatusReport {
        input: plan.input.clone(),
        out_dir: opts.out_dir.clone(),
        lines: plan.lines.len(),
        images: 0,
        done_images: 0,
        failed_images: 0,
        missing_images: 0,
        done_lines: 0,
        failed: Vec::new(),
        missing_lines: Vec::new(),
        invalid: plan.problems.clone(),
        manifests: set.files.clone(),
        unreadable_manifest_lines: set.unreadable_lines,
        merged: None,
    };
    let mut merged = Vec::new();
    for line in &plan.lines {
        let mut all_done = true;
        let mut any_missing = false;
        for job in line.jobs() {
            report.images += 1;
            let key = job.key(&opts.defaults.run_key);
            let records: Vec<&ManifestEntry> =
                by_file.get(job.file_name.as_str()).into_iter().flatten().copied().filter(|e| e.key == key).collect();
            let size = std::fs::metadata(opts.out_dir.join(&job.file_name)).ok().map(|m| m.len());
            let done = records.iter().find(|e| e.status == ManifestStatus::Ok && size.is_some() && e.bytes == size);
            let failed = records.iter().rev().find(|e| e.status == ManifestStatus::Failed);
            if let Some(ok) = done {
                report.done_images += 1;
                merged.push((*ok).clone());
                continue;
            }
            all_done = false;
            if let Some(f) = failed {
                report.failed_images += 1;
                report.failed.push(FailedImage {
                    line: job.line,
                    index: job.index,
                    file: job.file_name.clone(),
                    error: f.error.clone().unwrap_or_default(),
                });
                merged.push((*f).clone());
            } else {
                report.missing_images += 1;
                any_missing = true;
            }
        }
        if all_done {
            report.done_lines += 1;
        }
        if any_missing {
            report.missing_lines.push(line.line);
        }
    }
    Ok((report, merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn flag_parsing() {
        assert_eq!(Shard::parse("2/8").ok(), Some(Shard { index: 2, count: 8 }));
        for bad in ["8/8", "1/0", "x/2", "3", "-1/2", "1/2/3", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Shard { index: 1, count: 3 }.manifest_name(), "manifest-shard-1-of-3.jsonl");
    }

    #[test]
    fn slurm_array_with_offset_and_step() {
        let e = env(&[("SLURM_ARRAY_TASK_ID", "12"), ("SLURM_ARRAY_TASK_MIN", "10"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert_eq!(Shard::select_with(None, None, &e).ok(), Some(Shard { index: 2, count: 4 }));
        let e = env(&[
            ("SLURM_ARRAY_TASK_ID", "6"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "5"),
        ]);
        assert_eq!(Shard::select_with(None, None, &e).ok(), Some(Shard { index: 3, count: 5 }));
        // The flag wins over the environment.
        assert_eq!(Shard::select_with(Some("0/2"), None, &e).ok(), Some(Shard { index: 0, count: 2 }));
        let e = env(&[("SLURM_ARRAY_TASK_ID", "4"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        assert!(Shard::select_with(None, None, &e).is_err());
        let e = env(&[("SLURM_ARRAY_TASK_ID", "abc"), ("SLURM_ARRAY_TASK_COUNT", "4")]);
        let message = Shard::select_with(None, None, &e).unwrap_err().to_string();
        assert!(message.contains("SLURM_ARRAY_TASK_ID"), "{message}");
        let e = env(&[("SLURM_ARRAY_TASK_ID", "1")]);
        assert!(Shard::select_with(None, None, &e).is_err());
    }

    #[test]
    fn kubernetes_indexed_job() {
        let e = env(&[("JOB_COMPLETION_INDEX", "3"), (SHARD_COUNT_ENV, "5")]);
        assert_eq!(Shard::select_with(None, None, &e).ok(), Some(Shard { index: 3, count: 5 }));
        assert_eq!(Shard::select_with(None, Some(4), &e).ok(), Some(Shard { index: 3, count: 4 }));
        let e = env(&[("JOB_COMPLETION_INDEX", "3")]);
        let message = Shard::select_with(None, None, &e).unwrap_err().to_string();
        assert!(message.contains("--shard-count") && message.contains(SHARD_COUNT_ENV), "{message}");
        let e = env(&[("JOB_COMPLETION_INDEX", "5"), (SHARD_COUNT_ENV, "5")]);
        assert!(Shard::select_with(None, None, &e).is_err());
    }

    #[test]
    fn sdgen_shard_overrides_slurm_and_a_redone_task_keeps_its_number() {
        // `sbatch --array=2` to redo one task: Slurm calls it an array of one.
        let redo = [("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_MIN", "2"), ("SLURM_ARRAY_TASK_COUNT", "1")];
        assert_eq!(Shard::select_with(None, None, &env(&redo)).ok(), Some(Shard::ALL));
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = redo.to_vec();
            vars.extend_from_slice(extra);
            Shard::select_with(None, None, &env(&vars))
        };
        assert_eq!(with(&[(SHARD_ENV, "2/4")]).ok(), Some(Shard { index: 2, count: 4 }));
        assert_eq!(with(&[(SHARD_ENV, "3"), (SHARD_COUNT_ENV, "4")]).ok(), Some(Shard { index: 3, count: 4 }));
        assert_eq!(with(&[(SHARD_COUNT_ENV, "4")]).ok(), Some(Shard { index: 2, count: 4 }));
        assert!(with(&[(SHARD_ENV, "3")]).is_err());
        assert!(with(&[(SHARD_ENV, "4/4")]).is_err());
        assert!(with(&[(SHARD_ENV, "1/4"), (SHARD_COUNT_ENV, "5")]).is_err());
        assert!(with(&[(SHARD_COUNT_ENV, "2")]).is_err());
        // The flag still wins.
        assert_eq!(
            Shard::select_with(Some("1/4"), None, &env(&[(SHARD_ENV, "2/4")])).ok(),
            Some(Shard::new(1, 4).ok()).flatten()
        );
        // A full array with the same count keeps Slurm's numbering (offset included).
        let full = [
            ("SLURM_ARRAY_TASK_ID", "12"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            (SHARD_COUNT_ENV, "4"),
        ];
        assert_eq!(Shard::select_with(None, None, &env(&full)).ok(), Some(Shard { index: 2, count: 4 }));
    }

    #[test]
    fn a_folder_split_another_way_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::invalid(e.to_string()))?;
        check_shard_count(dir.path(), Shard::ALL)?;
        std::fs::write(dir.path().join("manifest-shard-2-of-4.jsonl"), "{}\n")
            .map_err(|e| Error::invalid(e.to_string()))?;
        // An empty manifest (a run stopped before its first image) does not count.
        std::fs::write(dir.path().join("manifest-shard-0-of-1.jsonl"), "")
            .map_err(|e| Error::invalid(e.to_string()))?;
        check_shard_count(dir.path(), Shard { index: 1, count: 4 })?;
        let message = check_shard_count(dir.path(), Shard::ALL).unwrap_err().to_string();
        assert!(
            message.contains("4 shards") && message.contains("--shard i/4") && message.contains(SHARD_ENV),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn no_environment_means_the_whole_file() {
        assert_eq!(Shard::select_with(None, None, &env(&[])).ok(), Some(Shard::ALL));
        assert!(Shard::select_with(None, Some(3), &env(&[])).is_err());
        assert!(Shard::select_with(Some("1/3"), Some(4), &env(&[])).is_err());
    }

    #[test]
    fn range_formatting() {
        assert_eq!(ranges(&[1, 3, 4, 5, 7, 9, 10]), "1, 3-5, 7, 9-10");
        assert_eq!(ranges(&[]), "");
    }
}
