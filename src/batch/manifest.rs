//! The per-shard manifests that make a batch resumable, and crash-safe PNG writes.
//!
//! Order of a finished image: PNG to a temp file in the output folder, fsync, rename into place,
//! fsync the folder; only then one manifest line, appended with a single `write` on an
//! `O_APPEND` file and fsynced. A crash therefore leaves at worst a stray temp file (removed by
//! the next run of that shard), a PNG without a record (redone; the same bytes are kept), or a
//! torn last manifest line (ignored on read; the next writer starts a fresh line after it).
//!
//! Each shard writes only its own `manifest-shard-<i>-of-<n>.jsonl` and holds an exclusive lock
//! on it while running, so two processes never append to one file and a second process on the
//! same shard stops with a clear error. Readers take no lock: they read every shard's manifest
//! and tolerate a line that is being written.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Shard;
use crate::error::IoOp;
use crate::output::atomic::{self, OnExisting, Stale};
use crate::{Error, Result};

pub(crate) const MANIFEST_PREFIX: &str = "manifest-shard-";
/// The file [`merge`](super::merge) writes.
pub(crate) const MERGED_NAME: &str = "manifest.jsonl";

/// How an image attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestStatus {
    Ok,
    Failed,
}

/// One manifest line: one attempt at one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// 1-based line number in the input file.
    pub line: usize,
    /// The line's entry index.
    pub index: usize,
    /// Which image of the line, `0..num_images`.
    pub image: usize,
    /// The image's own seed.
    pub seed: u64,
    /// The output file name inside the output folder.
    pub file: String,
    /// Fingerprint of the image's request (see [`Job::key`](super::Job::key)); a record only
    /// counts for a job with the same key, so editing a line redoes it.
    pub key: String,
    pub status: ManifestStatus,
    /// Hex sha256 of the PNG file (ok only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the PNG file in bytes (ok only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Rendering time: the group's time divided by the number of images in the group.
    pub duration_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The shard that wrote it, `i/n`.
    pub shard: String,
    /// When the record was written, RFC 3339 UTC.
    pub finished: String,
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every record of every shard's manifest in a folder.
#[derive(Debug, Default)]
pub(crate) struct ManifestSet {
    pub entries: Vec<ManifestEntry>,
    /// The manifest file names read, sorted.
    pub files: Vec<String>,
    /// Lines that did not parse: a torn last line after a crash, or damage.
    pub unreadable_lines: usize,
}

/// Reads all `manifest-shard-*.jsonl` in `dir`; a missing folder has none.
pub(crate) fn read_all(dir: &Path) -> Result<ManifestSet> {
    let mut set = ManifestSet::default();
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(set),
        Err(e) => return Err(Error::io_op(IoOp::ListFolder, dir, e)),
    };
    for item in listing {
        let item = item.map_err(|e| Error::io_op(IoOp::ListFolder, dir, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with(MANIFEST_PREFIX) && name.ends_with(".jsonl") {
            set.files.push(name);
        }
    }
    set.files.sort();
    for name in &set.files {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        // Split on bytes: a torn line may end inside a UTF-8 sequence.
        for raw in bytes.split(|b| *b == b'\n') {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<ManifestEntry>(raw) {
                Ok(entry) => set.entries.push(entry),
                Err(_) => set.unreadable_lines += 1,
            }
        }
    }
    Ok(set)
}

/// The shard counts of the non-empty shard manifests in `dir`, with one file name for each;
/// a missing folder has none. An empty manifest is only a run that stopped before its first
/// image, and says nothing about how the file is split.
pub(crate) fn shard_counts(dir: &Path) -> Result<Vec<(usize, String)>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        // Nothing there, or a file in the way: no manifests; creating the folder says why.
        Err(_) if !dir.is_dir() => return Ok(Vec::new()),
        Err(e) => return Err(Error::io_op(IoOp::ListFolder, dir, e)),
    };
    let mut counts: Vec<(usize, String)> = Vec::new();
    for item in listing {
        let item = item.map_err(|e| Error::io_op(IoOp::ListFolder, dir, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(count) = name
            .strip_prefix(MANIFEST_PREFIX)
            .and_then(|rest| rest.strip_suffix(".jsonl"))
            .and_then(|rest| rest.split_once("-of-"))
            .and_then(|(_, n)| n.parse::<usize>().ok())
        else {
            continue;
        };
        if item.metadata().is_ok_and(|m| m.len() > 0) && !counts.iter().any(|(c, _)| *c == count) {
            counts.push((count, name));
        }
    }
    counts.sort();
    Ok(counts)
}

/// A shard's manifest, open for appending and locked for as long as it lives.
#[derive(Debug)]
pub(crate) struct ManifestWriter {
    file: File,
    path: PathBuf,
}

impl ManifestWriter {
    /// Opens (creating) and locks the shard's manifest in `dir`.
    pub fn open(dir: &Path, shard: Shard) -> Result<ManifestWriter> {
        let path = dir.join(shard.manifest_name());
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::io_write(&path, e))?;
        // A lock can be held for a moment by a process that is starting another program (a
        // forked child keeps the descriptor until it execs), so contention is retried briefly.
        // fs4's lock is flock(2) on Unix, as fs2's was, so older sdgen versions still exclude.
        // Called through the trait: std's own `File::try_lock` is newer than the MSRV.
        let mut attempt = fs4::FileExt::try_lock(&file);
        for _ in 0..20 {
            match &attempt {
                Err(fs4::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    attempt = fs4::FileExt::try_lock(&file);
                }
                _ => break,
            }
        }
        match attempt {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(Error::invalid(format!(
                    "another sdgen batch is working on shard {shard} in {}; wait for it to finish, or run a \
                     different shard",
                    dir.display()
                )));
            }
            Err(fs4::TryLockError::Error(e)) => {
                return Err(Error::invalid(format!(
                    "cannot lock {}: {e} (the file system may not support locks; use a local or NFSv4 folder)",
                    path.display()
                )));
            }
        }
        // A crash mid-append leaves a line without its newline: end it, so that the next record
        // starts on a line of its own and only the torn one is unreadable.
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1)).and_then(|_| file.read_exact(&mut last)).map_err(|e| Error::io(&path, e))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").and_then(|_| file.sync_all()).map_err(|e| Error::io_write(&path, e))?;
            }
        }
        Ok(ManifestWriter { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one `write` of one line, then fsyncs.
    pub fn append(&mut self, entry: &ManifestEntry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| Error::invalid(format!("cannot encode a manifest record for {}: {e}", entry.file)))?;
        line.push(b'\n');
        let written = self.file.write(&line).map_err(|e| Error::io_write(&self.path, e))?;
        if written != line.len() {
            return Err(Error::io_write(
                &self.path,
                std::io::Error::new(std::io::ErrorKind::WriteZero, "short write (is the disk full?)"),
            ));
        }
        self.file.sync_all().map_err(|e| Error::io_write(&self.path, e))
    }
}

