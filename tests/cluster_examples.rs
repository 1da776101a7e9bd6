//! The cluster examples as a scheduler runs them: `examples/slurm/sdgen-array.sbatch` with the
//! array variables Slurm sets, on the tiny model, for every task and then for one task redone
//! (`sbatch --array=2`); its self-submission and the Kubernetes Job from their variables.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const SHARDS: usize = 4;

/// Slurm's and sdgen's shard variables, removed so the host's environment cannot leak in.
const CLEARED: &[&str] = &[
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_JOB_ID",
    "JOB_COMPLETION_INDEX",
    "SDGEN_SHARD",
    "SDGEN_SHARD_COUNT",
    "SDGEN_MODEL",
    "SDGEN_ARGS",
    "SHARDS",
    "TASKS",
    "GPUS",
];

/// A folder with stand-ins for `srun` (runs its command) and `sbatch` (records its arguments
/// and the SHARDS it would pass on, into `sbatch.log` beside it).
fn fake_slurm(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("sbatch.log");
    let scripts = [
        ("srun", "#!/bin/sh\nexec \"$@\"\n".to_string()),
        ("sbatch", format!("#!/bin/sh\necho \"SHARDS=$SHARDS $*\" >> '{}'\n", log.display())),
    ];
    for (name, text) in scripts {
        let path = bin.join(name);
        std::fs::write(&path, text).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    bin
}

/// The Slurm example run as Slurm runs an array task: `vars` are what Slurm sets.
fn slurm_task(dir: &Path, vars: &[(&str, String)]) -> Output {
    let bin = fake_slurm(dir);
    let mut cmd = Command::new("bash");
    cmd.arg(common::root().join("examples/slurm/sdgen-array.sbatch"))
        .arg(dir.join("prompts.txt"))
        .arg(dir.join("out"))
        .current_dir(dir);
    for name in CLEARED {
        cmd.env_remove(name);
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path)
        .env("SDGEN", env!("CARGO_BIN_EXE_sdgen"))
        .env("SDGEN_MODEL", common::root().join("weights/tiny-sd"))
        .env("STEPS", "2")
        .env("WIDTH", "64")
        .env("HEIGHT", "64")
        .env("BATCH_SIZE", "1")
        .env("SLURM_ARRAY_JOB_ID", "77");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run the Slurm example")
}

fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "task failed\nstdout: {stdout}\nstderr: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\nstderr: {stderr}"))
}

/// The PNGs in the output folder, with their bytes.
fn images(out: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn manifests(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("manifest-shard-"))
        .collect();
    names.sort();
    names
}

#[test]
fn slurm_array_renders_every_line_once_and_redoes_one_task() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..8).map(|i| format!("prompt number {i}")).collect();
    std::fs::write(dir.path().join("prompts.txt"), lines.join("\n")).unwrap();
    let out = dir.path().join("out");

    // The array as submitted: tasks 0-3, SHARDS passed on by the submission.
    let shards = SHARDS.to_string();
    for task in 0..SHARDS {
        let s = summary(&slurm_task(
            dir.path(),
            &[
                ("SLURM_ARRAY_TASK_ID", task.to_string()),
                ("SLURM_ARRAY_TASK_MIN", "0".into()),
                ("SLURM_ARRAY_TASK_MAX", (SHARDS - 1).to_string()),
                ("SLURM_ARRAY_TASK_COUNT", shards.clone()),
                ("SHARDS", shards.clone()),
            ],
        ));
        assert_eq!(s["shard"], format!("{task}/{SHARDS}"));
        assert_eq!((s["done"].as_u64(), s["failed"].as_u64()), (Some(2), Some(0)), "{s}");
    }
    let first = images(&out);
    assert_eq!(first.len(), 8);
    let expected: Vec<String> = (0..SHARDS).map(|i| format!("manifest-shard-{i}-of-{SHARDS}.jsonl")).collect();
    assert_eq!(manifests(&out), expected);

    // Shard 2's images go missing; `TASKS=2` resubmits as `sbatch --array=2`, which Slurm
    // reports as an array of one task starting at 2.
    let shard_2: Vec<String> =
        first.keys().enumerate().filter(|(i, _)| i % SHARDS == 2).map(|(_, n)| n.clone()).collect();
    let manifest_2 = std::fs::read_to_string(out.join(&expected[2])).unwrap();
    for name in &shard_2 {
        assert!(manifest_2.contains(name.as_str()), "{name} is shard 2's: {manifest_2}");
        std::fs::remove_file(out.join(name)).unwrap();
    }
    let redo = |shards: Option<&str>| {
        let mut vars = vec![
            ("SLURM_ARRAY_TASK_ID", "2".to_string()),
            ("SLURM_ARRAY_TASK_MIN", "2".into()),
            ("SLURM_ARRAY_TASK_MAX", "2".into()),
            ("SLURM_ARRAY_TASK_COUNT", "1".into()),
        ];
        if let Some(s) = shards {
            vars.push(("SHARDS", s.to_string()));
        }
        slurm_task(dir.path(), &vars)
    };

    // Without SHARDS (a hand-made `sbatch --array=2`), sdgen sees shard 0/1: refused, nothing
    // rendered, no second set of manifests.
    let refused = redo(None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("4 shards") && stderr.contains("SDGEN_SHARD"), "{stderr}");
    assert_eq!(manifests(&out), expected);
    assert_eq!(images(&out).len(), 8 - shard_2.len());

    // With SHARDS, the task is shard 2/4 again: only its two images are rendered, identical.
    let s = summary(&redo(Some(&shards)));
    assert_eq!(s["shard"], "2/4");
    assert_eq!((s["done"].as_u64(), s["skipped"].as_u64()), (Some(2), Some(0)), "{s}");
    assert_eq!(images(&out), first);
    assert_eq!(manifests(&out), expected);
}

