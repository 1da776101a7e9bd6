//! Previews while a job runs: the latents mapped straight to RGB with a fixed 4×3 matrix
//! (A1111's "Approx cheap"), which costs nothing next to a VAE decode and shows the
//! composition forming. One latent pixel becomes one image pixel (1/8 of the size).

use crate::plan::Arch;
use crate::request::Image;
use tch::{Device, Kind, Tensor};

/// How much each latent channel adds to R, G and B (A1111's `sd_vae_approx.cheap_approximation`).
const SD: [[f32; 3]; 4] =
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]];
const SDXL: [[f32; 3]; 4] =
    [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]];

/// A PNG preview of the first image of a `[batch, 4, h, w]` latent batch; `None` for other
/// latent shapes or when libtorch fails (a preview is never worth failing a job for).
pub fn png(latents: &Tensor, arch: Arch) -> Option<Vec<u8>> {
    let size = latents.size();
    if size.len() != 4 || size[1] != 4 || size[0] < 1 {
        return None;
    }
    let (h, w) = (usize::try_from(size[2]).ok()?, usize::try_from(size[3]).ok()?);
    let values: Vec<f32> = crate::error::catch_torch("preview", || {
        let first = latents.f_get(0)?.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        Ok(Vec::<f32>::try_from(first.f_view([-1i64])?)?)
    })
    .ok()?;
    let coefs = if arch == Arch::Sdxl { SDXL } else { SD };
    let plane = h * w;
    if values.len() != 4 * plane {
        return None;
    }
    let mut rgb = vec![0u8; plane * 3];
    for p in 0..plane {
        for (c, out) in rgb[p * 3..p * 3 + 3].iter_mut().enumerate() {
            let v: f32 = (0..4).map(|l| values[l * plane + p] * coefs[l][c]).sum();
            *out = (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    let image = Image { width: u32::try_from(w).ok()?, height: u32::try_from(h).ok()?, rgb };
    crate::output::encode_png(&image, &[]).ok()
}
