//! Models from the Hugging Face hub, kept in the standard Hugging Face cache.
//!
//! Files land where Python's `huggingface_hub` puts them (`models--owner--name/{blobs,
//! snapshots,refs}` under `$HF_HUB_CACHE`), so a model either side downloaded is reused by
//! the other without a copy. Only what the pipeline reads is fetched: the configs, one
//! safetensors file per model (the fp16 variant when asked for and present), the tokenizer,
//! the scheduler config and the model card, never pickles or the safety checker. An SDXL
//! repo (one with `text_encoder_2/` or `tokenizer_2/`) also gives its second text encoder
//! and tokenizer.
//!
//! The repo listing decides which files exist; with `HF_HUB_OFFLINE=1`, or when the hub
//! can't be reached, the cached snapshot that `refs/<revision>` points at is used instead.

use crate::loading::source::{check_repo_id, check_revision};
use crate::{Error, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The public hub, used unless `HF_ENDPOINT` names another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The models a diffusers Stable Diffusion folder holds, with their weight file stems.
const MODELS: [(&str, &str); 3] =
    [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")];
/// What an SDXL folder holds besides: the second text encoder (with projection) and tokenizer.
const SDXL_MODEL: (&str, &str) = ("text_encoder_2", "model");
const SDXL_TOKENIZER: &str = "tokenizer_2";
const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";
/// The BPE files of a transformers 4 tokenizer folder; transformers 5 saves only
/// `tokenizer.json` (beside `tokenizer_config.json`), which holds the same tables.
const TOKENIZER_BPE: [&str; 2] = ["vocab.json", "merges.txt"];
const TOKENIZER_JSON: &str = "tokenizer.json";

/// Whether a repo's files are an SDXL pipeline's: it has a second text encoder or tokenizer.
fn is_sdxl(has: &BTreeSet<&str>) -> bool {
    has.iter().any(|f| f.starts_with("text_encoder_2/") || f.starts_with("tokenizer_2/"))
}
/// The model card (for the licence) and the licence files `output::license` looks for.
const OPTIONAL: [&str; 5] = ["README.md", "LICENSE", "LICENSE.md", "LICENSE-MODEL", "LICENSE.txt"];

/// Where the hub is and how to talk to it; [`HubConfig::from_env`] reads the variables
/// `huggingface_hub` reads, so both agree on the cache and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Base URL of the hub, without a trailing `/`.
    pub endpoint: String,
    /// The hub cache: the folder that holds `models--owner--name/`.
    pub cache_dir: PathBuf,
    pub token: Option<String>,
    /// Never touch the network; use the cache only.
    pub offline: bool,
}

impl HubConfig {
    /// From `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`, `HF_TOKEN` (or the token file) and
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> HubConfig {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`HubConfig::from_env`] reading variables through `env`, without touching the process
    /// environment.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> HubConfig {
        let env = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let home = env("HOME").or_else(|| env("USERPROFILE")).map(PathBuf::from);
        let expand = |v: String| match (v.strip_prefix("~/"), &home) {
            (Some(rest), Some(h)) => h.join(rest),
            _ => PathBuf::from(v),
        };
        // huggingface_hub's defaults: HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface.
        let hf_home = env("HF_HOME").map(expand).unwrap_or_else(|| {
            let cache = env("XDG_CACHE_HOME")
                .map(&expand)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache_dir =
            env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")).map(expand).unwrap_or(hf_home.join("hub"));
        let token = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = env("HF_TOKEN_PATH").map(expand).unwrap_or(hf_home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let is_true =
            |name: &str| env(name).is_some_and(|v| matches!(v.to_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"));
        HubConfig {
            endpoint: env("HF_ENDPOINT").unwrap_or(DEFAULT_ENDPOINT.to_string()).trim_end_matches('/').to_string(),
            cache_dir,
            token,
            offline: is_true("HF_HUB_OFFLINE") || is_true("TRANSFORMERS_OFFLINE"),
        }
    }

    /// The cache folder of one model repo (`models--owner--name`), whether or not it exists.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir.join(Repo::model(repo.to_string()).folder_name())
    }
}

/// Fetches a hub model with settings from the environment; see [`fetch_with`].
pub fn fetch(
    repo: &str,
    revision: Option<&str>,
    prefer_fp16: bool,
    progress: &mut dyn DownloadProgress,
) -> Result<PathBuf> {
    fetch_with(&HubConfig::from_env(), repo, revision, prefer_fp16, progress)
}

/// Makes the files the pipeline needs from `repo` at `revision` (default `main`) present in
/// the cache and returns the snapshot folder, a diffusers folder. For a repo that holds a
/// single checkpoint instead (no `model_index.json`), returns that `.safetensors` file.
///
/// `prefer_fp16` picks the `.fp16.safetensors` variants where the repo has them; `progress`
/// hears about each downloaded file (the library draws nothing itself).
pub fn fetch_with(
    config: &HubConfig,
    repo: &str,
    revision: Option<&str>,
    prefer_fp16: bool,
    progress: &mut dyn DownloadProgress,
) -> Result<PathBuf> {
    fetch_what(config, repo, revision, prefer_fp16, progress, What::Pipeline)
}

/// Fetches a hub VAE with settings from the environment; see [`fetch_vae_with`].
pub fn fetch_vae(
    repo: &str,
    revision: Option<&str>,
    prefer_fp16: bool,
    progress: &mut dyn DownloadProgress,
) -> Result<PathBuf> {
    fetch_vae_with(&HubConfig::from_env(), repo, revision, prefer_fp16, progress)
}

/// Like [`fetch_with`] for `--vae`: only a VAE's config and weights. A VAE repo
/// (`stabilityai/sd-vae-ft-mse`, `madebyollin/taesd`: `config.json` and
/// `diffusion_pytorch_model[.fp16].safetensors` at the top) gives its snapshot folder; a
/// pipeline repo its `vae/` folder (only that is fetched); a repo of one `.safetensors` file
/// (`stabilityai/sd-vae-ft-mse-original`) that file.
pub fn fetch_vae_with(
    config: &HubConfig,
    repo: &str,
    revision: Option<&str>,
    prefer_fp16: bool,
    progress: &mut dyn DownloadProgress,
) -> Result<PathBuf> {
    fetch_what(config, repo, revision, prefer_fp16, progress, What::Vae)
}

/// What a fetch is for: a whole pipeline (`--model`) or a VAE (`--vae`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Pipeline,
    Vae,
}

fn fetch_what(
    config: &HubConfig,
    repo: &str,
    revision: Option<&str>,
    prefer_fp16: bool,
    progress: &mut dyn DownloadProgress,
    what: What,
) -> Result<PathBuf> {
    let revision = revision.unwrap_or("main");
    // Both become paths in the cache, so they are checked here too, not only by the parser.
    check_repo_id(repo).map_err(|why| Error::invalid(format!("'{repo}' is not a hub repo id: {why}")))?;
    check_revision(revision).map_err(|why| Error::invalid(format!("'{revision}' is not a revision: {why}")))?;
    if config.offline {
        return from_cache(config, repo, revision, prefer_fp16, what)
            .map_err(|miss| not_cached(config, repo, revision, prefer_fp16, "HF_HUB_OFFLINE is set", &miss, what));
    }
    let api = ApiBuilder::from_cache(Cache::new(config.cache_dir.clone()))
        .with_endpoint(config.endpoint.clone())
        .with_token(config.token.clone())
        .with_progress(false)
        .with_retries(2)
        .with_user_agent("sdgen", crate::VERSION)
        .build()
        .map_err(|e| Error::Hub(format!("cannot set up a connection to {}: {e}", config.endpoint)))?;
    let listing = match list(&api, repo, revision) {
        Ok(listing) => listing,
        // As huggingface_hub does: no connection is not an error while the cache has the model.
        Err(ListError::Unreachable(why)) => {
            return from_cache(config, repo, revision, prefer_fp16, what).map_err(|miss| {
                not_cached(
                    config,
                    repo,
                    revision,
                    prefer_fp16,
                    &format!("{} cannot be reached ({why})", config.endpoint),
                    &miss,
                    what,
                )
            });
        }
        Err(ListError::Failed(e)) => return Err(e.into_error(config, repo, revision)),
    };
    let plan = plan_for(what, &listing.files, prefer_fp16).map_err(|why| {
        let thing = if what == What::Vae { "VAE" } else { "model" };
        Error::Hub(format!("{repo}@{revision} on {} has no {thing} sdgen can load: {why}", config.endpoint))
    })?;

    let repo_dir = config.repo_dir(repo);
    let snapshot = repo_dir.join("snapshots").join(&listing.sha);
    // Files are fetched by commit, as huggingface_hub's snapshot_download does, so a branch
    // that moves mid-download can't mix two commits in one snapshot.
    let handle = api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, listing.sha.clone()));
    for file in &plan.files {
        // A link whose blob is gone is not a file, so that blob is fetched again.
        if snapshot.join(file).is_file() {
            continue;
        }
        let got = handle
            .download_with_progress(file, Relay(&mut *progress))
            .map_err(|e| download_error(config, repo, revision, file, e))?;
        if got != snapshot.join(file) {
            return Err(Error::Hub(format!(
                "{repo}@{revision}: {} sent {file} from another commit than the listing ({}); run again",
                config.endpoint, listing.sha
            )));
        }
    }
    write_refs(&repo_dir, revision, &listing.sha)?;
    Ok(match plan.single_file {
        Some(file) => snapshot.join(file),
        None => snapshot,
    })
}

/// The commit a revision points at, and the files in the repo there.
struct Listing {
    sha: String,
    files: Vec<String>,
}

#[derive(Deserialize)]
struct ApiListing {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

enum ListError {
    Unreachable(String),
    Failed(Failure),
}

/// A request the hub answered, but not with what we needed.
enum Failure {
    Status(u16, String),
    Other(String),
}

impl Failure {
    fn into_error(self, config: &HubConfig, repo: &str, revision: &str) -> Error {
        let page = format!("{}/{repo}", config.endpoint);
        Error::Hub(match self {
            Failure::Status(401 | 403, what) => {
                let token = if config.token.is_some() {
                    "The token in use (HF_TOKEN or the token file) has no access to it: check it on the hub, or set HF_TOKEN to another."
                } else {
                    "No token is set: create an access token on the hub and set HF_TOKEN to it (or run `huggingface-cli login`)."
                };
                format!(
                    "{} refused {repo}@{revision} ({what}): the repo is gated or private, or does not exist. \
                     If it is gated, accept its terms at {page}. {token}",
                    config.endpoint
                )
            }
            Failure::Status(404, what) => format!(
                "{repo}@{revision} was not found on {} ({what}): check the repo id and the revision at {page}; \
                 if you meant a local folder, it does not exist",
                config.endpoint
            ),
            Failure::Status(_, what) | Failure::Other(what) => {
                format!("{repo}@{revision} on {}: {what}", config.endpoint)
            }
        })
    }
}

fn classify(err: ureq::Error) -> ListError {
    match err {
        ureq::Error::Status(code, response) => {
            ListError::Failed(Failure::Status(code, format!("HTTP {code} for {}", response.get_url())))
        }
        ureq::Error::Transport(t) => ListError::Unreachable(t.to_string()),
    }
}

fn list(api: &Api, repo: &str, revision: &str) -> std::result::Result<Listing, ListError> {
    let handle = api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string()));
    let response = handle.info_request().call().map_err(classify)?;
    let url = response.get_url().to_string();
    let body =
        response.into_string().map_err(|e| ListError::Unreachable(format!("reading the listing from {url}: {e}")))?;
    let listing: ApiListing = serde_json::from_str(&body).map_err(|e| {
        ListError::Failed(Failure::Other(format!("the repo listing at {url} is not what a hub sends ({e})")))
    })?;
    // The commit becomes a folder name in the cache, so it must be one.
    if listing.sha.is_empty() || !listing.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ListError::Failed(Failure::Other(format!(
            "the listing at {url} has a bad commit '{}'",
            listing.sha
        ))));
    }
    Ok(Listing { sha: listing.sha, files: listing.siblings.into_iter().map(|s| s.rfilename).collect() })
}

