//! Writing files, from `generate` and from `batch`: one atomic writer with the same
//! permissions everywhere, the licence notice in every output folder, leftover temporary files
//! cleaned up, files a batch did not make left alone, and write failures worded as writes that
//! name the destination (never a temporary file).
//!
//! The engine-level tests use a fake backend; the end-to-end ones run the real binary on the
//! tiny test model. Tests run as root, where permissions stop nothing, so failures come from a
//! file standing where a folder should be, or a file size limit (`ulimit -f`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sdgen::batch::{self, Backend, BatchInput, BatchOptions, Defaults, Job, ManifestEntry, ManifestStatus};
use sdgen::request::LicenseRecord;
use sdgen::Request;

/// Renders each job as a tiny PNG that depends only on its prompt and seed.
struct Fake {
    license: Option<LicenseRecord>,
}

fn fake_png(prompt: &str, seed: u64) -> Vec<u8> {
    let mut pixels = format!("{prompt}|{seed}").into_bytes();
    pixels.resize(2 * 2 * 3, 7);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 2, 2);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("png header");
    writer.write_image_data(&pixels).expect("png data");
    writer.finish().expect("png finish");
    out
}

impl Backend for Fake {
    fn render(&mut self, jobs: &[Job], _: &mut dyn FnMut(usize, usize)) -> Vec<Result<Vec<u8>, String>> {
        jobs.iter().map(|j| Ok(fake_png(&j.request.prompt, j.request.seed))).collect()
    }

    fn license(&self) -> Option<LicenseRecord> {
        self.license.clone()
    }
}

fn fake() -> Fake {
    Fake { license: sdgen::output::license::lookup("creativeml-openrail-m", "test") }
}

fn options(dir: &Path) -> BatchOptions<'static> {
    let request = Request { steps: 2, width: 64, height: 64, scheduler: "euler".into(), ..Request::default() };
    let opts = BatchOptions::new(
        dir,
        Defaults { request, base_seed: 1, run_key: String::new(), limits: Default::default(), lora_dir: None },
    );
    opts
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn hidden(dir: &Path) -> Vec<String> {
    names(dir).into_iter().filter(|n| n.starts_with('.')).collect()
}

fn manifest_entries(dir: &Path) -> Vec<ManifestEntry> {
    let mut entries = Vec::new();
    for name in names(dir).into_iter().filter(|n| n.starts_with("manifest-shard-")) {
        let text = std::fs::read_to_string(dir.join(name)).expect("manifest");
        entries.extend(text.lines().filter_map(|l| serde_json::from_str::<ManifestEntry>(l).ok()));
    }
    entries
}

fn set_mtime(path: &Path, time: SystemTime) {
    std::fs::File::options().write(true).open(path).expect("open").set_modified(time).expect("set mtime");
}

/// The process umask, read by setting it and putting it back at once.
#[cfg(unix)]
fn umask() -> u32 {
    // SAFETY: umask only swaps the process's file creation mask.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old as u32
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Job `i` of a batch file, as the engine plans it.
fn job(input: &BatchInput, out: &Path, i: usize) -> Job {
    let plan = batch::Plan::new(input, &options(out).defaults, &|_: &str| Ok(()));
    plan.jobs(batch::Shard::ALL).remove(i)
}

/// The bytes the fake renders for job `i`.
fn expected_png(input: &BatchInput, out: &Path, i: usize) -> Vec<u8> {
    let job = job(input, out, i);
    fake_png(&job.request.prompt, job.request.seed)
}

// --- the batch engine ---------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn batch_files_get_the_permissions_of_any_new_file_and_the_licence_notice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let input = BatchInput::from_text("p.txt", "a cat\na dog\n", None);
    let summary = batch::run(&input, &options(&out), &mut fake()).expect("run");
    assert_eq!(summary.done, 2);

    let expected = 0o666 & !umask();
    let pngs: Vec<String> = names(&out).into_iter().filter(|n| n.ends_with(".png")).collect();
    assert_eq!(pngs.len(), 2);
    let mut paths: Vec<PathBuf> = pngs.iter().map(|n| out.join(n)).collect();
    paths.extend([out.join("LICENSE-NOTICE.txt"), summary.manifest.clone()]);
    for path in paths {
        assert_eq!(mode(&path), expected, "{}: mode {:o} under umask {:o}", path.display(), mode(&path), umask());
    }
    let notice = std::fs::read_to_string(out.join("LICENSE-NOTICE.txt")).expect("notice");
    assert!(notice.contains("CreativeML OpenRAIL-M") && notice.contains("Attachment A"), "{notice}");
    assert!(hidden(&out).is_empty(), "{:?}", names(&out));

    // A backend that names no licence leaves no notice.
    let bare = dir.path().join("bare");
    batch::run(&input, &options(&bare), &mut Fake { license: None }).expect("run");
    assert!(!bare.join("LICENSE-NOTICE.txt").exists());
}

