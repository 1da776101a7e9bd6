//! Hub downloads against a stand-in hub on 127.0.0.1 that serves weights/tiny-sd (and tiny-sd2, tiny-sdxl).
//!
//! The stand-in answers the requests hf-hub and huggingface_hub make (the repo listing,
//! `resolve/` with `Range`, `HEAD`) with the headers the real hub sends (`x-repo-commit`,
//! `etag`, `x-linked-etag` for LFS files, `content-range`). Each test logs the requests, so
//! it can tell exactly which files were fetched. The real hub is never contacted.

use sdgen::loading::hub::{fetch_vae_with, fetch_with, HubConfig, NoProgress};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/tiny-sd");
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Files of a repo, by repo path.
type Files = BTreeMap<String, Vec<u8>>;

struct HostedRepo {
    files: Files,
    /// When set, requests without `Authorization: Bearer <token>` get 401, like a gated repo.
    token: Option<String>,
}

/// One request as the server saw it: method and path, without the query.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    method: String,
    path: String,
}

struct Server {
    endpoint: String,
    log: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(repos: BTreeMap<String, HostedRepo>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &repos, &log2);
                }
            }
        });
        Server { endpoint, log, stop, thread: Some(thread) }
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// Stops accepting and closes the port, so later connections are refused.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut stream: TcpStream, repos: &BTreeMap<String, HostedRepo>, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_lowercase(), v.trim().to_string());
        }
    }
    log.lock().unwrap().push(Seen { method: method.clone(), path: path.clone() });
    let (status, extra, body) = respond(&path, &headers, repos);
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
    let _ = stream.flush();
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

type Response = (&'static str, Vec<(String, String)>, Vec<u8>);

fn respond(path: &str, headers: &BTreeMap<String, String>, repos: &BTreeMap<String, HostedRepo>) -> Response {
    let not_found = ("404 Not Found", vec![], b"{\"error\":\"not found\"}".to_vec());
    let (repo_id, rev, file) = if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, rev)) = rest.split_once("/revision/") else { return not_found };
        (repo.to_string(), rev.to_string(), None)
    } else {
        let mut it = path.trim_start_matches('/').splitn(5, '/');
        let (Some(owner), Some(name), Some("resolve"), Some(rev), Some(file)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return not_found;
        };
        (format!("{owner}/{name}"), rev.to_string(), Some(file.to_string()))
    };
    let Some(repo) = repos.get(&repo_id) else { return not_found };
    if let Some(token) = &repo.token {
        if headers.get("authorization") != Some(&format!("Bearer {token}")) {
            return ("401 Unauthorized", vec![], b"{\"error\":\"gated\"}".to_vec());
        }
    }
    if rev != "main" && rev != SHA {
        return not_found;
    }
    let commit = ("x-repo-commit".to_string(), SHA.to_string());
    let Some(file) = file else {
        let siblings: Vec<_> = repo.files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
        let body = serde_json::json!({ "id": repo_id, "sha": SHA, "siblings": siblings });
        return ("200 OK", vec![commit], body.to_string().into_bytes());
    };
    let Some(bytes) = repo.files.get(&file) else { return not_found };
    let etag = format!("\"{}\"", sha256(bytes));
    let mut extra = vec![commit, ("accept-ranges".into(), "bytes".into()), ("etag".into(), etag.clone())];
    // The hub names LFS files' blobs by sha256 through this header.
    if file.ends_with(".safetensors") {
        extra.push(("x-linked-etag".into(), etag));
        extra.push(("x-linked-size".into(), bytes.len().to_string()));
    }
    let Some(range) = headers.get("range").and_then(|r| r.strip_prefix("bytes=")) else {
        return ("200 OK", extra, bytes.clone());
    };
    let (start, end) = range.split_once('-').unwrap();
    let start: usize = start.parse().unwrap();
    let end = if end.is_empty() { bytes.len() - 1 } else { end.parse::<usize>().unwrap().min(bytes.len() - 1) };
    extra.push(("content-range".into(), format!("bytes {start}-{end}/{}", bytes.len())));
    ("206 Partial Content", extra, bytes[start..=end].to_vec())
}

