"""Golden step-by-step trajectories for the part-B schedulers, from diffusers itself.

Run with the reference env: /work/main/.venv-ref/bin/python tools/make_scheduler_goldens_b.py
Writes tests/fixtures/schedulers/b_<case>.safetensors, each holding
  init       [1,4,8,8]       the starting latents (dummy sample * init_noise_sigma)
  timesteps  [T] f64         scheduler.timesteps
  sigmas     [S] f32         scheduler.sigmas
  samples    [T,1,4,8,8]     the latents after every step
and metadata: "class", "config" (the scheduler_config.json a user would have: SD 1.5's plus the
case's overrides), "resolved_config" (scheduler.config after construction, the class's own
fields only, with -inf written as null), "steps", "seed"
(stochastic cases only; "" otherwise), "init_noise_sigma".

The dummy model is diffusers' test model, eps = x_in * t / (t + 1), with t the timestep tensor.

DPMSolverSDEScheduler draws its Brownian noise from torchsde's BrownianTree, whose stream cannot
be reproduced outside torchsde (and which diffusers seeds from torch's global RNG unless
`noise_sampler_seed` is set). sdgen replaces it with increments drawn from the pipeline's
generator that have the same joint law as the tree's (see src/schedulers/dpmpp_sde.rs); here
the same replacement is patched into diffusers' class, so the goldens test everything else in
diffusers' step exactly. torchsde is stubbed out because only the tree needs it.
"""

import inspect
import json
import math
import os
import sys
import types

import torch

from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler  # noqa: E402

# The real torchsde is only used by the Brownian tree that is replaced below; the module is
# imported directly because diffusers' top level hides it when torchsde is not installed.
_stub = types.ModuleType("torchsde")


def _no_tree(*args, **kwargs):
    raise RuntimeError("the Brownian tree must be replaced before stepping")


_stub.BrownianInterval = _no_tree
sys.modules.setdefault("torchsde", _stub)

from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

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

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "schedulers")


def dummy_sample():
    n = 4 * 8 * 8
    x = torch.arange(n, dtype=torch.float32).flip(-1)
    return (x.reshape(4, 8, 8, 1) / n).permute(3, 0, 1, 2).contiguous()


def dummy_model(x, t):
    return x * t / (t + 1)


class PairedBrownianNoise:
    """Brownian increments for DPMSolverSDEScheduler drawn from a torch.Generator.

    Each step queries W on [sigma_mid, sigma] (first half) and then on [sigma_next, sigma]
    (whole step). Two draws per step, z1 then z2, give W1 = z1 * sqrt(|sigma - mid|) and
    W2 = z2 * sqrt(|mid - next|); the queries return W1 / sqrt(|sigma - mid|) = z1 and
    (W1 + W2) / sqrt(|sigma - next|), as the tree would in law.
    """

    def __init__(self, scheduler, generator, shape):
        self.scheduler = scheduler
        self.generator = generator
        self.shape = shape
        self.first = None

    def __call__(self, sigma, sigma_next):
        z = torch.randn(self.shape, generator=self.generator, dtype=torch.float32)
        if self.scheduler.state_in_first_order:
            self.first = (sigma, sigma_next, z)
            return z
        s, mid, z1 = self.first
        self.first = None
        w = z1 * (s - mid).abs().sqrt() + z * (mid - sigma_next).abs().sqrt()
        return w / (s - sigma_next).abs().sqrt()


def run_case(name, cls, overrides, steps, seed=None):
    config = dict(SD15, **overrides)
    scheduler = cls.from_config(config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
    init_sigma = float(scheduler.init_noise_sigma)
    x = dummy_sample() * scheduler.init_noise_sigma
    init = x.clone()
    if cls is DPMSolverSDEScheduler:
        scheduler.noise_sampler = PairedBrownianNoise(scheduler, generator, x.shape)
    samples = []
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        eps = dummy_model(x_in, t)
        if cls is DPMSolverMultistepScheduler:
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        else:
            x = scheduler.step(eps, t, x).prev_sample
        samples.append(x)
    # Only the class's own parameters: from_config also keeps unused keys of the input.
    params = inspect.signature(cls.__init__).parameters
    resolved = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in dict(scheduler.config).items()
        if k in params
    }
    user_config = dict(config, _class_name=cls.__name__)
    tensors = {
        "init": init.contiguous(),
        "timesteps": scheduler.timesteps.to(torch.float64).contiguous(),
        "sigmas": scheduler.sigmas.to(torch.float32).contiguous(),
        "samples": torch.stack(samples).contiguous(),
    }
    meta = {
        "class": cls.__name__,
        "config": json.dumps(user_config, sort_keys=True),
        "resolved_config": json.dumps(resolved, sort_keys=True),
        "steps": str(steps),
        "seed": "" if seed is None else str(seed),
        "init_noise_sigma": repr(init_sigma),
    }
    save_file(tensors, os.path.join(OUT, f"b_{name}.safetensors"), metadata=meta)


