//! Pieces every scheduler shares: the training noise schedule (betas, ᾱ), inference
//! timestep spacing, sigma schedules (model default, Karras, exponential) and the
//! effective per-class config.
//!
//! diffusers computes these partly in torch float32 and partly in numpy float64, and the
//! last bits of the result depend on which. Float32 tensor work is done here with the same
//! libtorch kernels (through tch); numpy work is mirrored operation by operation in f64
//! (`np.linspace`, `np.arange`, `np.interp`, round-half-to-even), so schedules agree to
//! the bit with diffusers wherever the libm functions agree.

use super::SchedulerConfig;
use crate::{Error, Result};
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

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
        let opts = (Kind::Float, Device::Cpu);
        let betas = if let Some(list) = cfg.opt_f64_list("trained_betas")? {
            if list.len() != n {
                return Err(Error::invalid(format!(
                    "scheduler_config.json: `trained_betas` has {} values but `num_train_timesteps` is {n}",
                    list.len()
                )));
            }
            let v: Vec<f32> = list.iter().map(|&b| b as f32).collect();
            Tensor::from_slice(&v)
        } else {
            let start = cfg.f64("beta_start")?;
            let end = cfg.f64("beta_end")?;
            let mut allowed = vec!["linear", "scaled_linear", "squaredcos_cap_v2"];
            allowed.extend_from_slice(extra);
            match cfg.choice("beta_schedule", &allowed)?.as_str() {
                "linear" => Tensor::linspace(start, end, n as i64, opts),
                "scaled_linear" => Tensor::linspace(start.powf(0.5), end.powf(0.5), n as i64, opts).square(),
                "exp" => Tensor::from_slice(&alpha_bar_betas(n, |t| (t * -12.0).exp())),
                "sigmoid" => Tensor::linspace(-6.0, 6.0, n as i64, opts).sigmoid() * (end - start) + start,
                _ => Tensor::from_slice(&alpha_bar_betas(n, |t| {
                    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2)
                })),
            }
        };
        let betas = if rescale_zero_snr { rescale_zero_terminal_snr(&betas) } else { betas };
        let alphas = betas.neg() + 1.0;
        let alphas_cumprod = alphas.cumprod(0, Kind::Float);
        Ok(TrainSchedule { betas: to_vec(&betas)?, alphas: to_vec(&alphas)?, alphas_cumprod: to_vec(&alphas_cumprod)? })
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

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous())?)
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

/// Rescales betas to zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32 tensors.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Tensor {
    let alphas = betas.neg() + 1.0;
    let sqrt_ac = alphas.cumprod(0, Kind::Float).sqrt();
    let first = sqrt_ac.get(0);
    let last = sqrt_ac.get(-1);
    let shifted = &sqrt_ac - &last;
    let scaled = shifted * (&first / (&first - &last));
    let ac = scaled.square();
    let n = ac.size()[0];
    let ratios = ac.narrow(0, 1, n - 1) / ac.narrow(0, 0, n - 1);
    let alphas = Tensor::cat(&[ac.narrow(0, 0, 1), ratios], 0);
    alphas.neg() + 1.0
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
    /// The label A1111 writes as "Schedule type" (its "Automatic" leaves the choice to the
    /// sampler, which for sdgen is the model's own schedule).
    pub fn a1111_label(self) -> &'static str {
        match self {
            SigmaSchedule::Default => "Automatic",
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
/// numpy's vectorised float32 log can differ from the correctly rounded value by one
/// ulp, so timesteps derived from these can differ from diffusers' in the last float32 bit.
pub fn log_sigmas(train_sigmas: &[f32]) -> Vec<f64> {
    log_sigmas_f32(train_sigmas).into_iter().map(f64::from).collect()
}

/// `np.log` of float32 sigmas, kept in float32.
pub fn log_sigmas_f32(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| (f64::from(s).ln()) as f32).collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma, linearly
/// interpolated, equals log σ.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let n = log_sigmas.len();
    let log_sigma = sigma.max(1e-10).ln();
    // The last index with log_sigma ≥ log_sigmas[i] (argmax of the cumulative count), or 0.
    let mut low = 0usize;
    let mut best = 0usize;
    let mut count = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            count += 1;
            if count > best {
                best = count;
                low = i;
            }
        }
    }
    let low = low.min(n.saturating_sub(2));
    let high = low + 1;
    let lo = log_sigmas[low];
    let hi = log_sigmas[high];
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// `_sigma_to_t` as diffusers' KDPM2 classes call it, on float32 tensors: the log, the
/// distances and the weight are float32, the final blend float64.
pub fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f64 {
    let n = log_sigmas.len();
    let log_sigma = (f64::from(sigma.max(1e-10f32)).ln()) as f32;
    let mut low = 0usize;
    let mut best = 0usize;
    let mut count = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            count += 1;
            if count > best {
                best = count;
                low = i;
            }
        }
    }
    let low = low.min(n.saturating_sub(2));
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

/// Rounds each value to float32 and back, as numpy's `.astype(np.float32)` does.
pub fn as_f32(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x as f32)).collect()
}

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    Sample,
    VPrediction,
}

impl Prediction {
    /// Reads `prediction_type`, accepting only the values this class implements.
    pub fn from_config(cfg: &ClassConfig, allowed: &[&str]) -> Result<Prediction> {
        Ok(match cfg.choice("prediction_type", allowed)?.as_str() {
            "epsilon" => Prediction::Epsilon,
            "sample" => Prediction::Sample,
            _ => Prediction::VPrediction,
        })
    }

    /// (x̂₀, ε̂) from the model output for an ᾱ-parameterised step (DDIM, DDPM, LCM), with
    /// diffusers' operation order: `alpha_t` is ᾱ_t, `beta_t` is 1 − ᾱ_t, both float32.
    pub fn split(self, model_output: &Tensor, sample: &Tensor, alpha_t: f32, beta_t: f32) -> (Tensor, Tensor) {
        let sa = f64::from(alpha_t.sqrt());
        let sb = f64::from(beta_t.sqrt());
        match self {
            Prediction::Epsilon => ((sample - model_output * sb) / sa, model_output.shallow_clone()),
            Prediction::Sample => ((model_output.shallow_clone()), (sample - model_output * sa) / sb),
            Prediction::VPrediction => (sample * sa - model_output * sb, model_output * sa + sample * sb),
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

// ---- Shared by the multistep solvers (DPM-Solver++, UniPC) and DPMSolverSDE ----

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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn sigma_to_t_inverts_log_interpolation() {
        let logs = [0.0f64.ln().max(-5.0), 1.0f64.ln(), 2.0f64.ln(), 4.0f64.ln()];
        assert_eq!(sigma_to_t(2.0, &logs), 2.0);
        assert!((sigma_to_t(2.0f64.sqrt(), &logs) - 1.5).abs() < 1e-12);
        assert_eq!(sigma_to_t(100.0, &logs), 3.0);
    }
}
