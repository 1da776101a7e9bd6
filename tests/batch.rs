//! The batch engine with a fake backend: parsing, validation, seeds and names, shards, resume
//! after crashes and damage, failure isolation, grouping, locking, status and merge.
//!
//! The fake backend encodes a tiny PNG whose pixels are a function of the job's prompt and
//! seed, so the expected bytes of every file are known by construction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sdgen::batch::{
    self, derive_seed, group_jobs, output_name, Backend, BatchInput, BatchOptions, Defaults, Format, Job,
    ManifestEntry, ManifestStatus, Plan, Shard,
};
use sdgen::Request;
use sha2::{Digest, Sha256};

/// Renders by construction; can fail chosen prompts or every job after a number of images.
#[derive(Default)]
struct Fake {
    /// Jobs' file names, one list per render call.
    calls: Vec<Vec<String>>,
    /// Prompts containing this fail.
    fail_if_contains: Option<String>,
    /// After this many successful images, every job fails (a run cut short).
    stop_after: Option<usize>,
    rendered: usize,
}

fn fake_png(prompt: &str, seed: u64) -> Vec<u8> {
    let digest = Sha256::digest(format!("{prompt}|{seed}").as_bytes());
    let pixels: Vec<u8> = digest.iter().copied().cycle().take(4 * 4 * 3).collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, 4, 4);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("png header");
    writer.write_image_data(&pixels).expect("png data");
    writer.finish().expect("png finish");
    out
}

impl Backend for Fake {
    fn render(&mut self, jobs: &[Job], on_step: &mut dyn FnMut(usize, usize)) -> Vec<Result<Vec<u8>, String>> {
        self.calls.push(jobs.iter().map(|j| j.file_name.clone()).collect());
        let steps = jobs[0].request.steps;
        for s in 1..=steps {
            on_step(s, steps);
        }
        jobs.iter()
            .map(|job| {
                if self.stop_after.is_some_and(|n| self.rendered >= n) {
                    return Err("stopped".to_string());
                }
                if self.fail_if_contains.as_deref().is_some_and(|f| job.request.prompt.contains(f)) {
                    return Err(format!("cannot draw {}", job.request.prompt));
                }
                self.rendered += 1;
                Ok(fake_png(&job.request.prompt, job.request.seed))
            })
            .collect()
    }
}

fn defaults() -> Defaults {
    Defaults {
        request: Request {
            steps: 4,
            guidance: 7.0,
            width: 64,
            height: 64,
            scheduler: "euler".into(),
            ..Request::default()
        },
        base_seed: 42,
        run_key: String::new(),
        limits: Default::default(),
        lora_dir: None,
    }
}

fn known_schedulers(name: &str) -> Result<(), String> {
    match name {
        "euler" | "ddim" | "dpmpp_2m" => Ok(()),
        _ => Err("unknown scheduler; known: euler, ddim, dpmpp_2m".into()),
    }
}

fn options(dir: &Path) -> BatchOptions<'static> {
    let mut opts = BatchOptions::new(dir, defaults());
    opts.validate_scheduler = &known_schedulers;
    opts
}

