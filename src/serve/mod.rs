//! `sdgen serve`: an HTTP server that keeps a model loaded and speaks the APIs existing
//! clients use: AUTOMATIC1111's (`/sdapi/v1/...`) and OpenAI's images API
//! (`/v1/images/generations`), plus a small web page at `/`.
//!
//! One worker thread owns the [`Pipeline`](crate::Pipeline) and takes jobs from a bounded
//! queue ([`queue`]); handlers on a tokio runtime turn requests into [`Request`]s, queue them
//! and await the answer. Every input is checked before it is queued, and every failure a
//! client causes is a 4xx with a JSON body naming the field: a server must not fall over on
//! a bad request.

pub mod a1111;
pub mod models;
pub mod openai;
pub mod queue;
pub mod web;

use crate::error::ErrorKind;
use crate::limits::Limits;
use crate::pipeline::LoadOptions;
use crate::{Error, Request, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use queue::{Failure, Job, Queue, Rejected, Reply, Work};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The model loaded at start.
    pub load: LoadOptions,
    /// Its name for clients (default: its folder's or file's name).
    pub model_name: Option<String>,
    /// Models `sd_model_checkpoint` may switch to, by name.
    pub models_dir: Option<PathBuf>,
    /// What one request may ask for.
    pub limits: Limits,
    /// Jobs waiting at most; one more is refused with 503.
    pub queue_capacity: usize,
    /// Most images in one UNet batch (queued compatible requests are joined up to this).
    pub max_batch: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// `Authorization: Bearer KEY` accepted.
    pub api_key: Option<String>,
    /// `Authorization: Basic` with this user and password accepted.
    pub api_auth: Option<(String, String)>,
    /// Shut down gracefully on Ctrl-C / SIGTERM (the binary); tests stop with [`Server::shutdown`].
    pub handle_signals: bool,
    /// Decode the progress previews with this tiny autoencoder (a folder or file, see
    /// [`Pipeline::load_preview_vae`](crate::Pipeline::load_preview_vae)) instead of A1111's
    /// cheap projection, for every model loaded.
    pub preview_vae: Option<PathBuf>,
}

impl ServeOptions {
    /// Defaults for `load`: 127.0.0.1:7860, a queue of 16, batches of up to 8 images, 32 MiB bodies.
    pub fn new(load: LoadOptions) -> ServeOptions {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 7860)),
            load,
            model_name: None,
            models_dir: None,
            limits: Limits::default(),
            queue_capacity: 16,
            max_batch: 8,
            max_body_bytes: 32 << 20,
            api_key: None,
            api_auth: None,
            handle_signals: false,
            preview_vae: None,
        }
    }

    /// Whether anyone on the network could use the server without a key.
    pub fn is_open_to_network(&self) -> bool {
        !self.listen.ip().is_loopback() && self.api_key.is_none() && self.api_auth.is_none()
    }
}

/// What the handlers share.
pub struct App {
    pub queue: Arc<Queue>,
    pub models: models::Models,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub api_key: Option<String>,
    pub api_auth: Option<(String, String)>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    queue: Arc<Queue>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<Result<()>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Loads the model, binds the address and starts serving on threads of its own.
    pub fn start(opts: ServeOptions) -> Result<Server> {
        let start_name = opts.model_name.clone().unwrap_or_else(|| models::name_of(&opts.load.model));
        let models = models::Models {
            base: opts.load.clone(),
            start_name: start_name.clone(),
            dir: opts.models_dir,
            preview_vae: opts.preview_vae,
        };
        let queue = Arc::new(Queue::new(opts.queue_capacity, opts.max_batch));
        // The worker loads the model itself, so the pipeline never crosses threads.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let worker = {
            let (queue, models, load) = (queue.clone(), models.clone(), opts.load.clone());
            let name = start_name.clone();
            std::thread::Builder::new()
                .name("sdgen-worker".into())
                .spawn(move || match models.load(&load, true) {
                    Ok(p) => {
                        *queue::lock(&queue.loaded) = queue::describe(&name, &p);
                        let _ = ready_tx.send(Ok(()));
                        queue::run_worker(queue, models, Some(p));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                })
                .map_err(|e| Error::Model(format!("cannot start the worker thread: {e}")))?
        };
        ready_rx.recv().map_err(|_| Error::Model("the worker thread stopped while loading the model".into()))??;

        let listener = std::net::TcpListener::bind(opts.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::invalid(format!("cannot listen on {}: {e}", opts.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::invalid(format!("cannot listen: {e}")))?;
        let app = Arc::new(App {
            queue: queue.clone(),
            models,
            limits: opts.limits,
            max_body_bytes: opts.max_body_bytes,
            api_key: opts.api_key,
            api_auth: opts.api_auth,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle_signals = opts.handle_signals;
        let http = std::thread::Builder::new()
            .name("sdgen-http".into())
            .spawn(move || serve(listener, app, stop_rx, handle_signals))
            .map_err(|e| Error::Model(format!("cannot start the HTTP thread: {e}")))?;
        Ok(Server { addr, queue, stop: Some(stop_tx), http: Some(http), worker: Some(worker) })
    }

    /// The address bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking requests, lets the running job finish, answers queued ones with 503, and
    /// waits for both threads.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait_inner()
    }

    /// Runs until the server stops (a signal, with `handle_signals`).
    pub fn wait(mut self) -> Result<()> {
        self.wait_inner()
    }

    fn wait_inner(&mut self) -> Result<()> {
        let result = match self.http.take() {
            Some(h) => h.join().unwrap_or_else(|_| Err(Error::Model("the HTTP thread panicked".into()))),
            None => Ok(()),
        };
        self.queue.close(false);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.wait_inner();
    }
}

fn serve(
    listener: std::net::TcpListener,
    app: Arc<App>,
    stop: tokio::sync::oneshot::Receiver<()>,
    handle_signals: bool,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Model(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| Error::invalid(format!("cannot listen: {e}")))?;
        let queue = app.queue.clone();
        let shutdown = async move {
            if handle_signals {
                tokio::select! {
                    _ = stop => {}
                    _ = signal() => {}
                }
            } else {
                let _ = stop.await;
            }
            log::info!("shutting down: refusing new requests, finishing the running one");
            queue.close(false);
        };
        axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Model(format!("server: {e}")))
    })
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Every route. All but `/health` need the key when one is set.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/", get(web::page))
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111::img2img))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/options", get(a1111::get_options).post(a1111::set_options))
        .route("/sdapi/v1/loras", get(a1111::loras))
        .route("/v1/images/generations", post(openai::generations))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(access_log))
        .with_state(app)
}

