"""How far diffusers' own tiled VAE decode (AutoencoderKL.tiled_decode) lands from its
untiled decode on the tiny model, for the bounds in tests/precision.rs
(tiled_decode_matches_untiled). Run from the crate root with the reference env:

    /work/main/.venv-ref/bin/python tools/tiled_decode_reference.py

Prints, per tile size (in latents) and overlap factor, the worst and mean difference of
the 8-bit images. Measured with diffusers 0.36.0, torch 2.11.0 CPU:
    tile 4, overlap 0.5:  worst 158/255, mean 22.36/255
    tile 8, overlap 0.25: worst 110/255, mean  8.43/255
"""

import json

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

vae = AutoencoderKL.from_pretrained("weights/tiny-sd/vae").float().eval()
cases = json.load(open("tests/fixtures/goldens/cases.json"))["cases"]
case = [c for c in cases if c["width"] == 64 and c["height"] == 96][0]
golden = load_file("tests/fixtures/goldens/" + case["file"])
z = golden["latents"][-1] / vae.config.scaling_factor


def u8(x):
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round()


with torch.no_grad():
    whole = u8(vae.decode(z).sample)
    for tile, overlap in [(4, 0.5), (8, 0.25)]:
        vae.use_tiling = True
        vae.tile_latent_min_size = tile
        vae.tile_sample_min_size = tile * 8
        vae.tile_overlap_factor = overlap
        d = (u8(vae.decode(z).sample) - whole).abs()
        print(f"tile {tile}, overlap {overlap}: worst {d.max().item():.0f}/255, mean {d.mean().item():.2f}/255")
