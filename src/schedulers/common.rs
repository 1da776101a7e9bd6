//! Pieces every scheduler shares: the effective per-class config, the training noise
//! schedule (betas, ᾱ), numpy's array helpers and inference timestep spacing, and the step
//! bookkeeping of the samplers that keep history. Sigma ladders live in [`super::sigmas`],
//! the prediction-type conversion in [`super::prediction`].
//!
//! diffusers computes these partly in torch float32 and partly in numpy float64. Both are
//! mirrored here without libtorch: float32 tensor work as correctly rounded f32 operations
//! (see [`super::sigmas`] for why), numpy work operation by operation in f64
//! (`np.linspace`, `np.arange`, `np.interp`, round-half-to-even).

use super::sigmas::SigmaSchedule;
use super::SchedulerConfig;
use crate::{Error, Result};
use serde_json::{Map, Value};
use tch::{Kind, Tensor};

/// The effective config of one scheduler class: the file's values over the class's
/// defaults, with typed accessors whose errors name the field.
#[derive(Debug, Clone)]
pub struct ClassConfig {
    class: &'static str,
    map: Map<String, Value>,
}

impl ClassConfig {
    /// Merges `config` over `defaults` (the class's `__init__` parameters); `null` in the
    /// file means "default".
    pub fn new(class: &'static str, config: &SchedulerConfig, defaults: &[(&str, Value)]) -> Result<ClassConfig> {
        let given = match serde_json::to_value(config) {
            Ok(Value::Object(m)) => m,
            _ => return Err(Error::invalid("scheduler_config.json: cannot be represented as a JSON object")),
        };
        let mut map = Map::new();
        for (name, default) in defaults {
            let value = match given.get(*name) {
                Some(v) if !v.is_null() => v.clone(),
                _ => default.clone(),
            };
            map.insert((*name).to_string(), value);
        }
        // diffusers also keeps fields it does not use (SD 1.5's DDIM config carries
        // `skip_prk_steps`), so records show the file as given.
        for (name, value) in given {
            if !value.is_null() && !name.starts_with('_') && !map.contains_key(&name) {
                map.insert(name, value);
            }
        }
        Ok(ClassConfig { class, map })
    }

    pub fn class(&self) -> &'static str {
        self.class
    }

    /// The effective config as diffusers' `scheduler.config` holds it, plus `_class_name`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("_class_name".into(), Value::String(self.class.into()));
        for (k, v) in &self.map {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// Overrides one field (e.g. `use_karras_sigmas` when the caller picked Karras).
    pub fn set(&mut self, field: &str, value: Value) {
        self.map.insert(field.to_string(), value);
    }

    fn raw(&self, field: &str) -> &Value {
        self.map.get(field).unwrap_or(&Value::Null)
    }

    fn bad(&self, field: &str, want: &str) -> Error {
        Error::invalid(format!(
            "scheduler_config.json: field `{field}` = {} is not valid for {}: expected {want}",
            self.raw(field),
            self.class
        ))
    }

    pub fn f64(&self, field: &str) -> Result<f64> {
        self.raw(field).as_f64().ok_or_else(|| self.bad(field, "a number"))
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.raw(field) {
            Value::Null => Ok(None),
            v => v.as_f64().map(Some).ok_or_else(|| self.bad(field, "a number or null")),
        }
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        self.raw(field)
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.bad(field, "a non-negative integer"))
    }

    pub fn bool(&self, field: &str) -> Result<bool> {
        self.raw(field).as_bool().ok_or_else(|| self.bad(field, "true or false"))
    }

    /// A string field that must be one of `allowed`.
    pub fn choice(&self, field: &str, allowed: &[&str]) -> Result<String> {
        match self.raw(field).as_str() {
            Some(s) if allowed.contains(&s) => Ok(s.to_string()),
            _ => Err(self.bad(field, &format!("one of {}", allowed.join(", ")))),
        }
    }

    /// A field that must hold its default value because sdgen does not implement the others.
    pub fn require(&self, field: &str, supported: &Value) -> Result<()> {
        if self.raw(field) == supported {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "scheduler_config.json: field `{field}` = {} is not supported by sdgen's {}; only {supported} is",
                self.raw(field),
                self.class
            )))
        }
    }

    /// `trained_betas` as a list, if given.
    pub fn opt_f64_list(&self, field: &str) -> Result<Option<Vec<f64>>> {
        match self.raw(field) {
            Value::Null => Ok(None),
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_f64().ok_or_else(|| self.bad(field, "a list of numbers")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            _ => Err(self.bad(field, "a list of numbers or null")),
        }
    }
}

