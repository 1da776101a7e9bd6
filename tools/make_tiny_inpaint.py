"""Build the tiny random inpainting models used by sdgen's img2img/inpainting tests.

Writes three things, all byte-for-byte reproducible:

- weights/tiny-sd-inpaint: a `StableDiffusionInpaintPipeline` folder. It is weights/tiny-sd with
  its UNet replaced by one whose `in_channels` is 9 (4 noisy latents + 1 mask + 4 masked-image
  latents, the layout of SD 1.5 inpainting), random from its own seed. Text encoder, tokenizer,
  VAE and scheduler are byte-identical copies of tiny-sd's files (git stores them once).
- weights/tiny-sd-inpaint.safetensors: the same model as one original-layout (LDM) checkpoint,
  written with tools/make_single_files.py's mapping and verified by diffusers'
  `StableDiffusionInpaintPipeline.from_single_file(file, config=<configs only>)`, which must give
  back every tensor of the folder.
- weights/tiny-sdxl-inpaint: a `StableDiffusionXLInpaintPipeline` folder: weights/tiny-sdxl with
  a 9-channel UNet (own seed); every other file is a copy of tiny-sdxl's.

The new UNets have the configs of tiny-sd's / tiny-sdxl's UNet with `in_channels` 9 and are
stored in float16 (exact when loaded as float32, so goldens computed in float32 are unaffected).

    /work/refenv/bin/python tools/make_tiny_inpaint.py

Needs torch, diffusers 0.36, transformers 4 and safetensors; nothing is downloaded. It reads
weights/tiny-sd and weights/tiny-sdxl, which must exist (tools/make_tiny_sd.py, make_tiny_sdxl.py).
"""

import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import make_single_files  # noqa: E402  (diffusers -> LDM mapping, config-only copies)
import make_tiny_sd  # noqa: E402  (json writer)

SD_BASE = os.path.join(REPO, "weights", "tiny-sd")
SDXL_BASE = os.path.join(REPO, "weights", "tiny-sdxl")
SD_OUT = os.path.join(REPO, "weights", "tiny-sd-inpaint")
SD_SINGLE = os.path.join(REPO, "weights", "tiny-sd-inpaint.safetensors")
SDXL_OUT = os.path.join(REPO, "weights", "tiny-sdxl-inpaint")

SD_UNET_SEED = 41
SDXL_UNET_SEED = 43
IN_CHANNELS = 9

SD_CARD = """---
license: creativeml-openrail-m
tags:
- stable-diffusion
- inpainting
- testing
library_name: diffusers
---

# tiny-sd-inpaint: a tiny random Stable Diffusion 1.x inpainting model for tests

This is **not a useful image model**. It is weights/tiny-sd with the UNet of an inpainting
model: `in_channels` 9, i.e. the UNet input is `cat([latents (4), mask (1), masked-image
latents (4)], dim=1)` as in SD 1.5 inpainting. The UNet has tiny-sd's UNet config otherwise,
random weights from seed 41, stored as float16 (exact when loaded as float32).

| component | class | source |
|---|---|---|
| unet | UNet2DConditionModel | tiny-sd's config with in_channels 9; own random weights |
| vae | AutoencoderKL | tiny-sd's files, byte-identical |
| text_encoder | CLIPTextModel | tiny-sd's files, byte-identical |
| tokenizer | CLIPTokenizer | tiny-sd's files, byte-identical (see tokenizer/LICENSE-CLIP, MIT) |
| scheduler | PNDMScheduler | tiny-sd's (SD 1.5's scheduler_config.json) |

`model_index.json` names `StableDiffusionInpaintPipeline`. The same model as one original-layout
checkpoint is `weights/tiny-sd-inpaint.safetensors`.

## Regenerate

    /work/refenv/bin/python tools/make_tiny_inpaint.py

(torch 2.11.0, diffusers 0.36.0, transformers 4.57.6). The output is byte-for-byte
reproducible; compare `sha256sum` of every file after a rebuild.
"""

SDXL_CARD = """---
license: openrail++
tags:
- stable-diffusion
- stable-diffusion-xl
- inpainting
- testing
library_name: diffusers
---

# tiny-sdxl-inpaint: a tiny random SDXL inpainting model for tests

This is **not a useful image model**. It is weights/tiny-sdxl with the UNet of an inpainting
model: `in_channels` 9, i.e. the UNet input is `cat([latents (4), mask (1), masked-image
latents (4)], dim=1)` as in diffusers/stable-diffusion-xl-1.0-inpainting-0.1. The UNet has
tiny-sdxl's UNet config otherwise, random weights from seed 43, stored as float16 (exact when
loaded as float32). Licensed like SDXL, under the CreativeML OpenRAIL++-M licence.

| component | source |
|---|---|
| unet | tiny-sdxl's config with in_channels 9; own random weights |
| vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler | tiny-sdxl's files, byte-identical |

`model_index.json` names `StableDiffusionXLInpaintPipeline` (force_zeros_for_empty_prompt true,
requires_aesthetics_score false, as tiny-sdxl). No single-file version.

## Regenerate

    /work/refenv/bin/python tools/make_tiny_inpaint.py

(torch 2.11.0, diffusers 0.36.0, transformers 4.57.6). The output is byte-for-byte
reproducible; compare `sha256sum` of every file after a rebuild.
"""


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build_unet(base, seed):
    """The base model's UNet config with 9 input channels, fresh random weights from `seed`."""
    from diffusers import UNet2DConditionModel

    config = read_json(os.path.join(base, "unet", "config.json"))
    config["in_channels"] = IN_CHANNELS
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(config)


