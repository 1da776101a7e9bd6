//! AUTOMATIC1111's web API (`/sdapi/v1/...`): the subset its clients use (Krita and GIMP
//! plugins, the `webuiapi` package), with its field names and defaults. Unknown fields are
//! ignored, as A1111 ignores them; fields that would change the image in ways sdgen cannot
//! (hires fix, face restoration, tiling) are refused rather than silently dropped.

use super::queue::{lock, Outcome, Work};
use super::{check_limits, read_json, submit, ApiError, App};
use crate::init_image::InputImage;
use crate::plan::Settings;
use crate::request::PromptSyntax;
use crate::{schedulers, Generated, Request};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// A1111's defaults for the API (`StableDiffusionProcessing`): 50 steps, CFG 7, 512².
const DEFAULT_STEPS: usize = 50;
const DEFAULT_CFG: f64 = 7.0;
const DEFAULT_SIDE: u32 = 512;
/// img2img's `denoising_strength` default.
const DEFAULT_STRENGTH: f64 = 0.75;

/// The body of `txt2img` and `img2img`. Every field may be absent or null.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerationBody {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// -1 (or absent): random.
    pub seed: Option<i64>,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub sampler_name: Option<String>,
    /// The older name of `sampler_name`.
    pub sampler_index: Option<String>,
    /// A1111 1.9+'s schedule type: Automatic, Karras, Exponential.
    pub scheduler: Option<String>,
    pub batch_size: Option<usize>,
    pub n_iter: Option<usize>,
    pub send_images: Option<bool>,
    pub enable_hr: Option<bool>,
    pub restore_faces: Option<bool>,
    pub tiling: Option<bool>,
    pub override_settings: Option<serde_json::Map<String, Value>>,
    pub init_images: Option<Vec<String>>,
    pub mask: Option<String>,
    pub denoising_strength: Option<f64>,
}

