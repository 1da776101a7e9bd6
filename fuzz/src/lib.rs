//! The fuzz harness: one entry point per parser of untrusted bytes, shared by the libFuzzer
//! targets in `fuzz/fuzz_targets/` (nightly, `tools/fuzz.sh`) and by `tests/fuzz_corpus.rs`
//! (stable, every `cargo test`), which includes this file as a module.
//!
//! Each entry point must return normally for every input: a panic is a bug in the parser.
//! Besides "no panic", they check a few invariants the callers rely on (tensor byte ranges
//! inside the file, one output name per image, fixed-length token ids).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use sdgen::batch::{BatchInput, Defaults, Format, Plan, Shard};
use sdgen::loading::ldm_keys::Header;
use sdgen::loading::single_file::{self, Arch, ConfigSet};
use sdgen::loading::weights::MappedFile;
use sdgen::output::metadata;
use sdgen::tokenizer::Tokenizer;
use sdgen::{Image, Request};

/// The targets, by the name used for `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: [&str; 5] = ["safetensors", "ldm_keys", "batch", "png_metadata", "tokenizer"];

/// Runs the entry point of `target` on `data`; false for an unknown target name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "safetensors" => safetensors(data),
        "ldm_keys" => ldm_keys(data),
        "batch" => batch(data),
        "png_metadata" => png_metadata(data),
        "tokenizer" => tokenizer(data),
        _ => return false,
    }
    true
}

