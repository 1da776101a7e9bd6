"""Record diffusers' reference outputs on weights/tiny-sd2 (SD 2.x style) as golden files.

Same file layout as tools/make_goldens.py's tests/fixtures/goldens (see the README there):
one `<case>.safetensors` per prompt x seed x size x scheduler with the tokens, text
embeddings, initial noise, timesteps (and sigmas), latents after every step and the image,
plus `components.safetensors` with per-model outputs and `cases.json` describing every case.
What differs from tiny-sd: v-prediction (from the model's scheduler config, for DDIM and
Euler alike), a tokenizer that pads with "!", a gelu text encoder with SD 2.1's token ids,
and a UNet with linear projections and per-level head counts.

    /work/main/.venv-ref/bin/python tools/make_goldens_sd2.py [OUT_DIR]   # default tests/fixtures/goldens-sd2
"""

import argparse
import json
import os
import platform

import numpy as np
import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "weights", "tiny-sd2")

PROMPTS = {
    "plain": ("a photograph of an astronaut riding a horse", None),
    "negative": ("a red cube on a wooden table, studio light", "blurry, low quality, watermark"),
}
SEEDS = (0, 42)
SIZES = ((64, 64),)  # (width, height)
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}
STEPS = 4
GUIDANCE = 7.5


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def run_case(pipe, base_config, scheduler_cls, prompt, negative, seed, width, height):
    """One pipeline call, with hooks that capture the text encoder calls and every step."""
    pipe.scheduler = scheduler_cls.from_config(base_config)
    calls = []

    def on_encode(_module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append((ids.clone(), output[0].detach().clone()))

    hook = pipe.text_encoder.register_forward_hook(on_encode, with_kwargs=True)
    first = {}
    original_prepare = pipe.prepare_latents

    def prepare(*args, **kwargs):
        first["latents"] = original_prepare(*args, **kwargs)
        return first["latents"].clone()

    pipe.prepare_latents = prepare
    steps = []

    def on_step(_pipe, _i, _t, kw):
        steps.append(kw["latents"].detach().clone())
        return kw

    try:
        out = pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
        )
    finally:
        hook.remove()
        pipe.prepare_latents = original_prepare

    if len(calls) != 2 or len(steps) != STEPS:
        raise RuntimeError(f"expected 2 encoder calls and {STEPS} steps, got {len(calls)} and {len(steps)}")
    (cond_ids, cond), (uncond_ids, uncond) = calls
    noise = torch.randn(
        (1, 4, height // 8, width // 8), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32
    )
    if not torch.equal(first["latents"], noise * pipe.scheduler.init_noise_sigma):
        raise RuntimeError("initial latents differ from manual_seed(seed) randn * init_noise_sigma")
    tensors = {
        "cond_ids": cond_ids.to(torch.int64).contiguous(),
        "uncond_ids": uncond_ids.to(torch.int64).contiguous(),
        "cond_embeds": f32(cond),
        "uncond_embeds": f32(uncond),
        "noise": noise.contiguous(),
        "timesteps": pipe.scheduler.timesteps.to(torch.float64).contiguous(),
        "latents": torch.stack([f32(s) for s in steps]),
        "image": torch.from_numpy(np.ascontiguousarray(out.images)).to(torch.float32).contiguous(),
        "image_u8": torch.from_numpy((out.images * 255).round().astype("uint8")).contiguous(),
    }
    if hasattr(pipe.scheduler, "sigmas"):
        tensors["sigmas"] = pipe.scheduler.sigmas.to(torch.float64).contiguous()
    config = json.loads(json.dumps(dict(pipe.scheduler.config), default=list))
    return tensors, config, float(pipe.scheduler.init_noise_sigma)


def components(pipe):
    """Per-model goldens: CLIP (with clip skip), UNet at integer and fractional t, VAE."""
    t = {}
    prompts = [PROMPTS["plain"][0], PROMPTS["negative"][1]]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    te = pipe.text_encoder
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
        t["clip.input_ids"] = ids.to(torch.int64).contiguous()
        t["clip.last_hidden_state"] = f32(out.last_hidden_state)
        t["clip.pooler_output"] = f32(out.pooler_output)
        t["clip.hidden_states"] = torch.stack([f32(h) for h in out.hidden_states])
        for k in (1, 2):
            mine = te.text_model.final_layer_norm(out.hidden_states[-(k + 1)])
            theirs, _ = pipe.encode_prompt(prompts, "cpu", 1, False, clip_skip=k)
            if not torch.equal(mine, theirs):
                raise RuntimeError(f"clip_skip={k}: manual computation differs from encode_prompt")
            t[f"clip.clip_skip_{k}"] = f32(mine)

        g = torch.Generator("cpu").manual_seed(1234)
        sample = torch.randn(2, 4, 8, 8, generator=g)
        ehs = torch.randn(2, 77, 32, generator=g)
        t_int = torch.tensor(981, dtype=torch.int64)
        t_float = torch.tensor(665.3333, dtype=torch.float32)
        t["unet.sample"] = sample
        t["unet.encoder_hidden_states"] = ehs
        t["unet.t_int"] = t_int.reshape(1)
        t["unet.t_float"] = t_float.reshape(1)
        t["unet.out_t_int"] = f32(pipe.unet(sample, t_int, encoder_hidden_states=ehs).sample)
        t["unet.out_t_float"] = f32(pipe.unet(sample, t_float, encoder_hidden_states=ehs).sample)
        sample_tall = torch.randn(1, 4, 12, 8, generator=g)
        ehs_tall = torch.randn(1, 77, 32, generator=g)
        t_tall = torch.tensor(500, dtype=torch.int64)
        t["unet.sample_tall"] = sample_tall
        t["unet.encoder_hidden_states_tall"] = ehs_tall
        t["unet.t_tall"] = t_tall.reshape(1)
        t["unet.out_tall"] = f32(pipe.unet(sample_tall, t_tall, encoder_hidden_states=ehs_tall).sample)

        vae = pipe.vae
        z = torch.randn(1, 4, 12, 8, generator=g) / vae.config.scaling_factor
        t["vae.decode_in"] = z
        t["vae.decode_out"] = f32(vae.decode(z).sample)
        img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        dist = vae.encode(img).latent_dist
        t["vae.encode_in"] = img
        t["vae.encode_mean"] = f32(dist.mean)
        t["vae.encode_std"] = f32(dist.std)
    return {k: v.contiguous() for k, v in t.items()}


def main():
    import diffusers
    import transformers
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "goldens-sd2"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()

    pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    if base_config.prediction_type != "v_prediction":
        raise RuntimeError("tiny-sd2's scheduler should predict v")
    classes = {"DDIMScheduler": DDIMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler}
    os.makedirs(args.out, exist_ok=True)

    cases = []
    for pkey, (prompt, negative) in PROMPTS.items():
        for seed in SEEDS:
            for width, height in SIZES:
                for skey, sname in SCHEDULERS.items():
                    case_id = f"{pkey}_s{seed}_{width}x{height}_{skey}"
                    tensors, config, init_sigma = run_case(
                        pipe, base_config, classes[sname], prompt, negative, seed, width, height
                    )
                    save_file(tensors, os.path.join(args.out, f"{case_id}.safetensors"), metadata={"case": case_id})
                    cases.append(
                        {
                            "id": case_id,
                            "file": f"{case_id}.safetensors",
                            "prompt": prompt,
                            "negative_prompt": negative,
                            "seed": seed,
                            "width": width,
                            "height": height,
                            "scheduler": sname,
                            "scheduler_config": config,
                            "init_noise_sigma": init_sigma,
                            "steps": STEPS,
                            "guidance": GUIDANCE,
                            "clip_skip": None,
                        }
                    )
                    print(case_id, flush=True)

    save_file(components(pipe), os.path.join(args.out, "components.safetensors"), metadata={"model": "tiny-sd2"})
    index = {
        "model": "weights/tiny-sd2",
        "generator": "tools/make_goldens_sd2.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "device": "cpu",
        "dtype": "float32 (weights stored as float16, loaded exactly as float32)",
        "prediction_type": "v_prediction",
        "tokenizer": {
            "class": type(pipe.tokenizer).__name__,
            "max_length": 77,
            "padding": "max_length with the pad token '!' (id 0), truncation keeps BOS + 75 tokens + EOS",
        },
        "clip_skip_convention": "as in tests/fixtures/goldens/cases.json: clip_skip=k applies final_layer_norm "
        "to hidden_states[-(k+1)]",
        "noise": "torch.Generator('cpu').manual_seed(seed); torch.randn([1,4,h/8,w/8], float32); "
        "the pipeline's initial latents are noise * init_noise_sigma (checked)",
        "latents": "latents[i] = scheduler output after step i (callback_on_step_end), shape [steps,1,4,h/8,w/8]",
        "image": "output_type='np': (decode(latents/0.18215)/2+0.5).clamp(0,1), NHWC float32; "
        "image_u8 = (image*255).round() as uint8",
        "cases": cases,
    }
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases and components.safetensors to {args.out}")


if __name__ == "__main__":
    main()
