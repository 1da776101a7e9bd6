//! OpenAI's images API: `POST /v1/images/generations`, mapped onto the loaded model's
//! defaults (its scheduler and size, sdgen's steps and guidance). Images come back as
//! `b64_json`; sdgen serves no files, so `response_format: "url"` is refused.

use super::queue::{lock, Work};
use super::{check_limits, read_json, submit, ApiError, App};
use crate::plan::Settings;
use crate::request::{PromptSyntax, Size};
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The request body. `model`, `quality`, `style`, `user` and other fields are accepted and
/// ignored: the server runs its loaded model.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerationsBody {
    pub prompt: Option<String>,
    pub n: Option<usize>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    /// sdgen extensions, with the CLI's names.
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub scheduler: Option<String>,
}

pub async fn generations(State(app): State<Arc<App>>, body: Body) -> Response {
    run(app, body).await.unwrap_or_else(|e| e.openai().into_response())
}

async fn run(app: Arc<App>, body: Body) -> Result<Response, ApiError> {
    use base64::Engine;
    let b: GenerationsBody = read_json(body, app.max_body_bytes).await?;
    let prompt = b
        .prompt
        .clone()
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| ApiError::bad("prompt", "prompt is required"))?;
    match b.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some(other) => {
            return Err(ApiError::bad(
                "response_format",
                format!("response_format {other:?}: sdgen serves no files, use b64_json"),
            ))
        }
    }
    let (width, height) = match b.size.as_deref().map(str::trim) {
        None | Some("") | Some("auto") => lock(&app.queue.loaded).default_size,
        Some(s) => {
            let size: Size = s.parse().map_err(|e: String| ApiError::bad("size", e))?;
            (size.width, size.height)
        }
    };
    let scheduler = b.scheduler.clone().unwrap_or_default();
    if !scheduler.is_empty() {
        crate::schedulers::resolve(&scheduler).map_err(|e| ApiError::bad("scheduler", e.to_string()))?;
    }
    let settings = Settings {
        prompt: Some(prompt.clone()),
        negative_prompt: b.negative_prompt.clone(),
        seed: b.seed,
        steps: b.steps,
        guidance: b.guidance,
        width: Some(width),
        height: Some(height),
        num_images: Some(b.n.unwrap_or(1)),
        prompt_syntax: Some(PromptSyntax::A1111),
        ..Settings::default()
    };
    let req = settings.request(scheduler, rand::random::<u32>() as u64);
    check_limits(&app.limits, &req, ["steps", "size", "size", "n"])?;
    let outcome = submit(&app, Work::Generate(Box::new(req))).await?;
    let data: Vec<_> = outcome
        .images
        .iter()
        .map(|(_, png)| json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png), "revised_prompt": prompt}))
        .collect();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Json(json!({"created": created, "data": data})).into_response())
}