fn download_error(config: &HubConfig, repo: &str, revision: &str, file: &str, err: ApiError) -> Error {
    match err {
        ApiError::RequestError(e) => match classify(*e) {
            ListError::Failed(f) => f.into_error(config, repo, revision),
            ListError::Unreachable(why) => Error::Hub(format!(
                "downloading {file} of {repo}@{revision} from {} failed ({why}); run again to resume",
                config.endpoint
            )),
        },
        ApiError::MissingHeader(_) | ApiError::InvalidHeader(_) => Error::Hub(format!(
            "downloading {file} of {repo}@{revision}: {} did not answer as a Hugging Face hub does ({err}); \
             check HF_ENDPOINT",
            config.endpoint
        )),
        other => {
            Error::Hub(format!("downloading {file} of {repo}@{revision} into {}: {other}", config.cache_dir.display()))
        }
    }
}

/// Points `refs/<revision>` at the commit, as huggingface_hub does for branch and tag
/// names; and drops the `refs/<commit>` file hf-hub writes, which Python never does.
fn write_refs(repo_dir: &Path, revision: &str, sha: &str) -> Result<()> {
    let refs = repo_dir.join("refs");
    let by_commit = refs.join(sha);
    if std::fs::read_to_string(&by_commit).is_ok_and(|s| s.trim() == sha) {
        let _ = std::fs::remove_file(&by_commit);
    }
    if revision == sha {
        return Ok(());
    }
    let path = refs.join(revision);
    if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == sha) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(&refs);
    std::fs::create_dir_all(dir).map_err(|e| Error::io_op(crate::error::IoOp::CreateFolder, dir, e))?;
    std::fs::write(&path, sha).map_err(|e| Error::io_write(&path, e))
}

