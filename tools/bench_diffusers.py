"""The diffusers side of the side-by-side benchmark (see tools/bench.sh).

Prints one JSON object with the same figures `sdgen bench --json` prints:
load_s, rss_before_load_bytes, load_peak_rss_bytes, weights_bytes, first_step_s, steps_per_s,
vae_decode_s, peak_rss_bytes (the whole run), peak_vram_bytes (device memory in use, sampled every 5 ms, the same way sdgen
samples it), plus torch's own max_memory_reserved for reference.

    python tools/bench_diffusers.py MODEL --width 512 --height 512 --steps 20 --dtype fp16 --device cuda

With --decode-only: loads the pipeline and decodes seeded random latents (N(0, 1) times the VAE's
scaling factor) of the size twice, as `sdgen bench --decode-only`, and prints load_s,
vae_decode_s, vae_decode_again_s and peak_rss_bytes.
"""

import argparse
import glob
import json
import os
import threading
import time

import torch


def rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class VramSampler:
    """Samples device memory in use (driver view, like nvidia-smi) in a background thread."""

    def __init__(self, device):
        self.device = device
        self.peak = 0
        self.stop = False
        self.thread = None

    def __enter__(self):
        if self.device.type == "cuda":
            def loop():
                while not self.stop:
                    free, total = torch.cuda.mem_get_info(self.device)
                    self.peak = max(self.peak, total - free)
                    time.sleep(0.005)
            self.thread = threading.Thread(target=loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        if self.thread:
            self.thread.join()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_only(pipe, args, device, dtype, load_s):
    g = torch.Generator("cpu").manual_seed(0)
    f = pipe.vae_scale_factor
    shape = (1, pipe.vae.config.latent_channels, args.height // f, args.width // f)
    latents = (torch.randn(shape, generator=g) * pipe.vae.config.scaling_factor).to(device, dtype)
    times = []
    for _ in range(2):
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            pipe.image_processor.postprocess(image, output_type="np")
        sync(device)
        times.append(time.perf_counter() - t)
    print(json.dumps({
        "impl": "diffusers",
        "device": str(device),
        "dtype": args.dtype,
        "width": args.width,
        "height": args.height,
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "vae_decode_s": times[0],
        "vae_decode_again_s": times[1],
        "peak_rss_bytes": rss_bytes("VmHWM"),
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--decode-only", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    weights = sum(os.path.getsize(p) for p in glob.glob(os.path.join(args.model, "*", "*.safetensors")))
    if device.type == "cuda":
        torch.cuda.init()
    rss0 = rss_bytes("VmRSS")
    with VramSampler(device) as vram:
        t0 = time.perf_counter()
        pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe = pipe.to(device)
        sync(device)
        load_s = time.perf_counter() - t0
        load_peak = rss_bytes("VmHWM")
        if args.decode_only:
            decode_only(pipe, args, device, dtype, load_s)
            return
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        stamps = []

        def on_step(p, i, t, kw):
            sync(device)
            stamps.append(time.perf_counter())
            return kw

        g = torch.Generator("cpu").manual_seed(0)
        sync(device)
        start = time.perf_counter()
        latents = pipe("a photo of an astronaut riding a horse", num_inference_steps=args.steps,
                       guidance_scale=args.guidance, width=args.width, height=args.height, generator=g,
                       output_type="latent", callback_on_step_end=on_step).images
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
            image = pipe.image_processor.postprocess(image, output_type="np")
        sync(device)
        decode_s = time.perf_counter() - t1
    steps_per_s = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 1.0 / (stamps[0] - start)
    out = {
        "impl": "diffusers",
        "device": str(device),
        "dtype": args.dtype,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "weights_bytes": weights,
        "load_s": load_s,
        "rss_before_load_bytes": rss0,
        "load_peak_rss_bytes": load_peak,
        "first_step_s": stamps[0] - start,
        "steps_per_s": steps_per_s,
        "vae_decode_s": decode_s,
        "peak_rss_bytes": rss_bytes("VmHWM"),
        "peak_vram_bytes": vram.peak if device.type == "cuda" else None,
        "torch_max_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