/// Every file under `dir`, by repo path.
fn read_tree(dir: &Path) -> Files {
    fn walk(dir: &Path, prefix: &str, out: &mut Files) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.path().is_dir() {
                walk(&entry.path(), &format!("{name}/"), out);
            } else {
                out.insert(name, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    let mut out = Files::new();
    walk(dir, "", &mut out);
    out
}

fn tiny() -> Files {
    read_tree(Path::new(TINY))
}

/// tiny-sd plus what a real SD repo has beside it, none of which sdgen may fetch.
fn tiny_with_junk() -> Files {
    let mut files = tiny();
    for junk in [
        "unet/diffusion_pytorch_model.bin",
        "text_encoder/pytorch_model.bin",
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "feature_extractor/preprocessor_config.json",
        "v1-5-pruned.ckpt",
        "v1-5-pruned-emaonly.safetensors",
        ".gitattributes",
    ] {
        files.insert(junk.to_string(), format!("junk: {junk}").into_bytes());
    }
    files
}

fn hosted(repos: Vec<(&str, Files, Option<&str>)>) -> BTreeMap<String, HostedRepo> {
    repos
        .into_iter()
        .map(|(id, files, token)| (id.to_string(), HostedRepo { files, token: token.map(str::to_string) }))
        .collect()
}

fn config(endpoint: &str, cache: &Path, offline: bool) -> HubConfig {
    HubConfig { endpoint: endpoint.to_string(), cache_dir: cache.to_path_buf(), token: None, offline }
}

/// ureq would send even 127.0.0.1 through a proxy named in the environment.
fn no_proxy() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for v in ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
            std::env::remove_var(v);
        }
    });
}

fn resolve_paths(seen: &[Seen], repo: &str) -> BTreeSet<String> {
    let prefix = format!("/{repo}/resolve/");
    seen.iter()
        .filter_map(|s| s.path.strip_prefix(&prefix))
        .map(|rest| rest.split_once('/').unwrap().1.to_string())
        .collect()
}

/// Checks each file is a relative link into `blobs/`, as huggingface_hub lays them out.
#[cfg(unix)]
fn assert_linked_to_blobs(snapshot: &Path, files: &Files) {
    for (name, bytes) in files {
        let link = snapshot.join(name);
        let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{name} is not a link: {e}"));
        assert!(target.is_relative(), "{name} -> {}", target.display());
        let blob = link.parent().unwrap().join(&target).canonicalize().unwrap();
        let blobs = snapshot.parent().unwrap().parent().unwrap().join("blobs").canonicalize().unwrap();
        assert_eq!(blob.parent().unwrap(), blobs, "{name}");
        if name.ends_with(".safetensors") {
            assert_eq!(blob.file_name().unwrap().to_str().unwrap(), sha256(bytes), "{name}");
        }
    }
}

