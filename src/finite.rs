//! The NaN guard: a NaN or an infinity anywhere in the pipeline ends as an all-black image,
//! written with exit 0 unless something looks. The pipeline calls [`check_with`] after each
//! component (text encoder, denoising loop, VAE decoder), so the error names the first one
//! that produced non-finite values: damaged weights, an fp16 overflow, a scheduler bug.
//!
//! `--allow-nan` ([`crate::limits::Limits::allow_non_finite`]) turns the error into a warning
//! (once per component per pipeline) and the image is written as it comes out.

use crate::{Error, Result};
use std::cell::Cell;
use tch::Tensor;

/// The pipeline's components, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The prompt embeddings.
    TextEncoder,
    /// The latents after the last step: the UNet and the scheduler.
    DenoisingLoop,
    /// The decoded image.
    VaeDecoder,
    /// img2img's latents of the init image.
    VaeEncoder,
}

impl Component {
    fn describe(self) -> &'static str {
        match self {
            Component::TextEncoder => "the text encoder produced non-finite prompt embeddings",
            Component::DenoisingLoop => "the denoising loop (UNet and scheduler) produced non-finite latents",
            Component::VaeDecoder => "the VAE decoder produced a non-finite image from finite latents",
            Component::VaeEncoder => "the VAE encoder produced non-finite latents from the init image",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Whether every element of `t` is finite.
pub fn is_finite(t: &Tensor) -> Result<bool> {
    Ok(bool::try_from(t.f_isfinite()?.f_all()?)?)
}

/// Errors if `t`, the output of `component`, holds a NaN or an infinity, unless `allow`
/// (`--allow-nan`): then it warns, once per component for each `warned` set of flags (a
/// pipeline keeps one).
pub fn check_with(t: &Tensor, component: Component, allow: bool, warned: &Cell<u8>) -> Result<()> {
    if is_finite(t)? {
        return Ok(());
    }
    let what = component.describe();
    if allow {
        if warned.get() & component.bit() == 0 {
            warned.set(warned.get() | component.bit());
            log::warn!("{what} (NaN or infinity); the image will be black or damaged (--allow-nan)");
        }
        return Ok(());
    }
    Err(Error::Model(format!(
        "{what} (NaN or infinity), so the image would be black; the weights may be damaged, or the dtype \
         overflows (try --dtype fp32). Nothing was written; pass --allow-nan to write such images anyway"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_component_and_the_flag() {
        let ok = Tensor::from_slice(&[1.0f32, 2.0]);
        assert!(check_with(&ok, Component::TextEncoder, false, &Cell::new(0)).is_ok());
        let bad = Tensor::from_slice(&[1.0f32, f32::NAN]);
        let e = check_with(&bad, Component::DenoisingLoop, false, &Cell::new(0)).unwrap_err().to_string();
        assert!(e.contains("denoising loop") && e.contains("--allow-nan"), "{e}");
        let inf = Tensor::from_slice(&[f32::INFINITY]);
        assert!(check_with(&inf, Component::VaeDecoder, false, &Cell::new(0))
            .unwrap_err()
            .to_string()
            .contains("VAE decoder"));
        assert!(check_with(&bad, Component::VaeDecoder, true, &Cell::new(0)).is_ok());
    }
}
