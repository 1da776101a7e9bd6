"""Write weights/tiny-sdxl as one checkpoint in the original SGM layout (weights/tiny-sdxl.safetensors).

    /work/refenv/bin/python tools/make_tiny_sdxl_single.py [FOLDER] [OUT]

SDXL's original checkpoints (Stability's generative-models, "SGM") name their tensors
`model.diffusion_model.*` (openaimodel UNet, with the added conditioning under `label_emb.0`),
`first_stage_model.*` (the LDM VAE), `conditioner.embedders.0.transformer.text_model.*` (the
first text encoder, Hugging Face CLIP names) and `conditioner.embedders.1.model.*` (the second,
OpenCLIP names: q/k/v fused into `attn.in_proj_*`, `text_projection` stored as
[hidden, projection], the transpose of Hugging Face's `text_projection.weight`). Like real
SDXL files this one also carries what no pipeline reads: CLIP's `position_ids` and OpenCLIP's
`logit_scale`. No DDPM schedule buffers: SGM checkpoints do not store them.

The UNet and VAE mappings are tools/make_single_files.py's. Verification is diffusers' own:
`StableDiffusionXLPipeline.from_single_file` reloads the file offline against a copy of the
folder's configs *without* weights, and every tensor of all four models must equal the
folder's. Any difference fails loudly.
"""

import argparse
import os
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

from make_single_files import config_only_copy, read_json, unet_to_ldm, vae_to_ldm  # noqa: E402

TE1 = "conditioner.embedders.0.transformer."
TE2 = "conditioner.embedders.1.model."


def te1_to_sgm(sd):
    """The first encoder keeps its Hugging Face names under conditioner.embedders.0.transformer."""
    out = {TE1 + k: v for k, v in sd.items()}
    n = sd["text_model.embeddings.position_embedding.weight"].shape[0]
    out[TE1 + "text_model.embeddings.position_ids"] = torch.arange(n).unsqueeze(0)
    return out


def te2_to_sgm(sd, config):
    """CLIPTextModelWithProjection names -> OpenCLIP text tower names (all layers are used)."""
    out = {
        TE2 + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        TE2 + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        TE2 + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        TE2 + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        # OpenCLIP applies it as `x @ text_projection`; Hugging Face's Linear as `x @ W.T`.
        TE2 + "text_projection": sd["text_projection.weight"].t().contiguous(),
    }
    renames = (
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
        ("self_attn.out_proj", "attn.out_proj"),
    )
    for i in range(config["num_hidden_layers"]):
        h = f"text_model.encoder.layers.{i}."
        r = f"{TE2}transformer.resblocks.{i}."
        for a, b in renames:
            for leaf in ("weight", "bias"):
                out[r + f"{b}.{leaf}"] = sd[h + f"{a}.{leaf}"]
        for leaf in ("weight", "bias"):
            out[r + f"attn.in_proj_{leaf}"] = torch.cat(
                [sd[h + f"self_attn.{x}_proj.{leaf}"] for x in ("q", "k", "v")], dim=0
            ).contiguous()
    dtype = sd["text_model.final_layer_norm.weight"].dtype
    out[TE2 + "logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    return out


def build(folder):
    def weights(sub, name):
        return load_file(os.path.join(folder, sub, name))

    unet = weights("unet", "diffusion_pytorch_model.safetensors")
    vae = weights("vae", "diffusion_pytorch_model.safetensors")
    te1 = weights("text_encoder", "model.safetensors")
    te2 = weights("text_encoder_2", "model.safetensors")
    out = {}
    out.update(unet_to_ldm(unet, read_json(os.path.join(folder, "unet", "config.json"))))
    out.update(vae_to_ldm(vae, read_json(os.path.join(folder, "vae", "config.json"))))
    out.update(te1_to_sgm(te1))
    out.update(te2_to_sgm(te2, read_json(os.path.join(folder, "text_encoder_2", "config.json"))))
    n_model = len(unet) + len(vae) + len(te1) + len(te2)
    return {k: v.contiguous() for k, v in out.items()}, n_model


def verify(path, folder):
    """Reload with diffusers' single-file loader and compare every tensor; return the count."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    kind = infer_diffusers_model_type(load_file(path))
    if kind != "xl_base":
        raise SystemExit(f"{path}: diffusers detects it as {kind!r}, not 'xl_base'")
    print(f"  diffusers detects the file as {kind!r}")
    ref = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    with tempfile.TemporaryDirectory() as cfg:
        config_only_copy(folder, cfg)
        # A different random init, so a tensor the file failed to provide cannot match by accident.
        torch.manual_seed(12345)
        got = StableDiffusionXLPipeline.from_single_file(
            path, config=cfg, torch_dtype=torch.float32, local_files_only=True
        )
    checked = 0
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a = getattr(ref, comp).state_dict()
        b = getattr(got, comp).state_dict()
        if set(a) != set(b):
            raise SystemExit(f"{path}: {comp} has different tensor names after from_single_file: {set(a) ^ set(b)}")
        for k in a:
            if a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
                raise SystemExit(f"{path}: {comp}.{k} differs after diffusers' from_single_file")
            checked += 1
        print(f"  {comp}: {len(a)} tensors equal")
    if dict(got.scheduler.config) != dict(ref.scheduler.config):
        raise SystemExit(f"{path}: scheduler config differs")
    if got.config.force_zeros_for_empty_prompt is not True:
        raise SystemExit(f"{path}: force_zeros_for_empty_prompt lost")
    return checked


def main():
    import diffusers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", default=os.path.join(REPO, "weights", "tiny-sdxl"))
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "weights", "tiny-sdxl.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    tensors, n_model = build(args.folder)
    # One metadata entry only: safetensors writes several in hash-map order, which would make
    # the file's bytes change from run to run.
    save_file(tensors, args.out, metadata={"source": "tools/make_tiny_sdxl_single.py from weights/tiny-sdxl"})
    checked = verify(args.out, args.folder)
    if checked != n_model:
        raise SystemExit(f"{args.out}: checked {checked} tensors, the folder has {n_model}")
    print(f"wrote {args.out}: {len(tensors)} tensors; "
          f"diffusers' from_single_file reproduces all {checked} model tensors")


if __name__ == "__main__":
    sys.exit(main())
