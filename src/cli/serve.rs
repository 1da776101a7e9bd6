//! `sdgen serve`: keep a model loaded and answer the A1111 and OpenAI image APIs over HTTP
//! (the server itself is `sdgen::serve`).

use super::{LimitArgs, ModelArgs};
use anyhow::{bail, Context};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A folder of models (diffusers folders and .safetensors files) clients may switch to by
    /// name (A1111's `sd_model_checkpoint`); --model may name one of them.
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// A folder of VAEs (.safetensors files and diffusers VAE folders, KL or tiny) clients may
    /// switch to by name (A1111's `sd_vae`, listed by GET /sdapi/v1/sd-vae); "Automatic" is
    /// the model's own VAE; a --vae given at start is listed too, by its name.
    #[arg(long, value_name = "DIR")]
    pub vae_dir: Option<PathBuf>,
    /// Address and port to listen on. Anything but a loopback address lets other machines in.
    #[arg(long, default_value = "127.0.0.1:7860", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Require `Authorization: Bearer KEY` (OpenAI clients send their api_key so).
    #[arg(long, value_name = "KEY", env = "SDGEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require HTTP Basic authentication with this user and password (A1111's --api-auth).
    #[arg(long, value_name = "USER:PASS")]
    pub api_auth: Option<String>,
    /// Requests waiting at most; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub queue: usize,
    /// Most images in one UNet batch; queued requests with the same settings are joined.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_batch: usize,
    /// Largest request body in bytes (img2img images come base64 in the body).
    #[arg(long, default_value_t = 32 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Decode the progress previews (`current_image`) with this tiny autoencoder (TAESD for
    /// SD 1.x/2.x, TAESDXL for SDXL), a folder or a .safetensors file: full size instead of
    /// A1111's 1/8-size cheap projection.
    #[arg(long, value_name = "PATH")]
    pub preview_vae: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let api_auth = match &args.api_auth {
        Some(s) => match s.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Some((u.to_string(), p.to_string())),
            _ => bail!("--api-auth wants USER:PASS"),
        },
        None => None,
    };
    if args.api_key.as_deref().is_some_and(str::is_empty) {
        bail!("--api-key is empty");
    }
    let mut settings = args.model.settings()?;
    // `--model NAME` with `--models-dir` picks that entry of the folder.
    let in_dir = match (&args.models_dir, &settings.model) {
        (Some(dir), Some(m)) if !m.contains(['/', '\\']) && dir.join(m).exists() => Some(dir.join(m)),
        _ => None,
    };
    if let Some(path) = &in_dir {
        settings.model = Some(path.display().to_string());
    }
    if let Some(dir) = &args.models_dir {
        if !dir.is_dir() {
            bail!("--models-dir {} is not a folder", dir.display());
        }
    }
    if let Some(dir) = &args.vae_dir {
        if !dir.is_dir() {
            bail!("--vae-dir {} is not a folder", dir.display());
        }
    }
    let load = sdgen::LoadOptions {
        limits: args.limits.limits(),
        cuda: args.model.gpu.options(),
        ..super::load_options(&settings, false)?
    };
    let mut opts = sdgen::serve::ServeOptions::new(load);
    opts.listen = args.listen;
    opts.models_dir = args.models_dir.clone();
    opts.vae_dir = args.vae_dir.clone();
    opts.limits = args.limits.limits();
    opts.queue_capacity = args.queue;
    opts.max_batch = args.max_batch;
    opts.max_body_bytes = args.max_body_bytes;
    opts.api_key = args.api_key.clone();
    opts.api_auth = api_auth;
    opts.handle_signals = true;
    opts.preview_vae = args.preview_vae.clone();
    if opts.is_open_to_network() {
        eprintln!(
            "warning: listening on {} without --api-key or --api-auth: anyone who can reach this machine can use it",
            opts.listen
        );
    }
    let server = sdgen::serve::Server::start(opts).context("starting the server")?;
    eprintln!("sdgen serve: listening on http://{}", server.addr());
    server.wait()?;
    eprintln!("sdgen serve: stopped");
    Ok(())
}
