"""Record diffusers' reference outputs on weights/tiny-sd as golden files for sdgen's tests.

Runs the real `StableDiffusionPipeline` (CPU, fp32, one thread) over a grid of prompts, seeds,
sizes and schedulers, and stores per case the tokens, text embeddings, initial noise,
timesteps, latents after every step and the final image. It also stores per-model outputs
(CLIP, UNet, VAE) so each model can be debugged alone. See tests/fixtures/goldens/README.md.

    /work/main/.venv-ref/bin/python tools/make_goldens.py [OUT_DIR]   # default tests/fixtures/goldens
"""

import argparse
import json
import logging
import os
import platform

import numpy as np
import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "weights", "tiny-sd")

PROMPTS = {
    "plain": ("a photograph of an astronaut riding a horse", None),
    "negative": ("a red cube on a wooden table, studio light", "blurry, low quality, watermark"),
    "messy": ("  A CAFÉ on Mars!!  Déjà-vu 🚀,   at   NIGHT...  ", None),
    "long": (
        "an extremely detailed oil painting of a quiet harbour town at dawn, with fishing boats, "
        "seagulls, old stone houses, narrow streets, flower boxes, a lighthouse on the cliff, "
        "mist over the water, warm golden light, soft shadows, reflections in the puddles, "
        "a cat sleeping on a windowsill, children playing near the pier, a baker opening his shop, "
        "fresh bread on the counter, bicycles leaning on the walls, and distant mountains covered in snow",
        None,
    ),
}
SEEDS = (0, 42)
SIZES = ((64, 64), (64, 96))  # (width, height)
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}
STEPS = 4
GUIDANCE = 7.5

CLIP_SKIP_DOC = (
    "diffusers convention: clip_skip=None uses last_hidden_state (after final_layer_norm); "
    "clip_skip=k (k>=1) takes hidden_states[-(k+1)] of CLIPTextModel(output_hidden_states=True) "
    "and applies text_model.final_layer_norm to it. hidden_states has num_hidden_layers+1 entries: "
    "index 0 is the embeddings output, index i the output of encoder layer i. So diffusers clip_skip=1 "
    "(= A1111 'Clip skip: 2') is final_layer_norm(output of layer num_hidden_layers-1)."
)


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def run_case(pipe, scheduler_cls, prompt, negative, seed, width, height, steps=STEPS, options=None):
    """Run one pipeline call and capture everything the Rust side compares against.

    `options` are extra `from_config` keyword arguments (e.g. `use_karras_sigmas=True`)."""
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler_base_config, **(options or {}))
    enc_calls = []

    def hook(_module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        enc_calls.append((ids.clone(), output[0].detach().clone()))

    handle = pipe.text_encoder.register_forward_hook(hook, with_kwargs=True)

    drawn = {}
    orig_prepare = pipe.prepare_latents

    def prepare(*args, **kwargs):
        out = orig_prepare(*args, **kwargs)
        drawn["latents"] = out.clone()
        return out

    pipe.prepare_latents = prepare
    after = []

    def on_step(_pipe, _i, _t, kw):
        after.append(kw["latents"].detach().clone())
        return kw

    try:
        out = pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["latents"],
        )
    finally:
        handle.remove()
        pipe.prepare_latents = orig_prepare

    if len(enc_calls) != 2:
        raise RuntimeError(f"expected 2 text encoder calls, got {len(enc_calls)}")
    (cond_ids, cond_embeds), (uncond_ids, uncond_embeds) = enc_calls
    shape = (1, 4, height // 8, width // 8)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    expected = noise * pipe.scheduler.init_noise_sigma
    if not torch.equal(drawn["latents"], expected):
        raise RuntimeError("pipeline's initial latents differ from manual_seed(seed) randn * init_noise_sigma")
    # One callback per entry of `scheduler.timesteps`: two per step for Heun and DPM2.
    if len(after) != len(pipe.scheduler.timesteps):
        raise RuntimeError(f"expected {len(pipe.scheduler.timesteps)} step callbacks, got {len(after)}")

    image = torch.from_numpy(np.ascontiguousarray(out.images)).to(torch.float32)
    image_u8 = torch.from_numpy((out.images * 255).round().astype("uint8"))
    tensors = {
        "cond_ids": cond_ids.to(torch.int64).contiguous(),
        "uncond_ids": uncond_ids.to(torch.int64).contiguous(),
        "cond_embeds": f32(cond_embeds),
        "uncond_embeds": f32(uncond_embeds),
        "noise": noise.contiguous(),
        "timesteps": pipe.scheduler.timesteps.to(torch.float64).contiguous(),
        "latents": torch.stack([f32(s) for s in after]),
        "image": image.contiguous(),
        "image_u8": image_u8.contiguous(),
    }
    if hasattr(pipe.scheduler, "sigmas"):
        tensors["sigmas"] = pipe.scheduler.sigmas.to(torch.float64).contiguous()
    config = json.loads(json.dumps(dict(pipe.scheduler.config), default=list))
    # diffusers builds this list from a set, so its order changes with Python's hash seed.
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return tensors, config, float(pipe.scheduler.init_noise_sigma)


def components(pipe, prompts=(PROMPTS["plain"][0], PROMPTS["messy"][0])):
    """Per-model goldens: CLIP (plain and clip-skip), UNet at int/fractional timesteps, VAE."""
    t = {}
    tok = pipe.tokenizer
    prompts = list(prompts)
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
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
        t["unet.sample"] = sample
        t["unet.encoder_hidden_states"] = ehs
        t_int = torch.tensor(981, dtype=torch.int64)
        t_float = torch.tensor(665.3333, dtype=torch.float32)
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


def load_pipe(model=MODEL):
    """A tiny model's pipeline on CPU, fp32, one thread, deterministic, quiet; its original
    scheduler config is kept as `pipe.scheduler_base_config`."""
    from diffusers import StableDiffusionPipeline
    import diffusers
    import transformers

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler_base_config = pipe.scheduler.config
    return pipe


def versions():
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def main():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "goldens"))
    args = ap.parse_args()
    pipe = load_pipe()
    classes = {"DDIMScheduler": DDIMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler}
    os.makedirs(args.out, exist_ok=True)

    cases = []
    for pkey, (prompt, negative) in PROMPTS.items():
        for seed in SEEDS:
            for width, height in SIZES:
                for skey, sname in SCHEDULERS.items():
                    case_id = f"{pkey}_s{seed}_{width}x{height}_{skey}"
                    tensors, config, init_sigma = run_case(
                        pipe, classes[sname], prompt, negative, seed, width, height
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

    save_file(components(pipe), os.path.join(args.out, "components.safetensors"), metadata={"model": "tiny-sd"})
    index = {
        "model": "weights/tiny-sd",
        "generator": "tools/make_goldens.py",
        "versions": versions(),
        "device": "cpu",
        "dtype": "float32",
        "tokenizer": {
            "class": type(pipe.tokenizer).__name__,
            "ftfy": pipe.tokenizer.fix_text is not None,
            "note": "slow CLIPTokenizer without ftfy: text goes through BasicTokenizer (NFC normalize, "
            "lower-case, accents kept, whitespace split, control chars removed) before BPE",
            "max_length": 77,
            "padding": "max_length with pad id 49407, truncation keeps BOS + 75 tokens + EOS",
        },
        "clip_skip_convention": CLIP_SKIP_DOC,
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
