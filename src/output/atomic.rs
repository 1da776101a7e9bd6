//! The one way sdgen writes a whole file (PNGs from `generate` and `batch`, the licence notice,
//! the merged batch manifest): a file either appears complete under its final name or not at
//! all, with the usual permissions of a new file.
//!
//! The bytes go to a hidden temporary file in the destination folder, named
//! `.sdgen-tmp-[TAG-]XXXXXX.part` so that it can be recognised and cleaned up later; the file is
//! created with mode 0666 filtered by the umask (as any new file, so 0644 under umask 022),
//! written, fsynced, renamed into place and the folder fsynced. Without
//! [`OnExisting::Overwrite`] the rename refuses to replace a file (Linux `renameat2` with
//! `RENAME_NOREPLACE`, or a hard link where that is unsupported), so two processes writing the
//! same name cannot clobber each other.
//!
//! A process killed mid-write leaves its temporary file behind: [`remove_stale_temps`] removes
//! them on a later run, and a binary that handles SIGINT/SIGTERM can remove the ones in flight
//! with [`remove_in_flight_temps`] after opting in with [`track_in_flight_temps`]. Errors name
//! the destination, never the temporary file, and say what was being done.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::error::IoOp;
use crate::{Error, Result};

/// Every temporary file sdgen writes starts with this...
pub const TEMP_PREFIX: &str = ".sdgen-tmp-";
/// ...and ends with this.
pub const TEMP_SUFFIX: &str = ".part";
/// How many `-N` suffixes [`OnExisting::AddSuffix`] tries before giving up.
const MAX_SUFFIX: u32 = 100_000;

/// What to do when the target file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExisting {
    /// Refuse with an error; the existing file is left alone.
    Fail,
    /// Replace it (atomically: readers see the old file or the new one).
    Overwrite,
    /// Write `name-1.png`, `name-2.png`, ... instead: the first free one.
    AddSuffix,
}

/// Writes `bytes` to `path` atomically (see the module docs). The parent folder must exist.
/// Returns the path written, which differs from `path` only with [`OnExisting::AddSuffix`].
/// With [`OnExisting::Fail`], an existing file is an [`Error::Io`] whose source is of kind
/// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists) (see [`is_already_exists`]).
pub fn write_file(path: &Path, bytes: &[u8], on_existing: OnExisting) -> Result<PathBuf> {
    write_file_tagged(path, bytes, on_existing, None)
}

/// [`write_file`] with `tag` in the temporary file's name (`.sdgen-tmp-TAG-XXXXXX.part`), so
/// that [`remove_stale_temps`] with [`Stale::Tagged`] can find this writer's leftovers. A tag
/// must not be empty, and holds no `/`.
pub fn write_file_tagged(path: &Path, bytes: &[u8], on_existing: OnExisting, tag: Option<&str>) -> Result<PathBuf> {
    let write_err = |e: std::io::Error| Error::io_write(path, without_temp_path(e));
    if path.file_name().is_none() {
        return Err(Error::invalid(format!("{}: not a file name sdgen can write", path.display())));
    }
    let dir = parent_folder(path);
    let prefix = match tag {
        Some(tag) => format!("{TEMP_PREFIX}{tag}-"),
        None => TEMP_PREFIX.to_string(),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMP_SUFFIX);
    // tempfile makes private (0600) files; the result should get the usual permissions of a
    // new file, which 0666 filtered by the umask gives.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    // `NamedTempFile` deletes itself when dropped, which covers every early return below.
    let (mut tmp, _in_flight) = InFlight::create(|| builder.tempfile_in(dir))
        .map_err(|e| Error::io_write(path, explain_folder_error(dir, without_temp_path(e))))?;
    // Through the plain `File`: `NamedTempFile`'s own writes add the temporary path to errors.
    tmp.as_file_mut().write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;

    let mut n = 0;
    let final_path = loop {
        let target = if n == 0 { path.to_path_buf() } else { with_suffix(path, n) };
        let result = match on_existing {
            OnExisting::Overwrite => tmp.persist(&target).map(drop),
            OnExisting::Fail | OnExisting::AddSuffix => tmp.persist_noclobber(&target).map(drop),
        };
        match result {
            Ok(()) => break target,
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => match on_existing {
                OnExisting::AddSuffix if n < MAX_SUFFIX => {
                    tmp = e.file;
                    n += 1;
                }
                OnExisting::AddSuffix => {
                    return Err(Error::invalid(format!(
                        "{} and {MAX_SUFFIX} suffixed variants all exist; choose another name or folder",
                        path.display()
                    )))
                }
                _ => {
                    // Typed as an I/O error of kind AlreadyExists, so callers can tell it apart.
                    return Err(Error::io_write(
                        &target,
                        std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "it already exists; sdgen does not overwrite files unless asked to (--overwrite), \
                             or pick another name",
                        ),
                    ));
                }
            },
            Err(e) => return Err(Error::io_write(&target, without_temp_path(e.error))),
        }
    };
    sync_folder(dir).map_err(|e| Error::io_write(&final_path, e))?;
    Ok(final_path)
}

