//! Noise schedulers behind one [`Scheduler`] trait, configured from `scheduler_config.json`,
//! and the one table that maps every scheduler name (diffusers class, A1111 display name,
//! short alias) to its constructor.
//!
//! A scheduler sees tensors and step indices only; it knows nothing of models or files.
//! Timesteps are fixed when a scheduler is built (diffusers' `set_timesteps`); the only
//! setup after that is where to begin (img2img's `set_begin_index`).
//!
//! Layout: [`sigmas`] builds sigma ladders (model default, Karras, exponential) and the
//! per-family ladders; [`prediction`] holds the one conversion from the model's prediction
//! type to x̂₀ / ε̂ and back (`add_noise`); [`common`] the config, training schedule and
//! timestep spacing; each sampler file only samples.

pub mod common;
pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm2;
pub mod dpm2_ancestral;
pub mod dpmpp_2m;
pub mod dpmpp_sde;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod lcm;
pub mod lms;
pub mod pndm;
pub mod prediction;
pub mod sigmas;
pub mod unipc;

pub use config::SchedulerConfig;
pub use sigmas::SigmaSchedule;

use crate::noise::NoiseSource;
use crate::{Error, Result};
use tch::Tensor;

/// One sampling algorithm, set up for a given number of inference steps.
///
/// The pipeline loop is, for `i in 0..timesteps().len()`:
/// `x_in = scale_model_input(x, i)`, `eps = unet(x_in, timesteps()[i])`, `x = step(eps, i, x)`.
///
/// img2img begins late: `set_begin_index(b)`, `x = add_noise(image_latents, noise, b)`, then
/// the same loop for `i in b..timesteps().len()`.
pub trait Scheduler: Send {
    /// The timestep values passed to the UNet, one per model evaluation, in order.
    /// Integer-valued for most schedulers; fractional where diffusers passes floats.
    fn timesteps(&self) -> &[f64];

    /// The scale of the initial noise (σ_max-derived for sigma samplers; 1 by default, as
    /// DDIM-style schedulers use).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// Scales the latents before the UNet sees them at model evaluation `i` (by default they
    /// pass unchanged, as in DDIM-style schedulers).
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor {
        let _ = i;
        sample.shallow_clone()
    }

    /// Advances one model evaluation: the UNet output `model_output` at evaluation `i`
    /// for latents `sample`. Stochastic samplers draw from `noise`.
    fn step(&mut self, model_output: &Tensor, i: usize, sample: &Tensor, noise: &mut dyn NoiseSource)
        -> Result<Tensor>;

    /// The clean latents `original` noised to the level of evaluation `i`, as diffusers'
    /// `scheduler.add_noise(original, noise, timesteps[i])` after `set_begin_index(i)`:
    /// `original + noise·σ_i` on a sigma ladder, `√ᾱ·original + √(1 − ᾱ)·noise` (or the
    /// ladder's α_t, σ_t) for the variance-preserving classes.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor>;

    /// Model evaluations per inference step (diffusers' `scheduler.order`): 2 for the
    /// samplers that evaluate twice per step (Heun, DPM2, DPM2 a, DPM++ SDE), else 1.
    /// img2img begins at `t_start * order()`.
    fn order(&self) -> usize {
        1
    }

    /// Begins sampling at evaluation `begin` instead of 0 (diffusers' `set_begin_index`, which
    /// img2img calls with `t_start * order`). Call it before the first step; samplers with
    /// history then start it there, as diffusers' do.
    fn set_begin_index(&mut self, begin: usize) -> Result<()> {
        common::check_begin(begin, self.timesteps().len())
    }

    /// The effective config, as diffusers' `scheduler.config` would hold it (the file's
    /// values over the class defaults, `_class_name` included), for records.
    fn config_json(&self) -> serde_json::Value;
}

/// The model's estimate of the clean latents x̂₀ at evaluation `i`, from its (guided) output
/// for latents `sample`, for previews: what A1111 shows while an image forms, where the
/// latents themselves are still mostly noise early on. Works for every sampler through its
/// own `add_noise`, which is affine in (x₀, ε) with the coefficients of evaluation `i`'s noise
/// level: α = 1 means a sigma ladder (x = x₀ + σ·ε), anything else the variance-preserving
/// form. `None` where the level can't be read or is pure noise (α = 0).
pub fn denoised(
    scheduler: &dyn Scheduler,
    prediction: prediction::Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    i: usize,
) -> Option<Tensor> {
    use prediction::Noising;
    let probe = |x0: f64, eps: f64| -> Option<f64> {
        let opts = (tch::Kind::Float, tch::Device::Cpu);
        let noised = scheduler.add_noise(&Tensor::full([1], x0, opts), &Tensor::full([1], eps, opts), i).ok()?;
        noised.f_double_value(&[0]).ok()
    };
    let (alpha, sigma) = (probe(1.0, 0.0)?, probe(0.0, 1.0)?);
    if !(alpha.is_finite() && sigma.is_finite()) || alpha <= 0.0 {
        return None;
    }
    let at = if alpha == 1.0 { Noising::Sigma(sigma as f32) } else { Noising::Vp { alpha, sigma } };
    Some(prediction.x0(model_output, sample, at))
}

