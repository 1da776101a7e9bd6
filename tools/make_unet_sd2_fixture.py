"""Build the SD 2.x-style tiny UNet fixture used by tests/unet_vae.rs (tests/fixtures/unet_sd2).

The UNet has the features SD 2.x adds over 1.x: linear projections in the transformers,
a per-level head count list (`attention_head_dim: [2, 4, 4]`, which diffusers reads as head
counts), `upcast_attention`. It also mixes block types in an order SD does not use
(cross-attention, plain, cross-attention), varies layers and transformer depth per level and
uses `only_cross_attention` on one level, so sdgen's level bookkeeping is exercised. Goldens
include latents whose sides are not multiples of 4 (the total downsampling factor), which
forces diffusers' `upsample_size` path, and a fractional timestep.

    /work/main/.venv-ref/bin/python tools/make_unet_sd2_fixture.py [OUT_DIR]   # default tests/fixtures/unet_sd2

Random weights from a fixed seed, stored as float16; the output is reproducible (CPU, fp32, one thread).
"""

import argparse
import os

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    layers_per_block=(1, 2, 1),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(2, 4, 4),
    only_cross_attention=(False, False, True),
    cross_attention_dim=32,
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=8,
    flip_sin_to_cos=True,
    freq_shift=0,
)

# (name, batch, height, width, timestep); timesteps are given as diffusers' schedulers give
# them: int64 for DDIM-like, float32 (possibly fractional) for Euler-like.
CASES = [
    ("a_8x8_t999", 2, 8, 8, torch.tensor(999, dtype=torch.int64)),
    ("b_9x7_t665", 1, 9, 7, torch.tensor(665.3333, dtype=torch.float32)),
    ("c_6x10_t1", 1, 6, 10, torch.tensor(1, dtype=torch.int64)),
    ("d_12x8_t0p5", 1, 12, 8, torch.tensor(0.5, dtype=torch.float32)),
]


def main():
    from diffusers import UNet2DConditionModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "unet_sd2"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIG).eval()
    # PyTorch's default init starts norms at weight 1 and bias 0, which would hide a swapped
    # or missing affine parameter; random values everywhere make every tensor matter.
    with torch.no_grad():
        g = torch.Generator("cpu").manual_seed(1)
        for name, p in unet.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(1.0, p[0].numel() ** 0.5))
    # Stored in float16 to keep the fixture small (and to cover loading fp16 files into an
    # fp32 model); the goldens are computed in float32 from exactly those rounded values.
    os.makedirs(args.out, exist_ok=True)
    unet = unet.half()
    unet.save_pretrained(args.out, safe_serialization=True)
    unet = unet.float()

    g = torch.Generator("cpu").manual_seed(1234)
    goldens = {}
    with torch.no_grad():
        for name, b, h, w, t in CASES:
            sample = torch.randn(b, 4, h, w, generator=g)
            ehs = torch.randn(b, 77, 32, generator=g)
            goldens[f"{name}.sample"] = sample
            goldens[f"{name}.encoder_hidden_states"] = ehs
            goldens[f"{name}.timestep"] = t.to(torch.float64).reshape(1)
            goldens[f"{name}.out"] = unet(sample, t, encoder_hidden_states=ehs).sample.contiguous()
    save_file(goldens, os.path.join(args.out, "goldens.safetensors"))
    for f in sorted(os.listdir(args.out)):
        print(f, os.path.getsize(os.path.join(args.out, f)))


if __name__ == "__main__":
    main()
