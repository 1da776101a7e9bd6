"""Build the tiny random Stable Diffusion 2.x model used by sdgen's tests (weights/tiny-sd2).

Where tools/make_tiny_sd.py mirrors SD 1.x, this one mirrors what differs in SD 2.x: a UNet
with linear projections in and out of its transformers, per-level head counts
(`attention_head_dim` as a list) and attention on the first level (as in the real model), a
CLIP text encoder with "gelu" and SD 2.1's token ids, a tokenizer that pads with "!", and a
DDIM scheduler with v-prediction. The VAE is tiny-sd's (same config, seed and contrast
factor). Weights are stored as float16 to keep the folder small; loaded as float32 they are
exact, so goldens computed in float32 are unaffected. Output is byte-for-byte reproducible.

    /work/main/.venv-ref/bin/python tools/make_tiny_sd2.py [OUT_DIR]   # default weights/tiny-sd2
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import make_tiny_sd  # noqa: E402  (same VAE builder and contrast scaling)

# stabilityai/stable-diffusion-2-1's scheduler_config.json (the 768-v model): DDIM, v-prediction.
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

MODEL_INDEX = dict(make_tiny_sd.MODEL_INDEX, scheduler=["diffusers", "DDIMScheduler"])

MODEL_CARD = """---
license: openrail++
tags:
- stable-diffusion
- testing
library_name: diffusers
---

# tiny-sd2: a tiny random Stable Diffusion 2.x for tests

This is **not a useful image model**. It has Stable Diffusion 2.x's architecture at toy size
with random weights from fixed seeds, so that sdgen's tests can exercise what SD 2.x does
differently from SD 1.x in seconds on a CPU and compare against diffusers.

| component | class | size |
|---|---|---|
| unet | UNet2DConditionModel | block_out_channels (32, 64), attention on level 0, 2 layers per block, attention_head_dim [2, 4], use_linear_projection, upcast_attention, cross_attention_dim 32 |
| vae | AutoencoderKL | tiny-sd's VAE (same config, seed and scaling) |
| text_encoder | CLIPTextModel | hidden 32, 5 layers, 4 heads, intermediate 37, gelu, vocab 49408, SD 2.1's token ids (bos 0, eos 2, pad 1) |
| tokenizer | CLIPTokenizer | the real CLIP BPE, padding with "!" as SD 2.x does (see tokenizer/LICENSE-CLIP, MIT) |
| scheduler | DDIMScheduler | SD 2.1's scheduler_config.json (v_prediction) |

All weights are stored in float16 (exact when loaded as float32). No safety checker or
feature extractor.

## Regenerate

    /work/main/.venv-ref/bin/python tools/make_tiny_sd2.py weights/tiny-sd2

(torch 2.11.0, diffusers 0.36.0, transformers 4.57.6, clip-anytorch 2.6.0 for the BPE file).
The output is byte-for-byte reproducible; compare `sha256sum` of every file after a rebuild.
"""


def build_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(11)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=[2, 4],
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=32,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(13)
    config = CLIPTextConfig(
        hidden_size=32,
        num_hidden_layers=5,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        layer_norm_eps=1e-5,
    )
    return CLIPTextModel(config)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "weights", "tiny-sd2"))
    args = ap.parse_args()
    out = args.out
    torch.set_num_threads(1)

    os.makedirs(out, exist_ok=True)
    for sub in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    unet = build_unet()
    unet.half().save_pretrained(os.path.join(out, "unet"), safe_serialization=True)

    vae = make_tiny_sd.build_vae()
    factor = make_tiny_sd.scale_for_contrast(vae)
    vae.half().save_pretrained(os.path.join(out, "vae"), safe_serialization=True)

    text_encoder = build_text_encoder()
    text_encoder.half().save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)

    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    make_tiny_sd.write_json(os.path.join(out, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
    make_tiny_sd.write_json(os.path.join(out, "model_index.json"), MODEL_INDEX)

    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "make_tokenizer_files.py"),
            os.path.join(out, "tokenizer"),
            "--pad-token",
            "!",
        ],
        check=True,
    )
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(MODEL_CARD)
    print(f"wrote {out} (vae decoder conv_out scaled by {factor})")


if __name__ == "__main__":
    main()
