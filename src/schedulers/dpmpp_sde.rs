//! DPM-Solver++ SDE, diffusers' `DPMSolverSDEScheduler` (A1111's "DPM++ SDE", k-diffusion's
//! `sample_dpmpp_sde`): a second-order singlestep sampler with two model evaluations per
//! step, the second at the midpoint in log σ, and ancestral noise at both.
//!
//! Deviation from diffusers, by necessity: diffusers draws the noise from torchsde's
//! Brownian tree (`BrownianInterval`), a random stream of torchsde's own that only torchsde
//! reproduces, and seeds it from torch's global RNG unless `noise_sampler_seed` is set, so
//! not even diffusers repeats itself by default. sdgen draws the same Brownian increments,
//! in law, from the pipeline's seeded generator: each step queries W over [σ_mid, σ] and
//! then over [σ_next, σ]; with z₁, z₂ ~ N(0, 1) drawn in that order (one latent-shaped
//! tensor each), the first query returns z₁ and the second
//! (z₁·√(σ − σ_mid) + z₂·√(σ_mid − σ_next)) / √(σ − σ_next), which is how a Brownian path
//! normalises over nested intervals. Different steps use disjoint intervals, so their
//! increments are independent, as in the tree. `noise_sampler_seed` is therefore ignored.
//! Everything else follows diffusers exactly.

use super::common::{self, ClassConfig, Spacing, StepOrder, TrainSchedule};
use super::prediction::{Noising, Prediction};
use super::sigmas::{self, SigmaSchedule};
use super::{Scheduler, SchedulerConfig};
use crate::noise::NoiseSource;
use crate::{Error, Result};
use serde_json::{json, Value};
use tch::Tensor;

pub const CLASS: &str = "DPMSolverSDEScheduler";

fn defaults() -> Vec<(&'static str, Value)> {
    let mut d = common::base_defaults();
    // This class has its own (SD-like) beta defaults.
    common::set_default(&mut d, "beta_start", json!(0.00085));
    common::set_default(&mut d, "beta_end", json!(0.012));
    d.extend([
        ("prediction_type", json!("epsilon")),
        ("use_karras_sigmas", json!(false)),
        ("use_exponential_sigmas", json!(false)),
        ("use_beta_sigmas", json!(false)),
        ("noise_sampler_seed", Value::Null),
        ("timestep_spacing", json!("linspace")),
        ("steps_offset", json!(0)),
    ]);
    d
}

/// State kept between the two evaluations of one step.
#[derive(Debug)]
struct Midpoint {
    /// The sample at the start of the step.
    sample: Tensor,
    /// σ at the midpoint, where the second evaluation happens.
    sigma: f32,
    /// The first Brownian draw and the interval [σ_mid, σ] it covers.
    z1: Tensor,
    from: f32,
}

#[derive(Debug)]
pub struct DpmSolverSde {
    config: ClassConfig,
    /// Two per step (start, midpoint) except the last, which has one.
    timesteps: Vec<f64>,
    /// σ per evaluation: [σ₀, σ₁, σ₁, …, σₙ₋₁, σₙ₋₁, 0], float32 as diffusers holds them.
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    prediction: Prediction,
    midpoint: Option<Midpoint>,
    order_check: StepOrder,
}

impl DpmSolverSde {
    pub fn new(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<DpmSolverSde> {
        let mut cfg = ClassConfig::new(CLASS, config, &defaults())?;
        if steps == 0 {
            return Err(Error::invalid("the number of inference steps must be at least 1"));
        }
        let prediction = match Prediction::from_config(&cfg, &["epsilon", "v_prediction"]) {
            Ok(p) => p,
            Err(_) => {
                return Err(Error::invalid(format!(
                    "scheduler_config.json: `prediction_type` must be \"epsilon\" or \"v_prediction\" for {CLASS}"
                )))
            }
        };
        let schedule = common::apply_schedule(&mut cfg, schedule)?;
        let spacing = Spacing::from_config(&cfg)?;
        let train = TrainSchedule::new(&cfg, false)?;

        let spaced = common::spaced_timesteps(spacing, train.len(), steps, cfg.usize("steps_offset")?);
        let (sigmas, timesteps) = sigmas::ladder_at(&train, &spaced, schedule, steps);
        let logs = sigmas::log_sigmas(&train.sigmas());
        // Midpoints in t = −log σ between consecutive sigmas.
        let mids: Vec<f64> = sigmas
            .windows(2)
            .map(|w| {
                let (t0, t1) = (-w[0].ln(), -w[1].ln());
                sigmas::sigma_to_t((-(t0 + (t1 - t0) * 0.5)).exp(), &logs)
            })
            .collect();

        let mut ladder: Vec<f32> = Vec::with_capacity(2 * sigmas.len());
        let mut ts: Vec<f64> = Vec::with_capacity(2 * timesteps.len());
        for (k, (&s, &t)) in sigmas.iter().zip(&timesteps).enumerate() {
            ladder.push(s as f32);
            ts.push(t);
            if k > 0 {
                ladder.push(s as f32);
            }
            if let Some(&m) = mids.get(k) {
                ts.push(m);
            }
        }
        ladder.push(0.0);
        let sigma_max = ladder.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => f64::from(sigma_max),
            Spacing::Leading => f64::from((sigma_max * sigma_max + 1.0).sqrt()),
        };
        Ok(DpmSolverSde {
            config: cfg,
            timesteps: ts,
            sigmas: ladder,
            init_noise_sigma,
            prediction,
            midpoint: None,
            order_check: StepOrder::default(),
        })
    }

