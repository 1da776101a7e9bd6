//! Sigma ladders: the noise levels a sampler walks down and the timesteps the UNet sees at
//! each, built apart from the samplers that walk them (as stable-diffusion.cpp's
//! `SigmaScheduler` stands apart from its samplers). Three schedules: the model's own
//! (training sigmas at the spaced timesteps), Karras and exponential; then the per-family
//! ladders diffusers derives from them (Euler family, KDPM2 midpoints, multistep solvers).
//!
//! Nothing here runs on libtorch. Its vectorised float32 `sqrt`, `log` and `exp` (MKL or
//! SLEEF, chosen per CPU) are not correctly rounded and differ between an AMD and an Intel
//! machine, and some schedule values feed discrete decisions: which training interval a σ
//! falls in, or whether a difference of two nearly equal squares is 0 (see
//! [`ancestral_step`]). Where diffusers uses torch float32, the same operations run in f32
//! here (`+ − × ÷ sqrt` correctly rounded, as IEEE 754 defines them; `ln`/`exp` in f64, then
//! rounded), so the result is what an exact float32 kernel gives on any machine; numpy
//! float64 work is mirrored in f64.

use super::common::{interp, linspace, spaced_timesteps, ClassConfig, Spacing, TrainSchedule};
use crate::{Error, Result};
use tch::Tensor;

/// The sigma schedule a sampler runs on, beyond the model's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigmaSchedule {
    /// The model's training sigmas at the spaced timesteps.
    #[default]
    Default,
    /// Karras et al. 2022, ρ = 7.
    Karras,
    /// Evenly spaced in log σ.
    Exponential,
}

impl SigmaSchedule {
    /// The label A1111 writes as "Schedule type". The model's own sigmas are A1111's
    /// "Uniform"; never "Automatic", which A1111 reads as Karras or exponential for some
    /// samplers.
    pub fn a1111_label(self) -> &'static str {
        match self {
            SigmaSchedule::Default => "Uniform",
            SigmaSchedule::Karras => "Karras",
            SigmaSchedule::Exponential => "Exponential",
        }
    }

    /// The short lowercase name used on the command line and in aliases.
    pub fn short_name(self) -> &'static str {
        match self {
            SigmaSchedule::Default => "default",
            SigmaSchedule::Karras => "karras",
            SigmaSchedule::Exponential => "exponential",
        }
    }
}

/// Karras sigmas from `sigma_max` down to `sigma_min` (diffusers' `_convert_to_karras`), f64.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, steps).into_iter().map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho)).collect()
}

/// Sigmas evenly spaced in log from `sigma_max` to `sigma_min` (`_convert_to_exponential`).
pub fn exponential_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    linspace(sigma_max.ln(), sigma_min.ln(), steps).into_iter().map(f64::exp).collect()
}

/// `np.log` of the float32 training sigmas (diffusers' `log_sigmas`, float32 values).
///
/// Correctly rounded here; numpy's vectorised float32 log is not (a few percent of values
/// are one ulp off, differently per CPU), so fractional timesteps derived from these can
/// differ from diffusers' in the last float32 bit.
pub fn log_sigmas(train_sigmas: &[f32]) -> Vec<f64> {
    log_sigmas_f32(train_sigmas).into_iter().map(f64::from).collect()
}

/// `np.log` of float32 sigmas, kept in float32.
pub fn log_sigmas_f32(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| ln_f32(s)).collect()
}

