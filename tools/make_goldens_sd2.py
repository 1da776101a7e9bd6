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
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import components, load_pipe, run_case, versions  # noqa: E402

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


def main():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "goldens-sd2"))
    args = ap.parse_args()
    pipe = load_pipe(MODEL)
    if pipe.scheduler.config.prediction_type != "v_prediction":
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
                        pipe, classes[sname], prompt, negative, seed, width, height, steps=STEPS
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

    prompts = (PROMPTS["plain"][0], PROMPTS["negative"][1])
    save_file(components(pipe, prompts), os.path.join(args.out, "components.safetensors"), metadata={"model": "tiny-sd2"})
    index = {
        "model": "weights/tiny-sd2",
        "generator": "tools/make_goldens_sd2.py",
        "versions": versions(),
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
