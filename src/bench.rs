//! `sdgen bench`: load time, memory and speed of one generation, in the same terms as
//! `tools/bench_diffusers.py`, so `tools/bench.sh` can print them side by side.

use crate::device::{device_name, kind_name};
use crate::pipeline::{LoadOptions, Pipeline};
use crate::{Request, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

/// The figures one benchmark run measures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub device: String,
    pub dtype: String,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub threads: i32,
    pub weights_bytes: u64,
    pub load_s: f64,
    pub rss_before_load_bytes: u64,
    pub load_peak_rss_bytes: u64,
    pub first_step_s: f64,
    pub steps_per_s: f64,
    pub vae_decode_s: f64,
    /// Peak resident memory of the whole run (load, denoising and decoding).
    pub peak_rss_bytes: u64,
    pub peak_vram_bytes: Option<u64>,
}

/// A `/proc/self/status` memory field (`VmRSS`, `VmHWM`) in bytes; 0 where unavailable.
pub fn proc_status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024))
        })
        .unwrap_or(0)
}

fn weights_bytes(model: &Path) -> u64 {
    let mut total = 0;
    if let Ok(dirs) = std::fs::read_dir(model) {
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                for f in files.flatten() {
                    if f.path().extension().is_some_and(|e| e == "safetensors") {
                        total += f.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
            }
        }
    }
    total
}

fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

/// Loads the model and generates one image of `req`, timing each phase.
pub fn run(opts: &LoadOptions, req: &Request) -> Result<BenchReport> {
    let device = opts.device.resolve()?;
    let sampler = VramSampler::start(device);
    let rss0 = proc_status_bytes("VmRSS");
    let t0 = Instant::now();
    let pipe = Pipeline::load(opts)?;
    sync(device);
    let load_s = t0.elapsed().as_secs_f64();
    let load_peak = proc_status_bytes("VmHWM");

    let mut stamps = Vec::with_capacity(req.steps);
    let start = Instant::now();
    let denoised = pipe.denoise(std::slice::from_ref(req), &mut |_| {
        sync(device);
        stamps.push(Instant::now());
    })?;
    let Some(denoised) = denoised else { return Err(crate::Error::invalid("nothing to benchmark")) };
    let t1 = Instant::now();
    let _images = pipe.decode(&denoised.latents)?;
    sync(device);
    let vae_decode_s = t1.elapsed().as_secs_f64();
    let peak_vram = sampler.stop();
    let peak_rss = proc_status_bytes("VmHWM");

    let first = stamps.first().map(|s| s.duration_since(start).as_secs_f64()).unwrap_or(0.0);
    let steps_per_s = match (stamps.first(), stamps.last()) {
        (Some(a), Some(b)) if stamps.len() > 1 => (stamps.len() - 1) as f64 / b.duration_since(*a).as_secs_f64(),
        _ => 1.0 / first.max(1e-9),
    };
    Ok(BenchReport {
        implementation: "sdgen",
        device: device_name(pipe.device()),
        dtype: kind_name(pipe.kind()).to_string(),
        width: req.width,
        height: req.height,
        steps: req.steps,
        threads: tch::get_num_threads(),
        weights_bytes: weights_bytes(&opts.model),
        load_s,
        rss_before_load_bytes: rss0,
        load_peak_rss_bytes: load_peak,
        first_step_s: first,
        steps_per_s,
        vae_decode_s,
        peak_rss_bytes: peak_rss,
        peak_vram_bytes: peak_vram,
    })
}

/// The figures of a decode-only run: the VAE decode of seeded random latents, twice (the
/// first includes what a layer prepares on first use).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecodeReport {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub device: String,
    pub dtype: String,
    pub width: u32,
    pub height: u32,
    pub threads: i32,
    pub load_s: f64,
    /// The first decode.
    pub vae_decode_s: f64,
    /// The same latents decoded again.
    pub vae_decode_again_s: f64,
    pub peak_rss_bytes: u64,
}

/// Loads the model and decodes `width × height` latents of seed 0 twice, timing each decode
/// (what `tools/bench_diffusers.py --decode-only` measures).
pub fn run_decode(opts: &LoadOptions, width: u32, height: u32) -> Result<DecodeReport> {
    use crate::noise::NoiseSource;
    let device = opts.device.resolve()?;
    let t0 = Instant::now();
    let pipe = Pipeline::load(opts)?;
    sync(device);
    let load_s = t0.elapsed().as_secs_f64();
    let spec = pipe.spec();
    let scale = i64::from(spec.vae_scale_factor());
    let shape = [1, spec.latent_channels(), i64::from(height) / scale, i64::from(width) / scale];
    // diffusers' latents: N(0, 1) noise scaled by the VAE's factor, as the denoiser leaves them.
    let latents = crate::noise::SeededNoise::new(0).randn(&shape, device, pipe.kind()) * spec.vae.scaling_factor;
    let mut times = [0.0; 2];
    for t in &mut times {
        let start = Instant::now();
        let _images = pipe.decode(&latents)?;
        sync(device);
        *t = start.elapsed().as_secs_f64();
    }
    Ok(DecodeReport {
        implementation: "sdgen",
        device: device_name(pipe.device()),
        dtype: kind_name(pipe.kind()).to_string(),
        width,
        height,
        threads: tch::get_num_threads(),
        load_s,
        vae_decode_s: times[0],
        vae_decode_again_s: times[1],
        peak_rss_bytes: proc_status_bytes("VmHWM"),
    })
}

/// Samples the device memory in use every 5 ms on a background thread, through the CUDA
/// driver API (the same view as nvidia-smi and as the diffusers script's `mem_get_info`).
struct VramSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VramSampler {
    fn start(device: Device) -> VramSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = match device {
            Device::Cuda(index) => {
                let (stop, peak) = (stop.clone(), peak.clone());
                Some(std::thread::spawn(move || {
                    if !crate::info::bind_cuda_context(index) {
                        return;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(used) = crate::info::cuda_used_memory() {
                            peak.fetch_max(used, Ordering::Relaxed);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }))
            }
            _ => None,
        };
        VramSampler { stop, peak, thread }
    }

    fn stop(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take()?;
        let _ = t.join();
        Some(self.peak.load(Ordering::Relaxed))
    }
}