#[test]
fn slurm_example_submits_itself_from_its_variables() {
    let dir = tempfile::tempdir().unwrap();
    let submit = |vars: &[(&str, &str)]| {
        let bin = fake_slurm(dir.path());
        let mut cmd = Command::new("bash");
        cmd.arg(common::root().join("examples/slurm/sdgen-array.sbatch")).args(["p.txt", "out"]);
        cmd.current_dir(dir.path());
        for name in CLEARED {
            cmd.env_remove(name);
        }
        cmd.env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let log = std::fs::read_to_string(dir.path().join("sbatch.log")).unwrap();
        std::fs::remove_file(dir.path().join("sbatch.log")).unwrap();
        log
    };
    let default = submit(&[]);
    assert!(default.starts_with("SHARDS=8 "), "{default}");
    for flag in ["--array=0-7", "--gres=gpu:1", "--cpus-per-task=8", "--mem=32G", "--time=04:00:00"] {
        assert!(default.contains(flag), "{flag}: {default}");
    }
    assert!(dir.path().join("logs").is_dir());
    let cpu = submit(&[("SHARDS", "4"), ("GPUS", "0"), ("CPUS", "2"), ("MEM", "4G"), ("PARTITION", "short")]);
    assert!(cpu.starts_with("SHARDS=4 "), "{cpu}");
    for flag in ["--array=0-3", "--cpus-per-task=2", "--mem=4G", "--partition=short"] {
        assert!(cpu.contains(flag), "{flag}: {cpu}");
    }
    assert!(!cpu.contains("--gres"), "{cpu}");
    let redo = submit(&[("SHARDS", "4"), ("TASKS", "2")]);
    assert!(redo.starts_with("SHARDS=4 ") && redo.contains("--array=2 "), "{redo}");
}

#[test]
fn kubernetes_job_comes_from_its_variables() {
    let script = common::root().join("examples/k8s/sdgen-indexed-job.sh");
    let render = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        for name in CLEARED {
            cmd.env_remove(name);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let default = render(&[]);
    for line in ["completions: 8", "value: \"8\"", "nvidia.com/gpu: 1", "- \"--steps=30\"", "- \"--json\""] {
        assert!(default.contains(line), "{line}:\n{default}");
    }
    let cpu = render(&[("SHARDS", "3"), ("GPUS", "0"), ("STEPS", "4"), ("SDGEN_ARGS", "--device cpu")]);
    for line in ["completions: 3", "value: \"3\"", "- \"--steps=4\"", "- \"--device\"", "- \"cpu\""] {
        assert!(cpu.contains(line), "{line}:\n{cpu}");
    }
    assert!(!cpu.contains("nvidia.com/gpu"), "{cpu}");
}