fn plan(text: &str, format: Format) -> Plan {
    Plan::new(&BatchInput::from_text("in", text, Some(format)), &defaults(), &known_schedulers)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn manifest_entries(dir: &Path) -> Vec<ManifestEntry> {
    let mut entries = Vec::new();
    for item in std::fs::read_dir(dir).expect("read dir").flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with("manifest-shard-") {
            let text = std::fs::read_to_string(item.path()).expect("manifest");
            entries.extend(text.lines().filter_map(|l| serde_json::from_str::<ManifestEntry>(l).ok()));
        }
    }
    entries
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).expect("read dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

fn pngs_in(dir: &Path) -> BTreeSet<String> {
    files_in(dir).into_iter().filter(|n| n.ends_with(".png")).collect()
}

/// Every expected image is on disk with the bytes the fake makes for its prompt and seed, and
/// the manifests hold exactly one ok record for it, with the file's sha256.
fn assert_complete(dir: &Path, plan: &Plan) {
    let jobs = plan.jobs(Shard::ALL);
    let expected: BTreeSet<String> = jobs.iter().map(|j| j.file_name.clone()).collect();
    assert_eq!(pngs_in(dir), expected);
    let entries = manifest_entries(dir);
    for job in &jobs {
        let bytes = std::fs::read(dir.join(&job.file_name)).expect("png");
        assert_eq!(bytes, fake_png(&job.request.prompt, job.request.seed), "{}", job.file_name);
        let ok: Vec<&ManifestEntry> =
            entries.iter().filter(|e| e.file == job.file_name && e.status == ManifestStatus::Ok).collect();
        assert_eq!(ok.len(), 1, "ok records for {}", job.file_name);
        assert_eq!(ok[0].sha256.as_deref(), Some(format!("{:x}", Sha256::digest(&bytes)).as_str()));
        assert_eq!(ok[0].seed, job.request.seed);
    }
    assert!(files_in(dir).iter().all(|n| !n.starts_with('.')), "temp files left: {:?}", files_in(dir));
}

const TEXT: &str = "# my prompts\n\na red fox\n   \n  a blue bird  \n# done\nan old tree\n";

#[test]
fn plain_text_lines_use_defaults_and_derived_seeds() {
    let p = plan(TEXT, Format::Text);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    assert_eq!(p.entries, 3);
    let got: Vec<(usize, usize, &str)> = p.lines.iter().map(|l| (l.line, l.index, l.request.prompt.as_str())).collect();
    assert_eq!(got, [(3, 0, "a red fox"), (5, 1, "a blue bird"), (7, 2, "an old tree")]);
    for l in &p.lines {
        assert_eq!((l.request.width, l.request.height, l.request.steps), (64, 64, 4));
        assert!(l.derived_seed);
        assert_eq!(l.request.seed, derive_seed(42, l.index));
        assert_eq!(l.file_names, [format!("{:06}-s{}.png", l.index, l.request.seed)]);
    }
}

#[test]
fn derived_seeds_match_the_documented_formula() {
    // low 32 bits of splitmix64(base ^ index), computed independently in Python.
    assert_eq!(derive_seed(0, 0), 2_065_550_767);
    assert_eq!(derive_seed(42, 7), 2_361_412_310);
    assert_eq!(derive_seed(1234, 3), 4_209_227_731);
    assert_eq!(output_name(42, 1_234_567, None), "000042-s1234567.png");
    assert_eq!(output_name(42, 1_234_567, Some(2)), "000042-s1234567-2.png");
}

#[test]
fn jsonl_lines_override_every_key() {
    let text = r#"{"prompt": "a", "negative": "blurry", "seed": 7, "steps": 9, "guidance": 3.5, "width": 128, "height": 96, "scheduler": "ddim", "num_images": 2, "clip_skip": 2}
# a comment
{"prompt": "b", "filename": "bee", "negative": null, "clip_skip": null}

{"prompt": "c", "num_images": 3, "filename": "cee.png", "seed": 18446744073709551615}
"#;
    let p = plan(text, Format::Jsonl);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let a = &p.lines[0];
    let r = &a.request;
    assert_eq!((a.line, a.index, a.derived_seed), (1, 0, false));
    assert_eq!(r.negative_prompt.as_deref(), Some("blurry"));
    assert_eq!((r.seed, r.steps, r.guidance, r.width, r.height), (7, 9, 3.5, 128, 96));
    assert_eq!((r.scheduler.as_str(), r.num_images, r.clip_skip), ("ddim", 2, Some(2)));
    assert_eq!(a.file_names, ["000000-s7-0.png", "000000-s7-1.png"]);
    let b = &p.lines[1];
    assert_eq!((b.line, b.index), (3, 1));
    assert_eq!(b.request.seed, derive_seed(42, 1));
    assert_eq!((b.request.steps, b.request.negative_prompt.clone(), b.request.clip_skip), (4, None, None));
    assert_eq!(b.file_names, ["bee.png"]);
    let c = &p.lines[2];
    assert_eq!((c.line, c.index), (5, 2));
    assert_eq!(c.file_names, ["cee-0.png", "cee-1.png", "cee-2.png"]);

    // num_images expands into one job per image with seeds seed, seed+1, ... (wrapping).
    let jobs = p.jobs(Shard::ALL);
    let seeds: Vec<(String, u64, usize)> =
        jobs.iter().map(|j| (j.file_name.clone(), j.request.seed, j.request.num_images)).collect();
    assert_eq!(
        seeds,
        [
            ("000000-s7-0.png".to_string(), 7, 1),
            ("000000-s7-1.png".to_string(), 8, 1),
            ("bee.png".to_string(), derive_seed(42, 1), 1),
            ("cee-0.png".to_string(), u64::MAX, 1),
            ("cee-1.png".to_string(), 0, 1),
            ("cee-2.png".to_string(), 1, 1),
        ]
    );
    assert_eq!(jobs[1].image, 1);
}

#[test]
fn csv_with_header_quotes_empty_cells_and_comments() {
    let text = "prompt,seed,width,negative,filename\n\"a fox, running\",5,,,\n# skip me\n\nplain,,256,ugly,plain\n";
    let p = plan(text, Format::Csv);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    type Row<'a> = (usize, usize, &'a str, u64, u32, Option<&'a str>);
    let got: Vec<Row<'_>> = p
        .lines
        .iter()
        .map(|l| {
            let r = &l.request;
            (l.line, l.index, r.prompt.as_str(), r.seed, r.width, r.negative_prompt.as_deref())
        })
        .collect();
    assert_eq!(got, [(2, 0, "a fox, running", 5, 64, None), (5, 1, "plain", derive_seed(42, 1), 256, Some("ugly"))]);
    assert_eq!(p.lines[0].file_names, ["000000-s5.png"]);
    assert_eq!(p.lines[1].file_names, ["plain.png"]);
}

#[test]
fn formats_are_sniffed_when_not_given() {
    let jsonl = BatchInput::from_text("-", "{\"prompt\": \"x\"}\n", None);
    let csv = BatchInput::from_text("-", "\u{feff}prompt,steps\nx,3\n", None);
    let text = BatchInput::from_text("-", "x\n", None);
    assert_eq!((jsonl.format, csv.format, text.format), (Format::Jsonl, Format::Csv, Format::Text));
    let p = Plan::new(&csv, &defaults(), &known_schedulers);
    assert_eq!(p.lines[0].request.steps, 3);
}

/// (line, message substrings) for each problem of `text`.
fn assert_problems(p: &Plan, expected: &[(usize, &str)]) {
    assert_eq!(p.problems.len(), expected.len(), "{:#?}", p.problems);
    for (problem, (line, needle)) in p.problems.iter().zip(expected) {
        assert_eq!(problem.line, *line, "{problem}");
        assert!(problem.message.contains(needle), "line {line}: {:?} does not contain {needle:?}", problem.message);
    }
}

const BAD_JSONL: &str = r#"{"prompt": "good one"}
{"prompt": "x", "colour": "red"}
{"prompt": "x", "steps": "20"}
{"prompt": "x", "width": 100}
{"prompt": "x", "steps": 0}
{"prompt": "x", "guidance": -1}
{"prompt": "   "}
{"prompt": "x", "filename": "../escape.png"}
{"prompt": "x", "scheduler": "warp"}
{"prompt": "x",
["prompt"]
{"prompt": "x", "seed": -3, "height": 0}
{"prompt": "good two", "filename": "same"}
{"prompt": "x", "filename": "SAME.png"}
"#;

#[test]
fn bad_lines_are_named_with_their_problem() {
    let p = plan(BAD_JSONL, Format::Jsonl);
    assert_problems(
        &p,
        &[
            (2, "unknown key \"colour\" (known keys: prompt, negative, seed, steps, guidance, width, height, scheduler, "),
            (3, "steps: expected a number, got the string \"20\""),
            (4, "width 100 is not a positive multiple of 8"),
            (5, "steps is 0"),
            (6, "guidance -1 is negative"),
            (7, "empty prompt"),
            (8, "filename \"../escape.png\" must be a plain file name inside the output folder"),
            (9, "scheduler \"warp\": unknown scheduler; known: euler, ddim, dpmpp_2m"),
            (10, "not valid JSON"),
            (11, "expected a JSON object"),
            (12, "seed: expected a whole number of 0 or more, got -3"),
            (12, "height 0 is not a positive multiple of 8"),
            (14, "output file \"SAME.png\" is also written by line 13"),
        ],
    );
    let valid: Vec<usize> = p.lines.iter().map(|l| l.line).collect();
    assert_eq!(valid, [1, 13]);
    // Invalid lines keep their index: "good two" is the 13th entry.
    assert_eq!(p.lines[1].index, 12);
}

#[test]
fn csv_header_with_an_unknown_column_invalidates_the_file() {
    let p = plan("# header next\nprompt,size\ncat,5\n", Format::Csv);
    assert_problems(&p, &[(2, "unknown column \"size\" in the header (known keys: prompt, ")]);
    assert!(p.lines.is_empty());
    let p = plan("prompt,steps\ncat,many\ndog\n", Format::Csv);
    assert_problems(&p, &[(2, "steps: expected a whole number of 0 or more, got \"many\""), (3, "has 1 cells")]);
}

#[test]
fn without_skip_invalid_nothing_runs_and_all_problems_are_listed() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let input = BatchInput::from_text("bad.jsonl", BAD_JSONL, Some(Format::Jsonl));
    let mut fake = Fake::default();
    let err = batch::run(&input, &options(&out), &mut fake).expect_err("must refuse").to_string();
    assert!(err.starts_with("bad.jsonl: 13 problems on 12 lines"), "{err}");
    for line in [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14] {
        assert!(err.contains(&format!("\n  line {line}: ")), "line {line} missing in {err}");
    }
    assert!(err.contains("--skip-invalid"), "{err}");
    assert!(fake.calls.is_empty());
    assert!(!out.exists(), "nothing may be written");

    let mut opts = options(&out);
    opts.skip_invalid = true;
    let summary = batch::run(&input, &opts, &mut fake).expect("valid lines run");
    assert_eq!((summary.images, summary.done, summary.failed), (2, 2, 0));
    assert_eq!(summary.invalid.len(), 13);
    assert_eq!(pngs_in(&out), BTreeSet::from([output_name(0, derive_seed(42, 0), None), "same.png".to_string()]));
}

#[test]
fn shards_cover_every_line_exactly_once_and_agree_with_the_whole_run() {
    let text: String = (0..10).map(|i| format!("prompt {i}\n")).collect();
    let p = plan(&text, Format::Text);
    let whole: BTreeMap<String, u64> = p.jobs(Shard::ALL).into_iter().map(|j| (j.file_name, j.request.seed)).collect();
    let mut seen = BTreeMap::new();
    for i in 0..3 {
        for job in p.jobs(Shard::new(i, 3).expect("shard")) {
            assert_eq!(job.index % 3, i);
            assert!(seen.insert(job.file_name, job.request.seed).is_none(), "a line in two shards");
        }
    }
    assert_eq!(seen, whole);

    // Three shard processes into one folder: every image once, three manifests, status complete.
    let dir = tempdir();
    let input = BatchInput::from_text("p.txt", text, Some(Format::Text));
    for i in [2, 0, 1] {
        let mut opts = options(dir.path());
        opts.shard = Shard::new(i, 3).expect("shard");
        let summary = batch::run(&input, &opts, &mut Fake::default()).expect("shard run");
        assert_eq!(summary.images, if i == 0 { 4 } else { 3 });
        assert_eq!(summary.manifest, dir.path().join(format!("manifest-shard-{i}-of-3.jsonl")));
    }
    assert_complete(dir.path(), &p);
    let status = batch::status(&input, &options(dir.path())).expect("status");
    assert!(status.is_complete(), "{}", status.render());
    assert_eq!(status.manifests.len(), 3);

    // A later run without shards finds everything done, whatever shard made it.
    let mut fake = Fake::default();
    let summary = batch::run(&input, &options(dir.path()), &mut fake).expect("rerun");
    assert_eq!((summary.done, summary.skipped), (0, 10));
    assert!(fake.calls.is_empty());
}

#[test]
fn a_run_cut_short_resumes_and_makes_each_image_once() {
    let dir = tempdir();
    let text: String = (0..7).map(|i| format!("{{\"prompt\": \"p{i}\", \"num_images\": {}}}\n", 1 + i % 2)).collect();
    let input = BatchInput::from_text("p.jsonl", text.clone(), None);
    let p = plan(&text, Format::Jsonl);
    let total = p.jobs(Shard::ALL).len();
    assert_eq!(total, 10);

    let mut first = Fake { stop_after: Some(4), ..Fake::default() };
    let mut opts = options(dir.path());
    opts.batch_size = 3;
    let summary = batch::run(&input, &opts, &mut first).expect("first run");
    assert_eq!((summary.done, summary.failed, summary.skipped), (4, 6, 0));
    assert!(!summary.is_success());

    let status = batch::status(&input, &opts).expect("status");
    assert_eq!((status.done_images, status.failed_images, status.missing_images), (4, 6, 0));

    let mut second = Fake::default();
    let summary = batch::run(&input, &opts, &mut second).expect("second run");
    assert_eq!((summary.done, summary.failed, summary.skipped), (6, 0, 4));
    assert!(summary.is_success());
    let redone: usize = second.calls.iter().map(Vec::len).sum();
    assert_eq!(redone, 6);
    assert_complete(dir.path(), &p);
}

#[test]
fn torn_manifest_line_corrupted_and_missing_pngs_and_stale_temps_are_repaired() {
    let dir = tempdir();
    let text: String = (0..6).map(|i| format!("prompt {i}\n")).collect();
    let input = BatchInput::from_text("p.txt", text.clone(), None);
    let p = plan(&text, Format::Text);
    let names: Vec<String> = p.jobs(Shard::ALL).into_iter().map(|j| j.file_name).collect();
    batch::run(&input, &options(dir.path()), &mut Fake::default()).expect("first run");

    // A crash in the middle of the last manifest write: cut its last record in half.
    let manifest = dir.path().join(Shard::ALL.manifest_name());
    let content = std::fs::read_to_string(&manifest).expect("manifest");
    let last_start = content.trim_end().rfind('\n').map_or(0, |i| i + 1);
    let cut = last_start + (content.len() - last_start) / 2;
    std::fs::write(&manifest, &content[..cut]).expect("truncate");
    // A PNG whose bytes were damaged, one deleted, and a temp file from a killed process.
    let mut damaged = std::fs::read(dir.path().join(&names[1])).expect("png");
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    std::fs::write(dir.path().join(&names[1]), damaged).expect("damage");
    std::fs::remove_file(dir.path().join(&names[3])).expect("delete");
    std::fs::write(dir.path().join(".sdgen-tmp-0-of-1-abc123.part"), b"half a png").expect("temp");

    let mut fake = Fake::default();
    let summary = batch::run(&input, &options(dir.path()), &mut fake).expect("rerun");
    let redone: BTreeSet<String> = fake.calls.concat().into_iter().collect();
    assert_eq!(redone, BTreeSet::from([names[1].clone(), names[3].clone(), names[5].clone()]));
    assert_eq!((summary.done, summary.skipped), (3, 3));

    // The torn line stays as one unreadable line; every image is now recorded once.
    let status = batch::status(&input, &options(dir.path())).expect("status");
    assert_eq!(status.unreadable_manifest_lines, 1);
    assert!(status.is_complete(), "{}", status.render());
    let entries = manifest_entries(dir.path());
    // names[1] was recorded ok before it was damaged; its new record is the one that matches.
    let ok_for_1 = entries.iter().filter(|e| e.file == names[1] && e.status == ManifestStatus::Ok).count();
    assert_eq!(ok_for_1, 2);
    let bytes = std::fs::read(dir.path().join(&names[1])).expect("png");
    let last = entries.iter().rev().find(|e| e.file == names[1]).expect("record");
    assert_eq!(last.sha256.as_deref(), Some(batch::sha256_hex(&bytes).as_str()));
    for job in p.jobs(Shard::ALL) {
        let bytes = std::fs::read(dir.path().join(&job.file_name)).expect("png");
        assert_eq!(bytes, fake_png(&job.request.prompt, job.request.seed));
    }
    assert_eq!(pngs_in(dir.path()).len(), 6);
    assert!(files_in(dir.path()).iter().all(|n| !n.starts_with('.')), "{:?}", files_in(dir.path()));
}

#[test]
fn a_failing_job_is_recorded_and_retried_while_the_rest_go_on() {
    let dir = tempdir();
    let text = "a cat\na FAIL dog\na cow\n";
    let input = BatchInput::from_text("p.txt", text, None);
    let mut fake = Fake { fail_if_contains: Some("FAIL".into()), ..Fake::default() };
    let mut opts = options(dir.path());
    opts.batch_size = 8;
    let summary = batch::run(&input, &opts, &mut fake).expect("run");
    assert_eq!((summary.done, summary.failed), (2, 1));
    assert_eq!(summary.failures[0].line, 2);
    assert_eq!(summary.failures[0].error, "cannot draw a FAIL dog");
    let json = serde_json::to_value(&summary).expect("json");
    assert_eq!(json["failed"], 1);
    assert_eq!(json["failures"][0]["error"], "cannot draw a FAIL dog");

    let failed: Vec<ManifestEntry> =
        manifest_entries(dir.path()).into_iter().filter(|e| e.status == ManifestStatus::Failed).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].line, failed[0].error.as_deref()), (2, Some("cannot draw a FAIL dog")));
    assert_eq!(pngs_in(dir.path()).len(), 2);

    let status = batch::merge(&input, &opts).expect("merge");
    assert_eq!((status.done_images, status.failed_images, status.done_lines), (2, 1, 2));
    assert_eq!(status.failed[0].line, 2);
    let merged = std::fs::read_to_string(dir.path().join("manifest.jsonl")).expect("merged");
    let merged: Vec<ManifestEntry> = merged.lines().map(|l| serde_json::from_str(l).expect("record")).collect();
    let lines: Vec<(usize, ManifestStatus)> = merged.iter().map(|e| (e.line, e.status)).collect();
    assert_eq!(lines, [(1, ManifestStatus::Ok), (2, ManifestStatus::Failed), (3, ManifestStatus::Ok)]);

    let mut fixed = Fake::default();
    let summary = batch::run(&input, &opts, &mut fixed).expect("retry");
    assert_eq!((summary.done, summary.skipped, summary.failed), (1, 2, 0));
    assert_eq!(fixed.calls.concat().len(), 1);
    let p = plan(text, Format::Text);
    assert_complete(dir.path(), &p);
}