#[test]
fn downloads_only_what_is_needed_then_works_offline() {
    no_proxy();
    let mut server = Server::start(hosted(vec![("tiny/sd", tiny_with_junk(), None)]));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let online = config(&server.endpoint, &cache, false);

    let got = fetch_with(&online, "tiny/sd", None, false, &mut NoProgress).unwrap();
    let repo_dir = cache.join("models--tiny--sd");
    let snapshot = repo_dir.join("snapshots").join(SHA);
    assert_eq!(got, snapshot);
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs").join("main")).unwrap(), SHA);
    assert!(!repo_dir.join("refs").join(SHA).exists());
    // Byte-identical to the fixture, file for file, and nothing else.
    assert_eq!(read_tree(&snapshot), tiny());
    #[cfg(unix)]
    assert_linked_to_blobs(&snapshot, &tiny());
    let seen = server.requests();
    assert_eq!(resolve_paths(&seen, "tiny/sd"), tiny().keys().cloned().collect::<BTreeSet<_>>());
    assert!(seen.iter().all(|s| !s.path.ends_with(".bin") && !s.path.contains("safety")));

    // Everything cached: only the listing is asked for.
    server.clear();
    assert_eq!(fetch_with(&online, "tiny/sd", Some("main"), false, &mut NoProgress).unwrap(), snapshot);
    assert_eq!(
        server.requests(),
        vec![Seen { method: "GET".into(), path: "/api/models/tiny/sd/revision/main".into() }]
    );

    // Offline, with the server gone: the cache alone, by branch or by commit.
    server.clear();
    server.stop();
    let offline = config(&server.endpoint, &cache, true);
    assert_eq!(fetch_with(&offline, "tiny/sd", None, false, &mut NoProgress).unwrap(), snapshot);
    assert_eq!(fetch_with(&offline, "tiny/sd", Some(SHA), false, &mut NoProgress).unwrap(), snapshot);
    // Online but unreachable: falls back to the cache too.
    assert_eq!(fetch_with(&online, "tiny/sd", None, false, &mut NoProgress).unwrap(), snapshot);
    assert!(server.requests().is_empty());

    // A blob deleted from under its link is fetched again.
    #[cfg(unix)]
    {
        let server = Server::start(hosted(vec![("tiny/sd", tiny_with_junk(), None)]));
        let online = config(&server.endpoint, &cache, false);
        let blob = snapshot.join("unet/config.json").canonicalize().unwrap();
        std::fs::remove_file(&blob).unwrap();
        assert_eq!(fetch_with(&online, "tiny/sd", None, false, &mut NoProgress).unwrap(), snapshot);
        assert_eq!(resolve_paths(&server.requests(), "tiny/sd"), BTreeSet::from(["unet/config.json".to_string()]));
        assert_eq!(read_tree(&snapshot), tiny());
    }

    // A file gone from the cache is named in the error.
    std::fs::remove_file(snapshot.join("vae/config.json")).unwrap();
    let msg = fetch_with(&offline, "tiny/sd", None, false, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("incomplete") && msg.contains("vae/config.json"), "{msg}");
}

#[test]
fn fp16_variant_is_preferred_when_asked_and_present() {
    no_proxy();
    let mut files = tiny_with_junk();
    // Stand-ins: the client must not read them, only fetch the right names.
    files.insert("unet/diffusion_pytorch_model.fp16.safetensors".into(), b"unet fp16 bytes".to_vec());
    files.insert("text_encoder/model.fp16.safetensors".into(), b"text encoder fp16 bytes".to_vec());
    let server = Server::start(hosted(vec![("tiny/sd", files.clone(), None)]));
    let tmp = tempfile::tempdir().unwrap();
    // With progress bars on: they draw only on a terminal, so this also checks they stay quiet.
    let got = fetch_with(&config(&server.endpoint, tmp.path(), false), "tiny/sd", None, true, &mut NoProgress).unwrap();

    let mut want: BTreeSet<String> = tiny().keys().cloned().collect();
    want.remove("unet/diffusion_pytorch_model.safetensors");
    want.remove("text_encoder/model.safetensors");
    want.insert("unet/diffusion_pytorch_model.fp16.safetensors".into());
    want.insert("text_encoder/model.fp16.safetensors".into());
    // vae has no fp16 variant in the repo, so its plain file comes instead.
    assert!(want.contains("vae/diffusion_pytorch_model.safetensors"));
    assert_eq!(resolve_paths(&server.requests(), "tiny/sd"), want);
    let tree = read_tree(&got);
    assert_eq!(tree.keys().cloned().collect::<BTreeSet<_>>(), want);
    for name in &want {
        assert_eq!(&tree[name], &files[name], "{name}");
    }
}

#[test]
fn offline_with_an_empty_cache_says_what_to_do() {
    no_proxy();
    let server = Server::start(hosted(vec![("tiny/sd", tiny(), None)]));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let err =
        fetch_with(&config(&server.endpoint, &cache, true), "tiny/sd", Some("v1"), false, &mut NoProgress).unwrap_err();
    let msg = err.to_string();
    for part in [
        "HF_HUB_OFFLINE",
        "tiny/sd@v1",
        cache.to_str().unwrap(),
        "models--tiny--sd",
        "huggingface-cli download tiny/sd --revision v1",
        "unet/diffusion_pytorch_model.safetensors",
        "tokenizer/*",
        "HF_ENDPOINT",
    ] {
        assert!(msg.contains(part), "no '{part}' in: {msg}");
    }
    assert!(server.requests().is_empty(), "offline must not touch the network");

    // Unreachable (nothing listens on a port we just closed) and nothing cached.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let msg =
        fetch_with(&config(&closed, &cache, false), "tiny/sd", None, true, &mut NoProgress).unwrap_err().to_string();
    assert!(
        msg.contains("cannot be reached") && msg.contains("unet/diffusion_pytorch_model.fp16.safetensors"),
        "{msg}"
    );
}

