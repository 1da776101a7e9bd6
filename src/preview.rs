//! Previews of images while they form: a step's latents turned into RGB images cheaply enough
//! to do every few steps, for the step callback ([`crate::pipeline::Progress::latents`]), the
//! CLI's `--preview` files and the server's progress image.
//!
//! Two methods ([`PreviewMethod`]):
//! - **cheap**, A1111's "Approx cheap" (`sd_vae_approx.cheap_approximation`): each latent
//!   pixel becomes one image pixel through a fixed 4×3 matrix (one for SD 1.x/2.x, one for
//!   SDXL), so the preview is 1/8 of the image's size, as A1111 shows it. No model, no weights.
//! - **tiny**: a tiny autoencoder (TAESD, TAESDXL) decodes the latents to a full-size image
//!   with a few small convolutions.
//!
//! Both read the latents as the denoising loop holds them, multiplied by the VAE's scaling
//! factor: A1111 fit the cheap matrices on those latents, and TAESD's scaling factor is 1.0,
//! so it decodes them as they are. RGB values in [-1, 1] become 8-bit pixels as the full
//! decode's do (`x / 2 + 0.5`, clamped, × 255, rounded).

use crate::models::TinyVae;
use crate::plan::Arch;
use crate::request::Image;
use crate::{Error, Result};
use tch::{Device, Kind, Tensor};

/// How much each latent channel adds to R, G and B: A1111's `cheap_approximation` for
/// SD 1.x/2.x latents (fit by Keturn on the 0.18215-scaled latents of SD 1.x's VAE).
pub const CHEAP_SD: [[f32; 3]; 4] =
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]];

/// The same for SDXL latents (its VAE, scaled by 0.13025).
pub const CHEAP_SDXL: [[f32; 3]; 4] =
    [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]];

/// How previews are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewMethod {
    /// A1111's "Approx cheap": a fixed latent → RGB matrix, 1/8 of the image's size.
    Cheap,
    /// A tiny autoencoder's decode, full size.
    Tiny,
}

/// Turns latents into preview images. A [`crate::Pipeline`] holds one (cheap, for its
/// architecture, until [`crate::Pipeline::set_previewer`] says otherwise); build one yourself
/// to make previews apart from a pipeline.
pub struct Previewer {
    inner: Inner,
}

enum Inner {
    Cheap(&'static [[f32; 3]; 4]),
    Tiny(Box<TinyVae>),
}

impl std::fmt::Debug for Previewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Previewer").field("method", &self.method()).finish()
    }
}

impl Previewer {
    /// A1111's "Approx cheap" with the matrix for `arch`'s latents.
    pub fn cheap(arch: Arch) -> Previewer {
        let coefs = match arch {
            Arch::Sdxl => &CHEAP_SDXL,
            _ => &CHEAP_SD,
        };
        Previewer { inner: Inner::Cheap(coefs) }
    }

    /// Decodes previews with a tiny autoencoder (on its device, in its dtype), at full size.
    /// It must be made for the model's latents: TAESD for SD 1.x/2.x, TAESDXL for SDXL (they
    /// have the same shapes, so only their names tell them apart).
    pub fn tiny(vae: TinyVae) -> Previewer {
        Previewer { inner: Inner::Tiny(Box::new(vae)) }
    }

    pub fn method(&self) -> PreviewMethod {
        match self.inner {
            Inner::Cheap(_) => PreviewMethod::Cheap,
            Inner::Tiny(_) => PreviewMethod::Tiny,
        }
    }

    /// One preview per batch row of `latents` (`[batch, channels, h, w]`, as the loop holds
    /// them, on any device and in any dtype). The cheap method needs 4 latent channels.
    pub fn preview(&self, latents: &Tensor) -> Result<Vec<Image>> {
        crate::error::catch_torch("making a preview", || {
            let _guard = tch::no_grad_guard();
            let size = latents.size();
            if size.len() != 4 || size[0] < 1 {
                return Err(Error::invalid(format!(
                    "previews take latents of shape [batch, channels, height, width], not {size:?}"
                )));
            }
            match self.inner {
                Inner::Cheap(coefs) => {
                    if size[1] != 4 {
                        return Err(Error::invalid(format!(
                            "cheap previews map 4 latent channels to RGB; these latents have {}: give a tiny \
                             autoencoder made for this model instead",
                            size[1]
                        )));
                    }
                    let matrix = Tensor::from_slice(coefs.as_flattened()).view([4, 3]);
                    let x = latents.detach().to_device(Device::Cpu).to_kind(Kind::Float);
                    // [b, 4, h, w] → [b, h, w, 4] · [4, 3] → [b, h, w, 3], already pixel order.
                    images_hwc(&x.permute([0, 2, 3, 1]).matmul(&matrix))
                }
                Inner::Tiny(ref vae) => {
                    let c = &vae.config;
                    if size[1] != c.latent_channels {
                        return Err(Error::invalid(format!(
                            "the tiny autoencoder from {} decodes {} latent channels; these latents have {}",
                            c.path.display(),
                            c.latent_channels,
                            size[1]
                        )));
                    }
                    // As diffusers' pipelines decode: latents / scaling_factor (1 for TAESD).
                    let z = latents.detach().to_device(vae.device()).to_kind(vae.kind()) / c.scaling_factor;
                    images_hwc(&vae.decode(&z).to_device(Device::Cpu).permute([0, 2, 3, 1]))
                }
            }
        })
    }
}