pub async fn txt2img(State(app): State<Arc<App>>, body: Body) -> Response {
    run(app, body, false).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn img2img(State(app): State<Arc<App>>, body: Body) -> Response {
    run(app, body, true).await.unwrap_or_else(IntoResponse::into_response)
}

async fn run(app: Arc<App>, body: Body, img2img: bool) -> Result<Response, ApiError> {
    let b: GenerationBody = read_json(body, app.max_body_bytes).await?;
    let req = to_request(&app, &b, img2img)?;
    let send_images = b.send_images.unwrap_or(true);
    let outcome = submit(&app, Work::Generate(Box::new(req.clone()))).await?;
    Ok(Json(response(&app, &req, &b, &outcome, send_images)).into_response())
}

/// The sampler name to resolve: `sampler_name` with A1111's `scheduler` folded in; empty
/// for the model's own.
pub fn sampler_of(app: &App, b: &GenerationBody) -> Result<String, ApiError> {
    let sampler = b.sampler_name.as_deref().or(b.sampler_index.as_deref()).unwrap_or("").trim().to_string();
    let schedule = b.scheduler.as_deref().unwrap_or("").trim().to_ascii_lowercase();
    let (field, name) = match schedule.as_str() {
        "" | "automatic" => ("sampler_name", sampler),
        "karras" | "exponential" => {
            let base = if sampler.is_empty() { lock(&app.queue.loaded).default_scheduler.clone() } else { sampler };
            let (info, _) = schedulers::resolve(&base).map_err(|e| ApiError::bad("sampler_name", e.to_string()))?;
            ("scheduler", format!("{} {schedule}", info.a1111_name))
        }
        other => {
            return Err(ApiError::bad(
                "scheduler",
                format!("unknown scheduler {other:?}: sdgen has Automatic, Karras and Exponential"),
            ))
        }
    };
    if !name.is_empty() {
        schedulers::resolve(&name).map_err(|e| ApiError::bad(field, e.to_string()))?;
    }
    Ok(name)
}

fn to_request(app: &App, b: &GenerationBody, img2img: bool) -> Result<Request, ApiError> {
    for (field, on, what) in [
        ("enable_hr", b.enable_hr, "hires fix"),
        ("restore_faces", b.restore_faces, "face restoration"),
        ("tiling", b.tiling, "tiling"),
    ] {
        if on == Some(true) {
            return Err(ApiError::bad(field, format!("{field}: sdgen has no {what}")));
        }
    }
    let seed = match b.seed {
        None | Some(-1) => None,
        Some(s) if s < 0 => return Err(ApiError::bad("seed", format!("seed {s}: use -1 for random, or a seed ≥ 0"))),
        Some(s) => Some(s as u64),
    };
    let clip_skip = match b.override_settings.as_ref().and_then(|o| o.get("CLIP_stop_at_last_layers")) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n as usize),
            _ => {
                return Err(ApiError::bad(
                    "override_settings.CLIP_stop_at_last_layers",
                    "CLIP_stop_at_last_layers must be a whole number ≥ 1",
                ))
            }
        },
    };
    // A per-request model is honoured only when it is the loaded one: switching for one
    // request would reload under every other client's jobs.
    if let Some(v) = b.override_settings.as_ref().and_then(|o| o.get("sd_model_checkpoint")).filter(|v| !v.is_null()) {
        let field = "override_settings.sd_model_checkpoint";
        let loaded = lock(&app.queue.loaded).name.clone();
        let wanted = v.as_str().ok_or_else(|| ApiError::bad(field, "sd_model_checkpoint must be a model name"))?;
        if app.models.find(wanted).is_none_or(|e| e.name != loaded) {
            return Err(ApiError::bad(
                field,
                format!("{wanted:?} is not the loaded model ({loaded}); switch with POST /sdapi/v1/options first"),
            ));
        }
    }
    // A per-request VAE likewise: the loaded one ("Automatic"/"None" when the model's own is).
    if let Some(v) = b.override_settings.as_ref().and_then(|o| o.get("sd_vae")).filter(|v| !v.is_null()) {
        let field = "override_settings.sd_vae";
        let wanted = v.as_str().ok_or_else(|| ApiError::bad(field, "sd_vae must be a VAE name or \"Automatic\""))?;
        let choice = app.models.vae_choice(field, wanted).map_err(|e| ApiError::bad(field, e.to_string()))?;
        let loaded = lock(&app.queue.loaded).vae.clone();
        if choice.map(|e| e.name) != loaded {
            let loaded = loaded.as_deref().unwrap_or(super::models::OWN_VAE);
            return Err(ApiError::bad(
                field,
                format!("{wanted:?} is not the loaded VAE ({loaded}); switch with POST /sdapi/v1/options first"),
            ));
        }
    }
    let batch = b.batch_size.unwrap_or(1);
    let iters = b.n_iter.unwrap_or(1);
    if batch == 0 || iters == 0 {
        return Err(ApiError::bad(if batch == 0 { "batch_size" } else { "n_iter" }, "must be at least 1"));
    }
    let num_images = batch.checked_mul(iters).ok_or_else(|| ApiError::bad("n_iter", "too many images"))?;
    let (init_image, mask, strength) = if img2img {
        let images = b.init_images.as_deref().unwrap_or_default();
        let first = images.first().ok_or_else(|| ApiError::bad("init_images", "init_images needs one image"))?;
        let init = decode_image(first, "init_images", "init image")?;
        let mask = b.mask.as_deref().filter(|m| !m.is_empty()).map(|m| decode_image(m, "mask", "mask")).transpose()?;
        let strength = b.denoising_strength.unwrap_or(DEFAULT_STRENGTH);
        (Some(init), mask, Some(strength))
    } else {
        (None, None, None)
    };
    if let Some(s) = strength {
        if !(s > 0.0 && s <= 1.0) {
            return Err(ApiError::bad("denoising_strength", format!("denoising_strength {s} must be in (0, 1]")));
        }
    }
    // img2img without a size takes the init image's (rounded to a multiple of 8), which
    // `Settings::request` does; txt2img takes A1111's 512².
    let side = |v: Option<u32>| if img2img { v } else { v.or(Some(DEFAULT_SIDE)) };
    let settings = Settings {
        prompt: Some(b.prompt.clone().unwrap_or_default()),
        negative_prompt: Some(b.negative_prompt.clone().unwrap_or_default()),
        seed,
        steps: Some(b.steps.unwrap_or(DEFAULT_STEPS)),
        guidance: Some(b.cfg_scale.unwrap_or(DEFAULT_CFG)),
        width: side(b.width),
        height: side(b.height),
        num_images: Some(num_images),
        clip_skip,
        prompt_syntax: Some(PromptSyntax::A1111),
        init_image,
        mask,
        strength,
        ..Settings::default()
    };
    let req = settings.request(sampler_of(app, b)?, rand::random::<u32>() as u64);
    check_limits(&app.limits, &req, ["steps", "width", "height", "batch_size"])?;
    Ok(req)
}

/// A base64 image (optionally a `data:` URL) from a request.
pub fn decode_image(text: &str, field: &str, what: &str) -> Result<InputImage, ApiError> {
    use base64::Engine;
    let data = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| ApiError::bad(field, format!("{field}: not base64: {e}")))?;
    let image = crate::init_image::decode_bytes(&bytes, what).map_err(|e| ApiError::bad(field, e.to_string()))?;
    InputImage::from_image(&format!("{what} (upload)"), image).map_err(|e| ApiError::bad(field, e.to_string()))
}