/// Builds one scheduler from a config, a sigma schedule and a step count (≥ 1).
pub type Constructor = fn(&SchedulerConfig, SigmaSchedule, usize) -> Result<Box<dyn Scheduler>>;

/// One row of the scheduler table.
#[derive(Debug)]
pub struct SchedulerInfo {
    /// A1111's display name ("Euler a", "DPM++ 2M").
    pub a1111_name: &'static str,
    /// The diffusers class that implements it ("EulerAncestralDiscreteScheduler").
    pub diffusers_name: &'static str,
    /// Other accepted names, lowercase ("euler_a", "k_euler_a").
    pub aliases: &'static [&'static str],
    /// One line for `sdgen schedulers`.
    pub description: &'static str,
    /// Sigma schedules it can run on; `Default` is always first.
    pub schedules: &'static [SigmaSchedule],
    constructor: Constructor,
}

impl SchedulerInfo {
    pub fn supports(&self, schedule: SigmaSchedule) -> bool {
        self.schedules.contains(&schedule)
    }

    /// A1111's "Schedule type" label for this sampler run on `schedule` (`None`: default).
    pub fn schedule_label(&self, schedule: Option<SigmaSchedule>) -> &'static str {
        schedule.unwrap_or(SigmaSchedule::Default).a1111_label()
    }

    /// The A1111 sampler name with the schedule folded in, as A1111 before 1.9 wrote it
    /// ("DPM++ 2M Karras").
    pub fn a1111_combined_name(&self, schedule: Option<SigmaSchedule>) -> String {
        match schedule {
            Some(SigmaSchedule::Karras) => format!("{} Karras", self.a1111_name),
            Some(SigmaSchedule::Exponential) => format!("{} Exponential", self.a1111_name),
            _ => self.a1111_name.to_string(),
        }
    }

    /// Builds the scheduler; see [`build`].
    pub fn build(
        &self,
        schedule: Option<SigmaSchedule>,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>> {
        let schedule = schedule.unwrap_or(SigmaSchedule::Default);
        if !self.supports(schedule) {
            let names: Vec<&str> = self.schedules.iter().map(|s| s.short_name()).collect();
            return Err(Error::invalid(format!(
                "scheduler {} ({}) does not support the {} sigma schedule; it supports: {}",
                self.a1111_name,
                self.diffusers_name,
                schedule.short_name(),
                names.join(", ")
            )));
        }
        if steps == 0 {
            return Err(Error::invalid("the number of inference steps must be at least 1"));
        }
        (self.constructor)(config, schedule, steps)
    }
}

use SigmaSchedule::{Default as D, Exponential as E, Karras as K};

const ONLY_DEFAULT: &[SigmaSchedule] = &[D];
const ALL_SCHEDULES: &[SigmaSchedule] = &[D, K, E];

