//! DPM-Solver-2 ancestral (k-diffusion's `sample_dpm_2_ancestral`), as diffusers'
//! `KDPM2AncestralDiscreteScheduler`: the DPM2 midpoint step down to σ_down, then fresh
//! noise of scale σ_up.

use super::common::{apply_schedule, kdpm2_defaults, ClassConfig, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::sigmas::{at, interleave, scale_by_sigma, Kdpm2Ladder};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::Result;
use serde_json::Value;
use tch::Tensor;

pub const CLASS: &str = "KDPM2AncestralDiscreteScheduler";

/// The first half of a step, kept for the midpoint evaluation.
struct Pending {
    sample: Tensor,
    derivative: Tensor,
}

pub struct Dpm2Ancestral {
    cfg: ClassConfig,
    prediction: Prediction,
    init_noise_sigma: f32,
    /// Per model evaluation, as diffusers interleaves them.
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    timesteps: Vec<f64>,
    pending: Option<Pending>,
}

pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let mut cfg = ClassConfig::new(CLASS, config, &kdpm2_defaults())?;
    let schedule = apply_schedule(&mut cfg, schedule)?;
    // diffusers raises NotImplementedError for "sample" at step time.
    let prediction = Prediction::from_config(&cfg, &["epsilon", "v_prediction"])?;
    let train = TrainSchedule::new(&cfg, false)?;
    let ladder = Kdpm2Ladder::new(&cfg, &train, schedule, steps)?;
    let (up, down, interpol) = ladder.ancestral_midpoints();
    let t_interpol = ladder.timesteps_for(&interpol);
    let mut timesteps = vec![ladder.timesteps[0]];
    // Each midpoint follows the step it belongs to: [t0, ti0, t1, ti1, t2, …].
    for (ti, t) in t_interpol.iter().zip(&ladder.timesteps[1..]) {
        timesteps.extend([*ti, *t]);
    }
    Ok(Box::new(Dpm2Ancestral {
        cfg,
        prediction,
        init_noise_sigma: ladder.init_noise_sigma(),
        sigmas: interleave(&ladder.sigmas),
        sigmas_interpol: interleave(&interpol),
        sigmas_up: interleave(&up),
        sigmas_down: interleave(&down),
        timesteps,
        pending: None,
    }))
}

impl Scheduler for Dpm2Ancestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.init_noise_sigma)
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        // The midpoint evaluation reads the interpolated σ of the step it completes.
        let s = match self.pending {
            None => self.sigmas.get(i),
            Some(_) => i.checked_sub(1).and_then(|j| self.sigmas_interpol.get(j)),
        };
        scale_by_sigma(sample, s.copied().unwrap_or(0.0))
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let prediction = self.prediction;
        match self.pending.take() {
            None => {
                let sigma = at(&self.sigmas, i)?;
                let sigma_interpol = at(&self.sigmas_interpol, i)?;
                let x0 = prediction.x0(model_output, sample, Noising::Sigma(sigma));
                let derivative = (sample - x0) / f64::from(sigma);
                let prev = sample + &derivative * f64::from(sigma_interpol - sigma);
                self.pending = Some(Pending { sample: sample.shallow_clone(), derivative });
                Ok(prev)
            }
            Some(start) => {
                let sigma = at(&self.sigmas, i - 1)?;
                let sigma_interpol = at(&self.sigmas_interpol, i - 1)?;
                let sigma_up = at(&self.sigmas_up, i - 1)?;
                let sigma_down = at(&self.sigmas_down, i - 1)?;
                // A zero midpoint (σ_down = 0) would divide 0 by 0; k-diffusion takes a plain
                // Euler step with the first derivative there, and so does sdgen.
                let derivative = if sigma_interpol > 0.0 {
                    let x0 = prediction.x0(model_output, sample, Noising::Sigma(sigma_interpol));
                    (sample - x0) / f64::from(sigma_interpol)
                } else {
                    start.derivative
                };
                let prev = start.sample + derivative * f64::from(sigma_down - sigma);
                let z = noise.randn(&model_output.size(), model_output.device(), model_output.kind());
                Ok(prev + z * f64::from(sigma_up))
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
