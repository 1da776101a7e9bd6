//! Linear multistep (order 4) on the sigma ladder (k-diffusion's `sample_lms`), as
//! diffusers' `LMSDiscreteScheduler`.
//!
//! diffusers integrates each Lagrange basis polynomial over [σ_i, σ_{i+1}] with
//! `scipy.integrate.quad`; the integrand is a polynomial of degree < 4, so a 3-point
//! Gauss–Legendre rule (exact up to degree 5) gives the same coefficient to rounding.

use super::common::{apply_schedule, base_defaults, ClassConfig, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::sigmas::Ladder;
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::Result;
use serde_json::{json, Value};
use std::collections::VecDeque;
use tch::Tensor;

pub const CLASS: &str = "LMSDiscreteScheduler";
const ORDER: usize = 4;

pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    d.extend([
        ("use_karras_sigmas", json!(false)),
        ("use_exponential_sigmas", json!(false)),
        ("use_beta_sigmas", json!(false)),
        ("prediction_type", json!("epsilon")),
        ("timestep_spacing", json!("linspace")),
        ("steps_offset", json!(0)),
    ]);
    d
}

pub struct Lms {
    cfg: ClassConfig,
    ladder: Ladder,
    prediction: Prediction,
    /// The latest derivatives, newest last.
    derivatives: VecDeque<Tensor>,
}

pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let mut cfg = ClassConfig::new(CLASS, config, &defaults())?;
    let schedule = apply_schedule(&mut cfg, schedule)?;
    let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
    let train = TrainSchedule::new(&cfg, false)?;
    let ladder = Ladder::new(&cfg, &train, steps, schedule, (None, None), None)?;
    Ok(Box::new(Lms { cfg, ladder, prediction, derivatives: VecDeque::new() }))
}

/// ∫ over [σ_t, σ_{t+1}] of the Lagrange basis polynomial for node `current` among the
/// `order` nodes σ_t, σ_{t−1}, …
fn lms_coefficient(sigmas: &[f32], order: usize, t: usize, current: usize) -> f64 {
    let s = |i: usize| f64::from(sigmas[i]);
    let basis = |tau: f64| {
        (0..order).filter(|&k| k != current).fold(1.0, |p, k| p * (tau - s(t - k)) / (s(t - current) - s(t - k)))
    };
    let (a, b) = (s(t), s(t + 1));
    let half = (b - a) / 2.0;
    let mid = (a + b) / 2.0;
    let x = (3.0f64 / 5.0).sqrt();
    let nodes = [(-x, 5.0 / 9.0), (0.0, 8.0 / 9.0), (x, 5.0 / 9.0)];
    half * nodes.iter().map(|&(u, w)| w * basis(mid + half * u)).sum::<f64>()
}

impl Scheduler for Lms {
    fn timesteps(&self) -> &[f64] {
        &self.ladder.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.ladder.init_noise_sigma)
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        self.ladder.scale(sample, i)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.ladder.sigma(i)?;
        self.ladder.sigma(i + 1)?;
        let x0 = self.prediction.x0(model_output, sample, Noising::Sigma(sigma));
        self.derivatives.push_back((sample - x0) / f64::from(sigma));
        if self.derivatives.len() > ORDER {
            self.derivatives.pop_front();
        }
        let order = (i + 1).min(ORDER);
        let sigmas = &self.ladder.sigmas;
        let mut sum: Option<Tensor> = None;
        for (current, d) in self.derivatives.iter().rev().enumerate().take(order) {
            let term = d * lms_coefficient(sigmas, order, i, current);
            sum = Some(match sum {
                None => term,
                Some(acc) => acc + term,
            });
        }
        Ok(match sum {
            Some(s) => sample + s,
            None => sample.shallow_clone(),
        })
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        Ok(Noising::Sigma(self.ladder.sigma(i)?).add_noise(original, noise))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