#[test]
fn a_line_naming_a_file_that_no_manifest_lists_fails_unless_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    std::fs::write(out.join("mycat.png"), b"my own cat picture").expect("precious file");
    let text = "{\"prompt\": \"a cat\", \"filename\": \"mycat\"}\n{\"prompt\": \"a dog\"}\n";
    let input = BatchInput::from_text("p.jsonl", text, None);

    for _ in 0..2 {
        let summary = batch::run(&input, &options(out), &mut fake()).expect("run");
        assert_eq!((summary.failed, summary.done + summary.skipped), (1, 1), "{}", summary.render());
        let error = &summary.failures[0].error;
        assert_eq!(summary.failures[0].file, "mycat.png");
        assert!(error.contains("mycat.png already exists") && error.contains("--overwrite"), "{error}");
        assert_eq!(std::fs::read(out.join("mycat.png")).expect("kept"), b"my own cat picture");
    }

    let mut opts = options(out);
    opts.overwrite = true;
    let summary = batch::run(&input, &opts, &mut fake()).expect("run with overwrite");
    assert_eq!((summary.done, summary.failed), (1, 0), "{}", summary.render());
    assert_eq!(std::fs::read(out.join("mycat.png")).expect("replaced"), expected_png(&input, out, 0));

    // Now a manifest lists it: an edited line replaces it without --overwrite, as before.
    let edited = BatchInput::from_text("p.jsonl", text.replace("a cat", "a black cat"), None);
    let summary = batch::run(&edited, &options(out), &mut fake()).expect("edited run");
    assert_eq!((summary.done, summary.failed), (1, 0), "{}", summary.render());
    assert_eq!(std::fs::read(out.join("mycat.png")).expect("replaced"), expected_png(&edited, out, 0));
    assert!(hidden(out).is_empty(), "{:?}", names(out));
}

#[test]
fn an_image_written_but_not_recorded_before_a_crash_is_kept_and_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let input = BatchInput::from_text("p.txt", "a cat\n", None);
    let job = job(&input, out, 0);
    // The PNG was renamed into place and the process died before its manifest line.
    std::fs::write(out.join(&job.file_name), fake_png(&job.request.prompt, job.request.seed)).expect("png");

    let summary = batch::run(&input, &options(out), &mut fake()).expect("run");
    assert_eq!((summary.done, summary.failed), (1, 0), "{}", summary.render());
    let ok: Vec<ManifestEntry> = manifest_entries(out).into_iter().filter(|e| e.status == ManifestStatus::Ok).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].file, job.file_name);
}

#[test]
fn merge_before_any_run_reports_nothing_done_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = BatchInput::from_text("p.txt", "a cat\na dog\n", None);
    for out in [dir.path().join("never-run"), dir.path().to_path_buf()] {
        let report = batch::merge(&input, &options(&out)).expect("merge before a run");
        assert_eq!((report.images, report.done_images, report.missing_images), (2, 0, 2));
        assert!(!report.is_complete());
        assert_eq!(report.merged, None);
    }
    assert!(!dir.path().join("never-run").exists());
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));

    // After a run, merge writes the merged manifest as before.
    batch::run(&input, &options(dir.path()), &mut fake()).expect("run");
    let report = batch::merge(&input, &options(dir.path())).expect("merge");
    assert!(report.is_complete(), "{}", report.render());
    assert_eq!(report.merged, Some(dir.path().join("manifest.jsonl")));
}

