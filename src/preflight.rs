//! Checks that run before a model is loaded: everything that can be known from the command
//! line, the output folder and the model's small config files, so that a mistake costs a
//! second instead of a model load and a render.
//!
//! - the output folder: not a file, and writable (or creatable);
//! - the output name template: valid, inside the output folder, a different name for every
//!   image of the run, and no existing file in the way (unless overwriting);
//! - `clip_skip` against the text encoder's layer count from `text_encoder/config.json`.

use crate::output::{NameFields, Template};
use crate::{Error, Request, Result};
use std::path::Path;

/// Refuses an output folder that is a file (or lies below one), or that cannot be written:
/// the folder itself when it exists, else the nearest folder above it that does.
pub fn check_output_dir(out: &Path) -> Result<()> {
    let mut probe = out;
    loop {
        match std::fs::metadata(probe) {
            Ok(meta) if meta.is_dir() => return check_writable(probe, out),
            Ok(_) if probe == out => {
                return Err(Error::invalid(format!(
                    "cannot create the folder {0}: {0} is a file, not a folder; pass --out with a folder",
                    out.display()
                )))
            }
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "the output folder {} cannot be created: {} is a file",
                    out.display(),
                    probe.display()
                )))
            }
            // Missing, or below a file (ENOTDIR): look at the folder above.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {}
            Err(e) => {
                return Err(Error::invalid(format!("the output folder {} cannot be used: {e}", out.display())));
            }
        }
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            // A relative path whose first component is missing: the working directory.
            _ => return check_writable(Path::new("."), out),
        }
    }
}

#[cfg(unix)]
fn check_writable(dir: &Path, out: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return Ok(()) };
    // SAFETY: `c` is a valid NUL-terminated path; access() only reads it. It reports EROFS
    // for read-only mounts as well as missing permissions, without creating anything.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    let what = if dir == out { String::new() } else { format!(" (it would be created in {})", dir.display()) };
    Err(Error::invalid(format!("the output folder {} is not writable{what}: {e}", out.display())))
}

#[cfg(not(unix))]
fn check_writable(_: &Path, _: &Path) -> Result<()> {
    Ok(())
}

/// Checks the names a run of `req.num_images` images will get from `template` (`None`: the
/// default, which never collides): the template must parse, must not give two images the same
/// name, and, unless `overwrite`, must not name an existing file.
pub fn check_names(out: &Path, template: Option<&str>, req: &Request, overwrite: bool) -> Result<()> {
    let Some(source) = template else { return Ok(()) };
    let template = Template::parse(source)?;
    let timestamp = crate::output::naming::timestamp_now();
    let name = |i: usize| {
        template.render(&NameFields { index: i, seed: req.image_seed(i), prompt: &req.prompt, timestamp: &timestamp })
    };
    // Placeholders that differ between images ({index}, {seed}) differ for every pair, so
    // images 0 and 1 collide exactly when all of them do.
    if req.num_images > 1 && name(0)? == name(1)? {
        return Err(Error::invalid(format!(
            "output name template {source:?} gives every image the same name ({}), but {} images were asked for; \
             add {{index}} or {{seed}} to it",
            name(0)?.display(),
            req.num_images
        )));
    }
    if !overwrite {
        // Bounded: the limits keep num_images small unless lifted.
        for i in 0..req.num_images.min(10_000) {
            let path = out.join(name(i)?);
            if path.exists() {
                return Err(Error::invalid(format!(
                    "{} already exists; pass --overwrite to replace it, or choose another --name",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a `clip_skip` outside `1..=layers`.
pub fn check_clip_skip(clip_skip: Option<usize>, layers: usize) -> Result<()> {
    match clip_skip {
        Some(skip) if skip == 0 || skip > layers => Err(Error::invalid(format!(
            "clip skip {skip} is out of range: this text encoder has {layers} layers, so use 1..={layers}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dir_that_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_output_dir(dir.path()).is_ok());
        assert!(check_output_dir(&dir.path().join("new/deeper")).is_ok());
        let e = check_output_dir(&file).unwrap_err().to_string();
        assert!(e.contains("is a file, not a folder"), "{e}");
        let e = check_output_dir(&file.join("sub")).unwrap_err().to_string();
        assert!(e.contains("is a file"), "{e}");
    }

    #[test]
    fn names_that_collide_or_escape() {
        let dir = tempfile::tempdir().unwrap();
        let req = Request { num_images: 2, prompt: "a cat".into(), ..Request::default() };
        let e = check_names(dir.path(), Some("fixed"), &req, false).unwrap_err().to_string();
        assert!(e.contains("same name") && e.contains("{index}"), "{e}");
        assert!(check_names(dir.path(), Some("fixed"), &Request { num_images: 1, ..req.clone() }, false).is_ok());
        assert!(check_names(dir.path(), Some("{prompt}-{seed}"), &req, false).is_ok());
        assert!(check_names(dir.path(), None, &req, false).is_ok());
        for bad in ["../x", "/abs", "{bogus}"] {
            assert!(check_names(dir.path(), Some(bad), &req, false).is_err(), "{bad}");
        }
        std::fs::write(dir.path().join("taken.png"), b"x").unwrap();
        let one = Request { num_images: 1, ..req };
        let e = check_names(dir.path(), Some("taken"), &one, false).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--overwrite"), "{e}");
        assert!(check_names(dir.path(), Some("taken"), &one, true).is_ok());
    }

    #[test]
    fn clip_skip_range() {
        assert!(check_clip_skip(None, 12).is_ok());
        assert!(check_clip_skip(Some(12), 12).is_ok());
        assert!(check_clip_skip(Some(99), 12).unwrap_err().to_string().contains("1..=12"));
        assert!(check_clip_skip(Some(0), 12).is_err());
    }
}
