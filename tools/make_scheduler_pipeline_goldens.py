"""Record diffusers' full pipeline on weights/tiny-sd with each scheduler of the family.

The same capture as tools/make_goldens.py (whose `run_case` this reuses), but over
schedulers instead of prompts: each scheduler is built with
`cls.from_config(pipe.scheduler.config, **options)` from the model's PNDM config, and run at
4 and 20 steps. Each case also names the sdgen scheduler that should select the same
algorithm, so tests/parity_schedulers.rs can build its request from it.
See tests/fixtures/goldens-schedulers/README.md.

    /work/main/.venv-ref/bin/python tools/make_scheduler_pipeline_goldens.py [OUT_DIR]
"""

import argparse
import json
import math
import os
import sys

from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402

# (case key, diffusers class, from_config options, sdgen scheduler name, stochastic)
SCHEDULERS = [
    ("pndm", "PNDMScheduler", {}, "PNDMScheduler", False),
    ("euler_a", "EulerAncestralDiscreteScheduler", {}, "Euler a", True),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras", False),
    ("unipc", "UniPCMultistepScheduler", {}, "UniPC", False),
    ("lms", "LMSDiscreteScheduler", {}, "LMS", False),
    ("heun", "HeunDiscreteScheduler", {}, "Heun", False),
    ("dpm2", "KDPM2DiscreteScheduler", {}, "DPM2", False),
    ("dpm2_a", "KDPM2AncestralDiscreteScheduler", {}, "DPM2 a", True),
    ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE", True),
    ("ddpm", "DDPMScheduler", {}, "DDPM", True),
    ("lcm", "LCMScheduler", {}, "LCM", True),
]
STEP_COUNTS = (4, 20)
SIZE = (64, 64)
# (prompt key from make_goldens.PROMPTS, seed, only for stochastic schedulers)
RUNS = (("plain", 42, False), ("negative", 42, False), ("negative", 0, True))
# Text ids and embeddings are covered by tests/fixtures/goldens; leaving them out keeps this small.
DROPPED = ("cond_ids", "uncond_ids", "cond_embeds", "uncond_embeds")


def json_safe(config):
    """JSON has no infinity: a non-finite float (DPM-Solver's lambda_min_clipped = -inf) becomes
    null, which is how sdgen's records write it too. `_use_default_values` is sorted (diffusers
    builds it from a set, so its order follows Python's hash seed)."""
    config = json.loads(json.dumps(dict(config), default=list))
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in config.items()}


def main():
    import diffusers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(mg.REPO, "tests", "fixtures", "goldens-schedulers"))
    args = ap.parse_args()
    pipe = mg.load_pipe()
    os.makedirs(args.out, exist_ok=True)
    width, height = SIZE

    cases = []
    for skey, cls_name, options, sdgen_name, stochastic in SCHEDULERS:
        cls = getattr(diffusers, cls_name)
        for steps in STEP_COUNTS:
            for pkey, seed, only_stochastic in RUNS:
                if only_stochastic and not stochastic:
                    continue
                prompt, negative = mg.PROMPTS[pkey]
                case_id = f"{skey}_{steps}_{pkey}_s{seed}"
                tensors, config, init_sigma = mg.run_case(
                    pipe, cls, prompt, negative, seed, width, height, steps=steps, options=options
                )
                for k in DROPPED:
                    del tensors[k]
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
                        "scheduler": cls_name,
                        "scheduler_options": options,
                        "sdgen_scheduler": sdgen_name,
                        "stochastic": stochastic,
                        "scheduler_config": json_safe(config),
                        "init_noise_sigma": init_sigma,
                        "steps": steps,
                        "evaluations": int(tensors["timesteps"].numel()),
                        "guidance": mg.GUIDANCE,
                        "clip_skip": None,
                    }
                )
                print(case_id, flush=True)

    index = {
        "model": "weights/tiny-sd",
        "generator": "tools/make_scheduler_pipeline_goldens.py",
        "versions": mg.versions(),
        "device": "cpu",
        "dtype": "float32",
        "base_scheduler_config": json_safe(pipe.scheduler_base_config),
        "noise": "torch.Generator('cpu').manual_seed(seed) passed to the pipeline: it draws the initial "
        "latents (noise * init_noise_sigma, checked) and then, for stochastic schedulers, every "
        "step's noise from the same generator",
        "latents": "latents[i] = latents after model evaluation i (callback_on_step_end fires once per entry "
        "of scheduler.timesteps, so twice per step for Heun, DPM2 and DPM2 a), shape [evaluations,1,4,h/8,w/8]",
        "image": "output_type='np': (decode(latents/0.18215)/2+0.5).clamp(0,1), NHWC float32; "
        "image_u8 = (image*255).round() as uint8",
        "cases": cases,
    }
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
