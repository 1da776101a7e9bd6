"""Build the tiny random Stable Diffusion XL model used by sdgen's tests (weights/tiny-sdxl).

A `StableDiffusionXLPipeline` folder with SDXL base 1.0's architecture at toy width and random
weights from fixed seeds: a three-level UNet (no attention on the first level, 1/1/2
transformer layers per level, per-level head counts, linear projections) with SDXL's
"text_time" added conditioning; two text encoders of *different* widths (32 and 48), so a
concatenation in the wrong order or a pooled embedding from the wrong encoder cannot pass
unnoticed; tiny-sd's VAE with SDXL's scaling factor 0.13025; SDXL base 1.0's Euler scheduler
config verbatim. Weights are stored as float16 (exact when loaded as float32, so goldens
computed in float32 are unaffected). The output is byte-for-byte reproducible.

    PYTHONPATH=/tmp/clipany /work/refenv/bin/python tools/make_tiny_sdxl.py [OUT_DIR]   # default weights/tiny-sdxl

Needs torch, diffusers, transformers 4, safetensors and the PyPI package clip-anytorch (only
for the BPE file; `pip install --no-deps --target /tmp/clipany clip-anytorch==2.6.0`).
Nothing is downloaded. tools/make_tiny_sdxl_single.py turns the folder into one SGM-layout file.
"""

import argparse
import os
import shutil
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import make_tiny_sd  # noqa: E402  (VAE builder, contrast scaling, json writer)

# stabilityai/stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json, verbatim.
SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

# As SDXL base 1.0's model_index.json (no watermarker entry, no image encoder).
MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.36.0",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

TE1_WIDTH = 32
TE2_WIDTH = 48
TE2_PROJECTION = 16
TIME_EMBED_DIM = 8  # addition_time_embed_dim: each of the 6 time ids becomes 8 sinusoid features

MODEL_CARD = """---
license: openrail++
tags:
- stable-diffusion
- stable-diffusion-xl
- testing
library_name: diffusers
---

# tiny-sdxl: a tiny random Stable Diffusion XL for tests

This is **not a useful image model**. It has Stable Diffusion XL base 1.0's architecture at
toy size with random weights from fixed seeds, so that sdgen's tests can load and run a
complete `StableDiffusionXLPipeline` folder in seconds on a CPU and compare against diffusers.
Licensed like SDXL, under the CreativeML OpenRAIL++-M licence.

| component | class | size |
|---|---|---|
| unet | UNet2DConditionModel | block_out_channels (32, 64, 64), down DownBlock2D + 2 x CrossAttnDownBlock2D, 2 layers per block, attention_head_dim [2, 4, 8] (head counts), transformer_layers_per_block [1, 1, 2] (mid block 2), use_linear_projection, cross_attention_dim 80 (32 + 48), addition_embed_type "text_time", addition_time_embed_dim 8, projection_class_embeddings_input_dim 64 (6 x 8 + 16), sample_size 8 |
| vae | AutoencoderKL | tiny-sd's VAE (block_out_channels (32, 64, 64, 64), one latent = 8 pixels) with SDXL's scaling_factor 0.13025 and force_upcast |
| text_encoder | CLIPTextModel | hidden 32, 5 layers, 4 heads, intermediate 37, quick_gelu, vocab 49408, token ids as SDXL's (bos 0, eos 2, pad 1) |
| text_encoder_2 | CLIPTextModelWithProjection | hidden 48, 10 layers, 4 heads, intermediate 61, gelu, projection_dim 16, token ids as SDXL's (bos 0, eos 2, pad 1) |
| tokenizer | CLIPTokenizer | the real CLIP BPE, padding with the end token (see tokenizer/LICENSE-CLIP, MIT) |
| tokenizer_2 | CLIPTokenizer | the same BPE, padding with "!" as SDXL's tokenizer_2 |
| scheduler | EulerDiscreteScheduler | SDXL base 1.0's scheduler_config.json verbatim ("leading" spacing, steps_offset 1) |

`force_zeros_for_empty_prompt` is true, as in SDXL base 1.0. Default size: 8 latents x 8 =
64 x 64 pixels. All weights are stored in float16 (exact when loaded as float32).

The same model as one checkpoint in the original SGM layout is `weights/tiny-sdxl.safetensors`.

## Regenerate

    PYTHONPATH=/tmp/clipany /work/refenv/bin/python tools/make_tiny_sdxl.py weights/tiny-sdxl
    /work/refenv/bin/python tools/make_tiny_sdxl_single.py

(torch 2.11.0, diffusers 0.36.0, transformers 4.57.6, clip-anytorch 2.6.0 for the BPE file).
The output is byte-for-byte reproducible; compare `sha256sum` of every file after a rebuild.
"""