/// `[b, h, w, 3]` values in [-1, 1] → 8-bit images, as the full decode rounds them.
fn images_hwc(x: &Tensor) -> Result<Vec<Image>> {
    let u8s = ((x.to_kind(Kind::Float) / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).contiguous();
    let (b, h, w, _) = u8s.size4()?;
    let flat = Vec::<u8>::try_from(u8s.view([-1]))?;
    let per = (h * w * 3) as usize;
    let (width, height) = (u32::try_from(w), u32::try_from(h));
    let (Ok(width), Ok(height)) = (width, height) else {
        return Err(Error::invalid("a preview's size does not fit in 32 bits"));
    };
    Ok(flat.chunks_exact(per.max(1)).take(b as usize).map(|rgb| Image { width, height, rgb: rgb.to_vec() }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Latents `[b, 4, h, w]` from channel-major values.
    fn latents(b: i64, h: i64, w: i64, values: &[f32]) -> Tensor {
        Tensor::from_slice(values).view([b, 4, h, w])
    }

    #[test]
    fn cheap_sd_pixel_by_hand() {
        // One latent pixel (0.5, -0.25, 1.0, 0.1): R = 0.5·0.298 − 0.25·0.187 − 1.0·0.158 − 0.1·0.184
        // = −0.07415 → (−0.07415/2 + 0.5)·255 = 118.05 → 118; G = 0.1939 → 152.22 → 152;
        // B = 0.27745 → 162.87 → 163 (by hand, and the same from A1111's einsum in Python).
        let images = Previewer::cheap(Arch::Sd1).preview(&latents(1, 1, 1, &[0.5, -0.25, 1.0, 0.1])).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!((images[0].width, images[0].height), (1, 1));
        assert_eq!(images[0].rgb, vec![118, 152, 163]);
    }

    #[test]
    fn cheap_sdxl_uses_its_own_matrix() {
        // (1, 0, 0, 0) is the first row: 0.3448, 0.4168, 0.4395 → 171.46, 180.64, 183.54.
        let images = Previewer::cheap(Arch::Sdxl).preview(&latents(1, 1, 1, &[1.0, 0.0, 0.0, 0.0])).unwrap();
        assert_eq!(images[0].rgb, vec![171, 181, 184]);
        let sd = Previewer::cheap(Arch::Sd2).preview(&latents(1, 1, 1, &[1.0, 0.0, 0.0, 0.0])).unwrap();
        assert_eq!(sd[0].rgb, vec![165, 154, 154]);
    }

    #[test]
    fn cheap_keeps_pixel_order_rows_and_clamps() {
        // 2 rows of 2×3 latents; pixel (y, x) of row r has channel values that differ per
        // position, so a transposed or mixed-up layout gives other pixels.
        let (b, h, w) = (2i64, 2i64, 3i64);
        let n = (b * 4 * h * w) as usize;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
        let images = Previewer::cheap(Arch::Sd1).preview(&latents(b, h, w, &values)).unwrap();
        assert_eq!(images.len(), 2);
        for (r, image) in images.iter().enumerate() {
            assert_eq!((image.width, image.height), (3, 2));
            for y in 0..h as usize {
                for x in 0..w as usize {
                    for c in 0..3 {
                        let v: f64 = CHEAP_SD
                            .iter()
                            .enumerate()
                            .map(|(l, row)| {
                                let i = ((r * 4 + l) * h as usize + y) * w as usize + x;
                                values[i] as f64 * row[c] as f64
                            })
                            .sum();
                        let expected = ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round();
                        let got = image.rgb[(y * w as usize + x) * 3 + c] as f64;
                        // A sum within float rounding of a .5 boundary may round either way.
                        assert!((got - expected).abs() <= 1.0, "row {r} ({y}, {x}) channel {c}: {got} vs {expected}");
                    }
                }
            }
        }
        let saturated = Previewer::cheap(Arch::Sd1).preview(&latents(1, 1, 1, &[9.0, 9.0, 9.0, -9.0])).unwrap();
        assert_eq!(saturated[0].rgb, vec![255, 255, 255]);
        let dark = Previewer::cheap(Arch::Sd1).preview(&latents(1, 1, 1, &[-9.0, -9.0, -9.0, 9.0])).unwrap();
        assert_eq!(dark[0].rgb, vec![0, 0, 0]);
    }

    #[test]
    fn cheap_takes_half_precision_latents() {
        let x = latents(1, 1, 1, &[0.5, -0.25, 1.0, 0.1]).to_kind(Kind::Half);
        let images = Previewer::cheap(Arch::Sd1).preview(&x).unwrap();
        for (got, want) in images[0].rgb.iter().zip([118u8, 152, 163]) {
            // fp16 holds these inputs to 3 decimal digits: at most one step off.
            assert!(got.abs_diff(want) <= 1, "{:?}", images[0].rgb);
        }
    }

    #[test]
    fn wrong_shapes_are_errors_that_say_so() {
        let p = Previewer::cheap(Arch::Sd1);
        let e = p.preview(&Tensor::zeros([1, 16, 2, 2], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
        assert!(e.contains("4 latent channels") && e.contains("16"), "{e}");
        let e = p.preview(&Tensor::zeros([4, 2, 2], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
        assert!(e.contains("[batch, channels, height, width]"), "{e}");
    }
}
