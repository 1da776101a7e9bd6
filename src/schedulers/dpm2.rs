//! DPM-Solver-2 in k-diffusion's form (`sample_dpm_2`), as diffusers'
//! `KDPM2DiscreteScheduler`: each step evaluates the model at σ and at the log-midpoint
//! between σ and the next σ.

use super::common::{
    apply_schedule, base_defaults, interpolated_sigmas, log_sigmas_f32, set_default, sigma_to_t_f32, ClassConfig,
    Prediction, Spacing, TrainSchedule,
};
use super::euler::denoised;
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

pub const CLASS: &str = "KDPM2DiscreteScheduler";

/// The defaults both KDPM2 classes share.
pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    set_default(&mut d, "beta_start", json!(0.00085));
    set_default(&mut d, "beta_end", json!(0.012));
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

/// What both KDPM2 classes compute in `set_timesteps` before they part ways.
pub struct Base {
    pub cfg: ClassConfig,
    pub prediction: Prediction,
    /// Sigmas per inference step plus the final 0, float32.
    pub sigmas: Vec<f32>,
    /// Timesteps per inference step, at the dtype diffusers keeps them (f32 or f64 values).
    pub timesteps: Vec<f64>,
    /// float32 when the timesteps are float32 (model schedule), else float64.
    pub timesteps_f32: bool,
    pub log_sigmas: Vec<f32>,
    pub spacing: Spacing,
}

impl Base {
    pub fn new(class: &'static str, config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Base> {
        let mut cfg = ClassConfig::new(class, config, &defaults())?;
        let schedule = apply_schedule(&mut cfg, schedule)?;
        // diffusers raises NotImplementedError for "sample" at step time.
        let prediction = Prediction::from_config(&cfg, &["epsilon", "v_prediction"])?;
        let train = TrainSchedule::new(&cfg, false)?;
        let spacing = Spacing::from_config(&cfg)?;
        let (sigmas, timesteps) =
            interpolated_sigmas(&train, spacing, steps, cfg.usize("steps_offset")?, schedule, (None, None));
        let (timesteps, timesteps_f32) = match schedule {
            SigmaSchedule::Default => (timesteps.iter().map(|&t| f64::from(t as f32)).collect(), true),
            // Only the Karras branch rounds its timesteps, as diffusers does.
            SigmaSchedule::Karras => (timesteps.iter().map(|t| t.round_ties_even()).collect(), false),
            SigmaSchedule::Exponential => (timesteps, false),
        };
        let mut sigmas: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        Ok(Base {
            log_sigmas: log_sigmas_f32(&train.sigmas()),
            cfg,
            prediction,
            sigmas,
            timesteps,
            timesteps_f32,
            spacing,
        })
    }

    pub fn init_noise_sigma(&self) -> f32 {
        let max = self.sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        match self.spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// Timesteps for float32 interpolated sigmas, cast to the timesteps' dtype.
    pub fn timesteps_for(&self, sigmas: &[f32]) -> Vec<f64> {
        sigmas
            .iter()
            .map(|&s| {
                let t = sigma_to_t_f32(s, &self.log_sigmas);
                if self.timesteps_f32 {
                    f64::from(t as f32)
                } else {
                    t
                }
            })
            .collect()
    }
}

pub fn tensor(v: &[f32]) -> Tensor {
    Tensor::from_slice(v).to_device(Device::Cpu)
}

pub fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous())?)
}

/// [v0, v1, v1, …, vn, vn, vn] — diffusers' `cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])`.
pub fn interleave(v: &[f32]) -> Vec<f32> {
    let mut out = vec![v[0]];
    for &x in &v[1..] {
        out.extend([x, x]);
    }
    out.push(v[v.len() - 1]);
    out
}

pub fn at(v: &[f32], i: usize) -> Result<f32> {
    v.get(i).copied().ok_or_else(|| Error::invalid(format!("scheduler has no step {i}")))
}

pub struct Dpm2 {
    base: Base,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    timesteps: Vec<f64>,
    /// The sample at the start of the step, while the midpoint evaluation is pending.
    pending: Option<Tensor>,
}

pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let base = Base::new(CLASS, config, schedule, steps)?;
    let s = tensor(&base.sigmas);
    // Geometric mean of each σ and the one before it, in float32 as torch computes it.
    let interpol = values(&s.log().lerp(&s.roll([1], [0]).log(), 0.5).exp())?;
    let t_interpol = base.timesteps_for(&interpol);
    let mut timesteps = vec![base.timesteps[0]];
    for (ti, t) in t_interpol.iter().zip(&base.timesteps).skip(1) {
        timesteps.extend([*ti, *t]);
    }
    Ok(Box::new(Dpm2 {
        sigmas: interleave(&base.sigmas),
        sigmas_interpol: interleave(&interpol),
        timesteps,
        base,
        pending: None,
    }))
}

impl Scheduler for Dpm2 {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.base.init_noise_sigma())
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        let table = if self.pending.is_none() { &self.sigmas } else { &self.sigmas_interpol };
        let s = table.get(i).copied().unwrap_or(0.0);
        sample / f64::from((s * s + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let prediction = self.base.prediction;
        match self.pending.take() {
            None => {
                let sigma = at(&self.sigmas, i)?;
                let sigma_interpol = at(&self.sigmas_interpol, i + 1)?;
                let x0 = denoised(prediction, model_output, sample, sigma);
                let derivative = (sample - x0) / f64::from(sigma);
                self.pending = Some(sample.shallow_clone());
                Ok(sample + derivative * f64::from(sigma_interpol - sigma))
            }
            Some(start) => {
                let sigma = at(&self.sigmas, i - 1)?;
                let sigma_interpol = at(&self.sigmas_interpol, i)?;
                let sigma_next = at(&self.sigmas, i)?;
                let x0 = denoised(prediction, model_output, sample, sigma_interpol);
                let derivative = (sample - x0) / f64::from(sigma_interpol);
                Ok(start + derivative * f64::from(sigma_next - sigma))
            }
        }
    }

    fn config_json(&self) -> Value {
        self.base.cfg.to_json()
    }
}
