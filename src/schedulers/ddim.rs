//! DDIM (Song et al. 2020) with eta = 0, as diffusers' `DDIMScheduler`.

use super::common::{base_defaults, integer_timesteps, threshold_sample, ClassConfig, Spacing, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::json;
use tch::Tensor;

pub const CLASS: &str = "DDIMScheduler";

pub struct Ddim {
    cfg: ClassConfig,
    train: TrainSchedule,
    final_alpha_cumprod: f32,
    prediction: Prediction,
    clip: Option<f64>,
    thresholding: Option<(f64, f64)>,
    /// Integer training timesteps, as diffusers' int64 tensor.
    int_timesteps: Vec<i64>,
    timesteps: Vec<f64>,
    /// `T // n`: how far back each step looks (diffusers uses it even for other spacings).
    stride: i64,
}

pub fn defaults() -> Vec<(&'static str, serde_json::Value)> {
    let mut d = base_defaults();
    d.extend([
        ("clip_sample", json!(true)),
        ("set_alpha_to_one", json!(true)),
        ("steps_offset", json!(0)),
        ("prediction_type", json!("epsilon")),
        ("thresholding", json!(false)),
        ("dynamic_thresholding_ratio", json!(0.995)),
        ("clip_sample_range", json!(1.0)),
        ("sample_max_value", json!(1.0)),
        ("timestep_spacing", json!("leading")),
        ("rescale_betas_zero_snr", json!(false)),
    ]);
    d
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Ddim> {
        let cfg = ClassConfig::new(CLASS, config, &defaults())?;
        let train = TrainSchedule::new(&cfg, cfg.bool("rescale_betas_zero_snr")?)?;
        let num_train = train.len();
        if steps > num_train {
            return Err(Error::invalid(format!(
                "DDIM cannot take {steps} steps: the model was trained with {num_train} timesteps"
            )));
        }
        let final_alpha_cumprod = if cfg.bool("set_alpha_to_one")? { 1.0 } else { train.alphas_cumprod[0] };
        let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
        let thresholding = if cfg.bool("thresholding")? {
            Some((cfg.f64("dynamic_thresholding_ratio")?, cfg.f64("sample_max_value")?))
        } else {
            None
        };
        let clip = if cfg.bool("clip_sample")? { Some(cfg.f64("clip_sample_range")?) } else { None };
        let spacing = Spacing::from_config(&cfg)?;
        let int_timesteps = integer_timesteps(spacing, num_train, steps, cfg.usize("steps_offset")?);
        let timesteps = int_timesteps.iter().map(|&t| t as f64).collect();
        Ok(Ddim {
            final_alpha_cumprod,
            prediction,
            clip,
            thresholding,
            timesteps,
            int_timesteps,
            stride: (num_train / steps) as i64,
            cfg,
            train,
        })
    }
}

pub fn build(config: &SchedulerConfig, _schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(Ddim::new(config, steps)?))
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let t = *self.int_timesteps.get(i).ok_or_else(|| Error::invalid(format!("DDIM has no step {i}")))?;
        let prev_t = t - self.stride;
        let alpha_t = self.train.alpha_cumprod_at(t)?;
        let alpha_prev = if prev_t >= 0 { self.train.alpha_cumprod_at(prev_t)? } else { self.final_alpha_cumprod };
        let (mut x0, eps) = self.prediction.split(model_output, sample, Noising::alpha_bar(alpha_t));
        if let Some((ratio, max)) = self.thresholding {
            x0 = threshold_sample(&x0, ratio, max)?;
        } else if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r);
        }
        // eta = 0: no variance term, so the direction coefficient is sqrt(1 - ᾱ_prev).
        let direction = eps * f64::from((1.0 - alpha_prev).sqrt());
        Ok(x0 * f64::from(alpha_prev.sqrt()) + direction)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        let t = *self.int_timesteps.get(i).ok_or_else(|| Error::invalid(format!("DDIM has no step {i}")))?;
        Ok(Noising::alpha_bar(self.train.alpha_cumprod_at(t)?).add_noise(original, noise))
    }

    fn config_json(&self) -> serde_json::Value {
        self.cfg.to_json()
    }
}
