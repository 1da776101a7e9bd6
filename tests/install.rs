//! `tools/install.sh PREFIX` gives a relocatable install: the binary and the libtorch
//! libraries it loads, found through its `$ORIGIN/../lib` rpath after the prefix is moved.

mod common;

use std::process::Command;

#[test]
fn installed_prefix_runs_after_a_move_without_ld_library_path() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("first");
    let status = Command::new("bash")
        .arg(common::root().join("tools/install.sh"))
        .arg(&prefix)
        .env("SDGEN_BIN", env!("CARGO_BIN_EXE_sdgen"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(prefix.join("bin/sdgen").is_file());
    assert!(prefix.join("lib/libtorch_cpu.so").is_file() && prefix.join("lib/libc10.so").is_file());

    let moved = dir.path().join("elsewhere/sdgen");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&prefix, &moved).unwrap();
    let out = Command::new(moved.join("bin/sdgen"))
        .args(["info", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The libtorch it was built against still exists here: only the path proves which loaded.
    let found = std::path::PathBuf::from(info["libtorch_path"].as_str().unwrap_or_else(|| panic!("{info}")));
    assert_eq!(found.canonicalize().unwrap(), moved.join("lib").canonicalize().unwrap());

    let text = Command::new(moved.join("bin/sdgen")).arg("info").env_remove("LD_LIBRARY_PATH").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("libtorch found in: {}", found.display())), "{text}");
}