#[test]
fn an_edited_line_is_rendered_again() {
    let dir = tempdir();
    let before = BatchInput::from_text("p.jsonl", "{\"prompt\": \"a cat\", \"filename\": \"x\"}\n", None);
    let after = BatchInput::from_text("p.jsonl", "{\"prompt\": \"a dog\", \"filename\": \"x\"}\n", None);
    batch::run(&before, &options(dir.path()), &mut Fake::default()).expect("first");
    let mut fake = Fake::default();
    let summary = batch::run(&after, &options(dir.path()), &mut fake).expect("second");
    assert_eq!((summary.done, summary.skipped), (1, 0));
    let seed = derive_seed(42, 0);
    assert_eq!(std::fs::read(dir.path().join("x.png")).expect("png"), fake_png("a dog", seed));
}

fn job(file: &str, width: u32, steps: usize, scheduler: &str, guidance: f64, clip_skip: Option<usize>) -> Job {
    Job {
        line: 1,
        index: 0,
        image: 0,
        request: Request {
            prompt: file.into(),
            width,
            height: 64,
            steps,
            scheduler: scheduler.into(),
            guidance,
            clip_skip,
            ..Request::default()
        },
        file_name: file.into(),
    }
}

#[test]
fn jobs_with_equal_parameters_are_grouped_in_file_order() {
    let jobs = vec![
        job("a", 64, 4, "euler", 7.0, None),
        job("b", 128, 4, "euler", 7.0, None),
        job("c", 64, 4, "euler", 7.0, None),
        job("d", 64, 5, "euler", 7.0, None),
        job("e", 64, 4, "euler", 7.0, None),
        job("f", 64, 4, "ddim", 7.0, None),
        job("g", 64, 4, "euler", 7.5, None),
        job("h", 64, 4, "euler", 7.0, Some(2)),
        job("i", 64, 4, "euler", 7.0, None),
        job("j", 128, 4, "euler", 7.0, None),
    ];
    let names = |groups: Vec<Vec<&Job>>| -> Vec<String> {
        groups.iter().map(|g| g.iter().map(|j| j.file_name.as_str()).collect::<String>()).collect()
    };
    assert_eq!(names(group_jobs(&jobs, 3)), ["ace", "bj", "d", "f", "g", "h", "i"]);
    assert_eq!(names(group_jobs(&jobs, 2)), ["ac", "bj", "d", "ei", "f", "g", "h"]);
    assert_eq!(names(group_jobs(&jobs, 1)).len(), 10);
}

