//! sha256 of weight files, for the "Model hash" in image metadata.
//!
//! Hashing a multi-GB checkpoint takes seconds, so results are cached in
//! `$XDG_CACHE_HOME/sdgen/hashes.json` (or `~/.cache/...`), keyed by canonical path, size and
//! modification time. A cache that can't be read or written is ignored.

use crate::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sdgen").join("hashes.json"))
}

fn cache_key(path: &Path) -> Option<String> {
    let canon = path.canonicalize().ok()?;
    let meta = std::fs::metadata(&canon).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(format!("{}|{}|{}", canon.display(), meta.len(), mtime))
}

/// The full lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Like [`sha256_file`], remembered across runs while the file is unchanged.
pub fn sha256_file_cached(path: &Path) -> Result<String> {
    let (Some(cache), Some(key)) = (cache_file(), cache_key(path)) else { return sha256_file(path) };
    let mut map: BTreeMap<String, String> =
        std::fs::read_to_string(&cache).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    if let Some(h) = map.get(&key) {
        return Ok(h.clone());
    }
    let hash = sha256_file(path)?;
    map.insert(key, hash.clone());
    if let Some(dir) = cache.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
                use std::io::Write;
                if tmp.write_all(serde_json::to_string(&map).unwrap_or_default().as_bytes()).is_ok() {
                    let _ = tmp.persist(&cache);
                }
            }
        }
    }
    Ok(hash)
}