def copy_components(base, out, keep):
    """Byte-identical copies of the base folder's other components (no symlinks)."""
    for sub in keep:
        shutil.copytree(os.path.join(base, sub), os.path.join(out, sub))


def build_folder(base, out, seed, pipeline_class, card):
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    index = read_json(os.path.join(base, "model_index.json"))
    subs = [k for k, v in index.items() if isinstance(v, list) and v[0] is not None and k != "unet"]
    copy_components(base, out, subs)
    build_unet(base, seed).half().save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    index["_class_name"] = pipeline_class
    make_tiny_sd.write_json(os.path.join(out, "model_index.json"), index)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)


def verify_single(path, folder):
    """diffusers' from_single_file must give back every tensor of the folder's models."""
    from diffusers import StableDiffusionInpaintPipeline

    ref = StableDiffusionInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    with tempfile.TemporaryDirectory() as cfg:
        make_single_files.config_only_copy(folder, cfg)
        torch.manual_seed(12345)  # a tensor the file failed to provide cannot match by accident
        got = StableDiffusionInpaintPipeline.from_single_file(
            path, config=cfg, torch_dtype=torch.float32, local_files_only=True
        )
    if type(got) is not StableDiffusionInpaintPipeline or got.unet.config.in_channels != IN_CHANNELS:
        raise SystemExit(f"{path}: from_single_file did not give a 9-channel inpainting pipeline")
    checked = 0
    for comp in ("unet", "vae", "text_encoder"):
        a = getattr(ref, comp).state_dict()
        b = getattr(got, comp).state_dict()
        if set(a) != set(b):
            raise SystemExit(f"{path}: {comp} has different tensor names after from_single_file")
        for k in a:
            if a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
                raise SystemExit(f"{path}: {comp}.{k} differs after diffusers' from_single_file")
            checked += 1
    return checked


def check_folder(folder, pipeline_cls, **kwargs):
    """diffusers must load the folder offline and inpaint with it; fail loudly otherwise."""
    import numpy as np
    import PIL.Image

    pipe = pipeline_cls.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if pipe.unet.config.in_channels != IN_CHANNELS or pipe.unet.conv_in.weight.shape[1] != IN_CHANNELS:
        raise SystemExit(f"{folder}: UNet is not 9-channel")
    image = PIL.Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    mask = PIL.Image.fromarray(np.pad(np.full((32, 32), 255, dtype=np.uint8), 16))
    out = pipe(
        "a test",
        image=image,
        mask_image=mask,
        width=64,
        height=64,
        strength=1.0,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images
    if out.shape != (1, 64, 64, 3) or not np.isfinite(out).all():
        raise SystemExit(f"{folder}: unexpected output {out.shape}")
    print(f"checked: {pipeline_cls.__name__}.from_pretrained({os.path.basename(folder)}) runs (std {out.std():.3f})")


def main():
    import diffusers
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()

    build_folder(SD_BASE, SD_OUT, SD_UNET_SEED, "StableDiffusionInpaintPipeline", SD_CARD)
    print(f"wrote {SD_OUT}")
    tensors, n_model = make_single_files.build(SD_OUT, openclip=False)
    # One metadata key only: safetensors writes the metadata map in a random order, so two keys
    # would make the file differ from run to run.
    save_file(tensors, SD_SINGLE, metadata={"format": "pt"})
    checked = verify_single(SD_SINGLE, SD_OUT)
    if checked != n_model:
        raise SystemExit(f"{SD_SINGLE}: checked {checked} tensors, the folder has {n_model}")
    print(f"wrote {SD_SINGLE}: {len(tensors)} tensors; from_single_file reproduces all {checked} model tensors")

    build_folder(SDXL_BASE, SDXL_OUT, SDXL_UNET_SEED, "StableDiffusionXLInpaintPipeline", SDXL_CARD)
    print(f"wrote {SDXL_OUT}")

    check_folder(SD_OUT, StableDiffusionInpaintPipeline)
    check_folder(SDXL_OUT, StableDiffusionXLInpaintPipeline, add_watermarker=False)


if __name__ == "__main__":
    main()