/// 200 while taking requests, 503 once shutting down (so a load balancer stops sending).
async fn health(State(app): State<Arc<App>>) -> Response {
    let (code, status) = if app.queue.is_closing() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else {
        (StatusCode::OK, "ok")
    };
    let model = queue::lock(&app.queue.loaded).name.clone();
    (code, axum::Json(serde_json::json!({"status": status, "model": model}))).into_response()
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, None, "no such endpoint").into_response()
}

/// Prometheus text format.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let m = &app.queue.metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let busy = get(&m.busy_micros) as f64 / 1e6;
    let steps_per_s = if busy > 0.0 { get(&m.steps) as f64 / busy } else { 0.0 };
    let running = queue::lock(&app.queue.progress).active as u8;
    let text = format!(
        "# TYPE sdgen_queue_depth gauge\nsdgen_queue_depth {}\n\
         # TYPE sdgen_running gauge\nsdgen_running {running}\n\
         # TYPE sdgen_requests_total counter\nsdgen_requests_total {}\n\
         # TYPE sdgen_images_total counter\nsdgen_images_total {}\n\
         # TYPE sdgen_steps_total counter\nsdgen_steps_total {}\n\
         # TYPE sdgen_batches_total counter\nsdgen_batches_total {}\n\
         # TYPE sdgen_errors_total counter\nsdgen_errors_total {}\n\
         # TYPE sdgen_rejected_total counter\nsdgen_rejected_total {}\n\
         # TYPE sdgen_interrupted_total counter\nsdgen_interrupted_total {}\n\
         # TYPE sdgen_busy_seconds_total counter\nsdgen_busy_seconds_total {busy:.3}\n\
         # TYPE sdgen_steps_per_second gauge\nsdgen_steps_per_second {steps_per_s:.3}\n",
        app.queue.depth(),
        get(&m.requests),
        get(&m.images),
        get(&m.steps),
        get(&m.batches),
        get(&m.errors),
        get(&m.rejected),
        get(&m.interrupted),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Compares without stopping at the first difference, so timing tells nothing about the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the key or the user and password (always, when neither is set).
pub fn authorized(app: &App, headers: &HeaderMap) -> bool {
    use base64::Engine;
    if app.api_key.is_none() && app.api_auth.is_none() {
        return true;
    }
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return app.api_key.as_ref().is_some_and(|k| same_secret(k.as_bytes(), rest.as_bytes()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Some((user, pass)) = &app.api_auth else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else { return false };
        let expected = format!("{user}:{pass}");
        return same_secret(expected.as_bytes(), &decoded);
    }
    false
}

/// The `log` target of the access log: one JSON object per request.
pub const ACCESS_LOG: &str = "sdgen::access";

/// Structured logs: every request as one JSON line (time, method, path, status, duration)
/// at info level on [`ACCESS_LOG`]; `sdgen serve` prints them on stderr.
async fn access_log(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let line = serde_json::json!({
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "method": method,
        "path": path,
        "status": resp.status().as_u16(),
        "ms": (started.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
    });
    log::info!(target: ACCESS_LOG, "{line}");
    resp
}

async fn auth(State(app): State<Arc<App>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if authorized(&app, req.headers()) {
        return next.run(req).await;
    }
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, None, "missing or wrong credentials").into_response();
    let challenge = if app.api_auth.is_some() { "Basic realm=\"sdgen\"" } else { "Bearer" };
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// An error answer: status, the request field at fault, and a message. A1111 routes answer
/// `{"error", "detail", "field"}`, OpenAI routes `{"error": {"message", "type", "param"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
    pub retry_after: Option<u64>,
    pub openai: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError { status, field: field.map(str::to_string), message: message.into(), retry_after: None, openai: false }
    }

    pub fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, Some(field), message)
    }

    pub fn openai(mut self) -> ApiError {
        self.openai = true;
        self
    }

    /// The answer to a library error: the caller's fault is 400 (the field, when the
    /// message starts with one the caller sent), the server's 500.
    pub fn from_error(e: &Error) -> ApiError {
        ApiError::from_failure(&Failure { kind: e.kind(), message: e.to_string() })
    }

    pub fn from_failure(f: &Failure) -> ApiError {
        let status = match f.kind {
            ErrorKind::Request => StatusCode::BAD_REQUEST,
            ErrorKind::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::OutOfMemory => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut err = ApiError::new(status, None, f.message.clone());
        err.field = field_in_message(&f.message);
        err
    }

    fn body(&self) -> serde_json::Value {
        if self.openai {
            let kind = if self.status.is_client_error() { "invalid_request_error" } else { "server_error" };
            serde_json::json!({"error": {"message": self.message, "type": kind, "param": self.field, "code": null}})
        } else {
            let error = self.status.canonical_reason().unwrap_or("Error");
            serde_json::json!({"error": error, "detail": self.message, "field": self.field})
        }
    }
}

