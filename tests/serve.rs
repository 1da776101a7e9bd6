//! `sdgen serve` over real HTTP on the tiny model: the A1111 and OpenAI APIs, the same pixels
//! as `sdgen generate`, bad input answered 4xx naming the field, auth, a bounded queue,
//! interrupt, model switching, the web page, and the binary's start, warning and shutdown.

mod common;

use base64::Engine;
use sdgen::serve::{ServeOptions, Server};
use serde_json::{json, Value};
use std::path::PathBuf;

fn tiny() -> PathBuf {
    common::root().join("weights/tiny-sd")
}

fn start(configure: impl FnOnce(&mut ServeOptions)) -> Server {
    let load = sdgen::LoadOptions { model: tiny(), device: "cpu".parse().unwrap(), ..Default::default() };
    let mut opts = ServeOptions::new(load);
    opts.listen = "127.0.0.1:0".parse().unwrap();
    configure(&mut opts);
    Server::start(opts).expect("server starts")
}

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let retry_after = resp.header("Retry-After").map(str::to_string);
    let text = resp.into_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer { status, body, retry_after }
}

fn post(server: &Server, path: &str, body: &str) -> Answer {
    answer(
        ureq::post(&format!("http://{}{path}", server.addr()))
            .set("Content-Type", "application/json")
            .send_string(body),
    )
}

fn get(server: &Server, path: &str) -> Answer {
    answer(ureq::get(&format!("http://{}{path}", server.addr())).call())
}

fn png(b64: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(b64.as_str().expect("base64 string")).unwrap()
}

fn rgb(png: &[u8]) -> image::RgbImage {
    image::load_from_memory(png).unwrap().to_rgb8()
}

#[test]
fn txt2img_gives_the_pixels_and_metadata_of_sdgen_generate() {
    let server = start(|_| {});
    let a = post(
        &server,
        "/sdapi/v1/txt2img",
        r#"{"prompt": "a red fox", "negative_prompt": "blurry", "steps": 3, "seed": 11, "width": 64,
            "height": 64, "cfg_scale": 7, "sampler_name": "Euler a", "enable_hr": false, "styles": [],
            "override_settings": {"sd_model_checkpoint": "tiny-sd"}}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let images = a.body["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    let api_png = png(&images[0]);
    let info: Value = serde_json::from_str(a.body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["seed"], 11);
    assert_eq!(info["sd_model_name"], "tiny-sd");
    assert!(info["infotexts"][0].as_str().unwrap().contains("Sampler: Euler a"), "{info}");
    assert!(info["license"].as_str().unwrap().contains("OpenRAIL"), "{info}");
    assert_eq!(a.body["parameters"]["steps"], 3);

    let dir = tempfile::tempdir().unwrap();
    let api_file = dir.path().join("api.png");
    std::fs::write(&api_file, &api_png).unwrap();
    let keys: Vec<String> = sdgen::output::read_text_chunks(&api_file).unwrap().into_iter().map(|(k, _)| k).collect();
    for k in ["parameters", "sdgen", "license"] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }

    let out = dir.path().join("cli");
    assert_cmd::Command::cargo_bin("sdgen")
        .unwrap()
        .env_remove("SDGEN_MODEL")
        .env("OMP_NUM_THREADS", "1")
        .args(["generate", "a red fox", "-n", "blurry", "--steps", "3", "--seed", "11", "--width", "64"])
        .args(["--height", "64", "--guidance", "7", "--scheduler", "Euler a", "--device", "cpu", "-q"])
        .args(["--name", "cli.png", "--model"])
        .arg(tiny())
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let cli_png = std::fs::read(out.join("cli.png")).unwrap();
    assert_eq!(rgb(&api_png), rgb(&cli_png), "the API and sdgen generate gave different pixels");
    server.shutdown().unwrap();
}

