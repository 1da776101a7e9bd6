//! UniPC, diffusers' `UniPCMultistepScheduler`: a multistep predictor (UniP) followed, at the
//! next step, by a corrector (UniC) that reuses the new model evaluation for free. Variants
//! bh1 / bh2 (default), orders 1–3 (any order works; diffusers recommends ≤ 3), data (x₀) or
//! noise prediction.
//!
//! As in [`super::dpmpp_2m`], scalar coefficients and the small linear systems for the
//! higher-order weights are computed in f64 from the float32 sigmas.

use super::common::{self, require_unsupported_off, train_schedule_zero_snr, ClassConfig, Spacing, StepOrder};
use super::prediction::{Noising, Prediction};
use super::sigmas::{self, alpha_sigma_t, lambda, FinalSigma, SigmaSchedule};
use super::{Scheduler, SchedulerConfig};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::Tensor;

pub const CLASS: &str = "UniPCMultistepScheduler";

fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = common::base_defaults();
    d.extend([
        ("solver_order", json!(2)),
        ("prediction_type", json!("epsilon")),
        ("thresholding", json!(false)),
        ("dynamic_thresholding_ratio", json!(0.995)),
        ("sample_max_value", json!(1.0)),
        ("predict_x0", json!(true)),
        ("solver_type", json!("bh2")),
        ("lower_order_final", json!(true)),
        ("disable_corrector", json!([])),
        ("solver_p", Value::Null),
        ("use_karras_sigmas", json!(false)),
        ("use_exponential_sigmas", json!(false)),
        ("use_beta_sigmas", json!(false)),
        ("use_flow_sigmas", json!(false)),
        ("flow_shift", json!(1.0)),
        ("timestep_spacing", json!("linspace")),
        ("steps_offset", json!(0)),
        ("final_sigmas_type", json!("zero")),
        ("rescale_betas_zero_snr", json!(false)),
        ("use_dynamic_shifting", json!(false)),
        ("time_shift_type", json!("exponential")),
    ]);
    d
}

/// How the φ-function weights are normalised (UniPC paper, B(h)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bh {
    /// B(h) = h.
    Bh1,
    /// B(h) = eʰ − 1.
    Bh2,
}

#[derive(Debug)]
pub struct UniPcMultistep {
    config: ClassConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    predict_x0: bool,
    bh: Bh,
    order: usize,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    /// The latest converted model outputs, newest last, at most `order`.
    outputs: Vec<Tensor>,
    lower_order_nums: usize,
    /// The predictor's input and order at the previous step, for the corrector.
    last_sample: Option<Tensor>,
    this_order: usize,
    order_check: StepOrder,
}

/// The weights of one UniP / UniC update: h, the φ-function terms and the ρ solution.
struct Weights {
    h_phi_1: f64,
    b_h: f64,
    rks: Vec<f64>,
    b: Vec<f64>,
}

