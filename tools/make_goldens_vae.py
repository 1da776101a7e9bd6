"""Record diffusers' outputs with a swapped VAE as goldens for sdgen's `--vae` tests.

Runs the real pipelines (CPU, fp32, one thread, deterministic) with `vae=` replaced:
`StableDiffusionPipeline` on weights/tiny-sd with the tiny AutoencoderTiny (weights/tiny-taesd)
and with a second AutoencoderKL (weights/tiny-sd-vae2), `StableDiffusionXLPipeline` on
weights/tiny-sdxl with the tiny TAESDXL (weights/tiny-taesdxl), and
`StableDiffusionImg2ImgPipeline` on tiny-sd with the tiny autoencoder (its encoder gives the
latents directly, so nothing is drawn from the generator before the noise: checked here).

Per case: the initial noise, the latents after every step, the image (`output_type="np"`, float
NHWC and 8-bit). `components.safetensors` holds each autoencoder alone: a fixed latent decoded
and a fixed image encoded.

    /work/refenv/bin/python tools/make_goldens_vae.py [OUT_DIR]   # default tests/fixtures/goldens-vae

Models come from tools/make_tiny_sd.py, make_tiny_sdxl.py and make_tiny_vaes.py.
"""

import json
import logging
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import PROMPTS, f32, versions  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = lambda *p: os.path.join(REPO, "weights", *p)  # noqa: E731
INIT = "tests/fixtures/img2img/init_64x96.png"
MASK = "tests/fixtures/img2img/mask_64x96.png"
SEED = 0
PROMPT = PROMPTS["plain"][0]

CASES = [
    {"id": "sd_taesd", "pipeline": "StableDiffusionPipeline", "model": "tiny-sd", "vae": "tiny-taesd",
     "guidance": 7.5},
    {"id": "sd_vae2", "pipeline": "StableDiffusionPipeline", "model": "tiny-sd", "vae": "tiny-sd-vae2",
     "guidance": 7.5},
    {"id": "xl_taesdxl", "pipeline": "StableDiffusionXLPipeline", "model": "tiny-sdxl", "vae": "tiny-taesdxl",
     "guidance": 5.0},
    {"id": "sd_i2i_taesd", "pipeline": "StableDiffusionImg2ImgPipeline", "model": "tiny-sd", "vae": "tiny-taesd",
     "guidance": 7.5, "strength": 0.75},
    # 4-channel UNet inpainting: the init image and the masked image are both encoded, neither draws.
    {"id": "sd_inp4_taesd", "pipeline": "StableDiffusionInpaintPipeline", "model": "tiny-sd", "vae": "tiny-taesd",
     "guidance": 7.5, "strength": 0.75, "mask": MASK},
]


def quiet():
    import diffusers
    import transformers

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def load_vae(name):
    from diffusers import AutoencoderKL, AutoencoderTiny

    with open(W(name, "config.json")) as f:
        cls = json.load(f)["_class_name"]
    return {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}[cls].from_pretrained(
        W(name), torch_dtype=torch.float32, local_files_only=True
    ).eval()


def init_image(rel=INIT):
    from diffusers.utils import load_image

    return load_image(os.path.join(REPO, rel))


def components():
    """Each autoencoder alone: a fixed latent decoded, a fixed image encoded."""
    from diffusers.image_processor import VaeImageProcessor

    g = torch.Generator().manual_seed(7)
    z = torch.randn((1, 4, 8, 6), generator=g)
    image = VaeImageProcessor(vae_scale_factor=8).preprocess(init_image())  # [1, 3, 96, 64] in [-1, 1]
    out = {"z": z, "image": f32(image)}
    for name in ["tiny-taesd", "tiny-taesdxl", "tiny-sd-vae2"]:
        vae = load_vae(name)
        key = name.replace("-", "_")
        with torch.no_grad():
            out[f"{key}.decoded"] = f32(vae.decode(z).sample)
            enc = vae.encode(image)
            latents = enc.latents if hasattr(enc, "latents") else enc.latent_dist.mean
            out[f"{key}.encoded"] = f32(latents)
    return out


def run_case(c):
    import diffusers
    from diffusers import EulerDiscreteScheduler

    cls = getattr(diffusers, c["pipeline"])
    kwargs = {"add_watermarker": False} if "XL" in c["pipeline"] else {"safety_checker": None}
    pipe = cls.from_pretrained(W(c["model"]), vae=load_vae(c["vae"]), torch_dtype=torch.float32,
                               local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)

    draws = []
    import diffusers.utils.torch_utils as tu

    orig_randn = tu.randn_tensor

    def randn(*args, **kwargs):
        out = orig_randn(*args, **kwargs)
        draws.append(out.clone())
        return out

    module = sys.modules[cls.__module__]
    module.randn_tensor = randn
    after = []

    def on_step(_pipe, _i, _t, kw):
        after.append(kw["latents"].detach().clone())
        return kw

    args = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=c["guidance"],
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
                callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    if "strength" in c:
        args.update(image=init_image(), strength=c["strength"])
        if "mask" in c:
            args.update(mask_image=init_image(c["mask"]), width=64, height=96)
    else:
        args.update(width=64, height=96)
    encoded = {}
    orig_encode = pipe.vae.encode

    def encode(*a, **k):
        out = orig_encode(*a, **k)
        encoded.setdefault("latents", out.latents.clone())
        return out

    pipe.vae.encode = encode
    try:
        out = pipe(**args)
    finally:
        module.randn_tensor = orig_randn
    if len(draws) != 1:
        raise RuntimeError(f"{c['id']}: expected one draw from the generator (the noise), got {len(draws)}")
    noise = draws[0]
    # The one draw is the first thing taken from manual_seed(seed): no encoder sample before it.
    expected = torch.randn(noise.shape, generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)
    if not torch.equal(noise, expected):
        raise RuntimeError(f"{c['id']}: the noise is not the first draw from manual_seed({SEED})")
    image = torch.from_numpy(np.ascontiguousarray(out.images)).to(torch.float32)
    tensors = {
        "noise": f32(noise),
        "latents": torch.stack([f32(s) for s in after]),
        "image": image.contiguous(),
        "image_u8": torch.from_numpy((out.images * 255).round().astype("uint8")).contiguous(),
    }
    if "latents" in encoded:
        tensors["encoded"] = f32(encoded["latents"])
    entry = dict(c, prompt=PROMPT, seed=SEED, steps=4, scheduler="EulerDiscreteScheduler", file=f"{c['id']}.safetensors")
    if "strength" in c:
        entry["init_image"] = INIT
    else:
        entry.update(width=64, height=96)
    return entry, tensors


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "tests", "fixtures", "goldens-vae")
    os.makedirs(out, exist_ok=True)
    quiet()
    save_file(components(), os.path.join(out, "components.safetensors"))
    entries = []
    for c in CASES:
        entry, tensors = run_case(c)
        save_file(tensors, os.path.join(out, entry["file"]))
        entries.append(entry)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"versions": versions(), "cases": entries}, f, indent=1)
        f.write("\n")
    print("wrote", len(entries), "cases to", out)


if __name__ == "__main__":
    main()
