//! Images a run starts from: img2img's init image and inpainting's mask.
//!
//! An [`InputImage`] is what a request records (path, sha256, size), so `--from` can find
//! the same file again and tell when it changed; the decoded pixels travel with it when the
//! caller already has them. The tensors are made as diffusers' `VaeImageProcessor` makes
//! them: the image resized to the run's size (Lanczos; diffusers uses PIL's, so a resized
//! input agrees to rounding, not bit for bit), scaled to [-1, 1]; the mask converted to grey
//! with PIL's integer weights, resized, scaled to [0, 1] and binarized at 0.5 (white =
//! repaint).

use crate::request::Image;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The largest side an input image may have; larger files are refused before decoding.
pub const MAX_INPUT_SIDE: u32 = 16384;

/// An image a request starts from, as recorded: where it was read, its sha256 and size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputImage {
    /// The file it was read from (or a label such as `upload` for images given in memory).
    pub path: PathBuf,
    /// sha256 of the file's bytes (of the RGB pixels for images given in memory).
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    /// The decoded pixels, when already read; records carry none and read the file again.
    #[serde(skip)]
    pixels: Option<Arc<Image>>,
}

impl PartialEq for InputImage {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.sha256 == other.sha256
            && (self.width, self.height) == (other.width, other.height)
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes image file bytes to RGB (alpha dropped, grey expanded), refusing sizes over
/// [`MAX_INPUT_SIDE`] before allocating.
fn decode(path: &Path, bytes: &[u8], what: &str) -> Result<Image> {
    let not_image = |e: &dyn std::fmt::Display| {
        Error::invalid(format!("{what} {} is not an image sdgen can read (PNG, JPEG or WebP): {e}", path.display()))
    };
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| not_image(&e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(2 << 30);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| not_image(&e))?.to_rgb8();
    let (width, height) = img.dimensions();
    if width == 0 || height == 0 {
        return Err(Error::invalid(format!("{what} {} has no pixels", path.display())));
    }
    Ok(Image { width, height, rgb: img.into_raw() })
}

/// Decodes image bytes given in memory (a server upload), with the same size limits as files.
pub fn decode_bytes(bytes: &[u8], what: &str) -> Result<Image> {
    decode(Path::new("(upload)"), bytes, what)
}

impl InputImage {
    /// Reads and decodes an image file (`what` names it in messages: "init image", "mask").
    /// `keep` holds the pixels in memory; otherwise they are read again when needed.
    pub fn open(path: &Path, what: &str, keep: bool) -> Result<InputImage> {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(path)
            .map_err(|e| Error::invalid(format!("cannot read the {what} {}: {e}", path.display())))?;
        let image = decode(path, &bytes, what)?;
        Ok(InputImage {
            path: path.to_path_buf(),
            sha256: hex(&Sha256::digest(&bytes)),
            width: image.width,
            height: image.height,
            pixels: keep.then(|| Arc::new(image)),
        })
    }

    /// An image already in memory (a server upload, a library caller's pixels), recorded
    /// under `label` with the sha256 of its pixels.
    pub fn from_image(label: &str, image: Image) -> Result<InputImage> {
        use sha2::{Digest, Sha256};
        if image.width == 0 || image.height == 0 || image.rgb.len() != (image.width * image.height * 3) as usize {
            return Err(Error::invalid(format!(
                "{label}: {}x{} pixels with {} bytes is not an RGB image",
                image.width,
                image.height,
                image.rgb.len()
            )));
        }
        Ok(InputImage {
            path: PathBuf::from(label),
            sha256: hex(&Sha256::digest(&image.rgb)),
            width: image.width,
            height: image.height,
            pixels: Some(Arc::new(image)),
        })
    }

