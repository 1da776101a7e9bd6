//! Sane limits on what one request may ask for, in one place.
//!
//! A typo (`--steps 1000000000`) or a hostile batch line (`"num_images": 1000000000`) must be
//! a clear error before anything is allocated, not an abort deep inside an allocation or
//! libtorch. The defaults are far above anything Stable Diffusion 1.x/2.x is used for:
//!
//! | limit                | default      | raised with      |
//! |----------------------|--------------|------------------|
//! | steps                | 1000         | `--max-steps N`  |
//! | images per request   | 1000         | `--max-images N` |
//! | pixels per image     | 4096 × 4096  | `--max-pixels N` |
//! | width or height      | 8192         | `--max-side N`   |
//!
//! `--no-limits` lifts them all. 1000 steps is also the number of training timesteps of
//! every SD scheduler config, so more steps only repeat timesteps. A side limit exists on
//! top of the pixel limit because a 100000×64 image has few pixels but a latent 12500 wide,
//! which runs for hours.
//!
//! The limits are a value, not process state: the command line builds one from its flags and
//! hands it to the pipeline (`LoadOptions::limits`), to batch validation (`Defaults::limits`)
//! and to [`crate::pipeline::check_request`], so `--from` records and batch lines meet the
//! same ones. A server can give each caller its own.
//!
//! Memory: [`check_memory`] compares a cheap estimate of the largest activations of a
//! request with the memory the system says is available (Linux, CPU runs), so a size that
//! cannot fit is refused before minutes of denoising end in an allocation failure.

use crate::{Error, Request, Result};

/// The limits a request is checked against. See the module documentation for the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most denoising steps (`--max-steps`).
    pub max_steps: usize,
    /// Most images one request (or one batch line) may make (`--max-images`).
    pub max_images: usize,
    /// Most pixels (width × height) in one image (`--max-pixels`).
    pub max_pixels: u64,
    /// Largest width or height (`--max-side`).
    pub max_side: u32,
    /// Refuse a size whose estimated memory use exceeds the memory available.
    pub check_memory: bool,
    /// Write images even when a component produced NaN or infinite values (`--allow-nan`);
    /// they come out black. See [`crate::finite`].
    pub allow_non_finite: bool,
}

/// Default for [`Limits::max_steps`].
pub const MAX_STEPS: usize = 1000;
/// Default for [`Limits::max_images`].
pub const MAX_IMAGES: usize = 1000;
/// Default for [`Limits::max_pixels`]: 4096².
pub const MAX_PIXELS: u64 = 4096 * 4096;
/// Default for [`Limits::max_side`].
pub const MAX_SIDE: u32 = 8192;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: MAX_STEPS,
            max_images: MAX_IMAGES,
            max_pixels: MAX_PIXELS,
            max_side: MAX_SIDE,
            check_memory: true,
            allow_non_finite: false,
        }
    }
}

impl Limits {
    /// No limits at all (`--no-limits`); the NaN check stays as it was.
    pub fn none() -> Limits {
        Limits {
            max_steps: usize::MAX,
            max_images: usize::MAX,
            max_pixels: u64::MAX,
            max_side: u32::MAX,
            check_memory: false,
            ..Limits::default()
        }
    }

    /// Checks a request's steps, image count and size. Each error names the value, the limit
    /// and the flag that raises it.
    pub fn check(&self, req: &Request) -> Result<()> {
        self.check_values(req.steps, req.num_images, req.width, req.height).map_err(Error::invalid)
    }

    /// [`Limits::check`] on plain values, with the message as a string (for batch lines,
    /// which collect every problem of a line).
    pub fn check_values(
        &self,
        steps: usize,
        num_images: usize,
        width: u32,
        height: u32,
    ) -> std::result::Result<(), String> {
        if steps > self.max_steps {
            return Err(too_many("steps", steps as u64, self.max_steps as u64, "--max-steps"));
        }
        if num_images > self.max_images {
            return Err(too_many("num_images", num_images as u64, self.max_images as u64, "--max-images"));
        }
        for (what, v) in [("width", width), ("height", height)] {
            if v > self.max_side {
                return Err(too_many(what, v as u64, self.max_side as u64, "--max-side"));
            }
        }
        let pixels = width as u64 * height as u64;
        if pixels > self.max_pixels {
            return Err(format!(
                "{width}×{height} is {pixels} pixels, more than the limit of {} ({}); pass --max-pixels N to \
                 raise it, or --no-limits",
                self.max_pixels,
                side_hint(self.max_pixels)
            ));
        }
        Ok(())
    }
}