/// The lower interpolation index of `_sigma_to_t`: the argmax of the cumulative count of
/// `log σ ≥ log_sigmas[i]`, which is the last index where it holds (0 when none does),
/// capped so that `low + 1` is still an index.
fn low_index(n: usize, at_or_above: impl Fn(usize) -> bool) -> usize {
    (0..n).rev().find(|&i| at_or_above(i)).unwrap_or(0).min(n.saturating_sub(2))
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma, linearly
/// interpolated, equals log σ.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let low = low_index(log_sigmas.len(), |i| log_sigma - log_sigmas[i] >= 0.0);
    let high = low + 1;
    let lo = log_sigmas[low];
    let hi = log_sigmas[high];
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// `_sigma_to_t` as diffusers' KDPM2 classes call it, on float32 tensors: the log, the
/// distances and the weight are float32, the final blend float64.
pub fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f64 {
    let log_sigma = ln_f32(sigma.max(1e-10f32));
    let low = low_index(log_sigmas.len(), |i| log_sigma - log_sigmas[i] >= 0.0);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    f64::from(1.0 - w) * low as f64 + f64::from(w) * high as f64
}

/// The sigma ladder and matching timesteps of the Euler-family samplers' `set_timesteps`
/// (linear interpolation of the training sigmas, then optional Karras / exponential).
/// Returns (float64 sigmas without the final one, float64 timesteps) as numpy holds them.
pub fn interpolated_sigmas(
    train: &TrainSchedule,
    spacing: Spacing,
    steps: usize,
    steps_offset: usize,
    schedule: SigmaSchedule,
    sigma_bounds: (Option<f64>, Option<f64>),
) -> (Vec<f64>, Vec<f64>) {
    let num_train = train.len();
    // Timesteps are cast to float32 before interpolation, as diffusers does.
    let timesteps: Vec<f64> =
        spaced_timesteps(spacing, num_train, steps, steps_offset).into_iter().map(|t| f64::from(t as f32)).collect();
    let train_sigmas = train.sigmas();
    let xp: Vec<f64> = (0..num_train).map(|i| i as f64).collect();
    let fp: Vec<f64> = train_sigmas.iter().map(|&s| f64::from(s)).collect();
    let sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &xp, &fp)).collect();
    let convert = |sigmas: Vec<f64>, f: fn(f64, f64, usize) -> Vec<f64>| {
        let lo = sigma_bounds.0.unwrap_or(sigmas[sigmas.len() - 1]);
        let hi = sigma_bounds.1.unwrap_or(sigmas[0]);
        let s = f(lo, hi, steps);
        let logs = log_sigmas(&train_sigmas);
        let t = s.iter().map(|&x| sigma_to_t(x, &logs)).collect();
        (s, t)
    };
    match schedule {
        SigmaSchedule::Default => (sigmas, timesteps),
        SigmaSchedule::Karras => convert(sigmas, karras_sigmas),
        SigmaSchedule::Exponential => convert(sigmas, exponential_sigmas),
    }
}

/// (α_t, σ_t) of the variance-preserving process at the sigma-ladder value σ:
/// α = 1/sqrt(σ² + 1), σ_t = σ·α.
pub fn alpha_sigma_t(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The half log-SNR λ = ln α_t − ln σ_t at the sigma-ladder value σ (+∞ at σ = 0).
pub fn lambda(sigma: f64) -> f64 {
    let (alpha, sigma_t) = alpha_sigma_t(sigma);
    alpha.ln() - sigma_t.ln()
}

/// Training sigmas interpolated at `timesteps` (float64, as `np.interp`), then optionally
/// replaced by a Karras or exponential ladder between their ends. Returns (sigmas,
/// timesteps), where converted ladders get fractional timesteps from [`sigma_to_t`].
/// For samplers that keep float64 timesteps (DPMSolverSDE), unlike [`interpolated_sigmas`].
pub fn ladder_at(
    train: &TrainSchedule,
    timesteps: &[f64],
    schedule: SigmaSchedule,
    steps: usize,
) -> (Vec<f64>, Vec<f64>) {
    let train_sigmas = train.sigmas();
    let xp: Vec<f64> = (0..train.len()).map(|i| i as f64).collect();
    let fp: Vec<f64> = train_sigmas.iter().map(|&s| f64::from(s)).collect();
    let sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &xp, &fp)).collect();
    let (Some(&hi), Some(&lo)) = (sigmas.first(), sigmas.last()) else {
        return (sigmas, timesteps.to_vec());
    };
    let converted = match schedule {
        SigmaSchedule::Default => return (sigmas, timesteps.to_vec()),
        SigmaSchedule::Karras => karras_sigmas(lo, hi, steps),
        SigmaSchedule::Exponential => exponential_sigmas(lo, hi, steps),
    };
    let logs = log_sigmas(&train_sigmas);
    let t = converted.iter().map(|&s| sigma_to_t(s, &logs)).collect();
    (converted, t)
}

/// Where a multistep solver's sigma ladder ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigma {
    /// σ = 0: the last step lands on the clean sample.
    Zero,
    /// The smallest training sigma (σ at t = 0).
    TrainMin,
    /// The last value of a converted Karras / exponential ladder, else the smallest
    /// training sigma (UniPC's `sigma_min`).
    LadderMin,
}