    /// The pixels: those held, or the file read again, which must still be the file that
    /// was recorded.
    pub fn pixels(&self, what: &str) -> Result<Arc<Image>> {
        if let Some(p) = &self.pixels {
            return Ok(p.clone());
        }
        if !self.path.is_file() {
            return Err(Error::invalid(format!(
                "the {what} {} is missing; the run needs that file (sha256 {}), or give another with the option \
                 that sets the {what}",
                self.path.display(),
                self.sha256
            )));
        }
        let again = InputImage::open(&self.path, what, true)?;
        if again.sha256 != self.sha256 {
            return Err(Error::invalid(format!(
                "the {what} {} has changed since it was recorded (sha256 {} now, {} then); give it explicitly to \
                 use the new file",
                self.path.display(),
                again.sha256,
                self.sha256
            )));
        }
        again.pixels.ok_or_else(|| Error::Model("decoded image was not kept".into()))
    }
}

/// The checks on a request's init image, mask and strength that need no model: a mask or a
/// strength needs an init image, and the strength is in (0, 1].
pub fn check_request(req: &crate::Request) -> std::result::Result<(), String> {
    if req.init_image.is_none() {
        if req.mask.is_some() {
            return Err("a mask needs an init image to repaint: give --init-image (batch key init_image) too".into());
        }
        if let Some(s) = req.strength {
            return Err(format!(
                "strength {s} applies to an init image, and none was given: add --init-image (batch key init_image)"
            ));
        }
        return Ok(());
    }
    match req.strength {
        Some(s) if s > 0.0 && s <= 1.0 => Ok(()),
        Some(s) => Err(format!(
            "strength {s} is out of range: it must be above 0 and at most 1 (1 = ignore the init image's \
             content entirely, small = stay close to it)"
        )),
        None => Err("an init image needs a strength (0 < strength ≤ 1)".into()),
    }
}

/// img2img's first step, as diffusers' `get_timesteps`: `strength × steps` steps run (rounded
/// down), the last ones of the schedule. Returns `t_start`, the first inference step that
/// runs, or an error when the strength is so low that none would.
pub fn start_step(steps: usize, strength: f64) -> Result<usize> {
    // Python's int(steps * strength) on a float: truncation.
    let run = ((steps as f64 * strength) as usize).min(steps);
    if run == 0 {
        return Err(Error::invalid(format!(
            "strength {strength} with {steps} steps runs no step ({steps} × {strength} rounds down to 0); raise \
             --strength or --steps so that their product is at least 1"
        )));
    }
    Ok(steps - run)
}

/// `image` resized to `width`×`height` with a Lanczos filter (unchanged when it already is).
fn resized(image: &Image, width: u32, height: u32) -> Result<Vec<u8>> {
    if (image.width, image.height) == (width, height) {
        return Ok(image.rgb.clone());
    }
    let buf = image::RgbImage::from_raw(image.width, image.height, image.rgb.clone())
        .ok_or_else(|| Error::invalid("image buffer does not match its size"))?;
    Ok(image::imageops::resize(&buf, width, height, image::imageops::FilterType::Lanczos3).into_raw())
}

/// The init image as the VAE encodes it: `[1, 3, height, width]` float32 in [-1, 1].
pub fn image_tensor(image: &Image, width: u32, height: u32) -> Result<Tensor> {
    let rgb = resized(image, width, height)?;
    let t = Tensor::from_slice(&rgb).view([i64::from(height), i64::from(width), 3]).permute([2, 0, 1]).unsqueeze(0);
    Ok(t.to_kind(Kind::Float) / 255.0 * 2.0 - 1.0)
}

/// The mask as diffusers' mask processor makes it: grey (PIL's `convert("L")` weights),
/// resized, in [0, 1], binarized at 0.5: `[1, 1, height, width]` float32 of 0 (keep) and 1
/// (repaint).
pub fn mask_tensor(mask: &Image, width: u32, height: u32) -> Result<Tensor> {
    let grey: Vec<u8> = mask
        .rgb
        .chunks_exact(3)
        .map(|p| {
            // PIL's ITU-R 601-2 luma in fixed point, rounded.
            let l = (u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16;
            l.min(255) as u8
        })
        .collect();
    let grey = if (mask.width, mask.height) == (width, height) {
        grey
    } else {
        let buf = image::GrayImage::from_raw(mask.width, mask.height, grey)
            .ok_or_else(|| Error::invalid("mask buffer does not match its size"))?;
        image::imageops::resize(&buf, width, height, image::imageops::FilterType::Lanczos3).into_raw()
    };
    let t = Tensor::from_slice(&grey).view([1, 1, i64::from(height), i64::from(width)]).to_kind(Kind::Float) / 255.0;
    Ok(t.ge(0.5).to_kind(Kind::Float))
}

/// The mask at latent size, as diffusers' `prepare_mask_latents` makes it (nearest-neighbour
/// interpolation), on `device` in `kind`.
pub fn latent_mask(mask: &Tensor, latent_h: i64, latent_w: i64, device: Device, kind: Kind) -> Tensor {
    mask.upsample_nearest2d([latent_h, latent_w], None, None).to_device(device).to_kind(kind)
}

/// Whether a mask's aspect differs from the image's by more than a pixel's worth, which
/// diffusers resizes through without a word.
pub fn aspect_differs(image: (u32, u32), mask: (u32, u32)) -> bool {
    let (iw, ih) = (f64::from(image.0), f64::from(image.1));
    let (mw, mh) = (f64::from(mask.0), f64::from(mask.1));
    ((iw / ih) - (mw / mh)).abs() > (1.0 / ih.min(mh)).max(0.01)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_grey_and_binarize_as_pil() {
        // PIL: L = (19595 R + 38470 G + 7471 B + 32768) >> 16.
        let img = Image { width: 3, height: 1, rgb: vec![255, 255, 255, 128, 128, 128, 127, 127, 127] };
        let m = mask_tensor(&img, 3, 1).unwrap();
        assert_eq!(Vec::<f32>::try_from(m.view([-1])).unwrap(), [1.0, 1.0, 0.0]);
        let red = Image { width: 1, height: 1, rgb: vec![255, 0, 0] };
        // 76/255 < 0.5: keep.
        assert_eq!(Vec::<f32>::try_from(mask_tensor(&red, 1, 1).unwrap().view([-1])).unwrap(), [0.0]);
    }

    #[test]
    fn image_tensor_spans_minus_one_to_one() {
        let img = Image { width: 1, height: 1, rgb: vec![0, 255, 51] };
        let t = image_tensor(&img, 1, 1).unwrap();
        assert_eq!(t.size(), [1, 3, 1, 1]);
        let v = Vec::<f32>::try_from(t.view([-1])).unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[1], 1.0);
        assert!((v[2] - (0.2 * 2.0 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn aspect() {
        assert!(!aspect_differs((64, 96), (32, 48)));
        assert!(aspect_differs((64, 96), (40, 40)));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        std::fs::write(&p, b"not an image").unwrap();
        let e = InputImage::open(&p, "init image", true).unwrap_err().to_string();
        assert!(e.contains("init image") && e.contains("not an image"), "{e}");
        let e = InputImage::open(&dir.path().join("none.png"), "mask", true).unwrap_err().to_string();
        assert!(e.contains("cannot read the mask"), "{e}");
    }
}