fn too_many(what: &str, value: u64, limit: u64, flag: &str) -> String {
    format!("{what} {value} is more than the limit of {limit}; pass {flag} N to raise it, or --no-limits")
}

/// "4096×4096" for a square pixel limit, else "about N megapixels".
fn side_hint(pixels: u64) -> String {
    let side = (pixels as f64).sqrt() as u64;
    if side * side == pixels {
        format!("{side}×{side}")
    } else {
        format!("about {:.1} megapixels", pixels as f64 / 1e6)
    }
}

/// What the memory estimate needs to know about the model and the run.
#[derive(Debug, Clone, Copy)]
pub struct MemoryModel {
    /// Bytes per element of the VAE's activations (4 for fp32, 2 for fp16/bf16).
    pub vae_elem_bytes: u64,
    /// Channels of the VAE decoder's two highest-resolution stages: `block_out_channels[0]`
    /// and `[1]` (128 and 256 for SD's VAE).
    pub vae_channels: (u64, u64),
    /// Decoding in tiles: the decoder then never holds the whole image.
    pub tiled: bool,
}

/// A rough estimate, in bytes, of the memory one image of `width`×`height` needs at its peak,
/// the VAE decode: at full resolution the decoder holds upsampled tensors, convolution outputs
/// and residual blocks' tensors at once. The UNet works at 1/64 of the pixels and computes
/// attention without the full attention matrix, so the decoder dominates. The factor is
/// measured: the tiny test model's peak memory grew by 1.5 KB a pixel from 512² to 1024² in
/// fp32, four times its two top channel counts in elements (SD's VAE: 6 KB a pixel).
pub fn estimate_peak_bytes(width: u32, height: u32, images: usize, m: &MemoryModel) -> u64 {
    let pixels = if m.tiled {
        // Tiles of 512 pixels (plus overlap); the whole image lives only as 8-bit output.
        (width.min(768) as u64) * (height.min(768) as u64)
    } else {
        width as u64 * height as u64
    };
    let per_pixel = 4 * (m.vae_channels.1 + m.vae_channels.0);
    pixels.saturating_mul(per_pixel).saturating_mul(m.vae_elem_bytes).saturating_mul(images.max(1) as u64)
}

/// [`check_memory`] for one image of `req` on a pipeline (callers may make a request's images
/// one at a time, so its `num_images` is not multiplied in). Only CPU runs are checked: GPU
/// memory is not cheap to query here.
pub fn check_decode_memory(
    req: &Request,
    vae: &crate::models::VaeConfig,
    device: tch::Device,
    kind: tch::Kind,
    tiled: bool,
) -> Result<()> {
    if device != tch::Device::Cpu {
        return Ok(());
    }
    let channel = |i: usize| vae.block_out_channels.get(i).or(vae.block_out_channels.last()).copied().unwrap_or(0);
    let m = MemoryModel {
        vae_elem_bytes: kind.elt_size_in_bytes() as u64,
        vae_channels: (channel(0).max(0) as u64, channel(1).max(0) as u64),
        tiled,
    };
    check_memory(req.width, req.height, 1, &m)
}

/// The memory the system reports as available for new allocations (`MemAvailable` in
/// `/proc/meminfo`), or `None` where that is not known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a CPU run whose estimated peak memory exceeds the available memory (when the
/// system says how much is available).
pub fn check_memory(width: u32, height: u32, images: usize, m: &MemoryModel) -> Result<()> {
    let Some(available) = available_memory() else { return Ok(()) };
    check_memory_against(width, height, images, m, available)
}