/// A1111's response: base64 PNGs, the parameters as used, and `info` (a JSON string).
fn response(app: &App, req: &Request, b: &GenerationBody, outcome: &Outcome, send_images: bool) -> Value {
    use base64::Engine;
    let images: Vec<String> = if send_images {
        outcome.images.iter().map(|(_, png)| base64::engine::general_purpose::STANDARD.encode(png)).collect()
    } else {
        Vec::new()
    };
    let generated: Vec<&Generated> = outcome.images.iter().map(|(g, _)| g).collect();
    let sampler_label = generated
        .first()
        .and_then(|g| crate::save::sampler_names(&g.record.request.scheduler).ok())
        .map(|(s, _)| s.to_string())
        .unwrap_or_else(|| req.scheduler.clone());
    let parameters = json!({
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt.clone().unwrap_or_default(),
        "seed": req.seed,
        "steps": req.steps,
        "cfg_scale": req.guidance,
        "width": req.width,
        "height": req.height,
        "sampler_name": sampler_label,
        "scheduler": b.scheduler.clone().unwrap_or_else(|| "Automatic".into()),
        "batch_size": b.batch_size.unwrap_or(1),
        "n_iter": b.n_iter.unwrap_or(1),
        "denoising_strength": req.strength,
    });
    json!({
        "images": images,
        "parameters": parameters,
        "info": info(app, req, &generated, outcome.interrupted).to_string(),
    })
}

/// What A1111 puts in `info`, plus sdgen's licence notice.
pub fn info(app: &App, req: &Request, generated: &[&Generated], interrupted: bool) -> Value {
    let infotexts: Vec<String> = generated
        .iter()
        .map(|g| {
            let (sampler, schedule) = crate::save::sampler_names(&g.record.request.scheduler).unwrap_or(("", None));
            crate::output::metadata::parameters_text(&g.record, sampler, schedule)
        })
        .collect();
    let seeds: Vec<u64> = generated.iter().map(|g| g.record.request.seed).collect();
    let loaded = lock(&app.queue.loaded).clone();
    let license = generated.first().map(|g| crate::output::license::notice(&g.record.model.license));
    json!({
        "prompt": req.prompt,
        "all_prompts": generated.iter().map(|g| g.record.request.prompt.clone()).collect::<Vec<_>>(),
        "negative_prompt": req.negative_prompt.clone().unwrap_or_default(),
        "seed": seeds.first().copied().unwrap_or(req.seed),
        "all_seeds": seeds,
        "subseed": -1,
        "width": req.width,
        "height": req.height,
        "sampler_name": generated.first().map(|g| g.record.request.scheduler.clone()),
        "cfg_scale": req.guidance,
        "steps": req.steps,
        "batch_size": req.num_images,
        "denoising_strength": req.strength,
        "clip_skip": req.clip_skip.unwrap_or(1),
        "sd_model_name": loaded.name,
        "sd_model_hash": loaded.hash.as_deref().map(|h| h.chars().take(10).collect::<String>()),
        "infotexts": infotexts,
        "index_of_first_image": 0,
        "interrupted": interrupted,
        "license": license,
        "sdgen_version": crate::VERSION,
    })
}

/// Where the running job is; `current_image` is a latent preview (base64 PNG) unless
/// `?skip_current_image=true`.
pub async fn progress(
    State(app): State<Arc<App>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    use base64::Engine;
    let p = lock(&app.queue.progress).clone();
    let skip = query.get("skip_current_image").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let current_image = match (&p.preview, skip) {
        (Some(png), false) => Some(base64::engine::general_purpose::STANDARD.encode(png.as_slice())),
        _ => None,
    };
    let fraction = if p.steps > 0 { p.step as f64 / p.steps as f64 } else { 0.0 };
    let eta = match p.started {
        Some(t) if fraction > 0.0 => {
            let elapsed = t.elapsed().as_secs_f64();
            elapsed / fraction - elapsed
        }
        _ => 0.0,
    };
    let queued = app.queue.depth();
    Json(json!({
        "progress": fraction,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": false,
            "job": if p.active { "txt2img" } else { "" },
            "job_count": queued + usize::from(p.active),
            "job_no": 0,
            "sampling_step": p.step,
            "sampling_steps": p.steps,
        },
        "current_image": current_image,
        "textinfo": null,
    }))
    .into_response()
}

pub async fn interrupt(State(app): State<Arc<App>>) -> Response {
    app.queue.interrupt();
    Json(json!({})).into_response()
}

