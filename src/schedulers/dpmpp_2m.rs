//! DPM-Solver++ multistep, diffusers' `DPMSolverMultistepScheduler`: A1111's "DPM++ 2M"
//! (`algorithm_type` "dpmsolver++") and "DPM++ 2M SDE" ("sde-dpmsolver++"), solver orders 1–3.
//!
//! The solver works on the data prediction x₀ and steps in λ = log(α/σ); earlier x₀
//! predictions give the higher-order terms. Scalar coefficients are computed in f64 from
//! the float32 sigmas (diffusers uses float32 0-dim tensors), which keeps results within a
//! few float32 ulps of diffusers'.

use super::common::{self, require_unsupported_off, train_schedule_zero_snr, ClassConfig, Spacing, StepOrder};
use super::prediction::{Noising, Prediction};
use super::sigmas::{self, alpha_sigma_t, lambda, FinalSigma, SigmaSchedule};
use super::{Scheduler, SchedulerConfig};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

pub const CLASS: &str = "DPMSolverMultistepScheduler";

/// With or without fresh noise every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// "dpmsolver++": the deterministic ODE solver (DPM++ 2M).
    Ode,
    /// "sde-dpmsolver++": the SDE solver (DPM++ 2M SDE), which draws noise every step.
    Sde,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = common::base_defaults();
    d.extend([
        ("solver_order", json!(2)),
        ("prediction_type", json!("epsilon")),
        ("thresholding", json!(false)),
        ("dynamic_thresholding_ratio", json!(0.995)),
        ("sample_max_value", json!(1.0)),
        ("algorithm_type", json!("dpmsolver++")),
        ("solver_type", json!("midpoint")),
        ("lower_order_final", json!(true)),
        ("euler_at_final", json!(false)),
        ("use_karras_sigmas", json!(false)),
        ("use_exponential_sigmas", json!(false)),
        ("use_beta_sigmas", json!(false)),
        ("use_lu_lambdas", json!(false)),
        ("use_flow_sigmas", json!(false)),
        ("flow_shift", json!(1.0)),
        ("final_sigmas_type", json!("zero")),
        // −∞ (no clipping); JSON has no infinity, so null stands for it.
        ("lambda_min_clipped", Value::Null),
        ("variance_type", Value::Null),
        ("timestep_spacing", json!("linspace")),
        ("steps_offset", json!(0)),
        ("rescale_betas_zero_snr", json!(false)),
        ("use_dynamic_shifting", json!(false)),
        ("time_shift_type", json!("exponential")),
    ]);
    d
}

#[derive(Debug)]
pub struct DpmSolverMultistep {
    config: ClassConfig,
    timesteps: Vec<f64>,
    /// σ per timestep plus the final one, float32 as diffusers holds them.
    sigmas: Vec<f32>,
    variant: Variant,
    solver_type: SolverType,
    prediction: Prediction,
    order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    /// The latest x₀ predictions, newest last, at most `order`.
    outputs: Vec<Tensor>,
    lower_order_nums: usize,
    order_check: StepOrder,
}

