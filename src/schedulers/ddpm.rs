//! DDPM ancestral sampling (Ho et al. 2020), as diffusers' `DDPMScheduler`.

use super::common::{base_defaults, integer_timesteps, threshold_sample, ClassConfig, Spacing, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::sigmas::{exp_f32, ln_f32};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::Tensor;

pub const CLASS: &str = "DDPMScheduler";

pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    d.extend([
        ("variance_type", json!("fixed_small")),
        ("clip_sample", json!(true)),
        ("prediction_type", json!("epsilon")),
        ("thresholding", json!(false)),
        ("dynamic_thresholding_ratio", json!(0.995)),
        ("clip_sample_range", json!(1.0)),
        ("sample_max_value", json!(1.0)),
        ("timestep_spacing", json!("leading")),
        ("steps_offset", json!(0)),
        ("rescale_betas_zero_snr", json!(false)),
    ]);
    d
}

#[derive(Clone, Copy, PartialEq)]
/// `variance_type`: fixed_small, fixed_small_log, fixed_large.
enum Variance {
    Small,
    SmallLog,
    Large,
}

pub struct Ddpm {
    cfg: ClassConfig,
    train: TrainSchedule,
    prediction: Prediction,
    variance: Variance,
    clip: Option<f64>,
    thresholding: Option<(f64, f64)>,
    int_timesteps: Vec<i64>,
    timesteps: Vec<f64>,
}

pub fn build(config: &SchedulerConfig, _schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let cfg = ClassConfig::new(CLASS, config, &defaults())?;
    let train = TrainSchedule::with_schedules(&cfg, cfg.bool("rescale_betas_zero_snr")?, &["sigmoid"])?;
    let num_train = train.len();
    if steps > num_train {
        return Err(Error::invalid(format!(
            "DDPM cannot take {steps} steps: the model was trained with {num_train} timesteps"
        )));
    }
    let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
    // "learned" variances need a UNet with twice the output channels; SD has none.
    let variance = match cfg.choice("variance_type", &["fixed_small", "fixed_small_log", "fixed_large"])?.as_str() {
        "fixed_small" => Variance::Small,
        "fixed_small_log" => Variance::SmallLog,
        _ => Variance::Large,
    };
    let thresholding = if cfg.bool("thresholding")? {
        Some((cfg.f64("dynamic_thresholding_ratio")?, cfg.f64("sample_max_value")?))
    } else {
        None
    };
    let clip = if cfg.bool("clip_sample")? { Some(cfg.f64("clip_sample_range")?) } else { None };
    let spacing = Spacing::from_config(&cfg)?;
    let int_timesteps = integer_timesteps(spacing, num_train, steps, cfg.usize("steps_offset")?);
    let timesteps = int_timesteps.iter().map(|&t| t as f64).collect();
    Ok(Box::new(Ddpm { cfg, train, prediction, variance, clip, thresholding, int_timesteps, timesteps }))
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let t = *self.int_timesteps.get(i).ok_or_else(|| Error::invalid(format!("DDPM has no step {i}")))?;
        let prev_t = self.int_timesteps.get(i + 1).copied().unwrap_or(-1);
        let a_t = self.train.alpha_cumprod_at(t)?;
        let a_prev = if prev_t >= 0 { self.train.alpha_cumprod_at(prev_t)? } else { 1.0 };
        let b_prev = 1.0 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let mut x0 = self.prediction.x0(model_output, sample, Noising::alpha_bar(a_t));
        if let Some((ratio, max)) = self.thresholding {
            x0 = threshold_sample(&x0, ratio, max)?;
        } else if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r);
        }
        let b_t = 1.0 - a_t;
        let x0_coeff = a_prev.sqrt() * cur_beta / b_t;
        let sample_coeff = cur_alpha.sqrt() * b_prev / b_t;
        let prev = x0 * f64::from(x0_coeff) + sample * f64::from(sample_coeff);
        if t <= 0 {
            return Ok(prev);
        }
        let z = noise.randn(&model_output.size(), model_output.device(), model_output.kind());
        // The posterior variance β̃_t, floored as diffusers does.
        let variance = ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).max(1e-20);
        let std = match self.variance {
            Variance::Small => variance.sqrt(),
            // log then exp in float32, as torch computes it (correctly rounded here).
            Variance::SmallLog => exp_f32(ln_f32(variance) * 0.5),
            Variance::Large => (1.0 - a_t / a_prev).sqrt(),
        };
        Ok(prev + z * f64::from(std))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        let t = *self.int_timesteps.get(i).ok_or_else(|| Error::invalid(format!("DDPM has no step {i}")))?;
        Ok(Noising::alpha_bar(self.train.alpha_cumprod_at(t)?).add_noise(original, noise))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