#[test]
fn gated_repos_ask_for_a_token_and_bad_names_are_reported() {
    no_proxy();
    let server = Server::start(hosted(vec![("gated/sd", tiny(), Some("hf_secret"))]));
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&server.endpoint, tmp.path(), false);
    let msg = fetch_with(&cfg, "gated/sd", None, false, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("HF_TOKEN") && msg.contains("gated") && msg.contains("gated/sd@main"), "{msg}");
    assert!(!tmp.path().join("models--gated--sd").join("snapshots").exists());

    cfg.token = Some("hf_wrong".into());
    let msg = fetch_with(&cfg, "gated/sd", None, false, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("token in use"), "{msg}");

    cfg.token = Some("hf_secret".into());
    let got = fetch_with(&cfg, "gated/sd", None, false, &mut NoProgress).unwrap();
    assert_eq!(read_tree(&got), tiny());

    for (repo, rev) in [("../etc", None), ("gated/sd", Some("../../x"))] {
        let msg = fetch_with(&cfg, repo, rev, false, &mut NoProgress).unwrap_err().to_string();
        assert!(msg.contains("is not a"), "{msg}");
    }

    let msg = fetch_with(&cfg, "no/such", None, false, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("not found") && msg.contains("no/such@main"), "{msg}");
    let msg = fetch_with(&cfg, "gated/sd", Some("nope"), false, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("not found") && msg.contains("gated/sd@nope"), "{msg}");
}

/// Lays tiny-sd out as huggingface_hub would have: blobs named by hash, relative links.
#[cfg(unix)]
fn python_style_cache(cache: &Path, repo_folder: &str, files: &Files) -> PathBuf {
    let repo = cache.join(repo_folder);
    let snapshot = repo.join("snapshots").join(SHA);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), SHA).unwrap();
    for (name, bytes) in files {
        let blob = sha256(bytes);
        std::fs::write(repo.join("blobs").join(&blob), bytes).unwrap();
        let link = snapshot.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = name.matches('/').count() + 2;
        let target = format!("{}blobs/{blob}", "../".repeat(depth));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    snapshot
}

#[cfg(unix)]
#[test]
fn a_cache_python_filled_is_used_without_downloading() {
    no_proxy();
    let server = Server::start(hosted(vec![("tiny/sd", tiny_with_junk(), None)]));
    let tmp = tempfile::tempdir().unwrap();
    let snapshot = python_style_cache(tmp.path(), "models--tiny--sd", &tiny());
    let got =
        fetch_with(&config(&server.endpoint, tmp.path(), false), "tiny/sd", None, false, &mut NoProgress).unwrap();
    assert_eq!(got, snapshot);
    assert!(resolve_paths(&server.requests(), "tiny/sd").is_empty());
    assert_eq!(
        fetch_with(&config(&server.endpoint, tmp.path(), true), "tiny/sd", None, false, &mut NoProgress).unwrap(),
        snapshot
    );
}