/// The timesteps (integer-valued) and float32 sigmas (one more than timesteps) of the
/// multistep solvers' `set_timesteps`, from the spaced integer `timesteps`.
///
/// Karras and exponential ladders span the training sigmas; their timesteps come from
/// [`sigma_to_t`]; Karras ones are rounded half-to-even when `round_karras`, and all are then
/// truncated toward zero by diffusers' int64 cast (so an unrounded 998.9999 becomes 998).
pub fn multistep_ladder(
    train: &TrainSchedule,
    timesteps: &[f64],
    schedule: SigmaSchedule,
    round_karras: bool,
    final_sigma: FinalSigma,
) -> (Vec<f64>, Vec<f32>) {
    let train_sigmas = train.sigmas();
    let steps = timesteps.len();
    let (sigmas, timesteps): (Vec<f64>, Vec<f64>) = match schedule {
        SigmaSchedule::Default => {
            let xp: Vec<f64> = (0..train.len()).map(|i| i as f64).collect();
            let fp: Vec<f64> = train_sigmas.iter().map(|&s| f64::from(s)).collect();
            let ts: Vec<f64> = timesteps.iter().map(|&t| t.trunc()).collect();
            (ts.iter().map(|&t| interp(t, &xp, &fp)).collect(), ts)
        }
        SigmaSchedule::Karras | SigmaSchedule::Exponential => {
            let lo = f64::from(train_sigmas[0]);
            let hi = f64::from(train_sigmas[train_sigmas.len() - 1]);
            let s = if schedule == SigmaSchedule::Karras {
                karras_sigmas(lo, hi, steps)
            } else {
                exponential_sigmas(lo, hi, steps)
            };
            let logs = log_sigmas(&train_sigmas);
            let ts = s
                .iter()
                .map(|&x| {
                    let t = sigma_to_t(x, &logs);
                    if round_karras && schedule == SigmaSchedule::Karras {
                        t.round_ties_even()
                    } else {
                        t.trunc()
                    }
                })
                .collect();
            (s, ts)
        }
    };
    let last = match final_sigma {
        FinalSigma::Zero => 0.0,
        FinalSigma::LadderMin if schedule != SigmaSchedule::Default => {
            sigmas.last().map_or(train_sigmas[0], |&s| s as f32)
        }
        FinalSigma::TrainMin | FinalSigma::LadderMin => train_sigmas[0],
    };
    let mut out: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
    out.push(last);
    (timesteps, out)
}

/// The correctly rounded float32 natural log (torch's `log` on a float32 tensor, exactly).
pub fn ln_f32(x: f32) -> f32 {
    f64::from(x).ln() as f32
}

