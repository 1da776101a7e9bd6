//! The batch engine behind `sdgen batch FILE`: many prompts from one file, resumable, shardable.
//!
//! The flow is parse → validate everything → pick this shard's jobs → skip what the manifests
//! prove done → render the rest in groups through a [`Backend`] → write each PNG atomically and
//! append a manifest record. The engine knows nothing of tch: the caller supplies the
//! [`Backend`] that turns jobs into PNG bytes, and a check for scheduler names.
//!
//! Determinism is what makes resume and sharding safe: a line's seed (when the line gives none)
//! and its output name depend only on the base seed and the line's index, never on the run
//! order, the shard or the machine. See [`derive_seed`] and [`output_name`].
//!
//! Files: [`parse`] reads the three input formats and resolves lines into requests,
//! [`manifest`] owns the per-shard manifests and atomic PNG writes, [`shard`] picks shards and
//! reports the status of a whole file, [`run`](mod@run) renders.

pub mod manifest;
pub mod parse;
pub mod run;
pub mod shard;

pub use manifest::{sha256_hex, ManifestEntry, ManifestStatus};
pub use parse::{derive_seed, output_name, BatchInput, Defaults, Format, LineError, Plan, PlannedLine, KNOWN_KEYS};
pub use run::{accept, group_jobs, run, validate, BatchOptions, Event, Failure, Summary};
pub use shard::{check_shard_count, merge, status, FailedImage, Shard, StatusReport, SHARD_COUNT_ENV, SHARD_ENV};

use crate::Request;

/// What the batch engine needs from the image generator. The lead implements it on top of
/// `sdgen::Pipeline` + PNG encoding.
pub trait Backend {
    /// Renders a group of jobs that share width, height, steps, scheduler, guidance and
    /// clip_skip, ideally as one UNet batch. Returns one result per job, in order: the finished
    /// PNG file bytes (metadata already embedded) or that job's error.
    /// `on_step(done_steps, total_steps)` reports progress.
    fn render(&mut self, jobs: &[Job], on_step: &mut dyn FnMut(usize, usize)) -> Vec<Result<Vec<u8>, String>>;

    /// The licence of the model the images come from; when given, the run leaves its notice
    /// file in the output folder, as `generate` does (see
    /// [`ensure_notice_file`](crate::output::ensure_notice_file)).
    fn license(&self) -> Option<crate::request::LicenseRecord> {
        None
    }
}

/// One image to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// 1-based line number in the input file (for messages).
    pub line: usize,
    /// 0-based index of the line among the file's entries (blank and comment lines excluded);
    /// shards and generated names use it.
    pub index: usize,
    /// Which image of the line this is, `0..num_images`.
    pub image: usize,
    /// The request for this one image: `num_images` is 1 and `seed` is the image's own seed.
    pub request: Request,
    /// The output file name inside the output folder.
    pub file_name: String,
}

impl Job {
    /// A short fingerprint of everything that decides the image's content (the request and
    /// the run's `run_key`: model, precision, options), so that a manifest record from an
    /// edited line or another model is not mistaken for this job's.
    pub fn key(&self, run_key: &str) -> String {
        request_key(&self.request, run_key)
    }
}

/// Hex of the first 8 bytes of sha256 over the request's JSON form and the run key. serde_json
/// writes fields in declaration order and floats in their shortest exact form, so the text is
/// stable.
pub(crate) fn request_key(request: &Request, run_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut text = serde_json::to_string(request).unwrap_or_default();
    if !run_key.is_empty() {
        text.push('\n');
        text.push_str(run_key);
    }
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
