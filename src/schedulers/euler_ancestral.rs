//! Euler ancestral sampler (k-diffusion's `sample_euler_ancestral`, eta = 1), as
//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step down to σ_down, then fresh
//! noise of scale σ_up.

use super::common::{base_defaults, train_schedule_zero_snr, ClassConfig};
use super::prediction::{Noising, Prediction};
use super::sigmas::{ancestral_step, Ladder};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::Result;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

pub const CLASS: &str = "EulerAncestralDiscreteScheduler";

pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    d.extend([
        ("prediction_type", json!("epsilon")),
        ("timestep_spacing", json!("linspace")),
        ("steps_offset", json!(0)),
        ("rescale_betas_zero_snr", json!(false)),
    ]);
    d
}

pub struct EulerAncestral {
    cfg: ClassConfig,
    ladder: Ladder,
    prediction: Prediction,
}

pub fn build(config: &SchedulerConfig, _schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let cfg = ClassConfig::new(CLASS, config, &defaults())?;
    // diffusers' class rejects "sample" at step time; sdgen rejects it up front.
    let prediction = Prediction::from_config(&cfg, &["epsilon", "v_prediction"])?;
    let train = train_schedule_zero_snr(&cfg)?;
    let ladder = Ladder::new(&cfg, &train, steps, SigmaSchedule::Default, (None, None), None)?;
    Ok(Box::new(EulerAncestral { cfg, ladder, prediction }))
}

impl Scheduler for EulerAncestral {
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
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.ladder.sigma(i)?;
        let sigma_to = self.ladder.sigma(i + 1)?;
        let sample = sample.to_kind(Kind::Float);
        let x0 = self.prediction.x0(model_output, &sample, Noising::Sigma(sigma));
        let (sigma_up, sigma_down) = ancestral_step(sigma, sigma_to);
        let derivative = (&sample - x0) / f64::from(sigma);
        let prev = sample + derivative * f64::from(sigma_down - sigma);
        let z = noise.randn(&model_output.size(), model_output.device(), model_output.kind());
        let prev = prev + z * f64::from(sigma_up);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        Ok(Noising::Sigma(self.ladder.sigma(i)?).add_noise(original, noise))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