/// The repository root (this file lives in `fuzz/src/`; the test and the fuzz crate have
/// different manifest folders, so look upwards for the bundled tokenizer).
pub fn repo_root() -> PathBuf {
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|d| d.join("weights/tiny-sd/tokenizer/vocab.json").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

/// Writes `data` to a scratch file private to this thread (the loaders take paths) and
/// returns its path. tmpfs when there is one: this runs thousands of times a second.
fn scratch_file(ext: &str, data: &[u8]) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static ID: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let path = ID.with(|id| dir.join(format!("sdgen-fuzz-{}-{id}.{ext}", std::process::id())));
    let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// A `.safetensors` file: the header reader, then (when it holds an original checkpoint) the
/// single-file inspection, and every tensor loaded through [`sdgen::loading::Weights`].
pub fn safetensors(data: &[u8]) {
    let path = scratch_file("safetensors", data);
    if let Ok((_file, entries)) = MappedFile::open(&path) {
        for (name, e) in &entries {
            assert!(
                e.start <= e.end && e.end <= data.len(),
                "tensor '{name}' {e:?} outside a {}-byte file",
                data.len()
            );
        }
        // Loading runs libtorch; keep it to small files so a run is not spent copying.
        if data.len() <= 1 << 16 {
            if let Ok(w) =
                sdgen::loading::Weights::open(std::slice::from_ref(&path), tch::Device::Cpu, tch::Kind::Float)
            {
                for name in w.names() {
                    if let Some(shape) = w.shape_of(&name) {
                        let _ = w.get_owned(&name, &shape);
                    }
                }
                let _ = w.finish();
            }
        }
        if let Ok(sf) = single_file::inspect(&path) {
            check_single_file(&sf);
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Parses the `ldm_keys` input format: one tensor a line, `name` then its shape as
/// whitespace-separated integers (`model.diffusion_model.out.2.weight 4 320 3 3`).
pub fn parse_header_lines(text: &str) -> BTreeMap<String, Vec<i64>> {
    let mut shapes = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(name) = parts.next() else { continue };
        let shape = parts.filter_map(|p| p.parse::<i64>().ok()).collect();
        shapes.insert(name.to_string(), shape);
    }
    shapes
}

/// The single-file key mapper on a header given as text (see [`parse_header_lines`]), with the
/// architecture detected and forced, then checked against the built-in configs.
pub fn ldm_keys(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let header = Header::new("fuzz.safetensors", parse_header_lines(&text));
    for arch in [None, Some(Arch::Sd1), Some(Arch::Sd2)] {
        if let Ok(mut sf) = single_file::inspect_header(&header, arch) {
            check_single_file(&sf);
            // What `prepare` does with a config's `num_hidden_layers`, for a few counts.
            let stored = sf.text_encoder.stored_layers;
            for layers in [0, 1, stored.saturating_sub(1), stored, stored + 1, usize::MAX] {
                let _ = sf.use_openclip_layers(layers);
            }
        }
    }
}

fn check_single_file(sf: &single_file::SingleFile) {
    let _ = ConfigSet::standard(sf.arch).check(sf);
    for c in [single_file::Component::Unet, single_file::Component::Vae, single_file::Component::TextEncoder] {
        for (name, src) in sf.sources(c) {
            assert!(!name.is_empty() && !src.key.is_empty(), "empty name in the {c:?} map");
        }
    }
}

/// A batch file: sniffed and read as each format, planned against the command line's
/// defaults with the real scheduler table, then split into jobs and reported.
pub fn batch(data: &[u8]) {
    // `BatchInput::read` refuses non-UTF-8 files before any parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The default limits (at most 1000 images a line) keep planning bounded.
    let defaults = Defaults {
        request: Request { prompt: "default".into(), ..Request::default() },
        base_seed: 7,
        ..Defaults::default()
    };
    let validate = |name: &str| sdgen::schedulers::resolve(name).map(|_| ()).map_err(|e| e.to_string());
    for format in [None, Some(Format::Text), Some(Format::Jsonl), Some(Format::Csv)] {
        let input = BatchInput::from_text("fuzz", text, format);
        let plan = Plan::new(&input, &defaults, &validate);
        for line in &plan.lines {
            assert_eq!(line.file_names.len(), line.request.num_images, "line {}: one name per image", line.line);
            assert!(line.line >= 1, "line numbers are 1-based");
        }
        let jobs = plan.jobs(Shard::ALL);
        assert_eq!(jobs.len(), plan.lines.iter().map(|l| l.request.num_images).sum::<usize>());
        let _ = plan.report(5);
    }
}

/// PNG metadata: the A1111 `parameters` parser on the text, then the bytes read as a PNG
/// (`sdgen show` / `--from`), then the text stored as the `sdgen` record and `parameters`
/// chunks of a real PNG and read back.
pub fn png_metadata(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = metadata::parse_parameters(&text) {
        for (k, v) in &p.params {
            let _ = p.get(k);
            let _ = metadata::unquote(&metadata::quote(v));
        }
    }
    let _ = metadata::unquote(&text);

    if data.starts_with(b"\x89PNG") {
        let path = scratch_file("png", data);
        let _ = sdgen::output::read_text_chunks(&path);
        let _ = metadata::read_record(&path);
        let _ = std::fs::remove_file(&path);
    } else {
        let image = Image { width: 1, height: 1, rgb: vec![0, 0, 0] };
        let chunks = [(metadata::RECORD_KEY, text.as_ref()), (metadata::PARAMETERS_KEY, text.as_ref())];
        if let Ok(png) = sdgen::output::encode_png(&image, &chunks) {
            let path = scratch_file("png", &png);
            let read = sdgen::output::read_text_chunks(&path);
            // Text without NUL survives the round trip (tEXt for Latin-1, iTXt otherwise).
            if !text.contains('\0') {
                let read = read.unwrap_or_else(|e| panic!("cannot read back our own PNG: {e}"));
                assert!(read.iter().any(|(k, v)| k == metadata::RECORD_KEY && *v == *text), "record text changed");
            }
            if let Ok(record) = metadata::read_record(&path) {
                let _ = metadata::parameters_text(&record, "Euler a", None);
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The bundled CLIP tokenizer, loaded once.
pub fn clip_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let dir = repo_root().join("weights/tiny-sd/tokenizer");
        Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("cannot load {}: {e}", dir.display()))
    })
}

/// The tokenizer's public API on arbitrary text (lossily decoded, as prompts are UTF-8).
pub fn tokenizer(data: &[u8]) {
    let t = clip_tokenizer();
    let text = String::from_utf8_lossy(data);
    let e = t.encode(&text);
    assert_eq!(e.ids.len(), t.max_length(), "encode pads or cuts to max_length");
    assert!(e.len >= 2 && e.len <= t.max_length(), "len {} outside 2..={}", e.len, t.max_length());
    assert_eq!(e.ids[0], t.bos_id());
    assert_eq!(e.ids[e.len - 1], t.eos_id());
    let _ = t.decode(&e.ids);
}