/// [`check_memory`] against a given amount of available memory.
pub fn check_memory_against(width: u32, height: u32, images: usize, m: &MemoryModel, available: u64) -> Result<()> {
    let need = estimate_peak_bytes(width, height, images, m);
    if need <= available {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
    let tiling = if m.tiled { "" } else { " pass --vae-tiling (decodes in tiles)," };
    Err(Error::invalid(format!(
        "a {width}×{height} image needs about {:.1} GiB of memory to decode, but only {:.1} GiB is available;\
         {tiling} choose a smaller size, or pass --no-limits to try anyway",
        gb(need),
        gb(available)
    )))
}

/// Runs projected to take longer than this get a note after their first step.
const SLOW_RUN: std::time::Duration = std::time::Duration::from_secs(60);

/// After the first step of a run of `images` images of `steps` steps took `first_step`
/// (prompt encoding included): a note of how long the run will take when that is over a
/// minute, so an allowed but slow size says so at once, progress bar or not.
pub fn slow_notice(first_step: std::time::Duration, steps: usize, images: usize) -> Option<String> {
    let total = first_step.saturating_mul(steps.saturating_mul(images).min(u32::MAX as usize) as u32);
    if total <= SLOW_RUN {
        return None;
    }
    let minutes = total.as_secs_f64() / 60.0;
    Some(format!(
        "note: the first step took {:.1} s, so {steps} steps × {images} image(s) will take about {minutes:.0} min",
        first_step.as_secs_f64()
    ))
}

/// The start of a long untrusted text for messages: its first `words` words, then how many
/// more there are, so a 10,000-word prompt does not echo 87 KB back.
pub fn excerpt(text: &str, words: usize) -> String {
    let total = text.split_whitespace().count();
    if total <= words && text.len() <= 400 {
        return text.to_string();
    }
    let mut shown: String = text.split_whitespace().take(words).collect::<Vec<_>>().join(" ");
    if shown.len() > 400 {
        let mut cut = 400;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
    }
    let rest = total.saturating_sub(words.min(total));
    format!("\"{shown}…\" ({total} words in all, {rest} more not shown)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(steps: usize, num_images: usize, width: u32, height: u32) -> Request {
        Request { steps, num_images, width, height, ..Request::default() }
    }

    #[test]
    fn defaults_accept_ordinary_requests() {
        let l = Limits::default();
        assert!(l.check(&Request::default()).is_ok());
        assert!(l.check(&req(1000, 1000, 4096, 4096)).is_ok());
        assert!(l.check(&req(20, 1, 8192, 512)).is_ok());
    }

    #[test]
    fn errors_name_value_limit_and_flag() {
        let l = Limits::default();
        for (r, parts) in [
            (req(1_000_000_000, 1, 512, 512), ["steps 1000000000", "1000", "--max-steps"]),
            (req(20, 1_000_000_000, 512, 512), ["num_images 1000000000", "1000", "--max-images"]),
            (req(20, 1, 100_000, 100_000), ["width 100000", "8192", "--max-side"]),
            (req(20, 1, 100_000, 64), ["width 100000", "8192", "--max-side"]),
            (req(20, 1, 8192, 8192), ["8192×8192", "4096×4096", "--max-pixels"]),
        ] {
            let e = l.check(&r).unwrap_err().to_string();
            for p in parts {
                assert!(e.contains(p), "{e:?} lacks {p:?}");
            }
            assert!(e.contains("--no-limits"), "{e}");
            assert!(Limits::none().check(&r).is_ok());
        }
    }

    #[test]
    fn memory_estimate_refuses_what_cannot_fit() {
        let sd = MemoryModel { vae_elem_bytes: 4, vae_channels: (128, 256), tiled: false };
        // SD's VAE at 512² in fp32: 6 KB a pixel, 1.5 GiB.
        assert_eq!(estimate_peak_bytes(512, 512, 1, &sd), 512 * 512 * 1536 * 4);
        assert!(check_memory_against(512, 512, 1, &sd, 4 << 30).is_ok());
        let e = check_memory_against(2048, 2048, 1, &sd, 16 << 30).unwrap_err().to_string();
        assert!(e.contains("GiB") && e.contains("--vae-tiling"), "{e}");
        let tiled = MemoryModel { tiled: true, ..sd };
        assert!(check_memory_against(4096, 4096, 1, &tiled, 4 << 30).is_ok());
    }

    #[test]
    fn slow_runs_are_announced() {
        use std::time::Duration;
        assert_eq!(slow_notice(Duration::from_millis(100), 20, 1), None);
        let note = slow_notice(Duration::from_secs(30), 20, 2).unwrap();
        assert!(note.contains("30.0 s") && note.contains("about 20 min"), "{note}");
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("a short cut", 12), "a short cut");
        let long = "word ".repeat(10_000);
        let e = excerpt(&long, 12);
        assert!(e.len() < 200, "{e}");
        assert!(e.contains("10000 words") && e.contains("9988 more"), "{e}");
        let one = "x".repeat(100_000);
        assert!(excerpt(&one, 12).len() < 500);
    }
}
