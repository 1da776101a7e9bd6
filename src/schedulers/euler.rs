//! Euler sampler on the sigma ladder (k-diffusion's `sample_euler` with s_churn = 0), as
//! diffusers' `EulerDiscreteScheduler`.

use super::common::{apply_schedule, base_defaults, train_schedule_zero_snr, ClassConfig};
use super::prediction::{Noising, Prediction};
use super::sigmas::Ladder;
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
        let train = train_schedule_zero_snr(&cfg)?;
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
        let x0 = self.prediction.x0(model_output, &sample, Noising::Sigma(sigma));
        let derivative = (&sample - x0) / f64::from(sigma);
        let prev = sample + derivative * f64::from(sigma_next - sigma);
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