static TABLE: &[SchedulerInfo] = &[
    SchedulerInfo {
        a1111_name: "Euler a",
        diffusers_name: "EulerAncestralDiscreteScheduler",
        aliases: &["euler_a", "euler_ancestral", "k_euler_a", "k_euler_ancestral"],
        description: "Euler ancestral: first-order, adds fresh noise every step (stochastic)",
        schedules: ONLY_DEFAULT,
        constructor: euler_ancestral::build,
    },
    SchedulerInfo {
        a1111_name: "Euler",
        diffusers_name: "EulerDiscreteScheduler",
        aliases: &["euler", "k_euler"],
        description: "Euler: first-order ODE sampler on the sigma ladder",
        schedules: ALL_SCHEDULES,
        constructor: euler::build,
    },
    SchedulerInfo {
        a1111_name: "LMS",
        diffusers_name: "LMSDiscreteScheduler",
        aliases: &["lms", "k_lms"],
        description: "Linear multistep (order 4) on the sigma ladder",
        schedules: ALL_SCHEDULES,
        constructor: lms::build,
    },
    SchedulerInfo {
        a1111_name: "Heun",
        diffusers_name: "HeunDiscreteScheduler",
        aliases: &["heun", "k_heun"],
        description: "Heun: second-order, two model evaluations per step",
        schedules: ALL_SCHEDULES,
        constructor: heun::build,
    },
    SchedulerInfo {
        a1111_name: "DPM2",
        diffusers_name: "KDPM2DiscreteScheduler",
        aliases: &["dpm2", "kdpm2", "k_dpm_2"],
        description: "DPM-Solver-2 (k-diffusion): second-order, midpoint in log sigma",
        schedules: ALL_SCHEDULES,
        constructor: dpm2::build,
    },
    SchedulerInfo {
        a1111_name: "DPM2 a",
        diffusers_name: "KDPM2AncestralDiscreteScheduler",
        aliases: &["dpm2_a", "kdpm2_a", "k_dpm_2_a", "dpm2_ancestral"],
        description: "DPM-Solver-2 ancestral: second-order with fresh noise (stochastic)",
        schedules: ALL_SCHEDULES,
        constructor: dpm2_ancestral::build,
    },
    SchedulerInfo {
        a1111_name: "DPM++ 2M",
        diffusers_name: "DPMSolverMultistepScheduler",
        aliases: &["dpmpp_2m", "dpm++_2m", "dpmsolver++", "k_dpmpp_2m"],
        description: "DPM-Solver++ (2M): second-order multistep, deterministic",
        schedules: ALL_SCHEDULES,
        constructor: dpmpp_2m::build_2m,
    },
    SchedulerInfo {
        a1111_name: "DPM++ 2M SDE",
        diffusers_name: "DPMSolverMultistepScheduler",
        aliases: &["dpmpp_2m_sde", "dpm++_2m_sde", "sde-dpmsolver++", "k_dpmpp_2m_sde"],
        description: "DPM-Solver++ (2M) SDE variant: second-order multistep with noise (stochastic)",
        schedules: ALL_SCHEDULES,
        constructor: dpmpp_2m::build_2m_sde,
    },
    SchedulerInfo {
        a1111_name: "DPM++ SDE",
        diffusers_name: "DPMSolverSDEScheduler",
        aliases: &["dpmpp_sde", "dpm++_sde", "k_dpmpp_sde"],
        description: "DPM-Solver++ SDE: second-order singlestep with Brownian-tree noise (stochastic)",
        schedules: ALL_SCHEDULES,
        constructor: dpmpp_sde::build,
    },
    SchedulerInfo {
        a1111_name: "DDIM",
        diffusers_name: "DDIMScheduler",
        aliases: &["ddim"],
        description: "DDIM: deterministic (eta = 0) denoising diffusion implicit model",
        schedules: ONLY_DEFAULT,
        constructor: ddim::build,
    },
    SchedulerInfo {
        a1111_name: "PLMS",
        diffusers_name: "PNDMScheduler",
        aliases: &["pndm", "plms"],
        description: "PNDM / PLMS: pseudo linear multistep (SD 1.x's default)",
        schedules: ONLY_DEFAULT,
        constructor: pndm::build,
    },
    SchedulerInfo {
        a1111_name: "UniPC",
        diffusers_name: "UniPCMultistepScheduler",
        aliases: &["unipc", "unipc_multistep"],
        description: "UniPC: unified predictor-corrector multistep (bh2), fast at few steps",
        schedules: ALL_SCHEDULES,
        constructor: unipc::build,
    },
    SchedulerInfo {
        a1111_name: "DDPM",
        diffusers_name: "DDPMScheduler",
        aliases: &["ddpm"],
        description: "DDPM: ancestral sampling of the original diffusion model (stochastic)",
        schedules: ONLY_DEFAULT,
        constructor: ddpm::build,
    },
    SchedulerInfo {
        a1111_name: "LCM",
        diffusers_name: "LCMScheduler",
        aliases: &["lcm"],
        description: "Latent consistency model sampler: for LCM-distilled models, 2-8 steps (stochastic)",
        schedules: ONLY_DEFAULT,
        constructor: lcm::build,
    },
];

/// Every known scheduler, in display order.
pub fn all() -> &'static [SchedulerInfo] {
    TABLE
}

fn lookup(name: &str) -> Option<&'static SchedulerInfo> {
    let n = name.trim().to_lowercase();
    TABLE
        .iter()
        .find(|i| i.a1111_name.to_lowercase() == n || i.aliases.contains(&n.as_str()))
        .or_else(|| TABLE.iter().find(|i| i.diffusers_name.to_lowercase() == n))
}

