//! Pseudo numerical methods for diffusion models (Liu et al. 2022), as diffusers'
//! `PNDMScheduler`: the PLMS linear multistep (A1111's "PLMS"; SD 1.x's default with
//! `skip_prk_steps`), optionally warmed up with Runge–Kutta (PRK) steps.

use super::common::{base_defaults, integer_timesteps, ClassConfig, Spacing, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::{Scheduler, SchedulerConfig, SigmaSchedule};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::Tensor;

pub const CLASS: &str = "PNDMScheduler";

pub fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = base_defaults();
    d.extend([
        ("skip_prk_steps", json!(false)),
        ("set_alpha_to_one", json!(false)),
        ("prediction_type", json!("epsilon")),
        ("timestep_spacing", json!("leading")),
        ("steps_offset", json!(0)),
    ]);
    d
}

pub struct Pndm {
    cfg: ClassConfig,
    train: TrainSchedule,
    final_alpha_cumprod: f32,
    prediction: Prediction,
    /// `T // n`.
    ratio: i64,
    prk_timesteps: Vec<i64>,
    all_timesteps: Vec<i64>,
    timesteps: Vec<f64>,
    counter: usize,
    /// Model outputs of past steps (the multistep history), newest last.
    ets: Vec<Tensor>,
    cur_sample: Option<Tensor>,
    cur_model_output: Option<Tensor>,
}

pub fn build(config: &SchedulerConfig, _schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    let cfg = ClassConfig::new(CLASS, config, &defaults())?;
    let train = TrainSchedule::new(&cfg, false)?;
    let prediction = Prediction::from_config(&cfg, &["epsilon", "v_prediction"])?;
    let num_train = train.len();
    let spacing = Spacing::from_config(&cfg)?;
    // Ascending, as diffusers' `_timesteps`.
    let mut base = integer_timesteps(spacing, num_train, steps, cfg.usize("steps_offset")?);
    base.reverse();
    let ratio = (num_train / steps) as i64;
    let (prk, plms) = if cfg.bool("skip_prk_steps")? {
        // The second timestep runs twice: a plain step, then its second-order correction.
        let n = base.len();
        let mut plms: Vec<i64> = base[..n.saturating_sub(1)].to_vec();
        plms.extend_from_slice(&base[n.saturating_sub(2)..n.saturating_sub(1)]);
        plms.extend_from_slice(&base[n.saturating_sub(1)..]);
        plms.reverse();
        (Vec::new(), plms)
    } else {
        if base.len() < 4 {
            return Err(Error::invalid(format!(
                "PNDM with PRK warm-up steps needs at least 4 inference steps (got {steps}); \
                 set `skip_prk_steps` in scheduler_config.json or take more steps"
            )));
        }
        // Four Runge–Kutta steps over the last four timesteps, with half-step midpoints.
        let half = ratio / 2;
        let mut prk = Vec::new();
        for &t in &base[base.len() - 4..] {
            prk.extend([t, t + half]);
        }
        prk.pop();
        let mut doubled: Vec<i64> = prk.iter().flat_map(|&t| [t, t]).collect();
        doubled.remove(0);
        doubled.pop();
        doubled.reverse();
        let mut plms = base[..base.len() - 3].to_vec();
        plms.reverse();
        (doubled, plms)
    };
    let all_timesteps: Vec<i64> = prk.iter().chain(&plms).copied().collect();
    let final_alpha_cumprod = if cfg.bool("set_alpha_to_one")? { 1.0 } else { train.alphas_cumprod[0] };
    Ok(Box::new(Pndm {
        timesteps: all_timesteps.iter().map(|&t| t as f64).collect(),
        all_timesteps,
        prk_timesteps: prk,
        cfg,
        train,
        final_alpha_cumprod,
        prediction,
        ratio,
        counter: 0,
        ets: Vec::new(),
        cur_sample: None,
        cur_model_output: None,
    }))
}

impl Pndm {
    /// x_{t_prev} from x_t and ε (PNDM's transfer function, eq. 9 of the paper).
    fn prev_sample(&self, sample: &Tensor, t: i64, prev_t: i64, model_output: &Tensor) -> Result<Tensor> {
        let a_t = self.train.alpha_cumprod_at(t)?;
        let a_prev = if prev_t >= 0 { self.train.alpha_cumprod_at(prev_t)? } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let eps = self.prediction.eps(model_output, sample, Noising::alpha_bar(a_t));
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        Ok(sample * f64::from(sample_coeff) - eps * f64::from(a_prev - a_t) / f64::from(denom))
    }

    fn step_prk(&mut self, model_output: &Tensor, t: i64, sample: &Tensor) -> Result<Tensor> {
        let c = self.counter;
        let diff_to_prev = if c % 2 == 1 { 0 } else { self.ratio / 2 };
        let prev_t = t - diff_to_prev;
        let t = self.prk_timesteps[c / 4 * 4];
        let acc = |cur: Option<Tensor>, x: Tensor| match cur {
            None => x,
            Some(c) => c + x,
        };
        let model_output = match c % 4 {
            0 => {
                self.cur_model_output = Some(acc(self.cur_model_output.take(), model_output * (1.0 / 6.0)));
                self.ets.push(model_output.shallow_clone());
                self.cur_sample = Some(sample.shallow_clone());
                model_output.shallow_clone()
            }
            1 | 2 => {
                self.cur_model_output = Some(acc(self.cur_model_output.take(), model_output * (1.0 / 3.0)));
                model_output.shallow_clone()
            }
            _ => acc(self.cur_model_output.take(), model_output * (1.0 / 6.0)),
        };
        let cur_sample = self.cur_sample.as_ref().unwrap_or(sample).shallow_clone();
        self.prev_sample(&cur_sample, t, prev_t, &model_output)
    }

    fn step_plms(&mut self, model_output: &Tensor, t: i64, sample: &Tensor) -> Result<Tensor> {
        let (mut t, mut prev_t) = (t, t - self.ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.shallow_clone());
        } else {
            prev_t = t;
            t += self.ratio;
        }
        let e = &self.ets;
        let n = e.len();
        let mut sample = sample.shallow_clone();
        let eps = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.shallow_clone());
            model_output.shallow_clone()
        } else if n == 1 && self.counter == 1 {
            if let Some(s) = self.cur_sample.take() {
                sample = s;
            }
            (model_output + &e[n - 1]) / 2.0
        } else if n == 2 {
            (&e[n - 1] * 3.0 - &e[n - 2]) / 2.0
        } else if n == 3 {
            (&e[n - 1] * 23.0 - &e[n - 2] * 16.0 + &e[n - 3] * 5.0) / 12.0
        } else {
            (&e[n - 1] * 55.0 - &e[n - 2] * 59.0 + &e[n - 3] * 37.0 - &e[n - 4] * 9.0) * (1.0 / 24.0)
        };
        self.prev_sample(&sample, t, prev_t, &eps)
    }
}

impl Scheduler for Pndm {
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
        let t = *self.all_timesteps.get(i).ok_or_else(|| Error::invalid(format!("PNDM has no step {i}")))?;
        let out = if self.counter < self.prk_timesteps.len() {
            self.step_prk(model_output, t, sample)?
        } else {
            self.step_plms(model_output, t, sample)?
        };
        self.counter += 1;
        Ok(out)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        let t = *self.all_timesteps.get(i).ok_or_else(|| Error::invalid(format!("PNDM has no step {i}")))?;
        Ok(Noising::alpha_bar(self.train.alpha_cumprod_at(t)?).add_noise(original, noise))
    }

    fn config_json(&self) -> Value {
        self.cfg.to_json()
    }
}