/// Writes `bytes` to `dir/name` with the [atomic writer](crate::output::atomic), its temporary
/// file tagged with the shard (see [`remove_stale_temps`]).
pub(crate) fn write_atomically(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    shard: Shard,
    on_existing: OnExisting,
) -> Result<PathBuf> {
    atomic::write_file_tagged(&dir.join(name), bytes, on_existing, Some(&temp_tag(shard)))
}

/// Temp files carry their shard so that a run removes only its own shard's leftovers: another
/// shard's temp files may belong to a process that is still running.
fn temp_tag(shard: Shard) -> String {
    format!("{}-of-{}", shard.index, shard.count)
}

/// Removes temp files a killed run of `shard` left in `dir`. Call it only while holding the
/// shard's lock. Returns how many it removed.
pub(crate) fn remove_stale_temps(dir: &Path, shard: Shard) -> Result<usize> {
    atomic::remove_stale_temps(dir, Stale::Tagged(&temp_tag(shard)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str) -> ManifestEntry {
        ManifestEntry {
            line: 1,
            index: 0,
            image: 0,
            seed: 7,
            file: file.into(),
            key: "k".into(),
            status: ManifestStatus::Ok,
            sha256: Some(sha256_hex(b"x")),
            bytes: Some(1),
            duration_s: 0.5,
            error: None,
            shard: "0/1".into(),
            finished: "2025-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn sha256_of_abc() {
        // FIPS 180-2 appendix B.1.
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn torn_last_line_is_ignored_and_the_next_record_starts_a_new_line() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let shard = Shard::ALL;
        {
            let mut w = ManifestWriter::open(dir.path(), shard)?;
            w.append(&entry("a.png"))?;
        }
        // Simulate a crash in the middle of the second record's write.
        let path = dir.path().join(shard.manifest_name());
        let full = serde_json::to_string(&entry("b.png")).unwrap_or_default();
        let mut f = OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        f.write_all(&full.as_bytes()[..full.len() / 2]).map_err(|e| Error::io(&path, e))?;
        drop(f);

        let set = read_all(dir.path())?;
        assert_eq!(set.entries.iter().map(|e| e.file.as_str()).collect::<Vec<_>>(), ["a.png"]);
        assert_eq!(set.unreadable_lines, 1);

        let mut w = ManifestWriter::open(dir.path(), shard)?;
        w.append(&entry("c.png"))?;
        drop(w);
        let set = read_all(dir.path())?;
        assert_eq!(set.entries.iter().map(|e| e.file.as_str()).collect::<Vec<_>>(), ["a.png", "c.png"]);
        assert_eq!(set.unreadable_lines, 1);
        Ok(())
    }

    #[test]
    fn second_writer_on_the_same_shard_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let shard = Shard { index: 1, count: 3 };
        let _held = ManifestWriter::open(dir.path(), shard)?;
        let message = ManifestWriter::open(dir.path(), shard).map(|_| ()).unwrap_err().to_string();
        assert!(message.contains("another sdgen batch is working on shard 1/3 in"), "{message}");
        // Other shards are free.
        ManifestWriter::open(dir.path(), Shard { index: 2, count: 3 })?;
        Ok(())
    }

    #[test]
    fn atomic_write_leaves_no_temp_and_stale_temps_are_removed_per_shard() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let mine = Shard { index: 0, count: 2 };
        let other = Shard { index: 1, count: 2 };
        write_atomically(dir.path(), "x.png", b"png", mine, OnExisting::Fail)?;
        let names = |d: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(dir.path()), ["x.png"]);
        std::fs::write(dir.path().join(format!(".sdgen-tmp-{}-abc123.part", temp_tag(mine))), b"")
            .map_err(|e| Error::io("temp", e))?;
        std::fs::write(dir.path().join(format!(".sdgen-tmp-{}-abc123.part", temp_tag(other))), b"")
            .map_err(|e| Error::io("temp", e))?;
        assert_eq!(remove_stale_temps(dir.path(), mine)?, 1);
        assert_eq!(names(dir.path()), [format!(".sdgen-tmp-{}-abc123.part", temp_tag(other)), "x.png".to_string()]);
        Ok(())
    }
}
