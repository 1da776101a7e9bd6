//! DPM-Solver-2 in k-diffusion's form (`sample_dpm_2`), as diffusers'
//! `KDPM2DiscreteScheduler`: each step evaluates the model at σ and at the log-midpoint
//! between σ and the next σ.

use super::common::{apply_schedule, kdpm2_defaults, ClassConfig, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::sigmas::{at, interleave, scale_by_sigma, Kdpm2Ladder};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::Result;
use serde_json::Value;
use tch::Tensor;

pub const CLASS: &str = "KDPM2DiscreteScheduler";

pub struct Dpm2 {
    cfg: ClassConfig,
    prediction: Prediction,
    init_noise_sigma: f32,
    /// Per model evaluation: σ, and the midpoint σ.
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    timesteps: Vec<f64>,
    /// The sample at the start of the step, while the midpoint evaluation is pending.
    pending: Option<Tensor>,
}

pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let mut cfg = ClassConfig::new(CLASS, config, &kdpm2_defaults())?;
    let schedule = apply_schedule(&mut cfg, schedule)?;
    // diffusers raises NotImplementedError for "sample" at step time.
    let prediction = Prediction::from_config(&cfg, &["epsilon", "v_prediction"])?;
    let train = TrainSchedule::new(&cfg, false)?;
    let ladder = Kdpm2Ladder::new(&cfg, &train, schedule, steps)?;
    let interpol = ladder.dpm2_midpoints();
    let t_interpol = ladder.timesteps_for(&interpol);
    let mut timesteps = vec![ladder.timesteps[0]];
    for (ti, t) in t_interpol.iter().zip(&ladder.timesteps).skip(1) {
        timesteps.extend([*ti, *t]);
    }
    Ok(Box::new(Dpm2 {
        cfg,
        prediction,
        init_noise_sigma: ladder.init_noise_sigma(),
        sigmas: interleave(&ladder.sigmas),
        sigmas_interpol: interleave(&interpol),
        timesteps,
        pending: None,
    }))
}

impl Scheduler for Dpm2 {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.init_noise_sigma)
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        let table = if self.pending.is_none() { &self.sigmas } else { &self.sigmas_interpol };
        scale_by_sigma(sample, table.get(i).copied().unwrap_or(0.0))
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let prediction = self.prediction;
        match self.pending.take() {
            None => {
                let sigma = at(&self.sigmas, i)?;
                let sigma_interpol = at(&self.sigmas_interpol, i + 1)?;
                let x0 = prediction.x0(model_output, sample, Noising::Sigma(sigma));
                let derivative = (sample - x0) / f64::from(sigma);
                self.pending = Some(sample.shallow_clone());
                Ok(sample + derivative * f64::from(sigma_interpol - sigma))
            }
            Some(start) => {
                let sigma = at(&self.sigmas, i - 1)?;
                let sigma_interpol = at(&self.sigmas_interpol, i)?;
                let sigma_next = at(&self.sigmas, i)?;
                let x0 = prediction.x0(model_output, sample, Noising::Sigma(sigma_interpol));
                let derivative = (sample - x0) / f64::from(sigma_interpol);
                Ok(start + derivative * f64::from(sigma_next - sigma))
            }
        }
    }

    fn order(&self) -> usize {
        2
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        Ok(Noising::Sigma(at(&self.sigmas, i)?).add_noise(original, noise))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
