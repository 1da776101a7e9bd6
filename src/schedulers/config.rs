//! `scheduler_config.json` with diffusers' field names and meanings.
//!
//! Fields a scheduler class gives its own default (`timestep_spacing` is "leading" for DDIM
//! and "linspace" for Euler) are `Option`s here; each scheduler fills in its own default.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    // Training-schedule fields stay `None` when the file omits them: classes disagree on
    // their defaults (LCM and Heun default to 0.00085..0.012, DDIM to 0.0001..0.02).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_train_timesteps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_schedule: Option<String>,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default)]
    pub prediction_type: Option<String>,
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub clip_sample: Option<bool>,
    /// Every other field, kept so records hold the full config and schedulers can read
    /// their own options (`solver_order`, `final_sigmas_type`, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}
