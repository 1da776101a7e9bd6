//! Noise schedulers behind one [`Scheduler`] trait, configured from `scheduler_config.json`.
//!
//! A scheduler sees tensors and step indices only; it knows nothing of models or files.
//! Timesteps are fixed when a scheduler is built (diffusers' `set_timesteps`), so the
//! trait has no mutable setup step.

pub mod config;

pub use config::SchedulerConfig;

use crate::noise::NoiseSource;
use crate::Result;
use tch::Tensor;

/// One sampling algorithm, set up for a given number of inference steps.
///
/// The pipeline loop is, for `i in 0..timesteps().len()`:
/// `x_in = scale_model_input(x, i)`, `eps = unet(x_in, timesteps()[i])`, `x = step(eps, i, x)`.
pub trait Scheduler {
    /// The timestep values passed to the UNet, one per model evaluation, in order.
    /// Integer-valued for most schedulers; fractional where diffusers passes floats.
    fn timesteps(&self) -> &[f64];

    /// The scale of the initial noise (1 for DDIM-style, σ_max-derived for sigma samplers).
    fn init_noise_sigma(&self) -> f64;

    /// Scales the latents before the UNet sees them at model evaluation `i`.
    fn scale_model_input(&self, sample: &Tensor, i: usize) -> Tensor;

    /// Advances one model evaluation: the UNet output `model_output` at evaluation `i`
    /// for latents `sample`. Stochastic samplers draw from `noise`.
    fn step(&mut self, model_output: &Tensor, i: usize, sample: &Tensor, noise: &mut dyn NoiseSource)
        -> Result<Tensor>;
}
