//! PNG files: 8-bit RGB with text chunks, written atomically, and the text chunks read back.
//!
//! A file either appears complete under its final name or not at all: it is written to a
//! hidden temporary file in the same folder, synced, then renamed into place. Without
//! [`OnExisting::Overwrite`] the rename refuses to replace a file (Linux `renameat2` with
//! `RENAME_NOREPLACE`, or a hard link where that is unsupported), so two processes writing
//! the same name cannot clobber each other.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Image, Result};

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

/// Writes `image` as an 8-bit RGB PNG at `path` with the text chunks `text` (key, value), in
/// that order, before the image data. Values that are all Latin-1 go in `tEXt` chunks, any
/// other in UTF-8 `iTXt` chunks, so nothing is ever lost. The parent folder must exist.
/// Returns the path written, which differs from `path` only with [`OnExisting::AddSuffix`].
pub fn write_png(path: &Path, image: &Image, text: &[(&str, &str)], on_existing: OnExisting) -> Result<PathBuf> {
    check_image(image)?;
    for (key, _) in text {
        check_keyword(key)?;
    }
    write_atomic(path, on_existing, |file| encode(file, image, text))
}

/// Writes a file by calling `fill` on a temporary file in the same folder, syncing it and
/// renaming it to `path`. The temporary file is removed on any error.
pub(crate) fn write_atomic(
    path: &Path,
    on_existing: OnExisting,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
) -> Result<PathBuf> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(Error::invalid(format!("{}: not a file name sdgen can write", path.display())));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let prefix = format!(".{name}.tmp-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    // Temporary files are private (0600) by default; the result should get the usual
    // permissions of a new file, which 0666 filtered by the umask gives.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    // `NamedTempFile` deletes itself when dropped, which covers every early return below.
    let tmp = builder.tempfile_in(dir).map_err(|e| {
        Error::invalid(format!(
            "cannot write into the output folder {}: {e} (check that it exists, is a folder and is writable)",
            dir.display()
        ))
    })?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        fill(&mut w)?;
        w.flush().map_err(|e| write_error(tmp.path(), e))?;
    }
    tmp.as_file().sync_all().map_err(|e| write_error(tmp.path(), e))?;

    let mut tmp = tmp;
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
                    return Err(Error::invalid(format!(
                        "{} already exists; sdgen does not overwrite files unless asked to (--overwrite), \
                         or pick another name",
                        target.display()
                    )))
                }
            },
            Err(e) => return Err(write_error(&target, e.error)),
        }
    };
    // Make the rename itself durable. Some filesystems cannot sync a directory; the file is
    // complete and in place either way, so a failure here is not worth failing the write.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(final_path)
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

fn write_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("cannot write {}: {e}", path.display()))
}

fn check_image(image: &Image) -> Result<()> {
    let expected = u64::from(image.width) * u64::from(image.height) * 3;
    if image.width == 0 || image.height == 0 {
        return Err(Error::invalid(format!("cannot write an empty {}x{} image", image.width, image.height)));
    }
    if image.rgb.len() as u64 != expected {
        return Err(Error::invalid(format!(
            "image buffer holds {} bytes but a {}x{} RGB image needs {expected}",
            image.rgb.len(),
            image.width,
            image.height
        )));
    }
    Ok(())
}

/// PNG keywords: 1–79 Latin-1 characters, printable, no leading, trailing or double spaces.
fn check_keyword(key: &str) -> Result<()> {
    let printable = key.chars().all(|c| matches!(c as u32, 0x20..=0x7e | 0xa1..=0xff));
    let len = key.chars().count();
    if !(1..=79).contains(&len) || !printable || key.starts_with(' ') || key.ends_with(' ') || key.contains("  ") {
        return Err(Error::invalid(format!(
            "{key:?} is not a valid PNG text keyword (1-79 printable Latin-1 characters, single inner spaces)"
        )));
    }
    Ok(())
}

/// True when `text` can be stored in a `tEXt` chunk without loss: every character is
/// Latin-1. NUL is excluded because the PNG spec forbids it in `tEXt` text.
pub fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| matches!(c as u32, 1..=0xff))
}

/// The bytes of the PNG that [`write_png`] would write, for callers that store it themselves.
pub fn encode_png(image: &Image, text: &[(&str, &str)]) -> Result<Vec<u8>> {
    check_image(image)?;
    for (key, _) in text {
        check_keyword(key)?;
    }
    let mut out = Vec::new();
    encode(&mut out, image, text)?;
    Ok(out)
}

fn encode<W: Write>(w: W, image: &Image, text: &[(&str, &str)]) -> Result<()> {
    let png_err = |e: png::EncodingError| Error::invalid(format!("cannot encode the PNG: {e}"));
    let mut encoder = png::Encoder::new(w, image.width, image.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_err)?;
    // Written by hand, not through the encoder's Info, so the chunks keep the caller's order
    // whatever their type.
    for (key, value) in text {
        if is_latin1(value) {
            writer.write_text_chunk(&png::text_metadata::TEXtChunk::new(*key, *value)).map_err(png_err)?;
        } else {
            writer.write_text_chunk(&png::text_metadata::ITXtChunk::new(*key, *value)).map_err(png_err)?;
        }
    }
    writer.write_image_data(&image.rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)
}

/// All text chunks of a PNG as (key, text): `tEXt` first, then `zTXt`, then `iTXt`, each in
/// file order, compressed ones decompressed. Chunks after the image data are included; the
/// image itself is never decoded (see [`super::png_text`]).
pub fn read_text_chunks(path: &Path) -> Result<Vec<(String, String)>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    super::png_text::read_text_chunks_from(BufReader::new(file), &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_detection() {
        assert!(is_latin1("plain ascii, with: punctuation\n"));
        assert!(is_latin1("café ÿ"));
        assert!(!is_latin1("猫"));
        assert!(!is_latin1("€"));
        assert!(!is_latin1("nul\0"));
    }

    #[test]
    fn keywords() {
        assert!(check_keyword("parameters").is_ok());
        assert!(check_keyword("").is_err());
        assert!(check_keyword(" lead").is_err());
        assert!(check_keyword("two  spaces").is_err());
        assert!(check_keyword(&"k".repeat(80)).is_err());
        assert!(check_keyword("猫").is_err());
    }

    #[test]
    fn suffix_goes_before_extension() {
        assert_eq!(with_suffix(Path::new("out/a.png"), 3), PathBuf::from("out/a-3.png"));
        assert_eq!(with_suffix(Path::new("a"), 1), PathBuf::from("a-1"));
    }

    #[test]
    fn image_size_is_checked() {
        let bad = Image { width: 2, height: 2, rgb: vec![0; 11] };
        assert!(check_image(&bad).is_err());
        let empty = Image { width: 0, height: 2, rgb: vec![] };
        assert!(check_image(&empty).is_err());
        assert!(check_image(&Image { width: 2, height: 2, rgb: vec![0; 12] }).is_ok());
    }
}