/// Which files to fetch from a repo, given its listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    files: Vec<String>,
    /// For a repo that is one checkpoint, not a diffusers folder: that file (for a VAE from a
    /// pipeline repo: its `vae` folder). The snapshot itself otherwise.
    single_file: Option<String>,
}

fn plan_for(what: What, listing: &[String], prefer_fp16: bool) -> std::result::Result<Plan, String> {
    match what {
        What::Pipeline => plan(listing, prefer_fp16),
        What::Vae => plan_vae(listing, prefer_fp16),
    }
}

/// The files of a VAE: `config.json` and one weights file at the top or under `vae/`, else
/// a repo's single `.safetensors` file.
fn plan_vae(listing: &[String], prefer_fp16: bool) -> std::result::Result<Plan, String> {
    let has: BTreeSet<&str> = listing.iter().map(String::as_str).collect();
    for dir in ["", "vae/"] {
        let config = format!("{dir}config.json");
        if !has.contains(config.as_str()) {
            continue;
        }
        let plain = format!("{dir}diffusion_pytorch_model.safetensors");
        let fp16 = format!("{dir}diffusion_pytorch_model.fp16.safetensors");
        let pick = match (has.contains(plain.as_str()), has.contains(fp16.as_str())) {
            (_, true) if prefer_fp16 => fp16,
            (true, _) => plain,
            (false, true) => fp16,
            (false, false) => {
                return Err(format!("{config} but no {plain} (nor its .fp16 variant)"));
            }
        };
        let mut files = vec![config, pick];
        files.extend(OPTIONAL.iter().filter(|f| has.contains(*f)).map(|f| f.to_string()));
        return Ok(Plan { files, single_file: (!dir.is_empty()).then(|| "vae".to_string()) });
    }
    plan_single_file(&has).map_err(|why| format!("no config.json or vae/config.json, and {why}"))
}