#[test]
fn an_output_folder_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out");
    std::fs::write(&file, b"not a folder").expect("file");
    let input = BatchInput::from_text("p.txt", "a cat\n", None);
    for out in [file.clone(), file.join("sub")] {
        let err = batch::run(&input, &options(&out), &mut fake()).expect_err("a file as the folder").to_string();
        assert!(err.starts_with(&format!("cannot create the folder {}: ", out.display())), "{err}");
        assert!(err.contains(&format!("{} is a file, not a folder", file.display())), "{err}");
    }
    assert_eq!(names(dir.path()), ["out"]);
}

#[test]
fn batch_removes_stale_temporary_files_it_recognises() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for name in [".sdgen-tmp-0-of-1-aaaaaa.part", ".sdgen-tmp-1-of-4-bbbbbb.part", ".x.png.tmp-cccccc", ".mine"] {
        std::fs::write(out.join(name), b"x").expect("file");
        set_mtime(&out.join(name), hour_ago);
    }
    batch::run(&BatchInput::from_text("p.txt", "a cat\n", None), &options(out), &mut fake()).expect("run");
    assert_eq!(hidden(out), [".mine"]);
}

// --- the binary ---------------------------------------------------------------------------

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-sd")
}

/// `sdgen ARGS` on the tiny model, small and fast, run through `sh -c "SETUP; exec sdgen ..."`
/// so that the case can set the umask or a file size limit.
fn sdgen(setup: &str, args: &[&str], out: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{setup}\nexec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_sdgen"))
        .args(args)
        .arg("--model")
        .arg(tiny_model())
        .arg("--out")
        .arg(out)
        .args(["--steps", "2", "--width", "64", "--height", "64", "--seed", "7", "--quiet", "--device", "cpu"])
        .env_remove("SDGEN_MODEL");
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let output = cmd.output().expect("run sdgen");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "sdgen failed: {stderr}");
    stderr
}

fn run_failing(mut cmd: Command) -> String {
    let output = cmd.output().expect("run sdgen");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "sdgen succeeded: {stderr}");
    stderr
}

#[cfg(unix)]
#[test]
fn generate_and_batch_write_0644_under_umask_022() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a red square\n").expect("prompts");
    let (gen_out, batch_out) = (dir.path().join("gen"), dir.path().join("batch"));
    run_ok(sdgen("umask 022", &["generate", "a red square"], &gen_out));
    run_ok(sdgen("umask 022", &["batch", prompts.to_str().expect("utf-8 path")], &batch_out));
    for out in [&gen_out, &batch_out] {
        let files: Vec<String> = names(out).into_iter().filter(|n| !n.starts_with("manifest-")).collect();
        assert_eq!(files.len(), 2, "{out:?}: {files:?}");
        assert!(files.contains(&"LICENSE-NOTICE.txt".to_string()), "{out:?}: {files:?}");
        for name in files.iter().chain(names(out).iter().filter(|n| n.starts_with("manifest-"))) {
            assert_eq!(mode(&out.join(name)), 0o644, "{}", out.join(name).display());
        }
    }
}

#[test]
fn generate_removes_temporary_files_a_killed_run_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("out");
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let stale = [".sdgen-tmp-aBc123.part", ".00000-7-a red square.png.tmp-XyZ789", ".LICENSE-NOTICE.txt.tmp-q1w2e3"];
    let kept = [".notes.tmp-abcdef", "draft.png.tmp-abcdef", ".sdgen-tmp-folder.part"];
    for name in stale.iter().chain(&kept[..2]) {
        std::fs::write(out.join(name), b"half a file").expect("file");
        set_mtime(&out.join(name), hour_ago);
    }
    std::fs::create_dir(out.join(kept[2])).expect("a folder is never ours");
    // Changed after the run started: another process may be writing it right now.
    let live = ".sdgen-tmp-live00.part";
    std::fs::write(out.join(live), b"being written").expect("file");
    set_mtime(&out.join(live), SystemTime::now() + Duration::from_secs(3600));

    run_ok(sdgen("", &["generate", "a red square"], &out));
    let left = names(&out);
    for name in stale {
        assert!(!left.contains(&name.to_string()), "{name} was not removed: {left:?}");
    }
    for name in kept.iter().chain([&live]) {
        assert!(left.contains(&name.to_string()), "{name} was removed: {left:?}");
    }
    assert_eq!(left.iter().filter(|n| n.ends_with(".png")).count(), 1, "{left:?}");
}