/// The request field a library message is about, from its first word (`width 65 is not...`).
fn field_in_message(message: &str) -> Option<String> {
    let first = message.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next()?;
    let field = match first {
        "width" => "width",
        "height" => "height",
        "steps" => "steps",
        "guidance" => "cfg_scale",
        "num_images" => "batch_size",
        "strength" => "denoising_strength",
        "sd_model_checkpoint" => "sd_model_checkpoint",
        _ if message.contains("scheduler") || message.contains("sampler") => "sampler_name",
        _ => return None,
    };
    Some(field.to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Reads a JSON body of at most `max` bytes into `T`; errors name the field at fault.
pub async fn read_json<T: serde::de::DeserializeOwned>(body: Body, max: usize) -> std::result::Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, None, format!("the request body is larger than {max} bytes"))
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // The path is "." or "?" when the body is not JSON at all or fails at its top level.
        let field = (path != "." && path != "?" && !path.is_empty()).then_some(path);
        let inner = e.into_inner();
        let message = match &field {
            Some(f) => format!("{f}: {inner}"),
            None => format!("the body is not valid JSON for this endpoint: {inner}"),
        };
        ApiError { field, ..ApiError::new(StatusCode::BAD_REQUEST, None, message) }
    })
}

/// Queues a generation (or a model switch) and waits for the worker's answer.
pub async fn submit(app: &App, work: Work) -> std::result::Result<queue::Outcome, ApiError> {
    app.queue.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::oneshot::channel::<Reply>();
    match app.queue.push(Job { work, reply: tx }) {
        Ok(()) => {}
        Err(Rejected::Full) => {
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, "the queue is full; try again later");
            e.retry_after = Some(5);
            return Err(e);
        }
        Err(Rejected::Closing) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, "the server is shutting down"));
        }
    }
    match rx.await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(f)) => Err(ApiError::from_failure(&f)),
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, "the worker stopped")),
    }
}

/// Checks the values a request sets against the server's limits, naming the A1111 field.
pub fn check_limits(limits: &Limits, req: &Request, names: [&str; 4]) -> std::result::Result<(), ApiError> {
    let [steps, width, height, n] = names;
    if req.steps == 0 || req.steps > limits.max_steps {
        return Err(ApiError::bad(steps, format!("{steps} must be between 1 and {}", limits.max_steps)));
    }
    for (field, v) in [(width, req.width), (height, req.height)] {
        if v == 0 || v % 8 != 0 || v > limits.max_side {
            return Err(ApiError::bad(
                field,
                format!("{field} {v} must be a positive multiple of 8, at most {}", limits.max_side),
            ));
        }
    }
    if u64::from(req.width) * u64::from(req.height) > limits.max_pixels {
        return Err(ApiError::bad(
            width,
            format!("{}x{} is more than {} pixels", req.width, req.height, limits.max_pixels),
        ));
    }
    if req.num_images == 0 || req.num_images > limits.max_images {
        return Err(ApiError::bad(n, format!("{n}: between 1 and {} images per request", limits.max_images)));
    }
    crate::pipeline::check_request(req, limits).map_err(|e| ApiError::from_error(&e))
}