impl UniPcMultistep {
    pub fn new(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<UniPcMultistep> {
        let mut cfg = ClassConfig::new(CLASS, config, &defaults())?;
        if steps == 0 {
            return Err(Error::invalid("the number of inference steps must be at least 1"));
        }
        // diffusers maps the DPM-Solver / DEIS solver types onto bh2.
        let bh = match cfg.choice("solver_type", &["bh1", "bh2", "midpoint", "heun", "logrho"])?.as_str() {
            "bh1" => Bh::Bh1,
            _ => {
                cfg.set("solver_type", json!("bh2"));
                Bh::Bh2
            }
        };
        let order = cfg.usize("solver_order")?;
        if order == 0 {
            return Err(Error::invalid(format!(
                "scheduler_config.json: `solver_order` = 0 is not valid for {CLASS}: expected 1, 2 or 3"
            )));
        }
        let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
        require_unsupported_off(&cfg, &["thresholding", "use_flow_sigmas", "use_dynamic_shifting"])?;
        cfg.require("solver_p", &Value::Null)?;
        let disable_corrector = match cfg.to_json().get("disable_corrector") {
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_u64().map(|u| u as usize)).collect::<Option<Vec<_>>>().ok_or_else(|| {
                    Error::invalid("scheduler_config.json: `disable_corrector` must be a list of step indices")
                })?
            }
            _ => {
                return Err(Error::invalid("scheduler_config.json: `disable_corrector` must be a list of step indices"))
            }
        };
        let schedule = common::apply_schedule(&mut cfg, schedule)?;
        let final_sigma = match cfg.choice("final_sigmas_type", &["zero", "sigma_min"])?.as_str() {
            "zero" => FinalSigma::Zero,
            _ => FinalSigma::LadderMin,
        };
        let spacing = Spacing::from_config(&cfg)?;
        let train = train_schedule_zero_snr(&cfg)?;
        let num_train = train.len();
        let spaced = common::multistep_timesteps(spacing, num_train, num_train, steps, cfg.usize("steps_offset")?);
        let (timesteps, sigmas) = sigmas::multistep_ladder(&train, &spaced, schedule, true, final_sigma);
        Ok(UniPcMultistep {
            timesteps,
            sigmas,
            prediction,
            predict_x0: cfg.bool("predict_x0")?,
            bh,
            order,
            lower_order_final: cfg.bool("lower_order_final")?,
            disable_corrector,
            outputs: Vec::with_capacity(order),
            lower_order_nums: 0,
            last_sample: None,
            this_order: 1,
            order_check: StepOrder::default(),
            config: cfg,
        })
    }

    /// The sigma ladder, one more value than timesteps (the last is the final sigma).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn sigma(&self, i: usize) -> f64 {
        f64::from(self.sigmas[i])
    }

    /// The model output as the solver integrates it: x₀ (`predict_x0`) or ε.
    fn convert(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        let at = Noising::vp_from_sigma(self.sigma(i));
        if self.predict_x0 {
            self.prediction.x0(model_output, sample, at)
        } else {
            self.prediction.eps(model_output, sample, at)
        }
    }

    /// h = λ(t) − λ(s0) and the φ-function right-hand side for `order`, with the ratios
    /// r_k = (λ(s_k) − λ(s0)) / h of the earlier points `prev` (nearest first).
    fn weights(&self, t: usize, s0: usize, prev: &[usize], order: usize) -> Weights {
        let l_s0 = lambda(self.sigma(s0));
        let h = lambda(self.sigma(t)) - l_s0;
        let mut rks: Vec<f64> = prev.iter().map(|&s| (lambda(self.sigma(s)) - l_s0) / h).collect();
        rks.push(1.0);
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.bh {
            Bh::Bh1 => hh,
            Bh::Bh2 => hh.exp_m1(),
        };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let mut b = Vec::with_capacity(order);
        for k in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (k + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        Weights { h_phi_1, b_h, rks, b }
    }

    /// The order-0 part shared by predictor and corrector, stepping `x` from s0 to t.
    fn base(&self, t: usize, s0: usize, x: &Tensor, m0: &Tensor, w: &Weights) -> Tensor {
        let (alpha_t, sigma_t) = alpha_sigma_t(self.sigma(t));
        let (alpha_s0, sigma_s0) = alpha_sigma_t(self.sigma(s0));
        if self.predict_x0 {
            x * (sigma_t / sigma_s0) - m0 * (alpha_t * w.h_phi_1)
        } else {
            x * (alpha_t / alpha_s0) - m0 * (sigma_t * w.h_phi_1)
        }
    }

    /// α_t·B(h) (data prediction) or σ_t·B(h) (noise prediction): the weight of the
    /// higher-order correction.
    fn correction_scale(&self, t: usize, w: &Weights) -> f64 {
        let (alpha_t, sigma_t) = alpha_sigma_t(self.sigma(t));
        if self.predict_x0 {
            alpha_t * w.b_h
        } else {
            sigma_t * w.b_h
        }
    }

    /// UniP: from step `i`'s sample to the next, with `order` model outputs.
    fn predict(&self, i: usize, x: &Tensor, order: usize) -> Result<Tensor> {
        let n = self.outputs.len();
        let m0 = &self.outputs[n - 1];
        let prev: Vec<usize> = (1..order).map(|k| i - k).collect();
        let w = self.weights(i + 1, i, &prev, order);
        let base = self.base(i + 1, i, x, m0, &w);
        if order == 1 {
            return Ok(base);
        }
        let rhos = if order == 2 { vec![0.5] } else { solve(&w.rks, &w.b, order - 1)? };
        let mut res: Option<Tensor> = None;
        for (k, rho) in rhos.iter().enumerate() {
            let d = (&self.outputs[n - 2 - k] - m0) / w.rks[k];
            let term = d * *rho;
            res = Some(match res {
                None => term,
                Some(r) => r + term,
            });
        }
        Ok(match res {
            Some(r) => base - r * self.correction_scale(i + 1, &w),
            None => base,
        })
    }

    /// UniC: refines the sample that the previous step predicted for step `i`, using the
    /// new converted output `model_t` at step `i`.
    fn correct(&self, i: usize, last_sample: &Tensor, model_t: &Tensor, order: usize) -> Result<Tensor> {
        let n = self.outputs.len();
        let m0 = &self.outputs[n - 1];
        let prev: Vec<usize> = (1..order).map(|k| i - 1 - k).collect();
        let w = self.weights(i, i - 1, &prev, order);
        let base = self.base(i, i - 1, last_sample, m0, &w);
        let rhos = if order == 1 { vec![0.5] } else { solve(&w.rks, &w.b, order)? };
        let mut res = (model_t - m0) * rhos[order - 1];
        for (k, rho) in rhos[..order - 1].iter().enumerate() {
            let d = (&self.outputs[n - 2 - k] - m0) / w.rks[k];
            res = d * *rho + res;
        }
        Ok(base - res * self.correction_scale(i, &w))
    }
}