/// The table row and sigma schedule that describe a model's own scheduler config (its
/// `scheduler_config.json`): the row of its `_class_name`, where `DPMSolverMultistepScheduler`
/// is "DPM++ 2M SDE" when `algorithm_type` is "sde-dpmsolver++" and "DPM++ 2M" otherwise,
/// and the schedule its `use_karras_sigmas` / `use_exponential_sigmas` ask for (when the row
/// supports it). `None` when the class is not one sdgen implements, or the config is one no
/// row stands for (the deprecated "dpmsolver" algorithms).
pub fn from_model_config(config: &SchedulerConfig) -> Option<(&'static SchedulerInfo, SigmaSchedule)> {
    let class = config.class_name.as_deref()?.trim();
    let mut rows = TABLE.iter().filter(|i| i.diffusers_name.eq_ignore_ascii_case(class));
    let info = if class.eq_ignore_ascii_case(dpmpp_2m::CLASS) {
        // The same algorithm choice as `DpmSolverMultistep::new`.
        let wanted = match config.extra.get("algorithm_type").and_then(serde_json::Value::as_str) {
            None | Some("dpmsolver++") | Some("deis") => "DPM++ 2M",
            Some("sde-dpmsolver++") => "DPM++ 2M SDE",
            Some(_) => return None,
        };
        rows.find(|i| i.a1111_name == wanted)?
    } else {
        rows.next()?
    };
    let schedule = configured_schedule(config);
    Some((info, if info.supports(schedule) { schedule } else { SigmaSchedule::Default }))
}

/// The sigma schedule a config's `use_karras_sigmas` / `use_exponential_sigmas` flags ask for
/// (`Default` when neither, or both, is set; building the scheduler refuses both).
pub fn configured_schedule(config: &SchedulerConfig) -> SigmaSchedule {
    let flag = |key: &str| config.extra.get(key).and_then(serde_json::Value::as_bool).unwrap_or(false);
    match (flag("use_karras_sigmas"), flag("use_exponential_sigmas")) {
        (true, false) => SigmaSchedule::Karras,
        (false, true) => SigmaSchedule::Exponential,
        _ => SigmaSchedule::Default,
    }
}

/// Finds a scheduler by A1111 name, diffusers class name or alias (case-insensitive).
/// A name that embeds a sigma schedule ("DPM++ 2M Karras", "dpmpp_2m_karras") also
/// returns that schedule.
pub fn resolve(name: &str) -> Result<(&'static SchedulerInfo, Option<SigmaSchedule>)> {
    if let Some(info) = lookup(name) {
        return Ok((info, None));
    }
    let lower = name.trim().to_lowercase();
    for schedule in [SigmaSchedule::Karras, SigmaSchedule::Exponential] {
        let suffix = schedule.short_name();
        for sep in [" ", "_"] {
            if let Some(base) = lower.strip_suffix(&format!("{sep}{suffix}")) {
                if let Some(info) = lookup(base) {
                    if !info.supports(schedule) {
                        return Err(Error::invalid(format!(
                            "scheduler {} does not support the {suffix} sigma schedule",
                            info.a1111_name
                        )));
                    }
                    return Ok((info, Some(schedule)));
                }
            }
        }
    }
    Err(Error::invalid(format!("unknown scheduler {name:?}; known schedulers:\n{}", known_names())))
}

/// One line per scheduler: A1111 name, diffusers class and aliases.
fn known_names() -> String {
    TABLE
        .iter()
        .map(|i| format!("  {} ({}; {})", i.a1111_name, i.diffusers_name, i.aliases.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Resolves `name` and builds the scheduler for `steps` inference steps. An explicit
/// `schedule` overrides one embedded in the name; a combination the scheduler does not
/// support (Karras with DDIM) and `steps == 0` are errors.
pub fn build(
    name: &str,
    schedule: Option<SigmaSchedule>,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let (info, embedded) = resolve(name)?;
    info.build(schedule.or(embedded), config, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_one_row() {
        for info in all() {
            assert!(std::ptr::eq(resolve(info.a1111_name).unwrap().0, info), "{}", info.a1111_name);
            for alias in info.aliases {
                assert!(std::ptr::eq(resolve(alias).unwrap().0, info), "{alias}");
            }
        }
        let (a, _) = resolve("EulerAncestralDiscreteScheduler").unwrap();
        let (b, _) = resolve("euler A").unwrap();
        assert!(std::ptr::eq(a, b));
        let (c, s) = resolve("DPM++ 2M SDE Karras").unwrap();
        assert_eq!((c.a1111_name, s), ("DPM++ 2M SDE", Some(SigmaSchedule::Karras)));
    }

    /// A pipeline keeps its scheduler as `Box<dyn Scheduler>` and may move it to a worker.
    #[test]
    fn schedulers_are_object_safe_and_send() {
        fn send<T: Send>(_: &T) {}
        let s: Box<dyn Scheduler> = build("Euler a", None, &SchedulerConfig::default(), 4).unwrap();
        send(&s);
    }

    #[test]
    fn unknown_and_unsupported_names_error() {
        let e = resolve("nonsense").unwrap_err().to_string();
        assert!(e.contains("Euler a") && e.contains("DDIMScheduler") && e.contains("dpmpp_2m"), "{e}");
        assert!(resolve("DDIM Karras").is_err());
    }
}