#[test]
fn a_single_checkpoint_repo_gives_the_file() {
    no_proxy();
    let unet = std::fs::read(Path::new(TINY).join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let files: Files = [
        ("model.safetensors".to_string(), unet.clone()),
        ("README.md".to_string(), b"---\nlicense: openrail\n---\n".to_vec()),
        ("model.ckpt".to_string(), b"pickle".to_vec()),
    ]
    .into_iter()
    .collect();
    let server = Server::start(hosted(vec![("one/file", files, None)]));
    let tmp = tempfile::tempdir().unwrap();
    let got =
        fetch_with(&config(&server.endpoint, tmp.path(), false), "one/file", None, false, &mut NoProgress).unwrap();
    assert_eq!(got, tmp.path().join("models--one--file").join("snapshots").join(SHA).join("model.safetensors"));
    assert_eq!(std::fs::read(&got).unwrap(), unet);
    assert_eq!(
        resolve_paths(&server.requests(), "one/file"),
        ["model.safetensors", "README.md"].map(String::from).into_iter().collect()
    );
    assert_eq!(
        fetch_with(&config(&server.endpoint, tmp.path(), true), "one/file", None, false, &mut NoProgress).unwrap(),
        got
    );
}

/// The cache works both ways with Python's huggingface_hub and diffusers: sdgen reads what
/// `snapshot_download` wrote, and diffusers loads, offline, what sdgen wrote. Needs the
/// reference environment, so it runs on request:
/// `SDGEN_REF_PYTHON=.venv-ref/bin/python cargo test --test hub -- --ignored`.
#[test]
#[ignore = "needs Python with huggingface_hub and diffusers (SDGEN_REF_PYTHON)"]
fn the_cache_is_shared_with_python() {
    no_proxy();
    let python = std::env::var("SDGEN_REF_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-ref/bin/python").to_string());
    let server = Server::start(hosted(vec![("tiny/sd", tiny_with_junk(), None)]));
    let tmp = tempfile::tempdir().unwrap();
    let run_python = |cache: &Path, offline: bool, code: &str| -> String {
        let out = std::process::Command::new(&python)
            .args(["-c", code])
            .env("HF_ENDPOINT", &server.endpoint)
            .env("HF_HUB_CACHE", cache)
            .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "python failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default().to_string()
    };

    // Python downloads; sdgen, offline, finds the same snapshot.
    let py_cache = tmp.path().join("py");
    let patterns = "['model_index.json', 'scheduler/*', 'tokenizer/*', '*/config.json', \
                    'unet/*.safetensors', 'vae/*.safetensors', 'text_encoder/*.safetensors', 'README.md']";
    let py_snapshot = run_python(
        &py_cache,
        false,
        &format!("import huggingface_hub as h; print(h.snapshot_download('tiny/sd', allow_patterns={patterns}))"),
    );
    let got = fetch_with(&config(&server.endpoint, &py_cache, true), "tiny/sd", None, false, &mut NoProgress).unwrap();
    assert_eq!(got, PathBuf::from(py_snapshot));

    // sdgen downloads; diffusers loads it with the network off and finds the same files.
    let rs_cache = tmp.path().join("rs");
    let got = fetch_with(&config(&server.endpoint, &rs_cache, false), "tiny/sd", None, false, &mut NoProgress).unwrap();
    let code = "import huggingface_hub as h, diffusers\n\
                p = h.snapshot_download('tiny/sd')\n\
                pipe = diffusers.StableDiffusionPipeline.from_pretrained('tiny/sd', safety_checker=None)\n\
                print(sum(x.numel() for x in pipe.unet.parameters()))\n\
                print(p)";
    assert_eq!(run_python(&rs_cache, true, code), got.to_str().unwrap());
}

mod common;

/// The third model source: a hub id. Both tiny models (SD 1.x and SD 2.x style) are served by
/// the stand-in hub, fetched into a fresh cache, and the pipeline loaded from the snapshots
/// reproduces the diffusers goldens (every 4th case).
#[test]
fn hub_models_produce_the_golden_images() {
    no_proxy();
    let sd2 = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-sd2"));
    let mut server = Server::start(hosted(vec![("sdgen/tiny-sd", tiny(), None), ("sdgen/tiny-sd2", sd2, None)]));
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(&server.endpoint, cache.path(), false);
    let sd1 = fetch_with(&cfg, "sdgen/tiny-sd", None, false, &mut NoProgress).expect("fetch tiny-sd");
    let sd2 = fetch_with(&cfg, "sdgen/tiny-sd2", None, false, &mut NoProgress).expect("fetch tiny-sd2");
    server.stop();
    for (snapshot, folder, goldens) in
        [(sd1, "weights/tiny-sd", "tests/fixtures/goldens"), (sd2, "weights/tiny-sd2", "tests/fixtures/goldens-sd2")]
    {
        let opts = sdgen::LoadOptions { model: snapshot, ..common::cpu_fp32(folder) };
        let measured = common::check_cases(&opts, folder, goldens, 4, &common::FP32);
        assert!(measured.cases >= 2, "{goldens}: only {} cases ran", measured.cases);
    }
}