/// The config fields every DDPM-family scheduler has, with diffusers' shared defaults.
pub fn base_defaults() -> Vec<(&'static str, Value)> {
    use serde_json::json;
    vec![
        ("num_train_timesteps", json!(1000)),
        ("beta_start", json!(0.0001)),
        ("beta_end", json!(0.02)),
        ("beta_schedule", json!("linear")),
        ("trained_betas", Value::Null),
    ]
}

/// The defaults both KDPM2 classes (DPM2, DPM2 a) share.
pub fn kdpm2_defaults() -> Vec<(&'static str, Value)> {
    use serde_json::json;
    let mut d = base_defaults();
    set_default(&mut d, "beta_start", json!(0.00085));
    set_default(&mut d, "beta_end", json!(0.012));
    d.extend([
        ("use_karras_sigmas", json!(false)),
        ("use_exponential_sigmas", json!(false)),
        ("use_beta_sigmas", json!(false)),
        ("prediction_type", json!("epsilon")),
        ("timestep_spacing", json!("linspace")),
        ("steps_offset", json!(0)),
    ]);
    d
}

/// Replaces one class default in a defaults list (classes differ on `beta_start`, ...).
pub fn set_default(defaults: &mut [(&'static str, Value)], field: &str, value: Value) {
    if let Some(entry) = defaults.iter_mut().find(|(k, _)| *k == field) {
        entry.1 = value;
    }
}

/// The training noise schedule in float32, as diffusers holds it.
#[derive(Debug, Clone)]
pub struct TrainSchedule {
    pub betas: Vec<f32>,
    pub alphas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

impl TrainSchedule {
    /// Betas from `beta_schedule` / `trained_betas`, optionally rescaled to zero terminal
    /// SNR (without the `2**-24` clamp some classes then apply to the last ᾱ).
    pub fn new(cfg: &ClassConfig, rescale_zero_snr: bool) -> Result<TrainSchedule> {
        TrainSchedule::with_schedules(cfg, rescale_zero_snr, &[])
    }

    /// As [`TrainSchedule::new`], also accepting the class-specific `beta_schedule`s in
    /// `extra` ("exp" for Heun, "sigmoid" for DDPM).
    pub fn with_schedules(cfg: &ClassConfig, rescale_zero_snr: bool, extra: &[&str]) -> Result<TrainSchedule> {
        let n = cfg.usize("num_train_timesteps")?;
        if n < 2 {
            return Err(cfg.bad("num_train_timesteps", "at least 2"));
        }
        let betas: Vec<f32> = if let Some(list) = cfg.opt_f64_list("trained_betas")? {
            if list.len() != n {
                return Err(Error::invalid(format!(
                    "scheduler_config.json: `trained_betas` has {} values but `num_train_timesteps` is {n}",
                    list.len()
                )));
            }
            list.iter().map(|&b| b as f32).collect()
        } else {
            let start = cfg.f64("beta_start")?;
            let end = cfg.f64("beta_end")?;
            let mut allowed = vec!["linear", "scaled_linear", "squaredcos_cap_v2"];
            allowed.extend_from_slice(extra);
            match cfg.choice("beta_schedule", &allowed)?.as_str() {
                "linear" => linspace_f32(start, end, n),
                // torch.linspace(√start, √end, n, float32) ** 2: squared in float32.
                "scaled_linear" => linspace_f32(start.sqrt(), end.sqrt(), n).into_iter().map(|b| b * b).collect(),
                "exp" => alpha_bar_betas(n, |t| (t * -12.0).exp()),
                "sigmoid" => {
                    let (scale, offset) = ((end - start) as f32, start as f32);
                    linspace_f32(-6.0, 6.0, n)
                        .into_iter()
                        .map(|x| (1.0 / (1.0 + (-f64::from(x)).exp())) as f32 * scale + offset)
                        .collect()
                }
                _ => alpha_bar_betas(n, |t| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2)),
            }
        };
        let betas = if rescale_zero_snr { rescale_zero_terminal_snr(&betas) } else { betas };
        let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
        let alphas_cumprod = cumprod(&alphas);
        Ok(TrainSchedule { betas, alphas, alphas_cumprod })
    }

    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// ᾱ at an integer timestep, with Python's negative indexing (diffusers indexes
    /// tensors with `t` directly, and trailing spacing can produce `t = -1`).
    pub fn alpha_cumprod_at(&self, t: i64) -> Result<f32> {
        let n = self.alphas_cumprod.len() as i64;
        let idx = if t < 0 { t + n } else { t };
        if !(0..n).contains(&idx) {
            return Err(Error::invalid(format!("timestep {t} is outside the {n} training timesteps")));
        }
        Ok(self.alphas_cumprod[idx as usize])
    }

    /// σ_t = sqrt((1 − ᾱ)/ᾱ) per training timestep, ascending in t, float32.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` as libtorch's CPU kernel computes it: in
/// float32, `start + step·i` for the first half and `end − step·(n − 1 − i)` for the second,
/// each a fused multiply-add (the AVX2 and AVX-512 kernels are compiled with FMA
/// contraction). `f32::mul_add` rounds once on every CPU, so this is exact and portable.
pub fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n < 2 {
        return vec![start; n];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// `torch.cumprod` of a float32 tensor on the CPU: the running product is kept in f64 (ATen's
/// accumulation type for float on the CPU) and each output rounded to float32.
pub fn cumprod(v: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    v.iter()
        .map(|&x| {
            acc *= f64::from(x);
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar`: β_i = min(1 − ᾱ((i+1)/n)/ᾱ(i/n), 0.999) in f64, then f32.
fn alpha_bar_betas(n: usize, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Rescales betas to zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32 as
/// diffusers' tensor code does, with correctly rounded square roots.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    let sqrt_ac: Vec<f32> = cumprod(&alphas).into_iter().map(f32::sqrt).collect();
    let (first, last) = (sqrt_ac[0], sqrt_ac[sqrt_ac.len() - 1]);
    let scale = first / (first - last);
    let ac: Vec<f32> = sqrt_ac.iter().map(|&s| (s - last) * scale).map(|s| s * s).collect();
    let mut alphas = vec![ac[0]];
    alphas.extend(ac.windows(2).map(|w| w[1] / w[0]));
    alphas.into_iter().map(|a| 1.0 - a).collect()
}

/// `np.linspace(start, stop, num)` in float64, with numpy's arithmetic.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let delta = stop - start;
    let div = num - 1;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            y.iter_mut().for_each(|v| *v = *v / div as f64 * delta);
        } else {
            y.iter_mut().for_each(|v| *v *= step);
        }
    } else {
        y.iter_mut().for_each(|v| *v *= delta);
    }
    y.iter_mut().for_each(|v| *v += start);
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// `np.linspace(start, stop, num, endpoint=False)` in float64.
pub fn linspace_excl(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let step = (stop - start) / num as f64;
    (0..num)
        .map(|i| if step == 0.0 { i as f64 / num as f64 * (stop - start) } else { i as f64 * step } + start)
        .collect()
}

/// `np.arange(start, stop, step)` for floats: length `ceil((stop − start)/step)`, values
/// `start + i·(first step as stored)`, as numpy's fill does.
pub fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, xp, fp)` for increasing `xp`, with numpy's formula and edge handling.
pub fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len();
    if n == 0 {
        return f64::NAN;
    }
    if x.is_nan() {
        return x;
    }
    if x >= xp[n - 1] {
        return fp[n - 1];
    }
    if x < xp[0] {
        return fp[0];
    }
    // Largest j with xp[j] <= x.
    let j = xp.partition_point(|&v| v <= x) - 1;
    if x == xp[j] {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let r = slope * (x - xp[j]) + fp[j];
    if r.is_nan() {
        let r2 = slope * (x - xp[j + 1]) + fp[j + 1];
        if r2.is_nan() && fp[j] == fp[j + 1] {
            return fp[j];
        }
        return r2;
    }
    r
}

/// How inference timesteps are spread over the training range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Linspace,
    Trailing,
}

impl Spacing {
    pub fn from_config(cfg: &ClassConfig) -> Result<Spacing> {
        Ok(match cfg.choice("timestep_spacing", &["leading", "linspace", "trailing"])?.as_str() {
            "leading" => Spacing::Leading,
            "linspace" => Spacing::Linspace,
            _ => Spacing::Trailing,
        })
    }
}

/// Inference timesteps as numpy float64 values, descending, before any class-specific
/// rounding or dtype cast:
/// - leading: `arange(0, n) * (T // n)` reversed, plus `steps_offset`;
/// - linspace: `linspace(0, T − 1, n)` reversed, not rounded (DDIM rounds, Euler does not);
/// - trailing: `round(arange(T, 0, −T/n)) − 1` (may hold n + 1 values, as numpy's does).
pub fn spaced_timesteps(spacing: Spacing, num_train: usize, steps: usize, steps_offset: usize) -> Vec<f64> {
    match spacing {
        Spacing::Leading => {
            let ratio = num_train / steps;
            (0..steps).rev().map(|i| (i * ratio) as f64 + steps_offset as f64).collect()
        }
        Spacing::Linspace => {
            let mut v = linspace(0.0, (num_train - 1) as f64, steps);
            v.reverse();
            v
        }
        Spacing::Trailing => {
            let ratio = num_train as f64 / steps as f64;
            arange(num_train as f64, 0.0, -ratio).into_iter().map(|t| t.round_ties_even() - 1.0).collect()
        }
    }
}

/// Dynamic thresholding (Imagen): clamp x̂₀ to the per-sample `ratio` quantile of |x̂₀|,
/// clamped to [1, `max_value`], and rescale, as diffusers' `_threshold_sample`.
pub fn threshold_sample(sample: &Tensor, ratio: f64, max_value: f64) -> Result<Tensor> {
    let kind = sample.kind();
    let shape = sample.size();
    let x =
        if matches!(kind, Kind::Float | Kind::Double) { sample.shallow_clone() } else { sample.to_kind(Kind::Float) };
    let x = x.reshape([shape[0], -1]);
    let s = x.abs().f_quantile_scalar(ratio, Some(1), false, "linear")?.clamp(1.0, max_value).unsqueeze(1);
    let lo = -&s;
    let x = x.clamp_tensor(Some(lo), Some(s.shallow_clone())) / &s;
    Ok(x.reshape(shape.as_slice()).to_kind(kind))
}

/// Applies an explicit sigma schedule to a class that has `use_karras_sigmas` /
/// `use_exponential_sigmas` fields, and returns the schedule the config then asks for.
/// `Default` keeps whatever the file says.
pub fn apply_schedule(cfg: &mut ClassConfig, schedule: SigmaSchedule) -> Result<SigmaSchedule> {
    match schedule {
        SigmaSchedule::Default => {}
        SigmaSchedule::Karras => {
            cfg.set("use_karras_sigmas", Value::Bool(true));
            cfg.set("use_exponential_sigmas", Value::Bool(false));
        }
        SigmaSchedule::Exponential => {
            cfg.set("use_karras_sigmas", Value::Bool(false));
            cfg.set("use_exponential_sigmas", Value::Bool(true));
        }
    }
    if cfg.map.contains_key("use_beta_sigmas") && cfg.bool("use_beta_sigmas")? {
        return Err(Error::invalid(format!(
            "scheduler_config.json: `use_beta_sigmas` is not supported by sdgen's {}",
            cfg.class
        )));
    }
    match (cfg.bool("use_karras_sigmas")?, cfg.bool("use_exponential_sigmas")?) {
        (true, true) => Err(Error::invalid(
            "scheduler_config.json: only one of `use_karras_sigmas` and `use_exponential_sigmas` can be true",
        )),
        (true, false) => Ok(SigmaSchedule::Karras),
        (false, true) => Ok(SigmaSchedule::Exponential),
        (false, false) => Ok(SigmaSchedule::Default),
    }
}

/// Inference timesteps of the multistep solvers' `set_timesteps` (DPMSolverMultistep,
/// UniPC), numpy float64 values before their integer cast. These take n + 1 points and drop
/// the last, unlike [`spaced_timesteps`]:
/// - linspace: `round(linspace(0, last − 1, n + 1))` reversed, without its final 0;
/// - leading: `arange(0, n + 1) * (last // (n + 1))` reversed, without 0, plus `steps_offset`;
/// - trailing: `round(arange(last, 0, −T/n)) − 1`.
///
/// `last` is the first training timestep past the usable range (T unless DPM-Solver clips
/// λ with `lambda_min_clipped`).
pub fn multistep_timesteps(
    spacing: Spacing,
    last: usize,
    num_train: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut v: Vec<f64> =
                linspace(0.0, last as f64 - 1.0, steps + 1).into_iter().map(f64::round_ties_even).collect();
            v.reverse();
            v.pop();
            v
        }
        Spacing::Leading => {
            let ratio = last / (steps + 1);
            (1..=steps).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        Spacing::Trailing => {
            let ratio = num_train as f64 / steps as f64;
            arange(last as f64, 0.0, -ratio).into_iter().map(|t| t.round_ties_even() - 1.0).collect()
        }
    }
}

/// The training schedule of the classes with `rescale_betas_zero_snr`, with diffusers'
/// clamp of the last ᾱ to 2⁻²⁴ so that the last sigma stays finite.
pub fn train_schedule_zero_snr(cfg: &ClassConfig) -> Result<TrainSchedule> {
    train_schedule_zero_snr_with(cfg, &[])
}

/// As [`train_schedule_zero_snr`], also accepting the class-specific `beta_schedule`s in `extra`.
pub fn train_schedule_zero_snr_with(cfg: &ClassConfig, extra: &[&str]) -> Result<TrainSchedule> {
    let rescale = cfg.bool("rescale_betas_zero_snr")?;
    let mut train = TrainSchedule::with_schedules(cfg, rescale, extra)?;
    if rescale {
        if let Some(last) = train.alphas_cumprod.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok(train)
}

/// Integer timesteps for the DDPM-family classes (DDIM, PNDM, DDPM): linspace is rounded,
/// trailing keeps numpy's length.
pub fn integer_timesteps(spacing: Spacing, num_train: usize, steps: usize, offset: usize) -> Vec<i64> {
    spaced_timesteps(spacing, num_train, steps, offset).into_iter().map(|t| t.round_ties_even() as i64).collect()
}

/// Rejects options whose non-default values sdgen does not implement.
pub fn require_unsupported_off(cfg: &ClassConfig, fields: &[&str]) -> Result<()> {
    for field in fields {
        let default = if *field == "variance_type" { Value::Null } else { serde_json::json!(false) };
        cfg.require(field, &default)?;
    }
    Ok(())
}

/// Where a sampler that keeps history expects its next step: evaluations come in order, each
/// once, from the begin index (diffusers' `set_begin_index`) on.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOrder {
    next: usize,
    started: bool,
}

impl StepOrder {
    /// Checks that evaluation `i` of `len` is the expected one and moves past it.
    pub fn take(&mut self, i: usize, len: usize) -> Result<()> {
        if i >= len {
            return Err(Error::invalid(format!("scheduler step {i} is past the last of {len} steps")));
        }
        if i != self.next {
            return Err(Error::invalid(format!(
                "scheduler step {i} taken out of order: this scheduler keeps history and expects step {}",
                self.next
            )));
        }
        self.next += 1;
        self.started = true;
        Ok(())
    }

    /// Starts at evaluation `begin` instead of 0; only before the first step.
    pub fn begin_at(&mut self, begin: usize, len: usize) -> Result<()> {
        check_begin(begin, len)?;
        if self.started {
            return Err(Error::invalid("the begin index of a scheduler must be set before its first step"));
        }
        self.next = begin;
        Ok(())
    }
}

/// An evaluation index must name one of the `len` evaluations.
pub fn check_index(i: usize, len: usize) -> Result<()> {
    if i >= len {
        return Err(Error::invalid(format!("scheduler step {i} does not exist: the scheduler has {len} steps")));
    }
    Ok(())
}

/// A begin index must name one of the `len` evaluations.
pub fn check_begin(begin: usize, len: usize) -> Result<()> {
    if begin >= len {
        return Err(Error::invalid(format!("cannot begin at step {begin}: the scheduler has {len} steps")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of `torch.linspace(√0.00085, √0.012, 1000, dtype=float32)` from libtorch 2.11
    /// (AVX2 kernel), bit for bit, and every value within an ulp of the exact one.
    #[test]
    fn linspace_f32_is_libtorchs_kernel() {
        let v = linspace_f32(0.00085f64.sqrt(), 0.012f64.sqrt(), 1000);
        let torch: [(usize, u32); 5] =
            [(0, 0x3ceed5f6), (1, 0x3cef7eb8), (499, 0x3d8df216), (500, 0x3d8e1c46), (999, 0x3de058df)];
        for (i, bits) in torch {
            assert_eq!(v[i].to_bits(), bits, "index {i}: {}", v[i]);
        }
        let exact = linspace(0.00085f64.sqrt(), 0.012f64.sqrt(), 1000);
        for (a, b) in v.iter().zip(&exact) {
            assert!((f64::from(*a) - b).abs() <= f64::from(f32::EPSILON) * b.abs());
        }
        assert_eq!(cumprod(&[0.5, 0.5, 3.0]), [0.5, 0.25, 0.75]);
    }

    #[test]
    fn linspace_ends_exactly() {
        let v = linspace(0.0, 999.0, 7);
        assert_eq!(v.len(), 7);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[6], 999.0);
        assert_eq!(v[3], 3.0 * (999.0 / 6.0));
    }

    #[test]
    fn interp_matches_hand_values() {
        let xp = [0.0, 1.0, 2.0];
        let fp = [0.0, 10.0, 30.0];
        assert_eq!(interp(-1.0, &xp, &fp), 0.0);
        assert_eq!(interp(0.5, &xp, &fp), 5.0);
        assert_eq!(interp(1.0, &xp, &fp), 10.0);
        assert_eq!(interp(1.5, &xp, &fp), 20.0);
        assert_eq!(interp(3.0, &xp, &fp), 30.0);
    }

    #[test]
    fn trailing_arange_keeps_numpys_extra_value() {
        // np.arange(1000, 0, -1000/61) has 62 values because of float rounding.
        assert_eq!(spaced_timesteps(Spacing::Trailing, 1000, 61, 0).len(), 62);
        assert_eq!(spaced_timesteps(Spacing::Trailing, 1000, 10, 0)[..2], [999.0, 899.0]);
    }
}
