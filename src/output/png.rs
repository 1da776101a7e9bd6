//! PNG files: 8-bit RGB with text chunks, written through the [atomic writer](super::atomic),
//! and the text chunks read back.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

pub use super::atomic::{with_suffix, OnExisting};
use crate::{Error, Image, Result};

/// Writes `image` as an 8-bit RGB PNG at `path` with the text chunks `text` (key, value), in
/// that order, before the image data. Values that are all Latin-1 go in `tEXt` chunks, any
/// other in UTF-8 `iTXt` chunks, so nothing is ever lost. The parent folder must exist.
/// Returns the path written, which differs from `path` only with [`OnExisting::AddSuffix`].
pub fn write_png(path: &Path, image: &Image, text: &[(&str, &str)], on_existing: OnExisting) -> Result<PathBuf> {
    // Encoded in memory first, so that a failure while writing the file is an I/O error
    // about the file and not an encoding error.
    let bytes = encode_png(image, text)?;
    super::atomic::write_file(path, &bytes, on_existing)
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
    fn image_size_is_checked() {
        let bad = Image { width: 2, height: 2, rgb: vec![0; 11] };
        assert!(check_image(&bad).is_err());
        let empty = Image { width: 0, height: 2, rgb: vec![] };
        assert!(check_image(&empty).is_err());
        assert!(check_image(&Image { width: 2, height: 2, rgb: vec![0; 12] }).is_ok());
    }
}