const TINY_SDXL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/tiny-sdxl");

/// An SDXL repo (weights/tiny-sdxl, with what stabilityai's repo has beside it): both text
/// encoders and both tokenizers are fetched, the fp16 variants when asked for, nothing else;
/// the pipeline loaded from the snapshot makes the folder's image; a cache that lost its
/// second text encoder names it.
#[test]
fn an_sdxl_repo_fetches_both_text_encoders() {
    no_proxy();
    let tiny_sdxl = read_tree(Path::new(TINY_SDXL));
    assert!(
        tiny_sdxl.contains_key("text_encoder_2/model.safetensors") && tiny_sdxl.contains_key("tokenizer_2/vocab.json")
    );
    let mut files = tiny_sdxl.clone();
    for junk in [
        "sd_xl_base_1.0.safetensors",
        "sd_xl_offset_example-lora_1.0.safetensors",
        "text_encoder_2/model.onnx_data",
        "text_encoder_2/openvino_model.bin",
        "unet/diffusion_pytorch_model.bin",
    ] {
        files.insert(junk.to_string(), format!("junk: {junk}").into_bytes());
    }
    let mut fp16 = files.clone();
    fp16.insert("text_encoder/model.fp16.safetensors".into(), b"te fp16".to_vec());
    fp16.insert("text_encoder_2/model.fp16.safetensors".into(), b"te2 fp16".to_vec());
    let mut server =
        Server::start(hosted(vec![("sdgen/tiny-sdxl", files, None), ("sdgen/tiny-sdxl-fp16", fp16.clone(), None)]));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(&server.endpoint, tmp.path(), false);

    let got = fetch_with(&cfg, "sdgen/tiny-sdxl", None, false, &mut NoProgress).unwrap();
    assert_eq!(read_tree(&got), tiny_sdxl);
    assert_eq!(resolve_paths(&server.requests(), "sdgen/tiny-sdxl"), tiny_sdxl.keys().cloned().collect());

    let got16 = fetch_with(&cfg, "sdgen/tiny-sdxl-fp16", None, true, &mut NoProgress).unwrap();
    let mut want: BTreeSet<String> = tiny_sdxl.keys().cloned().collect();
    for (plain, half) in [
        ("text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors"),
        ("text_encoder_2/model.safetensors", "text_encoder_2/model.fp16.safetensors"),
    ] {
        want.remove(plain);
        want.insert(half.to_string());
    }
    assert_eq!(resolve_paths(&server.requests(), "sdgen/tiny-sdxl-fp16"), want);
    assert_eq!(read_tree(&got16).keys().cloned().collect::<BTreeSet<_>>(), want);
    server.stop();

    // The snapshot is a working SDXL folder: the same image as the fixture folder.
    let cpu = |model: PathBuf| sdgen::LoadOptions {
        model,
        device: "cpu".parse().unwrap(),
        dtype: "fp32".parse().unwrap(),
        ..sdgen::LoadOptions::default()
    };
    // From JSON, so that fields added to `Request` later take their defaults.
    let req: sdgen::Request = serde_json::from_value(serde_json::json!({
        "prompt": "a red fox in the snow",
        "seed": 11,
        "steps": 2,
        "guidance": 5.0,
        "width": 64,
        "height": 96,
        "scheduler": "EulerDiscreteScheduler",
    }))
    .unwrap();
    let image = |model: PathBuf| {
        let pipe = sdgen::Pipeline::load(&cpu(model)).unwrap();
        assert!(pipe.spec().text_encoder_2.is_some());
        pipe.generate(&req, &mut |_| {}).unwrap().remove(0).image.rgb
    };
    assert!(image(got.clone()) == image(PathBuf::from(TINY_SDXL)), "the hub snapshot makes another image");

    // Offline, the cached snapshot serves; without its second text encoder it is named.
    let offline = config(&server.endpoint, tmp.path(), true);
    assert_eq!(fetch_with(&offline, "sdgen/tiny-sdxl", None, false, &mut NoProgress).unwrap(), got);
    std::fs::remove_file(got.join("text_encoder_2/model.safetensors")).unwrap();
    let msg = fetch_with(&offline, "sdgen/tiny-sdxl", None, false, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("incomplete") && msg.contains("text_encoder_2/model.safetensors"), "{msg}");
    assert!(msg.contains("'tokenizer_2/*'") && msg.contains("'text_encoder_2/config.json'"), "{msg}");
}