fn plan(listing: &[String], prefer_fp16: bool) -> std::result::Result<Plan, String> {
    let has: BTreeSet<&str> = listing.iter().map(String::as_str).collect();
    if !has.contains("model_index.json") {
        return plan_single_file(&has);
    }
    let sdxl = is_sdxl(&has);
    let mut files = vec!["model_index.json".to_string()];
    let mut missing = Vec::new();
    let mut notes = Vec::new();
    let sdxl_model: &[(&str, &str)] = if sdxl { &[SDXL_MODEL] } else { &[] };
    for &(dir, stem) in MODELS.iter().chain(sdxl_model) {
        let config = format!("{dir}/config.json");
        if has.contains(config.as_str()) {
            files.push(config);
        } else {
            missing.push(config);
        }
        let plain = format!("{dir}/{stem}.safetensors");
        let fp16 = format!("{dir}/{stem}.fp16.safetensors");
        let pick = match (has.contains(plain.as_str()), has.contains(fp16.as_str())) {
            (_, true) if prefer_fp16 => Some(fp16),
            (true, _) => Some(plain.clone()),
            (false, true) => Some(fp16),
            (false, false) => None,
        };
        match pick {
            Some(file) => files.push(file),
            None => {
                if has.contains(format!("{dir}/{stem}.safetensors.index.json").as_str()) {
                    notes.push(format!("{dir}/ has sharded weights, which sdgen does not read yet"));
                } else if let Some(pickle) =
                    has.iter().find(|f| f.starts_with(&format!("{dir}/")) && f.ends_with(".bin"))
                {
                    notes.push(format!("{dir}/ has only {pickle}: {}", crate::loading::weights::pickle_refusal("bin")));
                }
                missing.push(plain);
            }
        }
    }
    if has.contains(SCHEDULER_CONFIG) {
        files.push(SCHEDULER_CONFIG.to_string());
    } else {
        missing.push(SCHEDULER_CONFIG.to_string());
    }
    let sdxl_tokenizer: &[&str] = if sdxl { &[SDXL_TOKENIZER] } else { &[] };
    for &dir in ["tokenizer"].iter().chain(sdxl_tokenizer) {
        let json = format!("{dir}/{TOKENIZER_JSON}");
        let lacking: Vec<String> =
            TOKENIZER_BPE.iter().map(|f| format!("{dir}/{f}")).filter(|f| !has.contains(f.as_str())).collect();
        if !lacking.is_empty() && !has.contains(json.as_str()) {
            missing.push(format!("{} (or {json})", lacking.join(", ")));
        }
        // The whole tokenizer folder, not a fixed list: it is small, and which files a
        // tokenizer comes with varies.
        let prefix = format!("{dir}/");
        files.extend(
            has.iter().filter(|f| f.strip_prefix(&prefix).is_some_and(|r| !r.contains('/'))).map(|f| f.to_string()),
        );
    }
    files.extend(OPTIONAL.iter().filter(|f| has.contains(*f)).map(|f| f.to_string()));
    if missing.is_empty() {
        return Ok(Plan { files, single_file: None });
    }
    let mut why = format!("missing {}", missing.join(", "));
    for note in notes {
        why.push_str("; ");
        why.push_str(&note);
    }
    Err(why)
}

