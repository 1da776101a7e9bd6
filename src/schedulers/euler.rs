//! Euler sampler on the sigma ladder (k-diffusion's `sample_euler` with s_churn = 0), as
//! diffusers' `EulerDiscreteScheduler`.

use super::common::{
    apply_schedule, base_defaults, interpolated_sigmas, ClassConfig, Prediction, Spacing, TrainSchedule,
};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

pub const CLASS: &str = "EulerDiscreteScheduler";

pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    d.extend([
        ("prediction_type", json!("epsilon")),
        ("interpolation_type", json!("linear")),
        ("use_karras_sigmas", json!(false)),
        ("use_exponential_sigmas", json!(false)),
        ("use_beta_sigmas", json!(false)),
        ("sigma_min", Value::Null),
        ("sigma_max", Value::Null),
        ("timestep_spacing", json!("linspace")),
        ("timestep_type", json!("discrete")),
        ("steps_offset", json!(0)),
        ("rescale_betas_zero_snr", json!(false)),
        ("final_sigmas_type", json!("zero")),
    ]);
    d
}

/// Inference sigmas (with the final one appended) and timesteps, as the k-diffusion-style
/// classes compute them in `set_timesteps`, plus diffusers' `init_noise_sigma`.
#[derive(Debug, Clone)]
pub struct Ladder {
    /// float32 sigmas, one per timestep plus the final one.
    pub sigmas: Vec<f32>,
    /// Timesteps as float32 values.
    pub timesteps: Vec<f64>,
    pub init_noise_sigma: f32,
}

impl Ladder {
    /// `final_sigma`: `None` for 0, or the value to append (`final_sigmas_type = sigma_min`).
    pub fn new(
        cfg: &ClassConfig,
        train: &TrainSchedule,
        steps: usize,
        schedule: SigmaSchedule,
        bounds: (Option<f64>, Option<f64>),
        final_sigma: Option<f32>,
    ) -> Result<Ladder> {
        let spacing = Spacing::from_config(cfg)?;
        let (sigmas, timesteps) =
            interpolated_sigmas(train, spacing, steps, cfg.usize("steps_offset")?, schedule, bounds);
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(final_sigma.unwrap_or(0.0));
        let timesteps = timesteps.into_iter().map(|t| f64::from(t as f32)).collect();
        let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        Ok(Ladder { sigmas, timesteps, init_noise_sigma })
    }

    pub fn sigma(&self, i: usize) -> Result<f32> {
        self.sigmas.get(i).copied().ok_or_else(|| Error::invalid(format!("scheduler has no step {i}")))
    }

    /// x / sqrt(σ² + 1), the input scaling of every sigma-ladder sampler.
    pub fn scale(&self, sample: &Tensor, i: usize) -> Tensor {
        let s = self.sigmas.get(i).copied().unwrap_or(0.0);
        sample / f64::from((s * s + 1.0).sqrt())
    }
}

/// x̂₀ for sigma-parameterised samplers with diffusers' formulas: `sigma` is the step's σ
/// (σ̂ for epsilon), float32.
pub fn denoised(prediction: Prediction, model_output: &Tensor, sample: &Tensor, sigma: f32) -> Tensor {
    match prediction {
        Prediction::Epsilon => sample - model_output * f64::from(sigma),
        Prediction::Sample => model_output.shallow_clone(),
        Prediction::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            model_output * f64::from(c_out) + sample / f64::from(sigma * sigma + 1.0)
        }
    }
}

pub struct Euler {
    cfg: ClassConfig,
    ladder: Ladder,
    prediction: Prediction,
}

impl Euler {
    pub fn new(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Euler> {
        let mut cfg = ClassConfig::new(CLASS, config, &defaults())?;
        let schedule = apply_schedule(&mut cfg, schedule)?;
        cfg.require("interpolation_type", &json!("linear"))?;
        let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
        if cfg.choice("timestep_type", &["discrete", "continuous"])? == "continuous"
            && prediction == Prediction::VPrediction
        {
            return Err(Error::invalid(
                "scheduler_config.json: `timestep_type` = \"continuous\" with v_prediction is not supported by sdgen",
            ));
        }
        let rescale = cfg.bool("rescale_betas_zero_snr")?;
        let mut train = TrainSchedule::new(&cfg, rescale)?;
        if rescale {
            // diffusers keeps the last sigma finite this way.
            if let Some(last) = train.alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let final_sigma = match cfg.choice("final_sigmas_type", &["zero", "sigma_min"])?.as_str() {
            "zero" => None,
            _ => train.sigmas().first().copied(),
        };
        let bounds = (cfg.opt_f64("sigma_min")?, cfg.opt_f64("sigma_max")?);
        let ladder = Ladder::new(&cfg, &train, steps, schedule, bounds, final_sigma)?;
        Ok(Euler { cfg, ladder, prediction })
    }
}

pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(Euler::new(config, schedule, steps)?))
}

impl Scheduler for Euler {
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
        let sigma_next = self.ladder.sigma(i + 1)?;
        let sample = sample.to_kind(Kind::Float);
        let x0 = denoised(self.prediction, model_output, &sample, sigma);
        let derivative = (&sample - x0) / f64::from(sigma);
        let prev = sample + derivative * f64::from(sigma_next - sigma);
        Ok(prev.to_kind(model_output.kind()))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
