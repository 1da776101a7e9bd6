#!/usr/bin/env python3
"""Golden outputs of diffusers' own scheduler classes, for tests/schedulers.rs.

For each scheduler and a handful of configs, runs the diffusers class on a deterministic
dummy sample with a dummy model (diffusers' test style, no weights) and stores, per case:
timesteps, init_noise_sigma, the effective config, and the sample after every step.

Run with the reference environment:
    /work/main/.venv-ref/bin/python tools/make_scheduler_goldens.py [KEY ...]
It writes tests/fixtures/schedulers/KEY.json (metadata) and KEY.safetensors (samples),
one pair per scheduler KEY (all keys when none are given).

The sdgen side repeats exactly this loop; see tests/schedulers.rs:
    x = dummy_sample() * init_noise_sigma
    for i, t in enumerate(timesteps):
        x_in = scale_model_input(x, t); eps = dummy_model(x_in, t); x = step(eps, t, x)
Stochastic schedulers get generator = torch.Generator("cpu").manual_seed(SEED), created
fresh per case, which sdgen mirrors with SeededNoise::new(SEED).
"""

import inspect
import json
import pathlib
import sys

import diffusers
import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schedulers"
SEED = 1234
SHAPE = (1, 4, 8, 8)

SD15 = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def variants(schedules=()):
    """(case suffix, config, sdgen schedule, steps list) for one scheduler."""
    out = [
        ("sd15", dict(SD15), None, [4, 10, 20]),
        ("sd15_v", dict(SD15, prediction_type="v_prediction"), None, [4, 10]),
        ("leading", dict(SD15, timestep_spacing="leading"), None, [4, 10]),
        ("linspace", dict(SD15, timestep_spacing="linspace"), None, [4, 10]),
        ("trailing", dict(SD15, timestep_spacing="trailing"), None, [4, 10]),
        ("linear", {"beta_schedule": "linear"}, None, [4, 10]),
        ("cosine", {"beta_schedule": "squaredcos_cap_v2"}, None, [4, 10]),
    ]
    for s in schedules:
        out.append((f"sd15_{s}", dict(SD15), s, [4, 10, 20]))
        out.append((f"sd15_v_{s}", dict(SD15, prediction_type="v_prediction"), s, [10]))
    return out


# key -> (diffusers class, sdgen name, extra variants, schedules supported)
SCHEDULERS = {
    "ddim": ("DDIMScheduler", "DDIM", [("clip", dict(SD15, clip_sample=True), None, [10]),
                                        ("alpha_one", dict(SD15, set_alpha_to_one=True), None, [10]),
                                        ("sample", dict(SD15, prediction_type="sample"), None, [10]),
                                        ("zero_snr", dict(SD15, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                                          timestep_spacing="trailing"), None, [10])], ()),
    "euler": ("EulerDiscreteScheduler", "Euler", [("sample", dict(SD15, prediction_type="sample"), None, [10]),
                                                   ("sigma_min", dict(SD15, final_sigmas_type="sigma_min"),
                                                    None, [10])], ("karras", "exponential")),
    "euler_a": ("EulerAncestralDiscreteScheduler", "Euler a", [], ()),
    "heun": ("HeunDiscreteScheduler", "Heun", [("sample", dict(SD15, prediction_type="sample"), None, [10]),
                                              ("clip", dict(SD15, clip_sample=True), None, [10])],
             ("karras", "exponential")),
    "lms": ("LMSDiscreteScheduler", "LMS", [("sample", dict(SD15, prediction_type="sample"), None, [10])],
            ("karras", "exponential")),
    "dpm2": ("KDPM2DiscreteScheduler", "DPM2", [], ("karras", "exponential")),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", "DPM2 a", [], ("karras", "exponential")),
}

# Step counts whose timesteps alone are checked (cheap: no sampling).
SWEEP = list(range(1, 31)) + [50, 61, 103]


def dummy_sample():
    n = 1
    for d in SHAPE:
        n *= d
    return (torch.arange(n, dtype=torch.float32) / n - 0.5).reshape(SHAPE)


def dummy_model(x_in, t):
    tf = float(t)
    return x_in * tf / (tf + 1)


def make(cls_name, config, schedule, steps):
    cfg = dict(config)
    if schedule == "karras":
        cfg["use_karras_sigmas"] = True
    elif schedule == "exponential":
        cfg["use_exponential_sigmas"] = True
    sched = getattr(diffusers, cls_name).from_config(cfg)
    sched.set_timesteps(steps)
    return sched


def run_case(cls_name, config, schedule, steps):
    sched = make(cls_name, config, schedule, steps)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    gen = torch.Generator("cpu").manual_seed(SEED)
    init = float(sched.init_noise_sigma)
    x = dummy_sample() * sched.init_noise_sigma
    samples = []
    timesteps = [float(t) for t in sched.timesteps]
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        eps = dummy_model(x_in, t)
        kwargs = {"generator": gen} if takes_generator else {}
        x = sched.step(eps, t, x, **kwargs).prev_sample
        samples.append(x.clone())
    effective = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}
    meta = {
        "timesteps": timesteps,
        "init_noise_sigma": init,
        "effective_config": effective,
        "final_sum": float(x.sum()),
        "final_mean": float(x.mean()),
    }
    return meta, torch.stack(samples)


def main(keys):
    OUT.mkdir(parents=True, exist_ok=True)
    for key in keys:
        cls_name, name, extra, schedules = SCHEDULERS[key]
        cases = []
        tensors = {}
        for suffix, config, schedule, steps_list in variants(schedules) + extra:
            for steps in steps_list:
                case_id = f"{key}_{suffix}_{steps}"
                meta, samples = run_case(cls_name, config, schedule, steps)
                if not torch.isfinite(samples).all():
                    # diffusers itself breaks down here (e.g. a 0/0 at σ = 0); nothing to compare.
                    print(f"  skipping {case_id}: diffusers produces non-finite values")
                    continue
                meta.update(id=case_id, scheduler=name, schedule=schedule, config=config, steps=steps, seed=SEED)
                tensors[case_id] = samples.contiguous()
                cases.append(meta)
        sweep = []
        for spacing in ("leading", "linspace", "trailing"):
            for schedule in (None,) + tuple(schedules):
                config = dict(SD15, timestep_spacing=spacing)
                for steps in SWEEP:
                    sched = make(cls_name, config, schedule, steps)
                    sweep.append({
                        "config": config, "schedule": schedule, "steps": steps,
                        "timesteps": [float(t) for t in sched.timesteps],
                        "init_noise_sigma": float(sched.init_noise_sigma),
                    })
        doc = {
            "generated_by": "tools/make_scheduler_goldens.py",
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
            "class": cls_name,
            "shape": list(SHAPE),
            "cases": cases,
            "sweep": sweep,
        }
        (OUT / f"{key}.json").write_text(json.dumps(doc, allow_nan=False, indent=None, separators=(",", ":")) + "\n")
        save_file(tensors, str(OUT / f"{key}.safetensors"))
        print(f"{key}: {len(cases)} cases, {len(sweep)} sweep entries")


if __name__ == "__main__":
    main(sys.argv[1:] or list(SCHEDULERS))