/// A repo with one top-level `.safetensors` checkpoint and no `model_index.json`.
fn plan_single_file(has: &BTreeSet<&str>) -> std::result::Result<Plan, String> {
    let top: Vec<&str> = has.iter().copied().filter(|f| !f.contains('/')).collect();
    let checkpoints: Vec<&str> = top.iter().copied().filter(|f| f.to_lowercase().ends_with(".safetensors")).collect();
    match checkpoints.as_slice() {
        [one] => {
            let mut files = vec![one.to_string()];
            files.extend(OPTIONAL.iter().filter(|f| has.contains(*f)).map(|f| f.to_string()));
            Ok(Plan { files, single_file: Some(one.to_string()) })
        }
        [] => {
            let pickles: Vec<&str> = top
                .iter()
                .copied()
                .filter(|f| {
                    f.rsplit_once('.').is_some_and(|(_, e)| crate::loading::weights::PICKLE_EXTENSIONS.contains(&e))
                })
                .collect();
            if pickles.is_empty() {
                Err("no model_index.json (not a diffusers repo) and no .safetensors checkpoint".to_string())
            } else {
                Err(format!(
                    "no model_index.json and no .safetensors checkpoint, only {}: {}",
                    pickles.join(", "),
                    crate::loading::weights::pickle_refusal("ckpt")
                ))
            }
        }
        many => Err(format!(
            "no model_index.json (not a diffusers repo) and several checkpoints ({}): download the one you want \
             and pass its path to --model",
            many.join(", ")
        )),
    }
}

/// What the cache lacks, for the error message.
struct Miss {
    /// The snapshot the revision resolved to, when there is one.
    snapshot: Option<PathBuf>,
    why: String,
}

/// The cached snapshot for `revision`, when it holds everything [`plan`] asks for.
fn from_cache(
    config: &HubConfig,
    repo: &str,
    revision: &str,
    prefer_fp16: bool,
    what: What,
) -> std::result::Result<PathBuf, Miss> {
    let repo_dir = config.repo_dir(repo);
    let snapshots = repo_dir.join("snapshots");
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let sha = if is_commit && snapshots.join(revision).is_dir() {
        revision.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        match std::fs::read_to_string(&ref_path) {
            Ok(sha) => sha.trim().to_string(),
            Err(_) => return Err(Miss { snapshot: None, why: ref_path.display().to_string() }),
        }
    };
    let snapshot = snapshots.join(&sha);
    let mut files = Vec::new();
    list_local(&snapshot, "", &mut files);
    let plan = plan_for(what, &files, prefer_fp16).map_err(|why| Miss { snapshot: Some(snapshot.clone()), why })?;
    Ok(match plan.single_file {
        Some(file) => snapshot.join(file),
        None => snapshot,
    })
}

