//! `scheduler_config.json` with diffusers' field names and meanings.
//!
//! Fields a scheduler class gives its own default (`timestep_spacing` is "leading" for DDIM
//! and "linspace" for Euler) are `Option`s here; each scheduler fills in its own default.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
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

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}
