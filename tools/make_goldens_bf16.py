"""Record diffusers' bf16 CPU pipeline on weights/tiny-sd as goldens for sdgen's bf16 tests.

The same cases as tools/make_goldens.py (a subset of its grid: every prompt, seed 0, both
sizes, DDIM at 64x64 and Euler at 64x96), run by `StableDiffusionPipeline` loaded with
`torch_dtype=torch.bfloat16` on the CPU, one thread. Writes tests/fixtures/goldens-bf16/ in
the layout of tests/fixtures/goldens/ (cases.json + one safetensors file per case).

The starting noise: diffusers' bf16 pipeline draws `torch.randn(..., dtype=bfloat16)`, a
different stream from the fp32 one (not its rounding), while sdgen draws fp32 noise in every
dtype. So the pipeline gets `latents=` the fp32 noise of the seed rounded to bf16, and the
goldens show what diffusers' bf16 computation does with sdgen's noise. diffusers keeps the
latents in bf16 between steps (sdgen keeps them in fp32), which the tests' bounds allow for.

    .venv-ref/bin/python tools/make_goldens_bf16.py [OUT_DIR]   # default tests/fixtures/goldens-bf16
"""

import argparse
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from make_goldens import GUIDANCE, MODEL, PROMPTS, REPO, STEPS, f32, load_pipe, versions

# (seed, width, height, scheduler): DDIM at one size, Euler at the other, for every prompt.
CASES = ((0, 64, 64, "DDIMScheduler"), (0, 64, 96, "EulerDiscreteScheduler"))
SHORT = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler"}


def run_case(pipe, scheduler_cls, prompt, negative, seed, width, height):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler_base_config)
    noise = torch.randn(
        (1, 4, height // 8, width // 8), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32
    )
    after = []

    def on_step(_pipe, _i, _t, kw):
        after.append(kw["latents"].detach().clone())
        return kw

    out = pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        width=width,
        height=height,
        # diffusers multiplies these by init_noise_sigma, as it does its own noise.
        latents=noise.to(torch.bfloat16),
        output_type="np",
        callback_on_step_end=on_step,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    if len(after) != len(pipe.scheduler.timesteps):
        raise RuntimeError(f"expected {len(pipe.scheduler.timesteps)} step callbacks, got {len(after)}")
    if after[0].dtype != torch.bfloat16:
        raise RuntimeError(f"the pipeline ran in {after[0].dtype}, not bf16")
    image = torch.from_numpy(np.ascontiguousarray(out.images)).to(torch.float32)
    image_u8 = torch.from_numpy((out.images * 255).round().astype("uint8"))
    tensors = {
        "noise": noise.contiguous(),
        "latents": torch.stack([f32(s) for s in after]),
        "image": image.contiguous(),
        "image_u8": image_u8.contiguous(),
    }
    config = json.loads(json.dumps(dict(pipe.scheduler.config), default=list))
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return tensors, config


def main():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "goldens-bf16"))
    args = ap.parse_args()
    pipe = load_pipe().to(torch.bfloat16)
    if pipe.unet.dtype != torch.bfloat16 or pipe.vae.dtype != torch.bfloat16:
        raise RuntimeError("the pipeline did not move to bf16")
    classes = {"DDIMScheduler": DDIMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler}
    os.makedirs(args.out, exist_ok=True)
    cases = []
    for pkey, (prompt, negative) in PROMPTS.items():
        for seed, width, height, sname in CASES:
            case_id = f"{pkey}_s{seed}_{width}x{height}_{SHORT[sname]}"
            tensors, config = run_case(pipe, classes[sname], prompt, negative, seed, width, height)
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
                    "steps": STEPS,
                    "guidance": GUIDANCE,
                    "clip_skip": None,
                }
            )
            print(case_id, flush=True)
    index = {
        "model": os.path.relpath(MODEL, REPO),
        "generator": "tools/make_goldens_bf16.py",
        "versions": versions(),
        "device": "cpu",
        "dtype": "bfloat16",
        "noise": "torch.Generator('cpu').manual_seed(seed); torch.randn([1,4,h/8,w/8], float32) (stored as "
        "'noise'), passed to the pipeline as latents=noise.to(bfloat16)",
        "latents": "latents[i] = the pipeline's bf16 latents after step i, as float32, [steps,1,4,h/8,w/8]",
        "image": "output_type='np' of the bf16 pipeline as float32 NHWC; image_u8 = (image*255).round()",
        "cases": cases,
    }
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