#[test]
fn run_hands_groups_to_the_backend() {
    let dir = tempdir();
    let text = "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"width\": 128}\n{\"prompt\": \"c\", \"num_images\": 2}\n{\"prompt\": \"d\"}\n";
    let input = BatchInput::from_text("p.jsonl", text, None);
    let mut opts = options(dir.path());
    opts.batch_size = 3;
    let mut fake = Fake::default();
    batch::run(&input, &opts, &mut fake).expect("run");
    let s0 = derive_seed(42, 0);
    let s1 = derive_seed(42, 1);
    let s2 = derive_seed(42, 2);
    let s3 = derive_seed(42, 3);
    assert_eq!(
        fake.calls,
        [
            vec![format!("000000-s{s0}.png"), format!("000002-s{s2}-0.png"), format!("000002-s{s2}-1.png")],
            vec![format!("000001-s{s1}.png")],
            vec![format!("000003-s{s3}.png")],
        ]
    );
}

/// While one run holds shard 0/1, a second run on the same folder and shard is refused.
struct Nested<'a> {
    input: &'a BatchInput,
    dir: &'a Path,
    seen: Option<String>,
}

impl Backend for Nested<'_> {
    fn render(&mut self, jobs: &[Job], _: &mut dyn FnMut(usize, usize)) -> Vec<Result<Vec<u8>, String>> {
        let result = batch::run(self.input, &options(self.dir), &mut Fake::default());
        self.seen = Some(result.map(|_| "ran".to_string()).unwrap_or_else(|e| e.to_string()));
        jobs.iter().map(|j| Ok(fake_png(&j.request.prompt, j.request.seed))).collect()
    }
}

