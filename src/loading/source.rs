//! Where a model comes from: a diffusers folder, a single `.safetensors` file, or a hub repo.
//!
//! The `--model` string is read the way diffusers' `from_pretrained` reads it: anything that
//! exists on disk is a local model; otherwise an `owner/name[@revision]` is a hub repo. A
//! string that only *looks* like a path is reported as missing rather than sent to the hub,
//! so a typo in a folder name doesn't turn into a confusing network error.
//!
//! Without `--model`, the choice falls back to `$SDGEN_MODEL`, then the user's config file,
//! then [`DEFAULT_MODEL`]; [`Origin`] records which one won so messages can say so.

use crate::loading::weights::{pickle_refusal, PICKLE_EXTENSIONS};
use crate::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// The hub repo used when nothing else names a model.
pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

/// The environment variable that names the default model.
pub const MODEL_ENV: &str = "SDGEN_MODEL";

/// The hub's own limit on repo id length.
const MAX_REPO_ID_LEN: usize = 96;

/// A model, before anything is downloaded or loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A diffusers folder (`model_index.json`, `unet/`, `vae/`, ...).
    Folder(PathBuf),
    /// One `.safetensors` checkpoint in the original (A1111/ldm) layout.
    SingleFile(PathBuf),
    /// A Hugging Face hub repo; `revision` is a branch, tag or commit (`main` when `None`).
    Hub { repo: String, revision: Option<String> },
}

/// Which setting chose the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    Config(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => write!(f, "--model"),
            Origin::Env => write!(f, "${MODEL_ENV}"),
            Origin::Config(path) => write!(f, "config file {}", path.display()),
            Origin::Default => write!(f, "the default model"),
        }
    }
}

/// A model source and the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub source: ModelSource,
    pub origin: Origin,
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Folder(p) | ModelSource::SingleFile(p) => write!(f, "{}", p.display()),
            ModelSource::Hub { repo, revision: Some(rev) } => write!(f, "{repo}@{rev}"),
            ModelSource::Hub { repo, revision: None } => write!(f, "{repo}"),
        }
    }
}

impl ModelSource {
    /// A local path to load: the folder or file itself, or a hub model's snapshot folder in
    /// the Hugging Face cache (downloaded if needed; fp16 weights preferred when asked).
    pub fn materialize(&self, prefer_fp16: bool, progress: &mut dyn super::hub::DownloadProgress) -> Result<PathBuf> {
        match self {
            ModelSource::Folder(p) | ModelSource::SingleFile(p) => Ok(p.clone()),
            ModelSource::Hub { repo, revision } => super::hub::fetch(repo, revision.as_deref(), prefer_fp16, progress),
        }
    }

    /// Reads a `--model` string: an existing folder or file, else a hub repo id.
    pub fn parse(spec: &str) -> Result<ModelSource> {
        Self::parse_with_home(spec, home_dir().as_deref())
    }