impl DpmSolverMultistep {
    /// `variant` forces the algorithm (the A1111 names pick one); `None` takes the config's
    /// `algorithm_type`.
    pub fn new(
        config: &SchedulerConfig,
        schedule: SigmaSchedule,
        steps: usize,
        variant: Option<Variant>,
    ) -> Result<DpmSolverMultistep> {
        let mut cfg = ClassConfig::new(CLASS, config, &defaults())?;
        if steps == 0 {
            return Err(Error::invalid("the number of inference steps must be at least 1"));
        }
        // diffusers maps the retired "deis" algorithm and the UniPC/DEIS solver types onto these.
        if cfg.choice("algorithm_type", &["dpmsolver++", "sde-dpmsolver++", "deis", "dpmsolver", "sde-dpmsolver"])?
            == "deis"
        {
            cfg.set("algorithm_type", json!("dpmsolver++"));
        }
        if let Some(v) = variant {
            let name = if v == Variant::Sde { "sde-dpmsolver++" } else { "dpmsolver++" };
            cfg.set("algorithm_type", json!(name));
        }
        let variant = match cfg
            .choice("algorithm_type", &["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"])?
            .as_str()
        {
            "dpmsolver++" => Variant::Ode,
            "sde-dpmsolver++" => Variant::Sde,
            other => {
                return Err(Error::invalid(format!(
                    "scheduler_config.json: `algorithm_type` \"{other}\" (deprecated in diffusers) is not supported by \
                     sdgen's {CLASS}; use \"dpmsolver++\" or \"sde-dpmsolver++\""
                )))
            }
        };
        let solver_type = match cfg.choice("solver_type", &["midpoint", "heun", "logrho", "bh1", "bh2"])?.as_str() {
            "heun" => SolverType::Heun,
            _ => {
                cfg.set("solver_type", json!("midpoint"));
                SolverType::Midpoint
            }
        };
        let order = cfg.usize("solver_order")?;
        if !(1..=3).contains(&order) {
            return Err(Error::invalid(format!(
                "scheduler_config.json: `solver_order` = {order} is not valid for {CLASS}: expected 1, 2 or 3"
            )));
        }
        let prediction = Prediction::from_config(&cfg, &["epsilon", "sample", "v_prediction"])?;
        require_unsupported_off(
            &cfg,
            &["thresholding", "use_lu_lambdas", "use_flow_sigmas", "use_dynamic_shifting", "variance_type"],
        )?;
        let schedule = common::apply_schedule(&mut cfg, schedule)?;
        let final_zero = cfg.choice("final_sigmas_type", &["zero", "sigma_min"])? == "zero";
        let spacing = Spacing::from_config(&cfg)?;
        let steps_offset = cfg.usize("steps_offset")?;
        let lambda_min_clipped = cfg.opt_f64("lambda_min_clipped")?.unwrap_or(f64::NEG_INFINITY);

        let train = train_schedule_zero_snr(&cfg)?;
        let num_train = train.len();
        // λ decreases with t; timesteps whose λ falls below the clip are not used.
        let clipped = train
            .alphas_cumprod
            .iter()
            .filter(|&&a| f64::from(a.sqrt().ln() - (1.0 - a).sqrt().ln()) < lambda_min_clipped)
            .count();
        let last = num_train - clipped;
        let spaced = common::multistep_timesteps(spacing, last, num_train, steps, steps_offset);
        let round =
            cfg.choice("beta_schedule", &["linear", "scaled_linear", "squaredcos_cap_v2"])? != "squaredcos_cap_v2";
        let final_sigma = if final_zero { FinalSigma::Zero } else { FinalSigma::TrainMin };
        let (timesteps, sigmas) = sigmas::multistep_ladder(&train, &spaced, schedule, round, final_sigma);

        Ok(DpmSolverMultistep {
            timesteps,
            sigmas,
            variant,
            solver_type,
            prediction,
            order,
            lower_order_final: cfg.bool("lower_order_final")?,
            euler_at_final: cfg.bool("euler_at_final")?,
            final_zero,
            outputs: Vec::with_capacity(order),
            lower_order_nums: 0,
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

    /// The x₀ prediction from the model output at step `i`.
    fn data_prediction(&self, model_output: &Tensor, sample: &Tensor, i: usize) -> Tensor {
        self.prediction.x0(model_output, sample, Noising::vp_from_sigma(self.sigma(i)))
    }

    fn first_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let m0 = &self.outputs[self.outputs.len() - 1];
        let (alpha_t, sigma_t) = alpha_sigma_t(self.sigma(i + 1));
        let (_, sigma_s) = alpha_sigma_t(self.sigma(i));
        let h = lambda(self.sigma(i + 1)) - lambda(self.sigma(i));
        match noise {
            None => x * (sigma_t / sigma_s) - m0 * (alpha_t * ((-h).exp() - 1.0)),
            Some(z) => {
                x * (sigma_t / sigma_s * (-h).exp())
                    + m0 * (alpha_t * (1.0 - (-2.0 * h).exp()))
                    + z * (sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())
            }
        }
    }

    fn second_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let n = self.outputs.len();
        let (m0, m1) = (&self.outputs[n - 1], &self.outputs[n - 2]);
        let (alpha_t, sigma_t) = alpha_sigma_t(self.sigma(i + 1));
        let (_, sigma_s0) = alpha_sigma_t(self.sigma(i));
        let (l_t, l_s0, l_s1) = (lambda(self.sigma(i + 1)), lambda(self.sigma(i)), lambda(self.sigma(i - 1)));
        let (h, h_0) = (l_t - l_s0, l_s0 - l_s1);
        let r0 = h_0 / h;
        let d1 = (m0 - m1) * (1.0 / r0);
        match (noise, self.solver_type) {
            (None, SolverType::Midpoint) => {
                let c = alpha_t * ((-h).exp() - 1.0);
                x * (sigma_t / sigma_s0) - m0 * c - d1 * (0.5 * c)
            }
            (None, SolverType::Heun) => {
                x * (sigma_t / sigma_s0) - m0 * (alpha_t * ((-h).exp() - 1.0))
                    + d1 * (alpha_t * (((-h).exp() - 1.0) / h + 1.0))
            }
            (Some(z), solver) => {
                let e = 1.0 - (-2.0 * h).exp();
                let c1 = match solver {
                    SolverType::Midpoint => 0.5 * (alpha_t * e),
                    SolverType::Heun => alpha_t * (e / (-2.0 * h) + 1.0),
                };
                x * (sigma_t / sigma_s0 * (-h).exp()) + m0 * (alpha_t * e) + d1 * c1 + z * (sigma_t * e.sqrt())
            }
        }
    }

    fn third_order(&self, i: usize, x: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let n = self.outputs.len();
        let (m0, m1, m2) = (&self.outputs[n - 1], &self.outputs[n - 2], &self.outputs[n - 3]);
        let (alpha_t, sigma_t) = alpha_sigma_t(self.sigma(i + 1));
        let (_, sigma_s0) = alpha_sigma_t(self.sigma(i));
        let l = |k: usize| lambda(self.sigma(k));
        let (h, h_0, h_1) = (l(i + 1) - l(i), l(i) - l(i - 1), l(i - 1) - l(i - 2));
        let (r0, r1) = (h_0 / h, h_1 / h);
        let d1_0 = (m0 - m1) * (1.0 / r0);
        let d1_1 = (m1 - m2) * (1.0 / r1);
        let d1 = &d1_0 + (&d1_0 - &d1_1) * (r0 / (r0 + r1));
        let d2 = (&d1_0 - &d1_1) * (1.0 / (r0 + r1));
        match noise {
            None => {
                let e = (-h).exp() - 1.0;
                x * (sigma_t / sigma_s0) - m0 * (alpha_t * e) + d1 * (alpha_t * (e / h + 1.0))
                    - d2 * (alpha_t * ((e + h) / (h * h) - 0.5))
            }
            Some(z) => {
                let e = 1.0 - (-2.0 * h).exp();
                x * (sigma_t / sigma_s0 * (-h).exp())
                    + m0 * (alpha_t * e)
                    + d1 * (alpha_t * (e / (-2.0 * h) + 1.0))
                    + d2 * (alpha_t * ((e - 2.0 * h) / (2.0 * h).powi(2) - 0.5))
                    + z * (sigma_t * e.sqrt())
            }
        }
    }
}

impl Scheduler for DpmSolverMultistep {
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
        self.order_check.take(i, self.timesteps.len())?;
        let n = self.timesteps.len();
        let lower_order_final =
            i == n - 1 && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_zero);
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;

        let x0 = self.data_prediction(model_output, sample, i);
        if self.outputs.len() == self.order {
            drop(self.outputs.remove(0));
        }
        self.outputs.push(x0);

        let x = sample.to_kind(Kind::Float);
        let z = match self.variant {
            Variant::Sde => Some(noise.randn(&model_output.size(), model_output.device(), Kind::Float)),
            Variant::Ode => None,
        };
        let prev = if self.order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(i, &x, z.as_ref())
        } else if self.order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, &x, z.as_ref())
        } else {
            self.third_order(i, &x, z.as_ref())
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.order);
        Ok(prev.to_kind(model_output.kind()))
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

/// The table's constructor for "DPM++ 2M" and the class name: the config's `algorithm_type`.
pub fn build_2m(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(DpmSolverMultistep::new(config, schedule, steps, None)?))
}

/// The table's constructor for "DPM++ 2M SDE": always "sde-dpmsolver++".
pub fn build_2m_sde(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(DpmSolverMultistep::new(config, schedule, steps, Some(Variant::Sde))?))
}