#[test]
fn a_second_process_on_the_same_shard_is_refused() {
    let dir = tempdir();
    let input = BatchInput::from_text("p.txt", "one\n", None);
    let mut nested = Nested { input: &input, dir: dir.path(), seen: None };
    batch::run(&input, &options(dir.path()), &mut nested).expect("outer run");
    let message = nested.seen.expect("nested run happened");
    assert!(
        message.starts_with(&format!("another sdgen batch is working on shard 0/1 in {}", dir.path().display())),
        "{message}"
    );
    assert_eq!(pngs_in(dir.path()).len(), 1);
}

#[test]
fn an_empty_file_is_an_error() {
    let dir = tempdir();
    let input = BatchInput::from_text("empty.txt", "# nothing\n\n", None);
    let err = batch::run(&input, &options(dir.path()), &mut Fake::default()).expect_err("empty").to_string();
    assert!(err.contains("empty.txt has no prompts"), "{err}");
}

#[test]
fn csv_multi_line_cells_keep_the_line_numbers_right() {
    let text = "prompt,steps\n\"two\nlines\",3\n# note\nnext,0\n";
    let p = plan(text, Format::Csv);
    assert_eq!(p.lines[0].request.prompt, "two\nlines");
    assert_problems(&p, &[(5, "steps is 0")]);
}

#[test]
fn a_bad_csv_header_is_reported_rather_than_an_empty_file() {
    let dir = tempdir();
    let input = BatchInput::from_text("p.csv", "prompt,colour\ncat,red\n", None);
    let err = batch::run(&input, &options(dir.path()), &mut Fake::default()).expect_err("bad header").to_string();
    assert!(err.contains("line 1: unknown column \"colour\""), "{err}");
}