/// The correctly rounded float32 exponential.
pub fn exp_f32(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

/// `torch.lerp(a, b, w)` on float32 values, with ATen's two formulas (the second keeps
/// `lerp(a, b, 1) == b`).
pub fn lerp_f32(a: f32, b: f32, w: f32) -> f32 {
    if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// k-diffusion's `get_ancestral_step` (eta = 1): the ancestral step from σ_from to σ_to goes
/// deterministically down to σ_down and adds fresh noise of scale σ_up, with
/// σ_down² + σ_up² = σ_to². In float32, with diffusers' operation order.
///
/// σ_up = √(σ_to²(σ_from² − σ_to²)/σ_from²) is at most σ_to in exact arithmetic, but when
/// σ_from ≫ σ_to it rounds to σ_to or one ulp above it (depending on the rounding of each
/// operation, so on the CPU's math library), and σ_down = √(σ_to² − σ_up²) then becomes
/// √0 or √(negative) = NaN. diffusers has no guard, and a NaN σ poisons the whole image;
/// sdgen clamps σ_up to σ_to as k-diffusion does (`min(sigma_to, ...)`), which only ever
/// moves a value the maths bounds, so σ_down ≥ 0 always.
pub fn ancestral_step(sigma_from: f32, sigma_to: f32) -> (f32, f32) {
    let up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
    // `f32::min` also replaces a NaN (0/0 at σ_from = 0) by σ_to.
    let up = up.min(sigma_to);
    let down = (sigma_to * sigma_to - up * up).sqrt();
    (up, down)
}

/// [v0, v1, v1, …, vn, vn, vn] — diffusers' `cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])`,
/// the per-evaluation layout of the two-evaluation samplers (Heun, KDPM2).
pub fn interleave(v: &[f32]) -> Vec<f32> {
    let mut out = vec![v[0]];
    for &x in &v[1..] {
        out.extend([x, x]);
    }
    out.push(v[v.len() - 1]);
    out
}

/// The value at evaluation `i` of a per-evaluation table, or an error past its end.
pub fn at(v: &[f32], i: usize) -> Result<f32> {
    v.get(i).copied().ok_or_else(|| Error::invalid(format!("scheduler has no step {i}")))
}

/// diffusers' `init_noise_sigma` of the sigma-ladder classes: σ_max, or √(σ_max² + 1) with
/// "leading" spacing.
fn init_noise_sigma(sigmas: &[f32], spacing: Spacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        Spacing::Linspace | Spacing::Trailing => max,
        Spacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// Inference sigmas (with the final one appended) and timesteps, as the Euler-family classes
/// (Euler, Euler a, Heun, LMS) compute them in `set_timesteps`, plus `init_noise_sigma`.
#[derive(Debug, Clone)]
pub struct Ladder {
    /// float32 sigmas, one per timestep plus the final one.
    pub sigmas: Vec<f32>,
    /// Timesteps as float32 values.
    pub timesteps: Vec<f64>,
    pub init_noise_sigma: f32,
}

impl Ladder {
    /// `final_sigma`: `None` for 0, or the value to append (`final_sigmas_type = sigma_min`).
    pub fn new(
        cfg: &ClassConfig,
        train: &TrainSchedule,
        steps: usize,
        schedule: SigmaSchedule,
        bounds: (Option<f64>, Option<f64>),
        final_sigma: Option<f32>,
    ) -> Result<Ladder> {
        let spacing = Spacing::from_config(cfg)?;
        let (sigmas, timesteps) =
            interpolated_sigmas(train, spacing, steps, cfg.usize("steps_offset")?, schedule, bounds);
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(final_sigma.unwrap_or(0.0));
        let timesteps = timesteps.into_iter().map(|t| f64::from(t as f32)).collect();
        let init_noise_sigma = init_noise_sigma(&sigmas, spacing);
        Ok(Ladder { sigmas, timesteps, init_noise_sigma })
    }

    pub fn sigma(&self, i: usize) -> Result<f32> {
        at(&self.sigmas, i)
    }

    /// x / sqrt(σ² + 1), the input scaling of every sigma-ladder sampler.
    pub fn scale(&self, sample: &Tensor, i: usize) -> Tensor {
        scale_by_sigma(sample, self.sigmas.get(i).copied().unwrap_or(0.0))
    }
}

/// x / √(σ² + 1): the UNet input of a sigma-ladder sampler at σ.
pub fn scale_by_sigma(sample: &Tensor, sigma: f32) -> Tensor {
    sample / f64::from((sigma * sigma + 1.0).sqrt())
}

/// The ladder both KDPM2 classes (DPM2, DPM2 a) compute in `set_timesteps` before they
/// derive their midpoints from it.
#[derive(Debug, Clone)]
pub struct Kdpm2Ladder {
    /// Sigmas per inference step plus the final 0, float32.
    pub sigmas: Vec<f32>,
    /// Timesteps per inference step, at the dtype diffusers keeps them (f32 or f64 values).
    pub timesteps: Vec<f64>,
    /// float32 when the timesteps are float32 (model schedule), else float64.
    timesteps_f32: bool,
    log_sigmas: Vec<f32>,
    spacing: Spacing,
}

impl Kdpm2Ladder {
    pub fn new(cfg: &ClassConfig, train: &TrainSchedule, schedule: SigmaSchedule, steps: usize) -> Result<Kdpm2Ladder> {
        let spacing = Spacing::from_config(cfg)?;
        let (sigmas, timesteps) =
            interpolated_sigmas(train, spacing, steps, cfg.usize("steps_offset")?, schedule, (None, None));
        let (timesteps, timesteps_f32) = match schedule {
            SigmaSchedule::Default => (timesteps.iter().map(|&t| f64::from(t as f32)).collect(), true),
            // Only the Karras branch rounds its timesteps, as diffusers does.
            SigmaSchedule::Karras => (timesteps.iter().map(|t| t.round_ties_even()).collect(), false),
            SigmaSchedule::Exponential => (timesteps, false),
        };
        let mut sigmas: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        Ok(Kdpm2Ladder { log_sigmas: log_sigmas_f32(&train.sigmas()), sigmas, timesteps, timesteps_f32, spacing })
    }

    pub fn init_noise_sigma(&self) -> f32 {
        init_noise_sigma(&self.sigmas, self.spacing)
    }

    /// Timesteps for float32 midpoint sigmas, cast to the timesteps' dtype.
    pub fn timesteps_for(&self, sigmas: &[f32]) -> Vec<f64> {
        sigmas
            .iter()
            .map(|&s| {
                let t = sigma_to_t_f32(s, &self.log_sigmas);
                if self.timesteps_f32 {
                    f64::from(t as f32)
                } else {
                    t
                }
            })
            .collect()
    }

    /// DPM2's midpoints: the geometric mean of each σ and the one before it,
    /// `sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()` in float32 (the first value, a
    /// NaN from the rolled-in final 0, is never read).
    pub fn dpm2_midpoints(&self) -> Vec<f32> {
        let s = &self.sigmas;
        (0..s.len())
            .map(|k| {
                let before = s[(k + s.len() - 1) % s.len()];
                exp_f32(lerp_f32(ln_f32(s[k]), ln_f32(before), 0.5))
            })
            .collect()
    }

    /// DPM2 a's (σ_up, σ_down, midpoint) per step, as diffusers' `set_timesteps` computes them
    /// in float32, with σ_up clamped as in [`ancestral_step`]. The midpoint is the geometric
    /// mean of σ and σ_down; where σ_down is 0 (only the last two steps, unless rounding makes
    /// it so) it is 0, the limit, where torch's `lerp` of −∞ gives NaN.
    pub fn ancestral_midpoints(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let s = &self.sigmas;
        let n = s.len();
        let (mut up, mut down, mut mid) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for k in 0..n {
            let next = if k + 1 < n { s[k + 1] } else { 0.0 };
            let (u, d) = ancestral_step(s[k], next);
            let d = if k + 1 < n { d } else { 0.0 };
            let m = if k + 2 >= n || d == 0.0 { 0.0 } else { exp_f32(lerp_f32(ln_f32(s[k]), ln_f32(d), 0.5)) };
            up.push(u);
            down.push(d);
            mid.push(m);
        }
        (up, down, mid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::common::kdpm2_defaults;
    use super::super::SchedulerConfig;

    /// A pair where σ_up = √(σ_to²(σ_from² − σ_to²)/σ_from²) rounds one ulp above σ_to in
    /// float32, so the unclamped σ_down is √(negative) = NaN.
    const ROUNDS_ABOVE: (u32, u32) = (1189202713, 1081933915);

    #[test]
    fn ancestral_step_never_gives_nan() {
        let (from, to) = (f32::from_bits(ROUNDS_ABOVE.0), f32::from_bits(ROUNDS_ABOVE.1));
        let unclamped = (to * to * (from * from - to * to) / (from * from)).sqrt();
        assert!(unclamped > to && (to * to - unclamped * unclamped).sqrt().is_nan(), "the pair must show the defect");
        let (up, down) = ancestral_step(from, to);
        assert_eq!((up, down), (to, 0.0));
        // Many pairs, huge ratios, equal sigmas, zeros and an overflowing square.
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            f64::from(x) / f64::from(u32::MAX)
        };
        let mut pairs: Vec<(f32, f32)> = (0..100_000)
            .map(|_| ((10f64.powf(6.0 * next() - 1.0)) as f32, (10f64.powf(3.0 * next() - 2.0)) as f32))
            .collect();
        pairs.extend([(5.0, 5.0), (0.0, 0.0), (3.0, 0.0), (1e30, 2.0), (f32::MAX, 1.0)]);
        for (from, to) in pairs {
            let to = to.min(from);
            let (up, down) = ancestral_step(from, to);
            assert!(up.is_finite() && down.is_finite(), "{from} -> {to}: up {up}, down {down}");
            assert!(up <= to && down >= 0.0 && down <= to, "{from} -> {to}: up {up}, down {down}");
        }
    }

    /// The reported case: DPM2 a on the cosine schedule at 10 steps. σ_up of the first step
    /// rounds to one ulp below σ₁ (correctly rounded float32, as diffusers computes it on an
    /// Intel CPU; an AMD CPU's libtorch sqrt gave σ₁ itself, σ_down = 0 and a NaN midpoint).
    #[test]
    fn dpm2_ancestral_cosine_midpoints_are_finite_and_portable() {
        let config: SchedulerConfig = serde_json::from_str(r#"{"beta_schedule": "squaredcos_cap_v2"}"#).unwrap();
        let cfg = ClassConfig::new("KDPM2AncestralDiscreteScheduler", &config, &kdpm2_defaults()).unwrap();
        let train = TrainSchedule::new(&cfg, false).unwrap();
        let ladder = Kdpm2Ladder::new(&cfg, &train, SigmaSchedule::Default, 10).unwrap();
        assert_eq!(ladder.sigmas[..2], [20291.303f32, 5.722964]);
        let (up, down, mid) = ladder.ancestral_midpoints();
        assert_eq!(up[0], 5.7229633f32);
        assert!(down[0] > 0.0);
        assert!(up.iter().chain(&down).chain(&mid).all(|v| v.is_finite()));
        let t = ladder.timesteps_for(&mid);
        // diffusers (Intel) has 913.7938232421875: the last float32 bit of its log/exp differs.
        assert!((t[0] - 913.7938232421875).abs() < 1e-4, "{}", t[0]);
    }

    /// The schedule is plain arithmetic, so it can be checked against an independent float64
    /// computation: SD 1.5's ᾱ agree to float32 rounding (each 1 − β rounded once), σ to
    /// what that error becomes through √((1 − ᾱ)/ᾱ), and the Karras ladder and its timesteps
    /// follow.
    #[test]
    fn schedule_matches_a_float64_computation() {
        let config: SchedulerConfig =
            serde_json::from_str(r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#)
                .unwrap();
        let cfg = ClassConfig::new("KDPM2DiscreteScheduler", &config, &kdpm2_defaults()).unwrap();
        let train = TrainSchedule::new(&cfg, false).unwrap();
        let n = 1000;
        let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
        let mut acc = 1.0f64;
        let exact_ac: Vec<f64> = (0..n)
            .map(|i| {
                acc *= 1.0 - (a + (b - a) * i as f64 / (n - 1) as f64).powi(2);
                acc
            })
            .collect();
        let exact: Vec<f64> = exact_ac.iter().map(|ac| ((1.0 - ac) / ac).sqrt()).collect();
        for i in 0..n {
            let (ours, ac) = (f64::from(train.alphas_cumprod[i]), exact_ac[i]);
            assert!((ours - ac).abs() <= 1e-6, "alpha_cumprod {i}: {ours} vs {ac}");
            let bound = 1e-6 / (2.0 * ac * (1.0 - ac)) + 3e-7;
            let s = f64::from(train.sigmas()[i]);
            assert!((s - exact[i]).abs() <= bound * exact[i], "sigma {i}: {s} vs {}", exact[i]);
        }
        let (sigmas, timesteps) =
            interpolated_sigmas(&train, Spacing::Linspace, 10, 0, SigmaSchedule::Karras, (None, None));
        let logs: Vec<f64> = exact.iter().map(|s| s.ln()).collect();
        let karras = karras_sigmas(exact[0], exact[n - 1], 10);
        for k in 0..10 {
            assert!((sigmas[k] - karras[k]).abs() <= 2e-5 * karras[k], "karras {k}: {} vs {}", sigmas[k], karras[k]);
            let t = sigma_to_t(karras[k], &logs);
            assert!((timesteps[k] - t).abs() < 1e-2, "t {k}: {} vs {t}", timesteps[k]);
        }
    }

    #[test]
    fn sigma_to_t_inverts_log_interpolation() {
        let logs = [0.0f64.ln().max(-5.0), 1.0f64.ln(), 2.0f64.ln(), 4.0f64.ln()];
        assert_eq!(sigma_to_t(2.0, &logs), 2.0);
        assert!((sigma_to_t(2.0f64.sqrt(), &logs) - 1.5).abs() < 1e-12);
        assert_eq!(sigma_to_t(100.0, &logs), 3.0);
    }
}