    /// [`ModelSource::parse`] with `~` expanded against `home` (for config values and tests).
    pub fn parse_with_home(spec: &str, home: Option<&Path>) -> Result<ModelSource> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::invalid(
                "the model is empty: give a diffusers folder, a .safetensors file or a hub repo id like owner/name",
            ));
        }
        let path = expand_home(spec, home);
        if path.is_dir() {
            return Ok(ModelSource::Folder(path));
        }
        // Refused before checking existence: a missing pickle is better told it won't load anyway.
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            if let Some(p) = PICKLE_EXTENSIONS.iter().find(|p| p.eq_ignore_ascii_case(ext)) {
                return Err(Error::weights(&path, pickle_refusal(p)));
            }
        }
        if path.is_file() {
            if has_extension(&path, "safetensors") {
                return Ok(ModelSource::SingleFile(path));
            }
            return Err(Error::invalid(format!(
                "{} is a file but not a .safetensors checkpoint; give a diffusers folder, a .safetensors file or a hub repo id like owner/name",
                path.display()
            )));
        }
        if let Some(what) = not_a_model(&path) {
            return Err(Error::invalid(format!(
                "{}: {what}; give a diffusers folder or a .safetensors file",
                path.display()
            )));
        }
        if has_extension(&path, "safetensors") || looks_like_path(spec) {
            return Err(Error::invalid(format!(
                "no such file or folder: {} (a hub repo id looks like owner/name or owner/name@revision)",
                path.display()
            )));
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (spec, None),
        };
        // `weights/tiny` where `weights/` is a local folder is a mistyped path, not a hub id.
        if let Some((owner, name)) = repo.split_once('/') {
            let folder = expand_home(owner, home);
            if !owner.is_empty() && folder.is_dir() {
                return Err(Error::invalid(format!(
                    "no such file or folder: {}{} ({} is a local folder, so this is not read as a hub repo id)",
                    path.display(),
                    closest_entry(&folder, name).map(|n| format!("; did you mean {owner}/{n}?")).unwrap_or_default(),
                    folder.display(),
                )));
            }
        }
        if !repo.contains('/') {
            return Err(Error::invalid(format!(
                "no such file or folder: {spec} (a hub repo id looks like owner/name, e.g. {DEFAULT_MODEL})"
            )));
        }
        check_repo_id(repo).map_err(|why| {
            Error::invalid(format!(
                "'{spec}' is not an existing file or folder, nor a hub repo id: {why} \
                 (a hub repo id looks like owner/name or owner/name@revision)"
            ))
        })?;
        if let Some(rev) = revision {
            check_revision(rev).map_err(|why| Error::invalid(format!("'{spec}': bad revision '{rev}': {why}")))?;
        }
        Ok(ModelSource::Hub { repo: repo.to_string(), revision: revision.map(str::to_string) })
    }

    /// Picks the model: `flag`, else `$SDGEN_MODEL`, else the config file, else [`DEFAULT_MODEL`].
    pub fn choose(flag: Option<&str>) -> Result<Choice> {
        Self::choose_with(flag, |name| std::env::var(name).ok())
    }

    /// [`ModelSource::choose`] reading environment variables through `env`, so callers and
    /// tests can supply them without touching the process environment.
    pub fn choose_with(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Choice> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let home = env("HOME").or_else(|| env("USERPROFILE")).map(PathBuf::from);
        let parse = |spec: &str, origin: Origin| -> Result<Choice> {
            match ModelSource::parse_with_home(spec, home.as_deref()) {
                Ok(source) => Ok(Choice { source, origin }),
                Err(e) if origin == Origin::Flag => Err(e),
                Err(e) => Err(Error::invalid(format!("model from {origin}: {e}"))),
            }
        };
        if let Some(spec) = flag {
            return parse(spec, Origin::Flag);
        }
        if let Some(spec) = env(MODEL_ENV) {
            return parse(&spec, Origin::Env);
        }
        if let Some(path) = config_path(&env, home.as_deref()) {
            if let Some(spec) = read_config_model(&path)? {
                return parse(&spec, Origin::Config(path));
            }
        }
        parse(DEFAULT_MODEL, Origin::Default)
    }
}

/// `$XDG_CONFIG_HOME/sdgen/config.json`, else `~/.config/sdgen/config.json`.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Option<PathBuf> {
    // The XDG spec says relative values are invalid and must be ignored.
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))?;
    Some(base.join("sdgen").join("config.json"))
}

/// The `"model"` entry of a config file; `None` when the file or the entry is absent.
/// Other keys are left alone: the file is shared with settings other than the model.
fn read_config_model(path: &Path) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::config(path, format!("not valid JSON ({e}); expected e.g. {{\"model\": \"{DEFAULT_MODEL}\"}}"))
    })?;
    let Some(obj) = value.as_object() else {
        return Err(Error::config(path, format!("expected a JSON object like {{\"model\": \"{DEFAULT_MODEL}\"}}")));
    };
    match obj.get("model") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::config(
            path,
            format!("\"model\" must be a string (a folder, a .safetensors file or owner/name), not {other}"),
        )),
    }
}

/// The entry of `dir` whose name shares the longest start with `name` (at least 3 characters,
/// or all of a shorter `name`), for "did you mean".
fn closest_entry(dir: &Path, name: &str) -> Option<String> {
    let common = |a: &str| a.chars().zip(name.chars()).take_while(|(x, y)| x.eq_ignore_ascii_case(y)).count();
    let mut names: Vec<String> =
        std::fs::read_dir(dir).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let best = names.into_iter().max_by_key(|n| (common(n), std::cmp::Reverse(n.len())))?;
    (common(&best) >= name.chars().count().min(3)).then_some(best)
}

/// What a path that exists but is neither a folder nor a regular file is: a symlink loop, a
/// dangling link, a FIFO, a socket or a device (which would hang or mislead a loader), or a
/// path that cannot be looked at. `None` when nothing is there at all.
fn not_a_model(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) => Some(format!("is {}, not a model", special_kind(&meta.file_type()))),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            Some("is a symbolic link loop (links that end up pointing at themselves)".into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::read_link(path) {
            Ok(target) => Some(format!("is a symbolic link to {}, which does not exist", target.display())),
            Err(_) => None,
        },
        Err(e) => Some(format!("cannot be examined ({e})")),
    }
}

