//! DPM-Solver-2 ancestral (k-diffusion's `sample_dpm_2_ancestral`), as diffusers'
//! `KDPM2AncestralDiscreteScheduler`: the DPM2 midpoint step down to σ_down, then fresh
//! noise of scale σ_up.

use super::dpm2::{at, interleave, tensor, values, Base};
use super::euler::denoised;
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::Result;
use serde_json::Value;
use tch::Tensor;

pub const CLASS: &str = "KDPM2AncestralDiscreteScheduler";

pub struct Dpm2Ancestral {
    base: Base,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    timesteps: Vec<f64>,
    pending: Option<Tensor>,
}

pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let base = Base::new(CLASS, config, schedule, steps)?;
    let s = tensor(&base.sigmas);
    let n = base.sigmas.len() as i64;
    let next = s.roll([-1], [0]);
    let _ = next.get(n - 1).fill_(0.0);
    let up = (next.square() * (s.square() - next.square()) / s.square()).sqrt();
    let down = (next.square() - up.square()).sqrt();
    let _ = down.get(n - 1).fill_(0.0);
    let interpol = s.log().lerp(&down.log(), 0.5).exp();
    let _ = interpol.narrow(0, n - 2, 2).fill_(0.0);
    let interpol = values(&interpol)?;
    let t_interpol = base.timesteps_for(&interpol);
    let mut timesteps = vec![base.timesteps[0]];
    // Each midpoint follows the step it belongs to: [t0, ti0, t1, ti1, t2, …].
    for (ti, t) in t_interpol.iter().zip(&base.timesteps[1..]) {
        timesteps.extend([*ti, *t]);
    }
    Ok(Box::new(Dpm2Ancestral {
        sigmas: interleave(&base.sigmas),
        sigmas_interpol: interleave(&interpol),
        sigmas_up: interleave(&values(&up)?),
        sigmas_down: interleave(&values(&down)?),
        timesteps,
        base,
        pending: None,
    }))
}

impl Scheduler for Dpm2Ancestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.base.init_noise_sigma())
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        // The midpoint evaluation reads the interpolated σ of the step it completes.
        let s = match self.pending {
            None => self.sigmas.get(i),
            Some(_) => i.checked_sub(1).and_then(|j| self.sigmas_interpol.get(j)),
        };
        let s = s.copied().unwrap_or(0.0);
        sample / f64::from((s * s + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let prediction = self.base.prediction;
        match self.pending.take() {
            None => {
                let sigma = at(&self.sigmas, i)?;
                let sigma_interpol = at(&self.sigmas_interpol, i)?;
                let x0 = denoised(prediction, model_output, sample, sigma);
                let derivative = (sample - x0) / f64::from(sigma);
                self.pending = Some(sample.shallow_clone());
                Ok(sample + derivative * f64::from(sigma_interpol - sigma))
            }
            Some(start) => {
                let sigma = at(&self.sigmas, i - 1)?;
                let sigma_interpol = at(&self.sigmas_interpol, i - 1)?;
                let sigma_up = at(&self.sigmas_up, i - 1)?;
                let sigma_down = at(&self.sigmas_down, i - 1)?;
                let x0 = denoised(prediction, model_output, sample, sigma_interpol);
                let derivative = (sample - x0) / f64::from(sigma_interpol);
                let prev = start + derivative * f64::from(sigma_down - sigma);
                let z = noise.randn(&model_output.size(), model_output.device(), model_output.kind());
                Ok(prev + z * f64::from(sigma_up))
            }
        }
    }

    fn config_json(&self) -> Value {
        self.base.cfg.to_json()
    }
}