/// `--vae` hub ids: a VAE repo (config and weights at the top, as stabilityai/sd-vae-ft-mse
/// and madebyollin/taesd) gives only those two files, the fp16 variant when asked for; a
/// pipeline repo gives only its `vae/` folder; a repo of one `.safetensors` file that file;
/// offline, the cache alone. The fetched tiny autoencoder then decodes as the local one.
#[test]
fn hub_vaes_fetch_only_the_vae() {
    no_proxy();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut taesd = read_tree(&root.join("weights/tiny-taesd"));
    taesd.insert("diffusion_pytorch_model.fp16.safetensors".into(), b"fp16 stand-in".to_vec());
    taesd.insert("diffusion_pytorch_model.bin".into(), b"pickle".to_vec());
    taesd.insert("taesd_decoder.pth".into(), b"pickle".to_vec());
    let ldm = std::fs::read(root.join("weights/tiny-sd-vae2.safetensors")).unwrap();
    let one: Files = [("vae-ft.safetensors".to_string(), ldm.clone())].into_iter().collect();
    let mut server = Server::start(hosted(vec![
        ("madebyollin/taesd", taesd.clone(), None),
        ("tiny/sd", tiny_with_junk(), None),
        ("tiny/vae-original", one, None),
    ]));
    let tmp = tempfile::tempdir().unwrap();
    let online = config(&server.endpoint, tmp.path(), false);

    let got = fetch_vae_with(&online, "madebyollin/taesd", None, false, &mut NoProgress).unwrap();
    assert_eq!(got, tmp.path().join("models--madebyollin--taesd").join("snapshots").join(SHA));
    assert_eq!(
        resolve_paths(&server.requests(), "madebyollin/taesd"),
        ["config.json", "diffusion_pytorch_model.safetensors"].map(String::from).into_iter().collect()
    );
    server.clear();
    let fp16 = tempfile::tempdir().unwrap();
    fetch_vae_with(&config(&server.endpoint, fp16.path(), false), "madebyollin/taesd", None, true, &mut NoProgress)
        .unwrap();
    assert_eq!(
        resolve_paths(&server.requests(), "madebyollin/taesd"),
        ["config.json", "diffusion_pytorch_model.fp16.safetensors"].map(String::from).into_iter().collect()
    );

    server.clear();
    let vae_dir = fetch_vae_with(&online, "tiny/sd", None, false, &mut NoProgress).unwrap();
    assert_eq!(vae_dir, tmp.path().join("models--tiny--sd").join("snapshots").join(SHA).join("vae"));
    assert_eq!(
        resolve_paths(&server.requests(), "tiny/sd"),
        // The model card comes too (small; it carries the licence).
        ["vae/config.json", "vae/diffusion_pytorch_model.safetensors", "README.md"]
            .map(String::from)
            .into_iter()
            .collect()
    );

    let file = fetch_vae_with(&online, "tiny/vae-original", None, false, &mut NoProgress).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), ldm);

    server.stop();
    let offline = config(&server.endpoint, tmp.path(), true);
    assert_eq!(fetch_vae_with(&offline, "madebyollin/taesd", None, false, &mut NoProgress).unwrap(), got);
    let msg = fetch_vae_with(&offline, "madebyollin/taesdxl", None, false, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("--vae") && msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");

    // The fetched autoencoder is the local one.
    let opts = sdgen::LoadOptions {
        vae: Some(got),
        vae_label: Some(format!("madebyollin/taesd@{SHA}")),
        ..common::cpu_fp32("weights/tiny-sd")
    };
    let pipe = sdgen::Pipeline::load(&opts).unwrap();
    let v = pipe.model().vae.clone().unwrap();
    assert_eq!((v.name.as_str(), v.class.as_str()), ("taesd", "AutoencoderTiny"));
    assert_eq!(v.sha256, sha256(&taesd["diffusion_pytorch_model.safetensors"]));
}
