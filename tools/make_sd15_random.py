"""Make a full-size Stable Diffusion 1.5-architecture model with random weights, for benchmarks.

The layer sizes are SD 1.5's (stable-diffusion-v1-5/stable-diffusion-v1-5 configs); the weights
are random (fixed seed), so speed and memory are real but the images are noise. Written as a
diffusers folder, fp32 by default (`--fp16` for half-precision files). Not committed: ~4 GB.

    python tools/make_sd15_random.py weights/sd15-random [--fp16] [--device cuda]
"""

import argparse
import json
import os
import shutil
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
CLIP = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
)
SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    tiny = os.path.join(here, "..", "weights", "tiny-sd")
    start = time.time()
    torch.manual_seed(0)
    dtype = torch.float16 if args.fp16 else torch.float32
    os.makedirs(args.out, exist_ok=True)
    with torch.device(args.device):
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        text = CLIPTextModel(CLIPTextConfig(**CLIP))
    for name, model in [("unet", unet), ("vae", vae), ("text_encoder", text)]:
        model.to(dtype=dtype).save_pretrained(os.path.join(args.out, name), safe_serialization=True)
    shutil.copytree(os.path.join(tiny, "tokenizer"), os.path.join(args.out, "tokenizer"), dirs_exist_ok=True)
    os.makedirs(os.path.join(args.out, "scheduler"), exist_ok=True)
    with open(os.path.join(args.out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f, indent=2)
    shutil.copy(os.path.join(tiny, "model_index.json"), os.path.join(args.out, "model_index.json"))
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("---\nlicense: creativeml-openrail-m\n---\nSD 1.5 architecture with random weights, for benchmarks only.\n")
    print(f"wrote {args.out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