#[cfg(unix)]
fn special_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file or folder"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "not a regular file or folder"
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// Expands a leading `~`, which shells do for flags but nobody does for env or config values.
fn expand_home(spec: &str, home: Option<&Path>) -> PathBuf {
    match (spec.strip_prefix('~'), home) {
        (Some(""), Some(home)) => home.to_path_buf(),
        (Some(rest), Some(home)) if rest.starts_with('/') || rest.starts_with('\\') => home.join(&rest[1..]),
        _ => PathBuf::from(spec),
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// True for strings a hub repo id can never be: absolute or relative-marked paths,
/// more than one `/` before any `@`, Windows separators or drive letters.
fn looks_like_path(spec: &str) -> bool {
    let repo = spec.split_once('@').map_or(spec, |(r, _)| r);
    spec.starts_with(['/', '.', '~', '\\'])
        || spec.contains('\\')
        || repo.matches('/').count() > 1
        || repo.ends_with('/')
        || spec.as_bytes().get(1) == Some(&b':')
}

/// The hub's rules for repo ids (huggingface_hub's `validate_repo_id`).
pub(crate) fn check_repo_id(repo: &str) -> std::result::Result<(), String> {
    if repo.len() > MAX_REPO_ID_LEN {
        return Err(format!("longer than {MAX_REPO_ID_LEN} characters"));
    }
    let Some((owner, name)) = repo.split_once('/') else { return Err("expected owner/name".into()) };
    for part in [owner, name] {
        if part.is_empty() {
            return Err("expected owner/name with both parts non-empty".into());
        }
        if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(format!("'{c}' is not allowed (only letters, digits, '-', '_' and '.')"));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err("a part may not start or end with '-' or '.'".into());
        }
    }
    if repo.contains("--") || repo.contains("..") {
        return Err("'--' and '..' are not allowed".into());
    }
    Ok(())
}

/// Branch, tag or commit names: what git allows, minus what would escape a cache folder.
pub(crate) fn check_revision(rev: &str) -> std::result::Result<(), String> {
    if rev.is_empty() {
        return Err("empty after '@'".into());
    }
    if let Some(c) = rev.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))) {
        return Err(format!("'{c}' is not allowed"));
    }
    if rev.contains("..") || rev.starts_with('/') || rev.ends_with('/') || rev.contains("//") {
        return Err("not a valid branch, tag or commit name".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hub(repo: &str, revision: Option<&str>) -> ModelSource {
        ModelSource::Hub { repo: repo.into(), revision: revision.map(Into::into) }
    }

    fn err(spec: &str) -> String {
        match ModelSource::parse_with_home(spec, None) {
            Ok(s) => panic!("{spec} parsed as {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn local_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, b"x").unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(ModelSource::parse(d).unwrap(), ModelSource::Folder(dir.path().into()));
        assert_eq!(ModelSource::parse(file.to_str().unwrap()).unwrap(), ModelSource::SingleFile(file.clone()));
        // `~` is expanded against the home we pass.
        assert_eq!(
            ModelSource::parse_with_home("~/model.safetensors", Some(dir.path())).unwrap(),
            ModelSource::SingleFile(file)
        );
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, b"x").unwrap();
        assert!(err(other.to_str().unwrap()).contains("not a .safetensors"));
    }

    #[test]
    fn mistyped_local_folder_is_not_a_hub_id() {
        // Tests run in the crate root, which has weights/tiny-sd.
        let msg = err("weights/tiny");
        assert!(msg.contains("no such file or folder: weights/tiny"), "{msg}");
        assert!(msg.contains("did you mean weights/tiny-sd?"), "{msg}");
        assert!(matches!(ModelSource::parse("no-such-owner-here/model"), Ok(ModelSource::Hub { .. })));
    }

    #[test]
    fn pickles_are_refused_with_the_shared_message() {
        for ext in ["ckpt", "pt", "pth", "bin", "PKL"] {
            let msg = err(&format!("/nowhere/model.{ext}"));
            assert!(msg.contains(&pickle_refusal(&ext.to_lowercase())), "{msg}");
        }
        // The weights loader says the same.
        let loader = crate::loading::weights::MappedFile::open(Path::new("/nowhere/model.pth")).err().unwrap();
        assert!(loader.to_string().contains(&pickle_refusal("pth")), "{loader}");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_say_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(err(a.to_str().unwrap()).contains("symbolic link loop"), "{}", err(a.to_str().unwrap()));
        let dangling = dir.path().join("gone.safetensors");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(err(dangling.to_str().unwrap()).contains("which does not exist"));
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(err(fifo.to_str().unwrap()).contains("named pipe (FIFO)"), "{}", err(fifo.to_str().unwrap()));
    }

    #[test]
    fn hub_ids() {
        assert_eq!(ModelSource::parse("owner/name").unwrap(), hub("owner/name", None));
        assert_eq!(ModelSource::parse("a-b_c.d/x.y-z@main").unwrap(), hub("a-b_c.d/x.y-z", Some("main")));
        assert_eq!(ModelSource::parse("o/n@refs/pr/3").unwrap(), hub("o/n", Some("refs/pr/3")));
        assert_eq!(ModelSource::parse(DEFAULT_MODEL).unwrap(), hub(DEFAULT_MODEL, None));
    }

    #[test]
    fn missing_paths_are_not_hub_lookups() {
        for spec in ["/no/such/dir", "./models/sd", "../x/y", "a/b/c", "models/", "x/y.safetensors", "C:\\m", "solo"] {
            let msg = err(spec);
            assert!(msg.contains("no such file or folder"), "{spec}: {msg}");
        }
    }

    #[test]
    fn bad_hub_ids() {
        for (spec, why) in [
            ("own er/name", "' ' is not allowed"),
            ("owner/-name", "start or end"),
            ("owner/na--me", "'--'"),
            ("/name", "no such file"),
            ("owner/", "no such file"),
            ("owner/name@", "empty after"),
            ("owner/name@a..b", "not a valid"),
            ("owner/name@x y", "' ' is not allowed"),
        ] {
            let msg = err(spec);
            assert!(msg.contains(why), "{spec}: {msg}");
        }
        let long = format!("o/{}", "n".repeat(MAX_REPO_ID_LEN));
        assert!(err(&long).contains("longer than"));
    }

    fn choose(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<Choice> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ModelSource::choose_with(flag, |k| vars.get(k).cloned())
    }

    #[test]
    fn choice_order_flag_env_config_default() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        let cfg_dir = home.path().join(".config").join("sdgen");
        std::fs::create_dir_all(&cfg_dir).unwrap();
        let cfg = cfg_dir.join("config.json");

        let c = choose(None, &[("HOME", h)]).unwrap();
        assert_eq!((c.source, c.origin), (hub(DEFAULT_MODEL, None), Origin::Default));

        std::fs::write(&cfg, r#"{"model": "cfg/model@v2", "other": 1}"#).unwrap();
        let c = choose(None, &[("HOME", h)]).unwrap();
        assert_eq!((c.source, c.origin), (hub("cfg/model", Some("v2")), Origin::Config(cfg.clone())));

        let c = choose(None, &[("HOME", h), (MODEL_ENV, "env/model")]).unwrap();
        assert_eq!((c.source, c.origin), (hub("env/model", None), Origin::Env));
        // An empty variable counts as unset.
        let c = choose(None, &[("HOME", h), (MODEL_ENV, " ")]).unwrap();
        assert_eq!(c.origin, Origin::Config(cfg.clone()));

        let c = choose(Some("flag/model"), &[("HOME", h), (MODEL_ENV, "env/model")]).unwrap();
        assert_eq!((c.source, c.origin), (hub("flag/model", None), Origin::Flag));

        // XDG_CONFIG_HOME wins over ~/.config, but only when absolute.
        let xdg = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(xdg.path().join("sdgen")).unwrap();
        let xcfg = xdg.path().join("sdgen").join("config.json");
        std::fs::write(&xcfg, r#"{"model": "xdg/model"}"#).unwrap();
        let c = choose(None, &[("HOME", h), ("XDG_CONFIG_HOME", xdg.path().to_str().unwrap())]).unwrap();
        assert_eq!((c.source, c.origin), (hub("xdg/model", None), Origin::Config(xcfg)));
        let c = choose(None, &[("HOME", h), ("XDG_CONFIG_HOME", "relative")]).unwrap();
        assert_eq!(c.origin, Origin::Config(cfg.clone()));

        // A config without "model" falls through to the default.
        std::fs::write(&cfg, r#"{"device": "cuda"}"#).unwrap();
        assert_eq!(choose(None, &[("HOME", h)]).unwrap().origin, Origin::Default);
    }

    #[test]
    fn bad_config_and_env_name_their_origin() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        let cfg_dir = home.path().join(".config").join("sdgen");
        std::fs::create_dir_all(&cfg_dir).unwrap();
        let cfg = cfg_dir.join("config.json");
        for (text, why) in
            [("{model: 1", "not valid JSON"), ("[1]", "JSON object"), (r#"{"model": 3}"#, "must be a string")]
        {
            std::fs::write(&cfg, text).unwrap();
            let msg = choose(None, &[("HOME", h)]).unwrap_err().to_string();
            assert!(msg.contains(cfg.to_str().unwrap()) && msg.contains(why), "{msg}");
        }
        std::fs::write(&cfg, r#"{"model": "./missing"}"#).unwrap();
        let msg = choose(None, &[("HOME", h)]).unwrap_err().to_string();
        assert!(msg.contains("config file") && msg.contains("no such file or folder"), "{msg}");
        let msg = choose(None, &[("HOME", h), (MODEL_ENV, "/missing/dir")]).unwrap_err().to_string();
        assert!(msg.contains("$SDGEN_MODEL") && msg.contains("no such file or folder"), "{msg}");
    }
}
