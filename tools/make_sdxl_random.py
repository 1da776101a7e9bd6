"""Make a full-size SDXL-architecture model with random weights, for benchmarks.

The layer sizes are SDXL base 1.0's (the configs in data/configs/sdxl, which cite their
source); the weights are random (fixed seed), so speed and memory are real but the images are
noise. Written as a diffusers folder in fp16 (~7 GB; not committed). The tokenizers are
tiny-sdxl's, which are CLIP's full vocabulary.

    python tools/make_sdxl_random.py /tmp/sdxl-random --device cuda
    python tools/make_sdxl_random.py /tmp/x --dry-run     # builds on the meta device only
"""

import argparse
import json
import os
import shutil
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection


def config(here, name):
    with open(os.path.join(here, "..", "data", "configs", "sdxl", name, "config.json")) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    tiny = os.path.join(here, "..", "weights", "tiny-sdxl")
    start = time.time()
    torch.manual_seed(0)
    device = "meta" if args.dry_run else args.device
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config(here, "unet"))
        vae = AutoencoderKL.from_config(config(here, "vae"))
        text = CLIPTextModel(CLIPTextConfig(**config(here, "text_encoder")))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config(here, "text_encoder_2")))
    params = sum(p.numel() for m in (unet, vae, text, text_2) for p in m.parameters())
    if args.dry_run:
        print(f"SDXL random: {params / 1e9:.2f} B parameters (dry run, nothing written)")
        return
    os.makedirs(args.out, exist_ok=True)
    for name, model in [("unet", unet), ("vae", vae), ("text_encoder", text), ("text_encoder_2", text_2)]:
        model.to(dtype=torch.float16).save_pretrained(os.path.join(args.out, name), safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(os.path.join(tiny, name), os.path.join(args.out, name), dirs_exist_ok=True)
    os.makedirs(os.path.join(args.out, "scheduler"), exist_ok=True)
    shutil.copy(os.path.join(here, "..", "data", "configs", "sdxl", "scheduler", "scheduler_config.json"),
                os.path.join(args.out, "scheduler", "scheduler_config.json"))
    shutil.copy(os.path.join(tiny, "model_index.json"), os.path.join(args.out, "model_index.json"))
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("---\nlicense: openrail++\n---\nSDXL architecture with random weights, for benchmarks only.\n")
    print(f"wrote {args.out} ({params / 1e9:.2f} B parameters) in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