def cases():
    dpm = DPMSolverMultistepScheduler
    sde = {"algorithm_type": "sde-dpmsolver++"}
    for n in (4, 10, 20):
        yield f"dpmpp_2m_{n}", dpm, {}, n, None
        yield f"dpmpp_2m_sde_{n}", dpm, sde, n, 7 + n
        yield f"unipc_{n}", UniPCMultistepScheduler, {}, n, None
        yield f"dpmpp_sde_{n}", DPMSolverSDEScheduler, {}, n, 11 + n
    variants = {
        "karras": {"use_karras_sigmas": True},
        "exponential": {"use_exponential_sigmas": True},
        "vpred": {"prediction_type": "v_prediction"},
        "leading": {"timestep_spacing": "leading"},
        "trailing": {"timestep_spacing": "trailing"},
    }
    for n in (10, 20):
        for vname, v in variants.items():
            yield f"dpmpp_2m_{vname}_{n}", dpm, v, n, None
            yield f"dpmpp_2m_sde_{vname}_{n}", dpm, dict(sde, **v), n, 3 + n
            yield f"unipc_{vname}_{n}", UniPCMultistepScheduler, v, n, None
            yield f"dpmpp_sde_{vname}_{n}", DPMSolverSDEScheduler, v, n, 5 + n
    for n in (4, 10, 20):
        yield f"dpmpp_2m_sigma_min_{n}", dpm, {"final_sigmas_type": "sigma_min"}, n, None
        yield f"dpmpp_2m_karras_sigma_min_{n}", dpm, {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True}, n, None
        yield f"dpmpp_2m_order1_{n}", dpm, {"solver_order": 1}, n, None
        yield f"dpmpp_2m_order3_{n}", dpm, {"solver_order": 3}, n, None
        yield f"dpmpp_2m_order3_sigma_min_{n}", dpm, {"solver_order": 3, "final_sigmas_type": "sigma_min"}, n, None
        yield f"dpmpp_2m_heun_{n}", dpm, {"solver_type": "heun"}, n, None
        yield f"dpmpp_2m_no_lower_final_{n}", dpm, {"lower_order_final": False, "final_sigmas_type": "sigma_min"}, n, None
        yield f"dpmpp_2m_euler_final_{n}", dpm, {"euler_at_final": True, "final_sigmas_type": "sigma_min"}, n, None
        yield f"dpmpp_2m_sde_order3_{n}", dpm, dict(sde, solver_order=3), n, 1 + n
        yield f"dpmpp_2m_sde_heun_{n}", dpm, dict(sde, solver_type="heun"), n, 2 + n
        yield f"dpmpp_2m_sde_sigma_min_{n}", dpm, dict(sde, final_sigmas_type="sigma_min"), n, 4 + n
        yield f"unipc_order1_{n}", UniPCMultistepScheduler, {"solver_order": 1}, n, None
        yield f"unipc_order3_{n}", UniPCMultistepScheduler, {"solver_order": 3}, n, None
        yield f"unipc_bh1_{n}", UniPCMultistepScheduler, {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, n, None
        yield f"unipc_bh1_order3_{n}", UniPCMultistepScheduler, {"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"}, n, None
        yield f"unipc_sigma_min_{n}", UniPCMultistepScheduler, {"final_sigmas_type": "sigma_min"}, n, None
        yield f"unipc_karras_sigma_min_{n}", UniPCMultistepScheduler, {"final_sigmas_type": "sigma_min", "use_karras_sigmas": True}, n, None
        yield f"unipc_no_lower_final_{n}", UniPCMultistepScheduler, {"lower_order_final": False, "final_sigmas_type": "sigma_min"}, n, None
        yield f"unipc_no_x0_{n}", UniPCMultistepScheduler, {"predict_x0": False, "final_sigmas_type": "sigma_min"}, n, None
        yield f"unipc_no_x0_vpred_{n}", UniPCMultistepScheduler, {"predict_x0": False, "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min"}, n, None
        yield f"unipc_disable_corrector_{n}", UniPCMultistepScheduler, {"disable_corrector": [0, 2]}, n, None
    zsnr = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}
    cosine = {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}
    for n in (10, 20):
        yield f"dpmpp_2m_zsnr_{n}", dpm, zsnr, n, None
        yield f"dpmpp_2m_sde_zsnr_{n}", dpm, dict(sde, **zsnr), n, 9 + n
        yield f"unipc_zsnr_{n}", UniPCMultistepScheduler, zsnr, n, None
        yield f"dpmpp_2m_cosine_clipped_{n}", dpm, cosine, n, None


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        if old.startswith("b_") and old.endswith(".safetensors"):
            os.remove(os.path.join(OUT, old))
    count = 0
    for name, cls, overrides, steps, seed in cases():
        run_case(name, cls, overrides, steps, seed)
        count += 1
    print(f"wrote {count} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