    /// The sigma per model evaluation, plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

/// W over [σ_next, σ] normalised to unit variance, given the normalised increment `z1` over
/// the nested [σ_mid, σ] and a fresh `z2` for [σ_next, σ_mid].
fn nested_increment(z1: &Tensor, z2: &Tensor, sigma: f32, mid: f32, next: f32) -> Tensor {
    let root = |v: f32| f64::from(v.abs().sqrt());
    (z1 * root(sigma - mid) + z2 * root(mid - next)) / root(sigma - next)
}

impl Scheduler for DpmSolverSde {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        let sigma = match &self.midpoint {
            Some(m) => m.sigma,
            None => self.sigmas.get(i).copied().unwrap_or(0.0),
        };
        sample / f64::from((sigma * sigma + 1.0).sqrt())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        i: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        self.order_check.take(i, self.timesteps.len())?;
        let first = self.midpoint.is_none();
        // Scalars in float32, as diffusers' 0-dim tensors: the dummy-model tests cancel
        // large terms, and f64 scalars alone drift past 1e-5 there.
        let (sigma, sigma_next) =
            if first { (self.sigmas[i], self.sigmas[i + 1]) } else { (self.sigmas[i - 1], self.sigmas[i]) };
        let t = -sigma.ln();
        let t_next = -sigma_next.ln();
        let t_mid = t + (t_next - t) * 0.5;
        let sigma_in = if first { sigma } else { (-t_mid).exp() };
        let x0 = self.prediction.x0(model_output, sample, Noising::Sigma(sigma_in));

        if sigma_next == 0.0 {
            // The last step: a plain Euler step to σ = 0, no noise.
            let derivative = (sample - &x0) / f64::from(sigma);
            return Ok(sample + derivative * f64::from(sigma_next - sigma));
        }
        let t_to = if first { t_mid } else { t_next };
        let (sigma_from, sigma_to) = ((-t).exp(), (-t_to).exp());
        let sigma_up =
            sigma_to.min((sigma_to.powi(2) * (sigma_from.powi(2) - sigma_to.powi(2)) / sigma_from.powi(2)).sqrt());
        let sigma_down = (sigma_to.powi(2) - sigma_up.powi(2)).sqrt();
        let t_down = -sigma_down.ln();

        let z = noise.randn(&sample.size(), sample.device(), sample.kind());
        let (base, w) = match self.midpoint.take() {
            None => {
                self.midpoint = Some(Midpoint {
                    sample: sample.shallow_clone(),
                    sigma: sigma_to,
                    z1: z.shallow_clone(),
                    from: sigma_from,
                });
                (sample.shallow_clone(), z)
            }
            Some(m) => {
                let w = nested_increment(&m.z1, &z, m.from, m.sigma, sigma_to);
                (m.sample, w)
            }
        };
        let prev = &base * f64::from((-t_down).exp() / (-t).exp()) - x0 * f64::from((t - t_down).exp_m1())
            + w * f64::from(sigma_up);
        Ok(prev.to_kind(sample.kind()))
    }

    fn order(&self) -> usize {
        2
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        super::common::check_index(i, self.timesteps().len())?;
        Ok(Noising::Sigma(sigmas::at(&self.sigmas, i)?).add_noise(original, noise))
    }

    fn set_begin_index(&mut self, begin: usize) -> Result<()> {
        self.order_check.begin_at(begin, self.timesteps.len())
    }

    fn config_json(&self) -> Value {
        self.config.to_json()
    }
}

/// The table's constructor for "DPM++ SDE".
pub fn build(config: &SchedulerConfig, schedule: SigmaSchedule, steps: usize) -> Result<Box<dyn Scheduler>> {
    Ok(Box::new(DpmSolverSde::new(config, schedule, steps)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The two queries of one step must have the law of a Brownian path's normalised
    /// increments over nested intervals: unit variance each, correlation √((σ − σ_mid)/(σ − σ_next)).
    #[test]
    fn nested_increments_have_brownian_law() {
        tch::manual_seed(1234);
        let n = 400_000;
        let z1 = Tensor::randn([n], (Kind::Double, Device::Cpu));
        let z2 = Tensor::randn([n], (Kind::Double, Device::Cpu));
        let (s, mid, next) = (7.0f32, 3.0, 1.5);
        let w = nested_increment(&z1, &z2, s, mid, next);
        let var = w.var(true).double_value(&[]);
        let corr = (&w * &z1).mean(Kind::Double).double_value(&[]);
        let expected = f64::from((s - mid) / (s - next)).sqrt();
        // Standard errors at n = 4e5 are about 0.002; allow 3σ.
        assert!((var - 1.0).abs() < 0.007, "variance {var}");
        assert!((corr - expected).abs() < 0.006, "correlation {corr} vs {expected}");
        assert!(w.mean(Kind::Double).double_value(&[]).abs() < 0.006);
    }
}
