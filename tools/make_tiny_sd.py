"""Build the tiny random Stable Diffusion 1.x model used by sdgen's tests (weights/tiny-sd).

The model has SD 1.x's architecture at toy width (UNet 32/64 channels, 4-level VAE so one
latent is 8 pixels, 5-layer CLIP text encoder of width 32) and random weights from fixed
seeds. Running the script twice gives byte-identical files, so the folder can be rebuilt and
checked instead of trusted.

    /work/main/.venv-ref/bin/python tools/make_tiny_sd.py [OUT_DIR]   # default weights/tiny-sd

Needs torch, diffusers, transformers 4, safetensors and (for the tokenizer files) the PyPI
package clip-anytorch; nothing is downloaded.

The same model as transformers 5 saves it (weights/tiny-sd-tf5: text encoder without the
`text_model.` prefix, tokenizer as tokenizer.json) needs a Python with transformers 5;
`--tf5-python PY` runs tools/make_tiny_sd_tf5.py with it after the build:

    /work/refenv/bin/python tools/make_tiny_sd.py --tf5-python /work/refenv5/bin/python
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Exactly the scheduler config shipped with runwayml/stable-diffusion-v1-5, so that tests
# exercise the same `from_config` path as the real model.
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.36.0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

MODEL_CARD = """---
license: creativeml-openrail-m
tags:
- stable-diffusion
- testing
library_name: diffusers
---

# tiny-sd: a tiny random Stable Diffusion 1.x for tests

This is **not a useful image model**. It has Stable Diffusion 1.x's architecture at toy size
with random weights from fixed seeds, and exists so that sdgen's tests can load and run a
complete `StableDiffusionPipeline` folder in seconds on a CPU and compare against diffusers.

| component | class | size |
|---|---|---|
| unet | UNet2DConditionModel | block_out_channels (32, 64), 2 layers per block, 8 heads, cross_attention_dim 32 |
| vae | AutoencoderKL | block_out_channels (32, 64, 64, 64): one latent = 8 pixels, 4 latent channels, scaling_factor 0.18215 |
| text_encoder | CLIPTextModel | hidden 32, 5 layers, 4 heads, intermediate 37, quick_gelu, vocab 49408 |
| tokenizer | CLIPTokenizer | the real CLIP BPE (see tokenizer/LICENSE-CLIP, MIT) |
| scheduler | PNDMScheduler | SD 1.5's scheduler_config.json verbatim |

No safety checker or feature extractor.

## Regenerate

    /work/main/.venv-ref/bin/python tools/make_tiny_sd.py weights/tiny-sd

(torch 2.11.0, diffusers 0.36.0, transformers 4.57.6, clip-anytorch 2.6.0 for the BPE file).
The output is byte-for-byte reproducible; compare `sha256sum` of every file after a rebuild.
"""


def write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def build_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(3)
    config = CLIPTextConfig(
        hidden_size=32,
        num_hidden_layers=5,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="quick_gelu",
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        layer_norm_eps=1e-5,
    )
    return CLIPTextModel(config)


def scale_for_contrast(vae):
    """Scale the decoder's last conv so decoded pixels spread over [-1, 1] without saturating.

    Random decoders put out values whose scale has nothing to do with images; a fixed factor
    keeps the decoded test images from being flat grey or clipped to black/white.
    """
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        z = torch.randn(1, 4, 8, 8, generator=g) / vae.config.scaling_factor
        std = vae.decode(z).sample.std().item()
        factor = 0.5 / std
        # Round so the factor (and hence the weights) do not depend on the last ulp of `std`.
        factor = float(f"{factor:.3g}")
        vae.decoder.conv_out.weight.mul_(factor)
        vae.decoder.conv_out.bias.mul_(factor)
    return factor


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "weights", "tiny-sd"))
    ap.add_argument("--tf5-python", help="a Python with transformers 5: also write the transformers-5 layout")
    ap.add_argument("--tf5-out", help="where the transformers-5 layout goes (default: OUT with -tf5 appended)")
    args = ap.parse_args()
    out = args.out
    torch.set_num_threads(1)

    os.makedirs(out, exist_ok=True)
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    unet = build_unet()
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)

    vae = build_vae()
    factor = scale_for_contrast(vae)
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)

    text_encoder = build_text_encoder()
    text_encoder.save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)

    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    write_json(os.path.join(out, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
    write_json(os.path.join(out, "model_index.json"), MODEL_INDEX)

    subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "make_tokenizer_files.py"), os.path.join(out, "tokenizer")],
        check=True,
    )
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(MODEL_CARD)
    print(f"wrote {out} (vae decoder conv_out scaled by {factor})")
    if args.tf5_python:
        tf5_out = args.tf5_out or out.rstrip("/") + "-tf5"
        subprocess.run(
            [args.tf5_python, os.path.join(REPO, "tools", "make_tiny_sd_tf5.py"), out, tf5_out],
            check=True,
        )


if __name__ == "__main__":
    main()