/// Files under `dir` as repo paths; a link whose blob is gone counts as absent.
fn list_local(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let rel = format!("{prefix}{name}");
        if path.is_dir() {
            list_local(&path, &format!("{rel}/"), out);
        } else if path.is_file() {
            out.push(rel);
        }
    }
}

/// The error for a model that is needed from the cache but isn't all there.
fn not_cached(
    config: &HubConfig,
    repo: &str,
    revision: &str,
    prefer_fp16: bool,
    cause: &str,
    miss: &Miss,
    what: What,
) -> Error {
    let variant = if prefer_fp16 { ".fp16" } else { "" };
    // Nothing cached may say whether the repo is SDXL: patterns for the second text encoder
    // and tokenizer then stay in the command, where they match nothing in other repos.
    let sdxl = match &miss.snapshot {
        Some(snapshot) => {
            let mut files = Vec::new();
            list_local(snapshot, "", &mut files);
            is_sdxl(&files.iter().map(String::as_str).collect()) || miss.why.contains("_2/")
        }
        None => true,
    };
    let models: Vec<(&str, &str)> = MODELS.iter().copied().chain(sdxl.then_some(SDXL_MODEL)).collect();
    let mut include = vec!["model_index.json".to_string(), SCHEDULER_CONFIG.to_string(), "tokenizer/*".to_string()];
    if sdxl {
        include.push(format!("{SDXL_TOKENIZER}/*"));
    }
    include.extend(models.iter().map(|(dir, _)| format!("{dir}/config.json")));
    include.extend(models.iter().map(|(dir, stem)| format!("{dir}/{stem}{variant}.safetensors")));
    include.push("README.md".to_string());
    if what == What::Vae {
        include = vec!["config.json".to_string(), format!("diffusion_pytorch_model{variant}.safetensors")];
    }
    let include = include.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(" ");
    let found = match &miss.snapshot {
        Some(snapshot) => format!("the cached snapshot {} is incomplete: {}", snapshot.display(), miss.why),
        None => format!("{repo}@{revision} is not in the cache (no {})", miss.why),
    };
    let network = if config.offline {
        "unset HF_HUB_OFFLINE to let sdgen download it"
    } else {
        "check the network connection and proxy settings (HTTPS_PROXY)"
    };
    Error::Hub(format!(
        "{cause}, and {found}.\nTo fix it, either:\n  \
         - on a machine with internet, fetch what sdgen needs with \
         `huggingface-cli download {repo} --revision {revision} --include {include}`, \
         then copy its cache folder {folder} into {cache} (or point HF_HUB_CACHE or HF_HOME at a copy);\n  \
         - or {network}, or set HF_ENDPOINT to a hub mirror you can reach;\n  \
         - or pass {flag} a local {local}.",
        flag = if what == What::Vae { "--vae" } else { "--model" },
        local =
            if what == What::Vae { "VAE folder or .safetensors file" } else { "diffusers folder or .safetensors file" },
        folder = Repo::model(repo.to_string()).folder_name(),
        cache = config.cache_dir.display(),
    ))
}

/// Hears how downloads go, one file at a time; the command line draws bars from it.
pub trait DownloadProgress {
    /// A file of `size` bytes starts downloading.
    fn start(&mut self, file: &str, size: u64);
    /// `bytes` more arrived.
    fn advance(&mut self, bytes: u64);
    /// The file is complete.
    fn finish(&mut self);
}

/// Downloads in silence.
pub struct NoProgress;

impl DownloadProgress for NoProgress {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// hf-hub's progress calls, passed on to a [`DownloadProgress`].
struct Relay<'a>(&'a mut dyn DownloadProgress);

