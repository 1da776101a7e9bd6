//! The one conversion between what the model predicts (`prediction_type`) and what a sampler
//! works with (the clean sample x̂₀ or the noise ε̂), and its inverse, noising (`add_noise`).
//!
//! Every sampler describes its latents by a [`Noising`]: x = x₀ + σ·ε on a sigma ladder
//! (k-diffusion), or x = α·x₀ + σ·ε with α² + σ² = 1 (the ᾱ-based and DPM-Solver classes).
//! The operation order of each formula is diffusers' own, so float32 results match it.

use super::common::ClassConfig;
use crate::Result;
use tch::Tensor;

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    Sample,
    VPrediction,
}

/// How latents relate to the clean sample and the noise at one noise level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noising {
    /// x = x₀ + σ·ε: the sigma ladder of the k-diffusion samplers, σ in float32 as
    /// diffusers holds it. The model sees x / √(σ² + 1).
    Sigma(f32),
    /// x = α·x₀ + σ·ε with α² + σ² = 1 (variance preserving): α = √ᾱ_t for the ᾱ-based
    /// classes, α = 1/√(σ² + 1) for the DPM-Solver family's ladder value σ.
    Vp { alpha: f64, sigma: f64 },
}

impl Noising {
    /// The variance-preserving pair at ᾱ (float32 square roots, as diffusers' `ᾱ ** 0.5`).
    pub fn alpha_bar(alpha_cumprod: f32) -> Noising {
        Noising::Vp { alpha: f64::from(alpha_cumprod.sqrt()), sigma: f64::from((1.0 - alpha_cumprod).sqrt()) }
    }

    /// The variance-preserving pair at the ladder value σ in float32, as diffusers'
    /// `_sigma_to_alpha_sigma_t` does it on float32 tensors (`add_noise`).
    pub fn vp_from_sigma_f32(sigma: f32) -> Noising {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        Noising::Vp { alpha: f64::from(alpha), sigma: f64::from(sigma * alpha) }
    }

    /// The variance-preserving pair at the ladder value σ in f64 (the multistep solvers'
    /// scalar coefficients).
    pub fn vp_from_sigma(sigma: f64) -> Noising {
        let (alpha, sigma) = super::sigmas::alpha_sigma_t(sigma);
        Noising::Vp { alpha, sigma }
    }

    /// diffusers' `add_noise`: the clean `original` noised to this level with `noise`.
    pub fn add_noise(self, original: &Tensor, noise: &Tensor) -> Tensor {
        match self {
            Noising::Sigma(sigma) => original + noise * f64::from(sigma),
            Noising::Vp { alpha, sigma } => original * alpha + noise * sigma,
        }
    }
}

impl Prediction {
    /// The `prediction_type` value of a config (`epsilon`, `sample`, `v_prediction`).
    pub fn from_name(name: &str) -> Option<Prediction> {
        match name {
            "epsilon" => Some(Prediction::Epsilon),
            "sample" => Some(Prediction::Sample),
            "v_prediction" => Some(Prediction::VPrediction),
            _ => None,
        }
    }

    /// Reads `prediction_type`, accepting only the values this class implements.
    pub fn from_config(cfg: &ClassConfig, allowed: &[&str]) -> Result<Prediction> {
        Ok(match cfg.choice("prediction_type", allowed)?.as_str() {
            "epsilon" => Prediction::Epsilon,
            "sample" => Prediction::Sample,
            _ => Prediction::VPrediction,
        })
    }

    /// The clean sample x̂₀ from the model output at latents `sample`.
    pub fn x0(self, model_output: &Tensor, sample: &Tensor, at: Noising) -> Tensor {
        match (self, at) {
            (Prediction::Sample, _) => model_output.shallow_clone(),
            (Prediction::Epsilon, Noising::Sigma(sigma)) => sample - model_output * f64::from(sigma),
            (Prediction::VPrediction, Noising::Sigma(sigma)) => {
                // v is defined on the variance-preserving latents x / √(σ² + 1).
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                model_output * f64::from(c_out) + sample / f64::from(sigma * sigma + 1.0)
            }
            (Prediction::Epsilon, Noising::Vp { alpha, sigma }) => (sample - model_output * sigma) / alpha,
            (Prediction::VPrediction, Noising::Vp { alpha, sigma }) => sample * alpha - model_output * sigma,
        }
    }

    /// The noise ε̂ from the model output at latents `sample`.
    pub fn eps(self, model_output: &Tensor, sample: &Tensor, at: Noising) -> Tensor {
        match (self, at) {
            (Prediction::Epsilon, _) => model_output.shallow_clone(),
            (Prediction::Sample, Noising::Sigma(sigma)) => (sample - model_output) / f64::from(sigma),
            (Prediction::VPrediction, Noising::Sigma(sigma)) => {
                (sample - self.x0(model_output, sample, at)) / f64::from(sigma)
            }
            (Prediction::Sample, Noising::Vp { alpha, sigma }) => (sample - model_output * alpha) / sigma,
            (Prediction::VPrediction, Noising::Vp { alpha, sigma }) => model_output * alpha + sample * sigma,
        }
    }

    /// (x̂₀, ε̂) together.
    pub fn split(self, model_output: &Tensor, sample: &Tensor, at: Noising) -> (Tensor, Tensor) {
        (self.x0(model_output, sample, at), self.eps(model_output, sample, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Noising a known x₀ and ε, then converting the matching model output back, gives
    /// x₀ and ε again for every prediction type and both parameterisations.
    #[test]
    fn conversions_invert_noising() {
        let x0 = Tensor::from_slice(&[0.5f64, -1.25, 2.0]);
        let eps = Tensor::from_slice(&[-0.3f64, 0.7, 1.1]);
        let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-6;
        for at in [Noising::Sigma(2.5), Noising::vp_from_sigma(2.5), Noising::alpha_bar(0.3)] {
            let x = at.add_noise(&x0, &eps);
            let (alpha, sigma) = match at {
                Noising::Sigma(s) => {
                    let a = 1.0 / (f64::from(s) * f64::from(s) + 1.0).sqrt();
                    (a, f64::from(s) * a)
                }
                Noising::Vp { alpha, sigma } => (alpha, sigma),
            };
            let v = &eps * alpha - &x0 * sigma;
            for (p, out) in [
                (Prediction::Epsilon, eps.shallow_clone()),
                (Prediction::Sample, x0.shallow_clone()),
                (Prediction::VPrediction, v.shallow_clone()),
            ] {
                let (x0_hat, eps_hat) = p.split(&out, &x, at);
                assert!(close(&x0_hat, &x0), "{p:?} {at:?}: x0 {x0_hat:?}");
                assert!(close(&eps_hat, &eps), "{p:?} {at:?}: eps {eps_hat:?}");
            }
        }
    }
}