/// Solves R ρ = b for the leading `size` × `size` block, where row k of R holds the
/// ratios to the power k (a Vandermonde system), by Gaussian elimination with pivoting.
fn solve(rks: &[f64], b: &[f64], size: usize) -> Result<Vec<f64>> {
    let mut a: Vec<Vec<f64>> =
        (0..size).map(|k| (0..size).map(|j| rks[j].powi(k as i32)).chain([b[k]]).collect()).collect();
    for col in 0..size {
        let pivot = (col..size).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs())).unwrap_or(col);
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            return Err(Error::invalid(
                "UniPC: the step sizes give a singular system for the solver weights; use fewer steps or a lower \
                 solver_order",
            ));
        }
        a.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for row in lower.iter_mut() {
            let f = row[col] / pivot_row[col];
            for (v, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
        }
    }
    let mut x = vec![0.0; size];
    for row in (0..size).rev() {
        let s: f64 = (row + 1..size).map(|j| a[row][j] * x[j]).sum();
        x[row] = (a[row][size] - s) / a[row][row];
    }
    Ok(x)
}

impl Scheduler for UniPcMultistep {
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
        self.order_check.take(i, self.timesteps.len())?;
        let converted = self.convert(model_output, sample, i);
        let use_corrector = i > 0 && !self.disable_corrector.contains(&(i - 1));
        let sample = match (&self.last_sample, use_corrector) {
            (Some(last), true) => self.correct(i, last, &converted, self.this_order)?.to_kind(sample.kind()),
            _ => sample.shallow_clone(),
        };
        if self.outputs.len() == self.order {
            drop(self.outputs.remove(0));
        }
        self.outputs.push(converted);

        let order = if self.lower_order_final { self.order.min(self.timesteps.len() - i) } else { self.order };
        self.this_order = order.min(self.lower_order_nums + 1);
        let prev = self.predict(i, &sample, self.this_order)?.to_kind(sample.kind());
        self.last_sample = Some(sample);
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.order);
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        let sigma = sigmas::at(&self.sigmas, i)?;
        Ok(Noising::vp_from_sigma_f32(sigma).add_noise(original, noise))
    }

    fn set_begin_index(&mut self, begin: usize) -> Result<()> {
        self.order_check.begin_at(begin, self.timesteps.len())
    }

    fn config_json(&self) -> Value {
        self.config.to_json()
    }
}

/// The table's constructor for "UniPC".
pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(UniPcMultistep::new(config, schedule, steps)?))
}