#[test]
fn bad_input_is_a_4xx_naming_the_field_and_the_server_keeps_serving() {
    let server = start(|o| o.max_body_bytes = 4096);
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("/sdapi/v1/txt2img", "{not json", 400, None),
        ("/sdapi/v1/txt2img", r#"{"steps": "many"}"#, 400, Some("steps")),
        ("/sdapi/v1/txt2img", r#"{"steps": -3}"#, 400, Some("steps")),
        ("/sdapi/v1/txt2img", r#"{"sampler_name": "Nope"}"#, 400, Some("sampler_name")),
        ("/sdapi/v1/txt2img", r#"{"scheduler": "Beta"}"#, 400, Some("scheduler")),
        ("/sdapi/v1/txt2img", r#"{"steps": 100000}"#, 400, Some("steps")),
        ("/sdapi/v1/txt2img", r#"{"width": 65, "steps": 2}"#, 400, Some("width")),
        ("/sdapi/v1/txt2img", r#"{"width": 100000, "height": 64}"#, 400, Some("width")),
        ("/sdapi/v1/txt2img", r#"{"batch_size": 5000, "steps": 2}"#, 400, Some("batch_size")),
        ("/sdapi/v1/txt2img", r#"{"n_iter": 0}"#, 400, Some("n_iter")),
        ("/sdapi/v1/txt2img", r#"{"seed": -5}"#, 400, Some("seed")),
        ("/sdapi/v1/txt2img", r#"{"cfg_scale": -1, "steps": 2, "width": 64, "height": 64}"#, 400, Some("cfg_scale")),
        ("/sdapi/v1/txt2img", r#"{"enable_hr": true}"#, 400, Some("enable_hr")),
        (
            "/sdapi/v1/txt2img",
            r#"{"override_settings": {"sd_model_checkpoint": "tiny-sd2"}}"#,
            400,
            Some("override_settings.sd_model_checkpoint"),
        ),
        ("/sdapi/v1/img2img", r#"{"prompt": "x"}"#, 400, Some("init_images")),
        ("/sdapi/v1/img2img", r#"{"init_images": ["!!!"]}"#, 400, Some("init_images")),
        ("/sdapi/v1/img2img", r#"{"init_images": ["aGVsbG8="]}"#, 400, Some("init_images")),
        ("/sdapi/v1/options", r#"{"sd_model_checkpoint": "../../etc/passwd"}"#, 400, Some("sd_model_checkpoint")),
        ("/sdapi/v1/options", r#"{"sd_model_checkpoint": 3}"#, 400, Some("sd_model_checkpoint")),
        ("/sdapi/v1/options", "[1]", 400, None),
    ];
    for (path, body, status, field) in cases {
        let a = post(&server, path, body);
        assert_eq!(a.status, *status, "{path} {body}: {}", a.body);
        assert_eq!(a.body["field"].as_str(), *field, "{path} {body}: {}", a.body);
        assert!(a.body["detail"].is_string(), "{path} {body}: {}", a.body);
    }
    let openai: &[(&str, &str)] = &[
        (r#"{"n": 1}"#, "prompt"),
        (r#"{"prompt": "x", "size": "big"}"#, "size"),
        (r#"{"prompt": "x", "size": "60x64"}"#, "size"),
        (r#"{"prompt": "x", "response_format": "url"}"#, "response_format"),
        (r#"{"prompt": "x", "n": 0}"#, "n"),
        (r#"{"prompt": "x", "n": "two"}"#, "n"),
    ];
    for (body, param) in openai {
        let a = post(&server, "/v1/images/generations", body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.body["error"]["param"], *param, "{body}: {}", a.body);
        assert_eq!(a.body["error"]["type"], "invalid_request_error");
    }
    let big = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(5000));
    assert_eq!(post(&server, "/sdapi/v1/txt2img", &big).status, 413);
    assert_eq!(get(&server, "/nowhere").status, 404);
    assert_eq!(get(&server, "/health").body["status"], "ok");
    let m = get(&server, "/metrics").body;
    assert!(m.as_str().unwrap().contains("sdgen_queue_depth 0"), "{m}");
    server.shutdown().unwrap();
}

#[test]
fn auth_by_bearer_key_or_basic_user_and_password() {
    let server = start(|o| {
        o.api_key = Some("sekrit".into());
        o.api_auth = Some(("user".into(), "pass".into()));
    });
    let url = format!("http://{}/sdapi/v1/samplers", server.addr());
    assert_eq!(answer(ureq::get(&url).call()).status, 401);
    assert_eq!(answer(ureq::get(&url).set("Authorization", "Bearer wrong").call()).status, 401);
    let ok = answer(ureq::get(&url).set("Authorization", "Bearer sekrit").call());
    assert_eq!(ok.status, 200);
    assert!(ok.body.as_array().unwrap().iter().any(|s| s["name"] == "DPM++ 2M"), "{}", ok.body);
    let basic = base64::engine::general_purpose::STANDARD.encode("user:pass");
    assert_eq!(answer(ureq::get(&url).set("Authorization", &format!("Basic {basic}")).call()).status, 200);
    let wrong = base64::engine::general_purpose::STANDARD.encode("user:nope");
    assert_eq!(answer(ureq::get(&url).set("Authorization", &format!("Basic {wrong}")).call()).status, 401);
    assert_eq!(get(&server, "/health").status, 200, "health needs no key");
    server.shutdown().unwrap();
}

#[test]
fn sixteen_requests_from_four_clients_are_all_answered_in_shared_batches() {
    let server = start(|o| o.queue_capacity = 16);
    let addr = server.addr();
    let handles: Vec<_> = (0..4)
        .map(|client| {
            std::thread::spawn(move || {
                (0..4)
                    .map(|i| {
                        let seed = client * 4 + i;
                        let body = json!({"prompt": format!("client {client}"), "seed": seed, "steps": 2,
                                          "width": 64, "height": 64, "sampler_name": "Euler"});
                        let a = answer(
                            ureq::post(&format!("http://{addr}/sdapi/v1/txt2img"))
                                .set("Content-Type", "application/json")
                                .send_string(&body.to_string()),
                        );
                        assert_eq!(a.status, 200, "{}", a.body);
                        let info: Value = serde_json::from_str(a.body["info"].as_str().unwrap()).unwrap();
                        assert_eq!(info["seed"], seed, "each request gets its own image back");
                        a.body["images"].as_array().unwrap().len()
                    })
                    .sum::<usize>()
            })
        })
        .collect();
    let images: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(images, 16);
    let metrics = get(&server, "/metrics").body.as_str().unwrap().to_string();
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap().parse().unwrap()
    };
    assert_eq!(value("sdgen_images_total"), 16.0);
    assert!(value("sdgen_batches_total") < 16.0, "queued requests should share UNet batches:\n{metrics}");
    server.shutdown().unwrap();
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = start(|o| {
        o.queue_capacity = 1;
        o.max_batch = 1;
    });
    let addr = server.addr();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let body = json!({"prompt": "busy", "seed": i, "steps": 300, "width": 64, "height": 64});
                answer(
                    ureq::post(&format!("http://{addr}/sdapi/v1/txt2img"))
                        .set("Content-Type", "application/json")
                        .send_string(&body.to_string()),
                )
            })
        })
        .collect();
    let answers: Vec<Answer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let full: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(!full.is_empty(), "six requests at once on a queue of one");
    assert!(full.iter().all(|a| a.retry_after.is_some()));
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 503));
    // The running job and the one queued behind it at most (whether the worker took the first
    // before the second came is a race).
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert!((1..=2).contains(&ok), "{ok} answered");
    server.shutdown().unwrap();
}

#[test]
fn interrupt_stops_the_running_job() {
    interrupt_after_a_preview(start(|_| {}), (8, 8));
}

#[test]
fn progress_previews_from_a_tiny_autoencoder_are_full_size() {
    let server = start(|o| o.preview_vae = Some(common::root().join("weights/tiny-taesd")));
    interrupt_after_a_preview(server, (64, 64));
}

#[test]
fn a_preview_autoencoder_that_does_not_fit_fails_the_start_not_a_switch() {
    let weights = common::root().join("weights");
    let load = sdgen::LoadOptions { model: tiny(), device: "cpu".parse().unwrap(), ..Default::default() };
    let mut opts = ServeOptions::new(load);
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.preview_vae = Some(weights.join("tiny-taesdxl"));
    let e = Server::start(opts).err().expect("a TAESDXL on an SD model is refused").to_string();
    assert!(e.contains("TAESDXL") && e.contains("use TAESD"), "{e}");
    // Switching to SDXL with a TAESD: the switch works, its previews are the cheap ones.
    let server = start(|o| {
        o.models_dir = Some(weights.clone());
        o.preview_vae = Some(weights.join("tiny-taesd"));
    });
    let a = post(&server, "/sdapi/v1/options", r#"{"sd_model_checkpoint": "tiny-sdxl"}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    let a = post(&server, "/sdapi/v1/txt2img", r#"{"prompt": "x", "steps": 2, "width": 64, "height": 64}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    server.shutdown().unwrap();
}

/// Starts a long job, waits for its progress preview (`dims` in size), interrupts it.
fn interrupt_after_a_preview(server: Server, dims: (u32, u32)) {
    let addr = server.addr();
    let job = std::thread::spawn(move || {
        let body =
            json!({"prompt": "long", "seed": 1, "steps": 900, "width": 64, "height": 64, "sampler_name": "Euler"});
        answer(
            ureq::post(&format!("http://{addr}/sdapi/v1/txt2img"))
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
        )
    });
    let started = std::time::Instant::now();
    loop {
        let p = get(&server, "/sdapi/v1/progress").body;
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) > 0 && p["current_image"].is_string() {
            assert!(p["progress"].as_f64().unwrap() > 0.0);
            let preview = rgb(&png(&p["current_image"]));
            assert_eq!(preview.dimensions(), dims, "8×8: one pixel per latent pixel; 64×64: decoded");
            let skipped = get(&server, "/sdapi/v1/progress?skip_current_image=true").body;
            assert!(skipped["current_image"].is_null());
            break;
        }
        if job.is_finished() {
            let a = job.join().unwrap();
            panic!("the job ended before it was interrupted: {} {}", a.status, a.body);
        }
        assert!(started.elapsed().as_secs() < 120, "the job never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(post(&server, "/sdapi/v1/interrupt", "").status, 200);
    let a = job.join().unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let info: Value = serde_json::from_str(a.body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["interrupted"], true);
    assert_eq!(get(&server, "/sdapi/v1/progress").body["progress"], 0.0);
    server.shutdown().unwrap();
}

#[test]
fn options_switch_among_the_models_folder_by_name() {
    let server = start(|o| o.models_dir = Some(common::root().join("weights")));
    let models = get(&server, "/sdapi/v1/sd-models").body;
    let names: Vec<&str> = models.as_array().unwrap().iter().map(|m| m["filename"].as_str().unwrap()).collect();
    assert!(names.contains(&"tiny-sd") && names.contains(&"tiny-sd2"), "{names:?}");
    assert!(models.as_array().unwrap().iter().all(|m| !m["filename"].as_str().unwrap().contains('/')));
    assert!(get(&server, "/sdapi/v1/options").body["sd_model_checkpoint"].as_str().unwrap().starts_with("tiny-sd ["));
    let a = post(&server, "/sdapi/v1/options", r#"{"sd_model_checkpoint": "tiny-sd2", "samples_format": "png"}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(get(&server, "/sdapi/v1/options").body["sd_model_checkpoint"].as_str().unwrap().starts_with("tiny-sd2 ["));
    let a = post(&server, "/sdapi/v1/txt2img", r#"{"prompt": "x", "steps": 2, "width": 64, "height": 64}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    let info: Value = serde_json::from_str(a.body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "tiny-sd2");
    assert_eq!(get(&server, "/sdapi/v1/loras").body, json!([]));
    server.shutdown().unwrap();
}

#[test]
fn img2img_and_openai_generations() {
    let server = start(|_| {});
    let init = std::fs::read(common::root().join("tests/fixtures/img2img/init_72x100.png")).unwrap();
    let init_b64 = base64::engine::general_purpose::STANDARD.encode(init);
    let body = json!({"prompt": "a door", "init_images": [format!("data:image/png;base64,{init_b64}")],
                      "denoising_strength": 0.5, "steps": 4, "seed": 3});
    let a = post(&server, "/sdapi/v1/img2img", &body.to_string());
    assert_eq!(a.status, 200, "{}", a.body);
    let img = rgb(&png(&a.body["images"][0]));
    assert_eq!(img.dimensions(), (72, 96), "the init image's size, rounded down to a multiple of 8");

    let a = post(
        &server,
        "/v1/images/generations",
        r#"{"prompt": "a cat", "n": 2, "size": "64x64", "steps": 2,
        "model": "dall-e-3", "response_format": "b64_json"}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let data = a.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for d in data {
        assert_eq!(rgb(&png(&d["b64_json"])).dimensions(), (64, 64));
    }
    assert!(a.body["created"].as_u64().unwrap() > 0);
    server.shutdown().unwrap();
}

#[test]
fn the_web_page_is_self_contained() {
    let server = start(|_| {});
    let resp = ureq::get(&format!("http://{}/", server.addr())).call().unwrap();
    assert!(resp.content_type().starts_with("text/html"));
    let page = resp.into_string().unwrap();
    for part in
        ["<form", "id=\"prompt\"", "id=\"negative\"", "id=\"sampler\"", "id=\"seed\"", "<progress", "sdapi/v1/txt2img"]
    {
        assert!(page.contains(part), "{part} missing");
    }
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "external assets");
    server.shutdown().unwrap();
}

#[cfg(unix)]
#[test]
fn the_binary_warns_when_open_to_the_network_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sdgen"))
        .env_remove("SDGEN_MODEL")
        .env_remove("SDGEN_API_KEY")
        .env("OMP_NUM_THREADS", "1")
        .args(["serve", "--listen", "0.0.0.0:0", "--device", "cpu", "--model"])
        .arg(tiny())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut warned = false;
    let port = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        warned |= line.starts_with("warning: listening on 0.0.0.0") && line.contains("--api-key");
        if let Some(addr) = line.strip_prefix("sdgen serve: listening on http://") {
            break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        }
    };
    assert!(warned, "no warning for a non-loopback address without a key");
    let health = answer(ureq::get(&format!("http://127.0.0.1:{port}/health")).call());
    assert_eq!(health.status, 200);
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    // Structured logs: the request as one JSON object a line.
    let access: Vec<Value> = rest.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    let health = access.iter().find(|v| v["path"] == "/health").unwrap_or_else(|| panic!("no access log: {rest:?}"));
    assert_eq!((health["method"].as_str(), health["status"].as_u64()), (Some("GET"), Some(200)));
    assert!(health["ms"].as_f64().is_some() && health["time"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn shutdown_finishes_the_running_job_and_answers_queued_ones_503() {
    let server = start(|o| o.max_batch = 1);
    let addr = server.addr();
    let send = |seed: u64| {
        std::thread::spawn(move || {
            let body = json!({"prompt": "last", "seed": seed, "steps": 300, "width": 64, "height": 64});
            answer(
                ureq::post(&format!("http://{addr}/sdapi/v1/txt2img"))
                    .set("Content-Type", "application/json")
                    .send_string(&body.to_string()),
            )
        })
    };
    let wait_for = |what: &str, done: &dyn Fn(&Value) -> bool| {
        let started = std::time::Instant::now();
        while !done(&get(&server, "/sdapi/v1/progress?skip_current_image=true").body) {
            assert!(started.elapsed().as_secs() < 120, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let running = send(1);
    wait_for("the first job never started", &|p| p["state"]["sampling_step"].as_u64().unwrap_or(0) > 0);
    let queued = send(2);
    wait_for("the second job was never queued", &|p| p["state"]["job_count"] == 2);
    server.shutdown().unwrap();
    let (running, queued) = (running.join().unwrap(), queued.join().unwrap());
    assert_eq!(running.status, 200, "the running job finishes: {}", running.body);
    assert_eq!(running.body["images"].as_array().unwrap().len(), 1);
    assert_eq!(queued.status, 503, "{}", queued.body);
    assert!(ureq::get(&format!("http://{addr}/health")).call().is_err(), "nothing listens after shutdown");
}

/// Debian's headless Chromium, when installed (`chromium` or `chromium-headless-shell`).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium-headless-shell", "chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
        .or_else(|| {
            let lib = PathBuf::from("/usr/lib/chromium/chromium-headless-shell");
            lib.is_file().then_some(lib)
        })
}

#[test]
fn the_web_page_generates_an_image_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: no chromium or chromium-headless-shell on PATH");
        return;
    };
    let server = start(|_| {});
    let url = format!("http://{}/?prompt=a+red+fox&steps=4&width=64&height=64&seed=3&generate=1", server.addr());
    let dir = tempfile::tempdir().unwrap();
    let run = |action: &str| {
        let out = std::process::Command::new(&browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000"])
            .args(["--window-size=900,1400", &format!("--user-data-dir={}", dir.path().join("profile").display())])
            .arg(action)
            .arg(&url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run("--dump-dom");
    assert!(dom.contains("<progress"), "no progress bar");
    assert!(dom.contains(r#"id="image0""#) && dom.contains("data:image/png;base64,"), "no image:\n{dom}");
    assert!(dom.contains(r#"id="license""#) && dom.contains("Steps: 4"), "no parameters or licence:\n{dom}");
    let shot = dir.path().join("page.png");
    run(&format!("--screenshot={}", shot.display()));
    let shot = image::open(&shot).unwrap();
    assert_eq!(shot.width(), 900);
    server.shutdown().unwrap();
}

#[test]
fn real_clients_drive_the_server() {
    // A1111's `webuiapi` and the `openai` package, installed by tools/test.sh into a
    // throwaway venv, against a live server (tools/serve_clients.py checks their answers).
    let python = match std::env::var("SDGEN_CLIENTS_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var_os("CI").is_some() => panic!("CI must provide SDGEN_CLIENTS_PYTHON (tools/test.sh)"),
        Err(_) => {
            eprintln!("skipped: SDGEN_CLIENTS_PYTHON not set; tools/test.sh sets it up");
            return;
        }
    };
    let server = start(|_| {});
    let addr = server.addr();
    let out = std::process::Command::new(python)
        .arg(common::root().join("tools/serve_clients.py"))
        .args([addr.ip().to_string(), addr.port().to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "clients failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all client checks passed"), "{stdout}");
}
