"""Build the tiny random autoencoders used by sdgen's `--vae` tests (in weights/).

- tiny-taesd/       AutoencoderTiny (TAESD layout) for weights/tiny-sd: 4 levels, so one latent
                    is 8 pixels like tiny-sd's 4-level AutoencoderKL; 12 channels wide (diffusers' EncoderTiny/DecoderTiny only run with one width).
- tiny-taesdxl/     the same shapes with other weights, for weights/tiny-sdxl (TAESD and
                    TAESDXL differ only in their weights; sdgen tells them apart by name).
- tiny-taesd-16ch/  an AutoencoderTiny with 16 latent channels, which fits no tiny UNet.
- tiny-taesd-madebyollin/taesd_decoder.safetensors
                    tiny-taesd's decoder under the original madebyollin/taesd names
                    (`N.weight`: the decoder's Sequential starts with a Clamp, so index + 1).
- tiny-sd-vae2/     a second AutoencoderKL for tiny-sd: other block channels (32 at every level), the same
                    latent channels, scale and scaling_factor.
- tiny-sd-vae2.safetensors
                    the same weights as one file with original LDM names
                    (`encoder.down.0.block.0...`, no `first_stage_model.` prefix), as
                    vae-ft-mse-840000-ema-pruned.safetensors is shipped.

- tests/fixtures/vae-layouts/taesd.json
                    the tensor names and shapes (no weights) of a full-size AutoencoderTiny
                    with TAESD's published config, under diffusers' names and as madebyollin's
                    taesd_decoder/taesd_encoder files, to test reading the config off shapes.

Random weights from fixed seeds: running the script twice gives byte-identical files.

    /work/refenv/bin/python tools/make_tiny_vaes.py [WEIGHTS_DIR]   # default weights/
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from make_single_files import vae_to_ldm  # noqa: E402


def tiny_config(latent_channels=4):
    return dict(
        in_channels=3,
        out_channels=3,
        encoder_block_out_channels=(12, 12, 12, 12),
        decoder_block_out_channels=(12, 12, 12, 12),
        act_fn="relu",
        latent_channels=latent_channels,
        upsampling_scaling_factor=2,
        num_encoder_blocks=(1, 1, 2, 1),
        num_decoder_blocks=(1, 2, 1, 1),
        latent_magnitude=3,
        latent_shift=0.5,
        scaling_factor=1.0,
    )


def perturb(model, seed, gain=1.0):
    """Default init leaves biases near zero; spread them so every term matters in tests.
    `gain` scales the kernels (PyTorch's default init shrinks a ReLU stack's signal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif p.dim() == 4:
                p.mul_(gain)


def save_tiny(out, name, seed, latent_channels=4):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae = AutoencoderTiny(**tiny_config(latent_channels)).eval()
    perturb(vae, seed + 100, gain=1.8)
    with torch.no_grad():
        # Centre the decoded image near 0 so that clamping to [-1, 1] keeps most pixels.
        vae.decoder.layers[-1].bias.add_(0.7)
    path = os.path.join(out, name)
    vae.save_pretrained(path, safe_serialization=True)
    return vae


def madebyollin_decoder(vae, path):
    """diffusers' DecoderTiny `layers.N.*` -> madebyollin's taesd.py Decoder `N+1.*`."""
    out = {}
    for key, t in vae.decoder.state_dict().items():
        assert key.startswith("layers."), key
        rest = key[len("layers.") :]
        index, tail = rest.split(".", 1)
        out[f"{int(index) + 1}.{tail}"] = t.contiguous()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path)


def save_kl(out):
    from diffusers import AutoencoderKL

    torch.manual_seed(21)
    cfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )
    vae = AutoencoderKL(**cfg).eval()
    perturb(vae, 121)
    folder = os.path.join(out, "tiny-sd-vae2")
    vae.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "config.json")) as f:
        saved = json.load(f)
    sd = {k: v.contiguous() for k, v in vae.state_dict().items()}
    ldm = vae_to_ldm(sd, saved)
    ldm = {k[len("first_stage_model.") :]: v.contiguous() for k, v in ldm.items()}
    save_file(ldm, os.path.join(out, "tiny-sd-vae2.safetensors"))


def taesd_layout(path):
    """Full-size TAESD names and shapes; madebyollin's files number the decoder from 1."""
    from diffusers import AutoencoderTiny

    sd = AutoencoderTiny().state_dict()
    layout = {
        "diffusers": {k: list(v.shape) for k, v in sd.items()},
        "madebyollin_decoder": {
            f"{int(k.split('.')[2]) + 1}.{k.split('.', 3)[3]}": list(v.shape)
            for k, v in sd.items() if k.startswith("decoder.")
        },
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(layout, f, indent=0, sort_keys=True)
        f.write("\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "weights")
    taesd_layout(os.path.join(REPO, "tests", "fixtures", "vae-layouts", "taesd.json"))
    taesd = save_tiny(out, "tiny-taesd", 11)
    save_tiny(out, "tiny-taesdxl", 12)
    save_tiny(out, "tiny-taesd-16ch", 13, latent_channels=16)
    madebyollin_decoder(taesd, os.path.join(out, "tiny-taesd-madebyollin", "taesd_decoder.safetensors"))
    save_kl(out)
    print("wrote tiny autoencoders to", out)


if __name__ == "__main__":
    main()