/// Whether `e` is [`write_file`] refusing to replace an existing file.
pub fn is_already_exists(e: &Error) -> bool {
    matches!(e, Error::Io { op: IoOp::Write, source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
}

/// Creates `dir` and its parents if missing. When a file stands where a folder is needed, the
/// error says which one.
pub fn create_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io_op(IoOp::CreateFolder, dir, explain_folder_error(dir, e)))
}

/// `dir/name.png` → `dir/name-N.png` (the suffix goes before the last extension).
pub fn with_suffix(path: &Path, n: u32) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    path.with_file_name(name)
}

/// tempfile adds "at path .sdgen-tmp-..." to some of its errors; users should not see the
/// temporary file's name, so keep only the OS error.
fn without_temp_path(e: std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => e,
    }
}

fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// "Not a directory" and "File exists" do not say which path is the file in the way: find it.
fn explain_folder_error(dir: &Path, e: std::io::Error) -> std::io::Error {
    let in_the_way = dir.ancestors().filter(|a| !a.as_os_str().is_empty()).find_map(|a| match std::fs::metadata(a) {
        Ok(m) if !m.is_dir() => Some(Some(a)),
        Ok(_) => Some(None),
        Err(_) => None,
    });
    match in_the_way {
        Some(Some(file)) => std::io::Error::new(e.kind(), format!("{} is a file, not a folder", file.display())),
        _ => e,
    }
}