def build_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(31)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=[2, 4, 8],
        transformer_layers_per_block=[1, 1, 2],
        use_linear_projection=True,
        cross_attention_dim=TE1_WIDTH + TE2_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TE2_PROJECTION,
        norm_num_groups=32,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(33)
    config = CLIPTextConfig(
        hidden_size=TE1_WIDTH,
        num_hidden_layers=5,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="quick_gelu",
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=TE1_WIDTH,
        # SDXL's text_encoder/config.json keeps the legacy ids of openai/clip-vit-large-patch14.
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        layer_norm_eps=1e-5,
    )
    return CLIPTextModel(config)


def build_text_encoder_2():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(34)
    config = CLIPTextConfig(
        hidden_size=TE2_WIDTH,
        # Ten layers: diffusers recognises an SGM single file as SDXL base by
        # `conditioner.embedders.1.model.transformer.resblocks.9.*`.
        num_hidden_layers=10,
        num_attention_heads=4,
        intermediate_size=61,
        hidden_act="gelu",
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=TE2_PROJECTION,
        # SDXL's text_encoder_2/config.json: the legacy ids, so the pooled output is taken at
        # argmax(input_ids), i.e. the first end token.
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        layer_norm_eps=1e-5,
    )
    return CLIPTextModelWithProjection(config)


def build_vae():
    """tiny-sd's VAE (same seed) with SDXL's latent scale; contrast tuned for that scale."""
    vae = make_tiny_sd.build_vae()
    vae.register_to_config(scaling_factor=0.13025, force_upcast=True)
    factor = make_tiny_sd.scale_for_contrast(vae)
    return vae, factor


def write_tokenizer(out, pad_token):
    cmd = [sys.executable, os.path.join(REPO, "tools", "make_tokenizer_files.py"), out]
    if pad_token is not None:
        cmd += ["--pad-token", pad_token]
    subprocess.run(cmd, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "weights", "tiny-sdxl"))
    args = ap.parse_args()
    out = args.out
    torch.set_num_threads(1)

    os.makedirs(out, exist_ok=True)
    subs = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    for sub in subs:
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    build_unet().half().save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    vae, factor = build_vae()
    vae.half().save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    build_text_encoder().half().save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
    build_text_encoder_2().half().save_pretrained(os.path.join(out, "text_encoder_2"), safe_serialization=True)

    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    make_tiny_sd.write_json(os.path.join(out, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
    make_tiny_sd.write_json(os.path.join(out, "model_index.json"), MODEL_INDEX)
    write_tokenizer(os.path.join(out, "tokenizer"), None)
    write_tokenizer(os.path.join(out, "tokenizer_2"), "!")
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(MODEL_CARD)
    print(f"wrote {out} (vae decoder conv_out scaled by {factor})")
    check(out)


def check(out):
    """diffusers must load the folder offline and run it; fail loudly otherwise."""
    import diffusers
    from diffusers import StableDiffusionXLPipeline

    diffusers.utils.logging.set_verbosity_error()
    pipe = StableDiffusionXLPipeline.from_pretrained(out, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(
        "a test", num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0), output_type="np"
    ).images
    if img.shape != (1, 64, 64, 3):
        raise SystemExit(f"{out}: unexpected default image shape {img.shape}")
    if pipe.tokenizer_2.pad_token_id != 0 or pipe.tokenizer.pad_token_id != 49407:
        raise SystemExit(f"{out}: tokenizer pad ids {pipe.tokenizer.pad_token_id}, {pipe.tokenizer_2.pad_token_id}")
    print(f"checked: StableDiffusionXLPipeline.from_pretrained runs (image std {img.std():.3f})")


if __name__ == "__main__":
    main()