#[cfg(unix)]
#[test]
fn sigterm_while_generating_ends_the_run_by_the_signal_and_leaves_no_temporary_file() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut child = sdgen("", &["generate", "a red square", "--num-images", "200"], &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sdgen");
    // Signal it while it is writing images, the moment that used to leave a temporary file.
    let deadline = Instant::now() + Duration::from_secs(120);
    while names(&out).iter().filter(|n| n.ends_with(".png")).count() < 2 {
        assert!(Instant::now() < deadline, "no images after 120 s");
        assert!(child.try_wait().expect("poll").is_none(), "sdgen ended before the signal");
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill on the id of a child that has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = child.wait().expect("reap");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    assert!(hidden(&out).is_empty(), "{:?}", names(&out));
}

#[test]
fn write_failures_say_write_and_name_the_destination() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a red square\n").expect("prompts");
    // A file size limit of one 512-byte block makes every larger write fail with EFBIG, as a
    // full disk fails with ENOSPC; SIGXFSZ is ignored so that the write returns the error.
    let limit = "trap '' XFSZ; ulimit -f 1";
    for (command, name) in [("generate", "cat.png"), ("batch", "000000-s")] {
        let out = dir.path().join(command);
        std::fs::create_dir(&out).expect("out");
        // Let the (larger) licence notice exist already, so the image write is what fails.
        std::fs::write(out.join("LICENSE-NOTICE.txt"), b"notice").expect("notice");
        let args: &[&str] = match command {
            "generate" => &["generate", "a red square", "--name", "cat"],
            _ => &["batch", prompts.to_str().expect("utf-8 path")],
        };
        let stderr = run_failing(sdgen(limit, args, &out));
        // Batch names derive the seed from the line; only the start of the name is known.
        let expected = format!("cannot write {}", out.join(name).display());
        assert!(stderr.contains(&expected), "{command}: expected {expected:?} in {stderr}");
        assert!(stderr.contains(".png: File too large"), "{command}: {stderr}");
        assert!(!stderr.contains("cannot read") && !stderr.contains(".sdgen-tmp"), "{command}: {stderr}");
        assert!(hidden(&out).is_empty(), "{command}: {:?}", names(&out));
        assert!(!names(&out).iter().any(|n| n.ends_with(".png")), "{command}: {:?}", names(&out));
    }
}

#[test]
fn batch_cli_out_as_a_file_and_merge_before_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a red square\na blue circle\n").expect("prompts");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let stderr = run_failing(sdgen("", &["batch", prompts.to_str().expect("utf-8 path")], &file));
    assert!(stderr.contains(&format!("cannot create the folder {}", file.display())), "{stderr}");
    assert!(stderr.contains("is a file, not a folder") && !stderr.contains("cannot read"), "{stderr}");

    let out = dir.path().join("not-yet");
    let output =
        sdgen("", &["batch", prompts.to_str().expect("utf-8 path"), "--merge"], &out).output().expect("run sdgen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Nothing done yet is an incomplete batch (exit 3), not an error.
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("0/2 lines done") && stderr.contains("0 done"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn batch_cli_overwrite_flag_replaces_a_file_it_did_not_make() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"a cat\", \"filename\": \"mycat\"}\n").expect("prompts");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("out");
    std::fs::write(out.join("mycat.png"), b"precious").expect("precious file");
    let file = prompts.to_str().expect("utf-8 path");

    let output = sdgen("", &["batch", file], &out).output().expect("run sdgen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("mycat.png already exists") && stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(std::fs::read(out.join("mycat.png")).expect("kept"), b"precious");

    run_ok(sdgen("", &["batch", file, "--overwrite"], &out));
    assert_eq!(sdgen::output::read_record(&out.join("mycat.png")).expect("an sdgen PNG now").request.prompt, "a cat");
}