/// Makes a rename durable: on Unix the folder's entry is only safe once the folder is synced.
/// File systems that cannot sync a folder (some network and FUSE ones) say so with EINVAL or
/// ENOTSUP; the file is complete and in place either way, so that is not an error.
fn sync_folder(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let Ok(d) = File::open(dir) else { return Ok(()) };
        if let Err(e) = d.sync_all() {
            let unsupported = matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTSUP))
                || e.kind() == std::io::ErrorKind::Unsupported;
            if !unsupported {
                return Err(e);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Which temporary files [`remove_stale_temps`] removes.
#[derive(Debug, Clone, Copy)]
pub enum Stale<'a> {
    /// Those written with this tag, whatever their age: the caller holds a lock that proves no
    /// live process writes with it (a batch shard's manifest lock).
    Tagged(&'a str),
    /// Any of sdgen's whose last change is before this time, such as the start of the current
    /// run. A file being written is changed continuously and renamed within moments, so one
    /// that has not changed since before the run started belongs to a process that died.
    OlderThan(SystemTime),
}

/// Removes sdgen's own leftover temporary files in `dir` (not in subfolders): names
/// `.sdgen-tmp-*.part`, and, with [`Stale::OlderThan`], also the `.NAME.png.tmp-XXXXXX` and
/// `.LICENSE-NOTICE.txt.tmp-XXXXXX` that versions before 0.2 wrote. Nothing else is touched. A
/// missing folder has none. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, which: Stale<'_>) -> Result<usize> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io_op(IoOp::ListFolder, dir, e)),
    };
    let mut removed = 0;
    for item in listing {
        let item = item.map_err(|e| Error::io_op(IoOp::ListFolder, dir, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let matches = match which {
            Stale::Tagged(tag) => {
                name.ends_with(TEMP_SUFFIX)
                    && name
                        .strip_prefix(TEMP_PREFIX)
                        .and_then(|r| r.strip_prefix(tag))
                        .is_some_and(|r| r.starts_with('-'))
            }
            Stale::OlderThan(time) => {
                is_temp_name(name) && item.metadata().and_then(|m| m.modified()).is_ok_and(|modified| modified < time)
            }
        };
        // A directory of that name is not ours.
        if !matches || !item.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(item.path()) {
            Ok(()) => removed += 1,
            // Another process cleaned it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_op(IoOp::Remove, item.path(), e)),
        }
    }
    Ok(removed)
}

/// Whether `name` is one of sdgen's temporary files: `.sdgen-tmp-*.part`, or a name of the
/// older writers, `.NAME.png.tmp-XXXXXX` and `.LICENSE-NOTICE.txt.tmp-XXXXXX` (six letters or
/// digits from tempfile).
pub fn is_temp_name(name: &str) -> bool {
    if name.starts_with(TEMP_PREFIX)
        && name.ends_with(TEMP_SUFFIX)
        && name.len() > TEMP_PREFIX.len() + TEMP_SUFFIX.len()
    {
        return true;
    }
    let Some(rest) = name.strip_prefix('.') else { return false };
    let Some((target, random)) = rest.rsplit_once(".tmp-") else { return false };
    let old_target =
        target.len() > ".png".len() && target.ends_with(".png") || target == super::license::NOTICE_FILE_NAME;
    old_target && random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether [`InFlight`] records temporary files; off unless the binary opts in.
static TRACKING: AtomicBool = AtomicBool::new(false);
/// The temporary files being written now, while [`TRACKING`] is on.
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Starts recording the temporary files being written, so that a signal handler can remove
/// them with [`remove_in_flight_temps`]. For binaries: a library user that does not call it
/// pays nothing and shares no state.
pub fn track_in_flight_temps() {
    TRACKING.store(true, Ordering::SeqCst);
}

/// Removes the temporary files being written right now (from another thread, say a signal
/// handler's, just before the process exits), then the [`TransientFile`]s alive (previews),
/// in that order so that a preview renamed into place meanwhile goes too. A writer that loses
/// its file this way fails with an error; none of its bytes reach the destination. Returns
/// how many were removed.
///
/// Both lists stay locked afterwards, so that no writer starts a temporary file or a preview
/// that nothing would remove: call it only when the process ends next.
pub fn remove_in_flight_temps() -> usize {
    let paths = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    let temps = paths.iter().filter(|p| std::fs::remove_file(p).is_ok()).count();
    let transient = TRANSIENT.lock().unwrap_or_else(|e| e.into_inner());
    let removed = temps + transient.iter().filter(|p| std::fs::remove_file(p).is_ok()).count();
    std::mem::forget((paths, transient));
    removed
}

/// The [`TransientFile`]s alive now, while [`TRACKING`] is on.
static TRANSIENT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A file that lives only while a run does, such as `NAME.preview.png` while image NAME forms:
/// each [`TransientFile::write`] replaces it atomically (readers see a whole old or new file),
/// and it is removed when this value is dropped, which covers a run that ends, fails or is
/// cancelled, and by [`remove_in_flight_temps`] when the process gets a signal (once the
/// binary opted in with [`track_in_flight_temps`]).
#[derive(Debug)]
pub struct TransientFile {
    path: PathBuf,
    written: bool,
    tracked: bool,
}

impl TransientFile {
    /// Nothing is written until [`TransientFile::write`]; the parent folder must exist then.
    pub fn new(path: impl Into<PathBuf>) -> TransientFile {
        let path = path.into();
        let tracked = TRACKING.load(Ordering::SeqCst);
        if tracked {
            TRANSIENT.lock().unwrap_or_else(|e| e.into_inner()).push(path.clone());
        }
        TransientFile { path, written: false, tracked }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's contents atomically (see [`write_file`]).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let written = write_file(&self.path, bytes, OnExisting::Overwrite);
        self.written |= written.is_ok();
        written.map(drop)
    }
}

impl Drop for TransientFile {
    fn drop(&mut self) {
        if self.tracked {
            let mut paths = TRANSIENT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = paths.iter().position(|p| *p == self.path) {
                paths.swap_remove(i);
            }
        }
        // Only a file this value wrote: one of that name that was there before is not ours.
        if self.written {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("could not remove {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// A temporary file's entry in [`IN_FLIGHT`], removed when dropped.
struct InFlight(Option<PathBuf>);

impl InFlight {
    /// Makes a temporary file with `make` and lists it, holding the list's lock throughout,
    /// so that [`remove_in_flight_temps`] never misses a temporary file that exists.
    fn create(
        make: impl FnOnce() -> std::io::Result<tempfile::NamedTempFile>,
    ) -> std::io::Result<(tempfile::NamedTempFile, InFlight)> {
        if !TRACKING.load(Ordering::SeqCst) {
            return make().map(|tmp| (tmp, InFlight(None)));
        }
        let mut paths = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = make()?;
        paths.push(tmp.path().to_path_buf());
        let entry = InFlight(Some(tmp.path().to_path_buf()));
        Ok((tmp, entry))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let mut paths = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = paths.iter().position(|p| p == path) {
                paths.swap_remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn transient_file_is_replaced_and_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.preview.png");
        let mut file = TransientFile::new(&path);
        assert!(!path.exists(), "nothing before the first write");
        file.write(b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        file.write(b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        drop(file);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn transient_file_never_written_leaves_an_existing_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.preview.png");
        fs::write(&path, b"someone else's").unwrap();
        drop(TransientFile::new(&path));
        assert_eq!(fs::read(&path).unwrap(), b"someone else's");
        // A write into a folder that is missing fails and removes nothing either.
        let mut missing = TransientFile::new(dir.path().join("no/such/c.png"));
        assert!(missing.write(b"x").is_err());
        drop(missing);
        assert_eq!(names(dir.path()), vec!["b.preview.png".to_string()]);
    }

    #[test]
    fn suffix_goes_before_extension() {
        assert_eq!(with_suffix(Path::new("out/a.png"), 3), PathBuf::from("out/a-3.png"));
        assert_eq!(with_suffix(Path::new("a"), 1), PathBuf::from("a-1"));
    }

    #[test]
    fn temp_names_are_recognised_and_nothing_else() {
        for ours in [
            ".sdgen-tmp-a1B2c3.part",
            ".sdgen-tmp-0-of-1-a1B2c3.part",
            ".00001-42-a cat.png.tmp-AbC123",
            ".LICENSE-NOTICE.txt.tmp-xYz789",
        ] {
            assert!(is_temp_name(ours), "{ours}");
        }
        for theirs in [
            "a.png",
            ".sdgen-tmp-.part",
            ".sdgen-tmp-abc",
            "sdgen-tmp-abc.part",
            ".notes.txt.tmp-abc123",
            ".a.png.tmp-abc12",
            ".a.png.tmp-abc12!",
            ".png.tmp-abc123",
            "x.png.tmp-abc123",
            ".hidden",
        ] {
            assert!(!is_temp_name(theirs), "{theirs}");
        }
    }

    #[test]
    fn writes_replace_or_refuse_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        assert_eq!(write_file(&path, b"one", OnExisting::Fail).unwrap(), path);
        let err = write_file(&path, b"two", OnExisting::Fail).unwrap_err();
        assert!(is_already_exists(&err), "{err}");
        let err = err.to_string();
        assert!(err.starts_with(&format!("cannot write {}: it already exists", path.display())), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(write_file(&path, b"three", OnExisting::AddSuffix).unwrap(), dir.path().join("a-1.png"));
        write_file(&path, b"four", OnExisting::Overwrite).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"four");
        assert_eq!(names(dir.path()), ["a-1.png", "a.png"]);
    }

    #[cfg(unix)]
    #[test]
    fn files_get_0666_less_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        write_file(&path, b"x", OnExisting::Fail).unwrap();
        // Read the umask without changing it for long: set and restore.
        let umask = unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old
        };
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !(umask as u32), "mode {mode:o} under umask {umask:o}");
    }

    #[test]
    fn errors_name_the_destination_and_what_was_done() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let target = file.join("a.png");
        let err = write_file(&target, b"x", OnExisting::Fail).unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot write {}: ", target.display())), "{err}");
        assert!(err.contains("is a file, not a folder"), "{err}");
        assert!(!err.contains(TEMP_PREFIX), "{err}");

        let err = create_folder(&file.join("sub")).unwrap_err().to_string();
        assert!(err.starts_with("cannot create the folder "), "{err}");
        assert!(err.contains(&format!("{} is a file, not a folder", file.display())), "{err}");
        let err = create_folder(&file).unwrap_err().to_string();
        assert!(err.contains("is a file, not a folder"), "{err}");
        assert_eq!(names(dir.path()), ["plain-file"]);
    }

    #[test]
    fn stale_temps_are_removed_by_tag_or_age_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        let old = |name: &str| {
            fs::write(d.join(name), b"x").unwrap();
            File::options().write(true).open(d.join(name)).unwrap().set_modified(hour_ago).unwrap();
        };
        old(".sdgen-tmp-0-of-2-aaaaaa.part");
        old(".sdgen-tmp-1-of-2-bbbbbb.part");
        old(".sdgen-tmp-cccccc.part");
        old(".x.png.tmp-dddddd");
        old(".hidden-user-file");
        old("user.png");
        fs::write(d.join(".sdgen-tmp-eeeeee.part"), b"being written now").unwrap();
        fs::create_dir(d.join(".sdgen-tmp-folder.part")).unwrap();

        assert_eq!(remove_stale_temps(d, Stale::Tagged("0-of-2")).unwrap(), 1);
        assert!(!d.join(".sdgen-tmp-0-of-2-aaaaaa.part").exists());
        let start = SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(remove_stale_temps(d, Stale::OlderThan(start)).unwrap(), 3);
        assert_eq!(names(d), [".hidden-user-file", ".sdgen-tmp-eeeeee.part", ".sdgen-tmp-folder.part", "user.png"]);
        assert_eq!(remove_stale_temps(&d.join("missing"), Stale::OlderThan(start)).unwrap(), 0);
    }

    #[test]
    fn in_flight_temps_are_listed_only_while_written() {
        // Not calling remove_in_flight_temps here: it would take other tests' files too.
        let dir = tempfile::tempdir().unwrap();
        track_in_flight_temps();
        let (file, entry) = InFlight::create(|| tempfile::Builder::new().tempfile_in(dir.path())).unwrap();
        let tmp = file.path().to_path_buf();
        assert!(IN_FLIGHT.lock().unwrap().contains(&tmp));
        drop(entry);
        assert!(!IN_FLIGHT.lock().unwrap().contains(&tmp));
    }
}
