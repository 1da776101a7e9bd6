//! `sdgen batch` end to end with the real binary and the tiny test model: a run killed with
//! SIGKILL resumes without losing or duplicating images, and batching does not change pixels.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sdgen::batch::{sha256_hex, ManifestEntry, ManifestStatus};

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/tiny-sd")
}

fn sdgen_batch(prompts: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdgen"));
    cmd.arg("batch")
        .arg(prompts)
        .arg("--model")
        .arg(tiny_model())
        .arg("--out")
        .arg(out)
        .args(["--steps", "2", "--width", "64", "--height", "64", "--seed", "7", "--quiet"])
        .args(extra);
    cmd
}

/// All readable records of all shard manifests.
fn manifest_records(out: &Path) -> Vec<ManifestEntry> {
    let mut records = Vec::new();
    for item in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with("manifest-shard-") && name.ends_with(".jsonl") {
            let text = String::from_utf8_lossy(&std::fs::read(item.path()).unwrap_or_default()).into_owned();
            records.extend(text.lines().filter_map(|l| serde_json::from_str::<ManifestEntry>(l).ok()));
        }
    }
    records
}

fn ok_count(out: &Path) -> usize {
    manifest_records(out).iter().filter(|r| r.status == ManifestStatus::Ok).count()
}

fn file_names(out: &Path) -> BTreeSet<String> {
    std::fs::read_dir(out)
        .expect("output folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn killed_run_resumes_and_makes_every_image_exactly_once() {
    const LINES: usize = 40;
    const KILL_AFTER: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.txt");
    let text: String = (0..LINES).map(|i| format!("a small test picture number {i}\n")).collect();
    std::fs::write(&prompts, text).expect("prompts");
    let out = dir.path().join("out");

    let mut child = sdgen_batch(&prompts, &out, &["--batch-size", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sdgen");
    let deadline = Instant::now() + Duration::from_secs(300);
    while ok_count(&out) < KILL_AFTER {
        assert!(Instant::now() < deadline, "no {KILL_AFTER} images after 300 s");
        if let Some(status) = child.try_wait().expect("poll sdgen") {
            panic!("sdgen ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let before = ok_count(&out);
    assert!(before < LINES, "the run finished before the kill; raise LINES");

    let output = sdgen_batch(&prompts, &out, &["--batch-size", "1"]).output().expect("rerun");
    assert!(output.status.success(), "rerun failed: {}", String::from_utf8_lossy(&output.stderr));

    let records = manifest_records(&out);
    let mut ok_by_line: BTreeMap<usize, Vec<&ManifestEntry>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.status == ManifestStatus::Ok) {
        ok_by_line.entry(r.line).or_default().push(r);
    }
    assert_eq!(ok_by_line.keys().copied().collect::<Vec<_>>(), (1..=LINES).collect::<Vec<_>>());
    let mut expected_pngs = BTreeSet::new();
    for (line, recs) in &ok_by_line {
        assert_eq!(recs.len(), 1, "line {line} was recorded {} times", recs.len());
        let bytes = std::fs::read(out.join(&recs[0].file)).expect("png of a recorded image");
        assert_eq!(recs[0].sha256.as_deref(), Some(sha256_hex(&bytes).as_str()), "line {line}");
        assert!(expected_pngs.insert(recs[0].file.clone()), "two lines share {}", recs[0].file);
    }
    let names = file_names(&out);
    let pngs: BTreeSet<String> = names.iter().filter(|n| n.ends_with(".png")).cloned().collect();
    assert_eq!(pngs, expected_pngs);
    assert!(names.iter().all(|n| !n.starts_with('.')), "temp files remain: {names:?}");
}

#[test]
fn batch_size_does_not_change_pixels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a red square\na green circle\na blue triangle\n").expect("prompts");
    let batched = dir.path().join("batched");
    let single = dir.path().join("single");
    for (out, size) in [(&batched, "3"), (&single, "1")] {
        let output = sdgen_batch(&prompts, out, &["--batch-size", size]).output().expect("run sdgen");
        assert!(output.status.success(), "batch size {size}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let pngs =
        |dir: &Path| -> BTreeSet<String> { file_names(dir).into_iter().filter(|n| n.ends_with(".png")).collect() };
    assert_eq!(pngs(&batched).len(), 3);
    assert_eq!(pngs(&batched), pngs(&single));
    for name in pngs(&batched) {
        let (w, h, a) = common::png_pixels(&batched.join(&name));
        assert_eq!((w, h), (64, 64));
        let b = common::png_pixels(&single.join(&name)).2;
        assert_eq!(a.len(), b.len());
        // A UNet batch of 3 and of 1 run different GEMM blockings, so float rounding may
        // differ in the last bits; that can flip a rare pixel by one level, never more.
        let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(worst <= 1, "{name}: pixels differ by up to {worst} between batch sizes 3 and 1");
        assert!(differing * 1000 <= a.len(), "{name}: {differing} of {} values differ between batch sizes", a.len());
    }
}