impl hf_hub::api::Progress for Relay<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.start(filename, size as u64);
    }

    fn update(&mut self, size: usize) {
        self.0.advance(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const SD: [&str; 20] = [
        "README.md",
        "model_index.json",
        "v1-5-pruned.ckpt",
        "v1-5-pruned.safetensors",
        "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ];

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn plan_picks_what_the_pipeline_reads() {
        let expect = |fp16_unet: bool, fp16_te: bool| {
            sorted(names(&[
                "README.md",
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                if fp16_te { "text_encoder/model.fp16.safetensors" } else { "text_encoder/model.safetensors" },
                "tokenizer/merges.txt",
                "tokenizer/vocab.json",
                "unet/config.json",
                if fp16_unet {
                    "unet/diffusion_pytorch_model.fp16.safetensors"
                } else {
                    "unet/diffusion_pytorch_model.safetensors"
                },
                "vae/config.json",
                // No fp16 variant in the listing: the plain file even when fp16 is preferred.
                "vae/diffusion_pytorch_model.safetensors",
            ]))
        };
        let p = plan(&names(&SD), false).unwrap();
        assert_eq!((sorted(p.files), p.single_file), (expect(false, false), None));
        let p = plan(&names(&SD), true).unwrap();
        assert_eq!(sorted(p.files), expect(true, true));
        // Only the fp16 file in the repo: taken even without the preference.
        let only_fp16: Vec<&str> =
            SD.iter().copied().filter(|f| *f != "unet/diffusion_pytorch_model.safetensors").collect();
        assert_eq!(sorted(plan(&names(&only_fp16), false).unwrap().files), expect(true, false));
    }

    #[test]
    fn plan_names_what_is_missing() {
        let no_weights: Vec<&str> = SD.iter().copied().filter(|f| !f.starts_with("unet/diffusion")).collect();
        let mut with_bin = no_weights.clone();
        with_bin.push("unet/diffusion_pytorch_model.bin");
        let why = plan(&names(&with_bin), false).unwrap_err();
        assert!(why.contains("missing unet/diffusion_pytorch_model.safetensors") && why.contains("pickle"), "{why}");
        let no_vocab: Vec<&str> = SD.iter().copied().filter(|f| *f != "tokenizer/vocab.json").collect();
        assert!(plan(&names(&no_vocab), false).unwrap_err().contains("tokenizer/vocab.json"));
    }

    #[test]
    fn plan_takes_a_transformers5_tokenizer() {
        let mut tf5: Vec<&str> = SD.iter().copied().filter(|f| !f.starts_with("tokenizer/")).collect();
        tf5.extend(["tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]);
        let files = plan(&names(&tf5), false).unwrap().files;
        assert!(files.iter().any(|f| f == "tokenizer/tokenizer.json"), "{files:?}");
        assert!(files.iter().any(|f| f == "tokenizer/tokenizer_config.json"), "{files:?}");
        tf5.retain(|f| *f != "tokenizer/tokenizer.json");
        let why = plan(&names(&tf5), false).unwrap_err();
        assert!(why.contains("tokenizer/vocab.json, tokenizer/merges.txt (or tokenizer/tokenizer.json)"), "{why}");
    }

    #[test]
    fn plan_single_checkpoint_repos() {
        let p = plan(&names(&["README.md", "model.safetensors", "model.ckpt", "x/y.safetensors"]), false).unwrap();
        assert_eq!(
            p,
            Plan { files: names(&["model.safetensors", "README.md"]), single_file: Some("model.safetensors".into()) }
        );
        assert!(plan(&names(&["a.safetensors", "b.safetensors"]), false).unwrap_err().contains("several checkpoints"));
        assert!(plan(&names(&["a.ckpt"]), false).unwrap_err().contains("pickle"));
    }

    /// stabilityai/stable-diffusion-xl-base-1.0's listing, shortened.
    const SDXL: [&str; 27] = [
        "README.md",
        "LICENSE.md",
        "model_index.json",
        "sd_xl_base_1.0.safetensors",
        "sd_xl_offset_example-lora_1.0.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/openvino_model.bin",
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        "text_encoder_2/model.fp16.safetensors",
        "text_encoder_2/model.onnx_data",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ];

    #[test]
    fn plan_fetches_both_text_encoders_and_tokenizers_of_sdxl() {
        let expect = |fp16: bool| {
            let v = if fp16 { ".fp16" } else { "" };
            let mut want = names(&[
                "LICENSE.md",
                "README.md",
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder_2/config.json",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "tokenizer_2/merges.txt",
                "tokenizer_2/special_tokens_map.json",
                "tokenizer_2/tokenizer_config.json",
                "tokenizer_2/vocab.json",
                "unet/config.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ]);
            want.push(format!("text_encoder/model{v}.safetensors"));
            want.push(format!("text_encoder_2/model{v}.safetensors"));
            want.push(format!("unet/diffusion_pytorch_model{v}.safetensors"));
            sorted(want)
        };
        let p = plan(&names(&SDXL), false).unwrap();
        assert_eq!((sorted(p.files), p.single_file), (expect(false), None));
        assert_eq!(sorted(plan(&names(&SDXL), true).unwrap().files), expect(true));

        // One of the second pair missing: named, whichever it is.
        for gone in ["text_encoder_2/model", "text_encoder_2/config.json", "tokenizer_2/vocab.json"] {
            let listing: Vec<&str> = SDXL.iter().copied().filter(|f| !f.starts_with(gone)).collect();
            let why = plan(&names(&listing), false).unwrap_err();
            let named = if gone.ends_with("model") { "text_encoder_2/model.safetensors" } else { gone };
            assert!(why.contains(named), "{gone}: {why}");
        }
        let no_tok2: Vec<&str> = SDXL.iter().copied().filter(|f| !f.starts_with("tokenizer_2/")).collect();
        let why = plan(&names(&no_tok2), false).unwrap_err();
        assert!(
            why.contains("tokenizer_2/vocab.json, tokenizer_2/merges.txt (or tokenizer_2/tokenizer.json)"),
            "{why}"
        );
        // An SD 1.x repo never asks for them.
        assert!(plan(&names(&SD), false).unwrap().files.iter().all(|f| !f.contains("_2/")));
    }

    #[test]
    fn not_cached_names_the_sdxl_files() {
        let cfg = HubConfig { endpoint: "http://x".into(), cache_dir: "/c".into(), token: None, offline: true };
        let miss = Miss { snapshot: None, why: "/c/models--a--b/refs/main".into() };
        let msg = not_cached(&cfg, "a/b", "main", true, "HF_HUB_OFFLINE is set", &miss, What::Pipeline).to_string();
        for part in ["'tokenizer_2/*'", "'text_encoder_2/config.json'", "'text_encoder_2/model.fp16.safetensors'"] {
            assert!(msg.contains(part), "no {part} in {msg}");
        }
        // An incomplete SD 1.x snapshot: only what SD 1.x needs.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("unet")).unwrap();
        std::fs::write(dir.path().join("unet/config.json"), "{}").unwrap();
        let miss = Miss { snapshot: Some(dir.path().to_path_buf()), why: "missing vae/config.json".into() };
        let msg = not_cached(&cfg, "a/b", "main", false, "offline", &miss, What::Pipeline).to_string();
        assert!(!msg.contains("text_encoder_2") && msg.contains("'text_encoder/model.safetensors'"), "{msg}");
    }

    fn config(vars: &[(&str, &str)]) -> HubConfig {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn config_follows_huggingface_hub() {
        let c = config(&[("HOME", "/home/u")]);
        assert_eq!(
            c,
            HubConfig {
                endpoint: DEFAULT_ENDPOINT.into(),
                cache_dir: "/home/u/.cache/huggingface/hub".into(),
                token: None,
                offline: false
            }
        );
        assert_eq!(config(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]).cache_dir, PathBuf::from("/x/huggingface/hub"));
        assert_eq!(config(&[("HOME", "/h"), ("HF_HOME", "~/hf")]).cache_dir, PathBuf::from("/h/hf/hub"));
        assert_eq!(config(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]).cache_dir, PathBuf::from("/c"));
        assert_eq!(config(&[("HF_ENDPOINT", "http://mirror:8080/")]).endpoint, "http://mirror:8080");
        for (v, want) in [("1", true), ("yes", true), ("TRUE", true), ("0", false), ("", false)] {
            assert_eq!(config(&[("HF_HUB_OFFLINE", v)]).offline, want, "{v}");
        }
        assert_eq!(c.repo_dir("a/b"), PathBuf::from("/home/u/.cache/huggingface/hub/models--a--b"));
    }

    #[test]
    fn token_from_env_or_file() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        assert_eq!(config(&[("HF_HOME", h)]).token, None);
        std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
        // The token file sits in HF_HOME, not beside a relocated hub cache.
        assert_eq!(config(&[("HF_HOME", h), ("HF_HUB_CACHE", "/elsewhere")]).token.as_deref(), Some("hf_file"));
        assert_eq!(config(&[("HF_HOME", h), ("HF_TOKEN", "hf_env")]).token.as_deref(), Some("hf_env"));
    }
}
