"""Write the tensor names and shapes of full-size SD 1.5, SD 2.1 and SDXL single-file checkpoints.

Builds the diffusers models from sdgen's standard configs (data/configs/sd1, sd2, sdxl) on the meta
device (no memory, no weights), checks their parameter counts against the published sizes
(this cross-checks the configs), renames them with tools/make_single_files.py's LDM mapping
(the one diffusers' from_single_file verifies on the tiny models), and writes
tests/fixtures/ldm-layouts/{sd15,sd21}.json: {name: shape}. SDXL base 1.0 gets
tools/make_tiny_sdxl_single.py's SGM mapping (also verified by diffusers on the tiny model) and
goes to sdxl.json. sdgen's tests run its single-file inspection on these headers to check
detection at real sizes.

    /work/main/.venv-ref/bin/python tools/make_ldm_layouts.py [sdxl]    (sdxl: only that layout)
"""

import json
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import make_single_files as msf  # noqa: E402
import make_tiny_sdxl_single as sgm  # noqa: E402

# Published parameter counts of the diffusers components.
EXPECTED = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


def load(arch, comp):
    with open(os.path.join(REPO, "data", "configs", arch, comp, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def check_counts(arch, models):
    for comp, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        if n != EXPECTED[arch][comp]:
            raise SystemExit(f"{arch} {comp}: {n} parameters, published {EXPECTED[arch][comp]}")
        print(f"  {arch} {comp}: {n:,} parameters, as published")


def write(out_name, out):
    shapes = {k: list(v.shape) for k, v in sorted(out.items())}
    path = os.path.join(REPO, "tests", "fixtures", "ldm-layouts", f"{out_name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(shapes, f, indent=0, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}: {len(shapes)} tensors")


def sdxl():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = {c: load("sdxl", c) for c in ("unet", "vae", "text_encoder", "text_encoder_2")}
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(cfg["unet"]),
            "vae": AutoencoderKL.from_config(cfg["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])),
        }
    check_counts("sdxl", models)
    sd = {c: m.state_dict() for c, m in models.items()}
    out = {}
    out.update(msf.unet_to_ldm(sd["unet"], cfg["unet"]))
    out.update(msf.vae_to_ldm(sd["vae"], cfg["vae"]))
    te1 = {k: v for k, v in sd["text_encoder"].items() if k != "text_model.embeddings.position_ids"}
    out.update(sgm.te1_to_sgm(te1))
    te2 = {k: v for k, v in sd["text_encoder_2"].items() if k != "text_model.embeddings.position_ids"}
    out.update(sgm.te2_to_sgm(te2, cfg["text_encoder_2"]))
    write("sdxl", out)


def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if sys.argv[1:] == ["sdxl"]:
        return sdxl()
    for arch, out_name in (("sd1", "sd15"), ("sd2", "sd21")):
        cfg = {c: load(arch, c) for c in ("unet", "vae", "text_encoder")}
        with torch.device("meta"):
            models = {
                "unet": UNet2DConditionModel.from_config(cfg["unet"]),
                "vae": AutoencoderKL.from_config(cfg["vae"]),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
            }
        check_counts(arch, models)
        sd = {c: m.state_dict() for c, m in models.items()}
        out = {}
        out.update(msf.unet_to_ldm(sd["unet"], cfg["unet"]))
        out.update(msf.vae_to_ldm(sd["vae"], cfg["vae"]))
        te = {k: v for k, v in sd["text_encoder"].items() if k != "text_model.embeddings.position_ids"}
        if arch == "sd1":
            out.update(msf.clip_to_ldm(te))
        else:
            out.update(msf.openclip_to_ldm(te, cfg["text_encoder"], extra_seed=0))
        out.update(msf.ldm_extras(torch.float16, out))
        write(out_name, out)
    sdxl()


if __name__ == "__main__":
    main()