pub async fn samplers() -> Response {
    let list: Vec<Value> = schedulers::all()
        .iter()
        .map(|i| {
            let mut aliases: Vec<&str> = i.aliases.to_vec();
            aliases.push(i.diffusers_name);
            json!({"name": i.a1111_name, "aliases": aliases, "options": {}})
        })
        .collect();
    Json(list).into_response()
}

pub async fn schedulers() -> Response {
    Json(json!([
        {"name": "automatic", "label": "Automatic", "aliases": null},
        {"name": "karras", "label": "Karras", "aliases": null},
        {"name": "exponential", "label": "Exponential", "aliases": null},
    ]))
    .into_response()
}

fn title(name: &str, hash: Option<&str>) -> String {
    match hash {
        Some(h) => format!("{name} [{}]", h.chars().take(10).collect::<String>()),
        None => name.to_string(),
    }
}

pub async fn sd_models(State(app): State<Arc<App>>) -> Response {
    let loaded = lock(&app.queue.loaded).clone();
    let list: Vec<Value> = app
        .models
        .list()
        .into_iter()
        .map(|e| {
            let hash = (e.name == loaded.name).then(|| loaded.hash.clone()).flatten();
            json!({
                "title": title(&e.name, hash.as_deref()),
                "model_name": super::models::stem(&e.name),
                "hash": hash.as_deref().map(|h| h.chars().take(10).collect::<String>()),
                "sha256": hash,
                // The name only: the server's paths are none of a client's business.
                "filename": e.name,
                "config": null,
            })
        })
        .collect();
    Json(list).into_response()
}

pub async fn get_options(State(app): State<Arc<App>>) -> Response {
    let loaded = lock(&app.queue.loaded).clone();
    Json(json!({
        "sd_model_checkpoint": title(&loaded.name, loaded.hash.as_deref()),
        "sd_checkpoint_hash": loaded.hash,
        "sd_vae": loaded.vae.as_deref().unwrap_or(super::models::OWN_VAE),
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
    }))
    .into_response()
}

/// Only `sd_model_checkpoint` and `sd_vae` do anything (one reload for both); other options
/// are accepted and ignored, as clients send whole option sets.
pub async fn set_options(State(app): State<Arc<App>>, body: Body) -> Response {
    let run = async {
        let options: serde_json::Map<String, Value> = read_json(body, app.max_body_bytes).await?;
        let model = match options.get("sd_model_checkpoint") {
            None => None,
            Some(v) => {
                let name = v
                    .as_str()
                    .ok_or_else(|| ApiError::bad("sd_model_checkpoint", "sd_model_checkpoint must be a model name"))?;
                let entry = app.models.find(name).ok_or_else(|| {
                    let names: Vec<String> = app.models.list().into_iter().map(|e| e.name).collect();
                    ApiError::bad(
                        "sd_model_checkpoint",
                        format!("no model named {name:?} (GET /sdapi/v1/sd-models lists them: {})", names.join(", ")),
                    )
                })?;
                Some(entry.name)
            }
        };
        let vae = match options.get("sd_vae") {
            None => None,
            Some(v) => {
                let name =
                    v.as_str().ok_or_else(|| ApiError::bad("sd_vae", "sd_vae must be a VAE name or \"Automatic\""))?;
                let choice =
                    app.models.vae_choice("sd_vae", name).map_err(|e| ApiError::bad("sd_vae", e.to_string()))?;
                Some(choice.map_or_else(|| super::models::OWN_VAE.to_string(), |e| e.name))
            }
        };
        if model.is_some() || vae.is_some() {
            submit(&app, Work::Switch { model, vae }).await?;
        }
        Ok::<_, ApiError>(Json(Value::Null).into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /sdapi/v1/sd-vae`: the VAEs `sd_vae` may name (the `--vae` the server started with,
/// then `--vae-dir`'s), as A1111 lists them: `model_name` is the file's or folder's name,
/// `filename` too (A1111 gives a path; a client has no business with the server's).
pub async fn sd_vae(State(app): State<Arc<App>>) -> Response {
    let list: Vec<Value> =
        app.models.vaes().into_iter().map(|e| json!({"model_name": e.name, "filename": e.name})).collect();
    Json(list).into_response()
}

/// `POST /sdapi/v1/refresh-vae`: A1111 rescans its VAE folder; sdgen reads `--vae-dir` on
/// every listing and lookup, so there is nothing to do.
pub async fn refresh_vae() -> Response {
    Json(Value::Null).into_response()
}

pub async fn loras() -> Response {
    (StatusCode::OK, Json(json!([]))).into_response()
}
