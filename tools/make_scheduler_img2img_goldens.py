#!/usr/bin/env python3
"""Goldens for starting a scheduler late, as img2img does, from diffusers' own classes.

For every scheduler of sdgen's table (SD 1.5's scheduler config, 10 steps) this records:
  - `add_noise` at several evaluation indices i: a fresh scheduler, `set_timesteps(10)`,
    `set_begin_index(i)` where the class has it, then
    `add_noise(original, noise, timesteps[i:i + 1])`;
  - a begun-late run, diffusers' img2img loop with strength 0.6: t_start = 4,
    begin = t_start * scheduler.order, `set_begin_index(begin)` where the class has it,
    x = add_noise(original, noise, timesteps[begin:begin + 1]), then for t in
    timesteps[begin:]: x = step(dummy_model(scale_model_input(x, t), t), t, x).
`original` is diffusers' test sample (reversed arange, as tools/make_scheduler_goldens_b.py),
`noise` a seeded normal tensor; stochastic steps draw from torch.Generator().manual_seed(SEED),
created fresh per run, which sdgen mirrors with SeededNoise::new(SEED). DPMSolverSDE's Brownian
tree is replaced as in tools/make_scheduler_goldens_b.py.

Run with the reference environment (scipy is needed for LMS):
    /work/refenv/bin/python tools/make_scheduler_img2img_goldens.py
Writes tests/fixtures/schedulers_img2img/cases.json and tensors.safetensors, read by
tests/schedulers_img2img.rs.
"""

import inspect
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_scheduler_goldens_b as b  # noqa: E402  (stubs torchsde, brings the SDE noise)

import diffusers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "schedulers_img2img")
STEPS = 10
T_START = 4
SEED = 2024
NOISE_SEED = 99

# (case id, diffusers class, config overrides over SD 1.5's)
CASES = [
    ("euler_a", "EulerAncestralDiscreteScheduler", {}),
    ("euler", "EulerDiscreteScheduler", {}),
    ("euler_karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("lms", "LMSDiscreteScheduler", {}),
    ("heun", "HeunDiscreteScheduler", {}),
    ("dpm2", "KDPM2DiscreteScheduler", {}),
    ("dpm2_a", "KDPM2AncestralDiscreteScheduler", {}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {}),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("dpmpp_2m_order3", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("dpmpp_sde", "DPMSolverSDEScheduler", {}),
    ("ddim", "DDIMScheduler", {}),
    ("pndm", "PNDMScheduler", {}),
    ("unipc", "UniPCMultistepScheduler", {}),
    ("unipc_order3", "UniPCMultistepScheduler", {"solver_order": 3}),
    ("ddpm", "DDPMScheduler", {}),
    ("lcm", "LCMScheduler", {}),
]


def cls_of(name):
    if name == "DPMSolverSDEScheduler":
        return b.DPMSolverSDEScheduler
    return getattr(diffusers, name)


def fresh(cls, config):
    s = cls.from_config(config)
    s.set_timesteps(STEPS)
    return s


def begin_at(s, i):
    if hasattr(s, "set_begin_index"):
        s.set_begin_index(i)


def main():
    os.makedirs(OUT, exist_ok=True)
    original = b.dummy_sample()
    noise = torch.randn(original.shape, generator=torch.Generator("cpu").manual_seed(NOISE_SEED))
    tensors = {"original": original.contiguous(), "noise": noise.contiguous()}
    cases = []
    for case_id, cls_name, overrides in CASES:
        cls = cls_of(cls_name)
        config = dict(b.SD15, **overrides)
        probe = fresh(cls, config)
        n = len(probe.timesteps)
        indices = sorted({0, 1, n // 2, n - 2, n - 1})
        for i in indices:
            s = fresh(cls, config)
            begin_at(s, i)
            tensors[f"{case_id}.add_noise.{i}"] = s.add_noise(original, noise, s.timesteps[i : i + 1]).contiguous()

        s = fresh(cls, config)
        begin = T_START * s.order
        begin_at(s, begin)
        timesteps = s.timesteps[begin:]
        x = s.add_noise(original, noise, timesteps[:1])
        generator = torch.Generator("cpu").manual_seed(SEED)
        if cls is b.DPMSolverSDEScheduler:
            s.noise_sampler = b.PairedBrownianNoise(s, generator, x.shape)
        takes_generator = "generator" in inspect.signature(s.step).parameters
        samples = [x.clone()]
        for t in timesteps:
            eps = b.dummy_model(s.scale_model_input(x, t), t)
            kwargs = {"generator": generator} if takes_generator else {}
            x = s.step(eps, t, x, **kwargs).prev_sample
            samples.append(x.clone())
        run = torch.stack(samples)
        assert torch.isfinite(run).all(), case_id
        tensors[f"{case_id}.run"] = run.contiguous()
        cases.append(
            {
                "id": case_id,
                "config": dict(config, _class_name=cls_name),
                "steps": STEPS,
                "add_noise_at": indices,
                "begin": begin,
                "seed": SEED,
                "timesteps": [float(t) for t in probe.timesteps],
            }
        )
    doc = {
        "generated_by": "tools/make_scheduler_img2img_goldens.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "t_start": T_START,
        "cases": cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
    save_file(tensors, os.path.join(OUT, "tensors.safetensors"))
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
