//! Heun's second-order sampler (k-diffusion's `sample_heun`), as diffusers'
//! `HeunDiscreteScheduler`: every step but the last costs two model evaluations.

use super::common::{apply_schedule, base_defaults, set_default, ClassConfig, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::sigmas::{at, scale_by_sigma, Ladder};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::Result;
use serde_json::{json, Value};
use tch::Tensor;

pub const CLASS: &str = "HeunDiscreteScheduler";

pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    set_default(&mut d, "beta_start", json!(0.00085));
    set_default(&mut d, "beta_end", json!(0.012));
    d.extend([
        ("prediction_type", json!("epsilon")),
        ("use_karras_sigmas", json!(false)),
        ("use_exponential_sigmas", json!(false)),
        ("use_beta_sigmas", json!(false)),
        ("clip_sample", json!(false)),
        ("clip_sample_range", json!(1.0)),
        ("timestep_spacing", json!("linspace")),
        ("steps_offset", json!(0)),
    ]);
    d
}

/// The first-order half of a step, kept for the second model evaluation.
struct Pending {
    derivative: Tensor,
    dt: f32,
    sample: Tensor,
}

pub struct Heun {
    cfg: ClassConfig,
    /// σ per model evaluation, plus the final 0: [σ0, σ1, σ1, …, σn−1, σn−1, 0].
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    init_noise_sigma: f32,
    prediction: Prediction,
    clip: Option<f64>,
    pending: Option<Pending>,
}

pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let mut cfg = ClassConfig::new(CLASS, config, &defaults())?;
    let schedule = apply_schedule(&mut cfg, schedule)?;
    let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
    let clip = if cfg.bool("clip_sample")? { Some(cfg.f64("clip_sample_range")?) } else { None };
    let train = TrainSchedule::with_schedules(&cfg, false, &["exp"])?;
    let ladder = Ladder::new(&cfg, &train, steps, schedule, (None, None), None)?;
    let s = &ladder.sigmas;
    let mut sigmas = vec![s[0]];
    for &v in &s[1..s.len() - 1] {
        sigmas.extend([v, v]);
    }
    sigmas.push(s[s.len() - 1]);
    let t = &ladder.timesteps;
    let mut timesteps = vec![t[0]];
    for &v in &t[1..] {
        timesteps.extend([v, v]);
    }
    Ok(Box::new(Heun {
        cfg,
        sigmas,
        timesteps,
        init_noise_sigma: ladder.init_noise_sigma,
        prediction,
        clip,
        pending: None,
    }))
}

impl Heun {
    fn sigma(&self, i: usize) -> Result<f32> {
        at(&self.sigmas, i)
    }
}

impl Scheduler for Heun {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.init_noise_sigma)
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        scale_by_sigma(sample, self.sigmas.get(i).copied().unwrap_or(0.0))
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        match self.pending.take() {
            None => {
                let sigma = self.sigma(i)?;
                let sigma_next = self.sigma(i + 1)?;
                let mut x0 = self.prediction.x0(model_output, sample, Noising::Sigma(sigma));
                if let Some(r) = self.clip {
                    x0 = x0.clamp(-r, r);
                }
                let derivative = (sample - x0) / f64::from(sigma);
                let dt = sigma_next - sigma;
                let prev = sample + &derivative * f64::from(dt);
                self.pending = Some(Pending { derivative, dt, sample: sample.shallow_clone() });
                Ok(prev)
            }
            Some(p) => {
                // The second evaluation sits at σ_next of the first half.
                let sigma_next = self.sigma(i)?;
                let mut x0 = self.prediction.x0(model_output, sample, Noising::Sigma(sigma_next));
                if let Some(r) = self.clip {
                    x0 = x0.clamp(-r, r);
                }
                let derivative = (sample - x0) / f64::from(sigma_next);
                let derivative = (p.derivative + derivative) / 2.0;
                Ok(p.sample + derivative * f64::from(p.dt))
            }
        }
    }

    fn order(&self) -> usize {
        2
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        Ok(Noising::Sigma(self.sigma(i)?).add_noise(original, noise))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
