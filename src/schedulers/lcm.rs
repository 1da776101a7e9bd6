//! Latent consistency model multistep sampling (Luo et al. 2023), as diffusers'
//! `LCMScheduler`: each step predicts the clean latents, then re-noises them to the next
//! timestep with fresh noise.

use super::common::{base_defaults, linspace_excl, set_default, threshold_sample, ClassConfig, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::Tensor;

pub const CLASS: &str = "LCMScheduler";

pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    set_default(&mut d, "beta_start", json!(0.00085));
    set_default(&mut d, "beta_end", json!(0.012));
    set_default(&mut d, "beta_schedule", json!("scaled_linear"));
    d.extend([
        ("original_inference_steps", json!(50)),
        ("clip_sample", json!(false)),
        ("clip_sample_range", json!(1.0)),
        ("set_alpha_to_one", json!(true)),
        ("steps_offset", json!(0)),
        ("prediction_type", json!("epsilon")),
        ("thresholding", json!(false)),
        ("dynamic_thresholding_ratio", json!(0.995)),
        ("sample_max_value", json!(1.0)),
        ("timestep_spacing", json!("leading")),
        ("timestep_scaling", json!(10.0)),
        ("rescale_betas_zero_snr", json!(false)),
    ]);
    d
}

pub struct Lcm {
    cfg: ClassConfig,
    train: TrainSchedule,
    final_alpha_cumprod: f32,
    prediction: Prediction,
    clip: Option<f64>,
    thresholding: Option<(f64, f64)>,
    timestep_scaling: f64,
    int_timesteps: Vec<i64>,
    timesteps: Vec<f64>,
}

pub fn build(config: &SchedulerConfig, _schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let cfg = ClassConfig::new(CLASS, config, &defaults())?;
    let train = TrainSchedule::new(&cfg, cfg.bool("rescale_betas_zero_snr")?)?;
    let num_train = train.len();
    let original = cfg.usize("original_inference_steps")?;
    if original == 0 || original > num_train {
        return Err(Error::invalid(format!(
            "scheduler_config.json: `original_inference_steps` = {original} must be between 1 and \
             `num_train_timesteps` ({num_train})"
        )));
    }
    if steps > original {
        return Err(Error::invalid(format!(
            "LCM cannot take {steps} steps: at most `original_inference_steps` = {original}"
        )));
    }
    // The distilled model knows only the `original` timesteps k−1, 2k−1, …; pick `steps`
    // of them evenly from the top.
    let k = (num_train / original) as i64;
    let origin: Vec<i64> = (1..=original as i64).rev().map(|i| i * k - 1).collect();
    let int_timesteps: Vec<i64> =
        linspace_excl(0.0, origin.len() as f64, steps).into_iter().map(|x| origin[x.floor() as usize]).collect();
    let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
    let thresholding = if cfg.bool("thresholding")? {
        Some((cfg.f64("dynamic_thresholding_ratio")?, cfg.f64("sample_max_value")?))
    } else {
        None
    };
    let clip = if cfg.bool("clip_sample")? { Some(cfg.f64("clip_sample_range")?) } else { None };
    let final_alpha_cumprod = if cfg.bool("set_alpha_to_one")? { 1.0 } else { train.alphas_cumprod[0] };
    Ok(Box::new(Lcm {
        timestep_scaling: cfg.f64("timestep_scaling")?,
        timesteps: int_timesteps.iter().map(|&t| t as f64).collect(),
        int_timesteps,
        cfg,
        train,
        final_alpha_cumprod,
        prediction,
        clip,
        thresholding,
    }))
}

impl Scheduler for Lcm {
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
        let t = *self.int_timesteps.get(i).ok_or_else(|| Error::invalid(format!("LCM has no step {i}")))?;
        let prev_t = self.int_timesteps.get(i + 1).copied().unwrap_or(t);
        let a_t = self.train.alpha_cumprod_at(t)?;
        let a_prev = if prev_t >= 0 { self.train.alpha_cumprod_at(prev_t)? } else { self.final_alpha_cumprod };
        let b_prev = 1.0 - a_prev;
        // Consistency-model boundary scalings; diffusers computes them from the int64
        // timestep times a float, i.e. in float32.
        let scaled = t as f32 * self.timestep_scaling as f32;
        let sigma_data_sq = 0.25f32;
        let c_skip = sigma_data_sq / (scaled * scaled + sigma_data_sq);
        let c_out = scaled / (scaled * scaled + sigma_data_sq).sqrt();
        let mut x0 = self.prediction.x0(model_output, sample, Noising::alpha_bar(a_t));
        if let Some((ratio, max)) = self.thresholding {
            x0 = threshold_sample(&x0, ratio, max)?;
        } else if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r);
        }
        let denoised = x0 * f64::from(c_out) + sample * f64::from(c_skip);
        if i + 1 == self.int_timesteps.len() {
            return Ok(denoised);
        }
        let z = noise.randn(&model_output.size(), model_output.device(), denoised.kind());
        Ok(denoised * f64::from(a_prev.sqrt()) + z * f64::from(b_prev.sqrt()))
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        let t = *self.int_timesteps.get(i).ok_or_else(|| Error::invalid(format!("LCM has no step {i}")))?;
        Ok(Noising::alpha_bar(self.train.alpha_cumprod_at(t)?).add_noise(original, noise))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
