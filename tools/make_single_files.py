"""Write the tiny test models as original-layout (CompVis/A1111 "LDM") single-file checkpoints.

    /work/main/.venv-ref/bin/python tools/make_single_files.py

reads weights/tiny-sd and weights/tiny-sd2 (diffusers folders) and writes
weights/tiny-sd.safetensors and weights/tiny-sd2.safetensors with the key names of the
original Stable Diffusion checkpoints: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE) and `cond_stage_model.transformer.text_model.*` (SD 1.x, Hugging
Face CLIP) or `cond_stage_model.model.*` (SD 2.x, OpenCLIP with fused q/k/v). Like real
checkpoints they also carry tensors no pipeline uses: the DDPM schedule buffers, a few EMA
entries, CLIP's position_ids, OpenCLIP's text_projection and logit_scale, and for OpenCLIP a
final transformer block that SD 2.x skips (it conditions on the penultimate layer).

The diffusers -> LDM mapping below is written from the layout of the original code. It is
then verified by the reference: diffusers' own `StableDiffusionPipeline.from_single_file`
reloads each file, offline, against a copy of the folder's configs *without* weights, and
every tensor of every component must equal the folder model's. Any difference fails loudly.
"""

import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_to_ldm(sd, config):
    """UNet2DConditionModel names -> openaimodel.UNetModel names (under model.diffusion_model.)."""
    lpb = config["layers_per_block"]
    up_has_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        # SDXL's "text_time" added conditioning lives where class labels did in openaimodel.
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out = {}
    for name, t in sd.items():
        parts = name.split(".")
        stem, leaf = ".".join(parts[:-1]), parts[-1]
        if stem in fixed:
            new = f"{fixed[stem]}.{leaf}"
        elif parts[0] == "down_blocks":
            level = int(parts[1])
            kind = parts[2]
            if kind == "resnets":
                j = int(parts[3])
                new = f"input_blocks.{1 + level * (lpb + 1) + j}.0.{UNET_RESNET[parts[4]]}.{leaf}"
            elif kind == "attentions":
                j = int(parts[3])
                new = f"input_blocks.{1 + level * (lpb + 1) + j}.1." + ".".join(parts[4:])
            elif kind == "downsamplers":
                assert parts[3:5] == ["0", "conv"], name
                new = f"input_blocks.{1 + level * (lpb + 1) + lpb}.0.op.{leaf}"
            else:
                raise KeyError(name)
        elif parts[0] == "mid_block":
            kind, j = parts[1], int(parts[2])
            if kind == "resnets":
                new = f"middle_block.{2 * j}.{UNET_RESNET[parts[3]]}.{leaf}"
            else:
                new = "middle_block.1." + ".".join(parts[3:])
        elif parts[0] == "up_blocks":
            b = int(parts[1])
            kind = parts[2]
            if kind == "resnets":
                j = int(parts[3])
                new = f"output_blocks.{b * (lpb + 1) + j}.0.{UNET_RESNET[parts[4]]}.{leaf}"
            elif kind == "attentions":
                j = int(parts[3])
                new = f"output_blocks.{b * (lpb + 1) + j}.1." + ".".join(parts[4:])
            elif kind == "upsamplers":
                sub = 2 if up_has_attn[b] else 1
                new = f"output_blocks.{b * (lpb + 1) + lpb}.{sub}.conv.{leaf}"
            else:
                raise KeyError(name)
        else:
            raise KeyError(name)
        out["model.diffusion_model." + new] = t
    return out


def vae_to_ldm(sd, config):
    """AutoencoderKL names -> ldm.modules.diffusionmodules.model Encoder/Decoder names."""
    levels = len(config["block_out_channels"])
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for name, t in sd.items():
        parts = name.split(".")
        leaf = parts[-1]
        top = parts[0]
        if top in ("quant_conv", "post_quant_conv"):
            new = name
        elif parts[1] in ("conv_in", "conv_out"):
            new = name
        elif parts[1] == "conv_norm_out":
            new = f"{top}.norm_out.{leaf}"
        elif parts[1] == "down_blocks":
            i = int(parts[2])
            if parts[3] == "resnets":
                sub = parts[5].replace("conv_shortcut", "nin_shortcut")
                new = f"{top}.down.{i}.block.{parts[4]}.{sub}.{leaf}"
            else:
                new = f"{top}.down.{i}.downsample.conv.{leaf}"
        elif parts[1] == "up_blocks":
            i = levels - 1 - int(parts[2])
            if parts[3] == "resnets":
                sub = parts[5].replace("conv_shortcut", "nin_shortcut")
                new = f"{top}.up.{i}.block.{parts[4]}.{sub}.{leaf}"
            else:
                new = f"{top}.up.{i}.upsample.conv.{leaf}"
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                sub = parts[4].replace("conv_shortcut", "nin_shortcut")
                new = f"{top}.mid.block_{int(parts[3]) + 1}.{sub}.{leaf}"
            else:
                stem = ".".join(parts[4:-1])
                new = f"{top}.mid.attn_1.{attn[stem]}.{leaf}"
                if leaf == "weight" and stem != "group_norm":
                    # The original attention uses 1x1 convolutions.
                    t = t.reshape(*t.shape, 1, 1)
        else:
            raise KeyError(name)
        out["first_stage_model." + new] = t
    return out


def clip_to_ldm(sd):
    """SD 1.x keeps Hugging Face CLIP names under cond_stage_model.transformer."""
    out = {"cond_stage_model.transformer." + k: v for k, v in sd.items()}
    n = sd["text_model.embeddings.position_embedding.weight"].shape[0]
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n).unsqueeze(0)
    return out


def openclip_to_ldm(sd, config, extra_seed):
    """Hugging Face CLIP text names -> OpenCLIP names (SD 2.x), q/k/v fused into in_proj."""
    p = "cond_stage_model.model."
    out = {
        p + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        p + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        p + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        p + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    layers = config["num_hidden_layers"]
    width = config["hidden_size"]
    inter = config["intermediate_size"]
    dtype = sd["text_model.final_layer_norm.weight"].dtype
    for i in range(layers):
        h = f"text_model.encoder.layers.{i}."
        r = f"{p}transformer.resblocks.{i}."
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
                     ("self_attn.out_proj", "attn.out_proj")):
            out[r + b + ".weight"] = sd[h + a + ".weight"]
            out[r + b + ".bias"] = sd[h + a + ".bias"]
        for leaf in ("weight", "bias"):
            out[r + "attn.in_proj_" + leaf] = torch.cat(
                [sd[h + f"self_attn.{x}_proj.{leaf}"] for x in ("q", "k", "v")], dim=0
            ).contiguous()
    # SD 2.x's OpenCLIP has one more block than the diffusers text encoder: the pipeline uses
    # the penultimate layer's output. Give the file that block, with random weights.
    g = torch.Generator().manual_seed(extra_seed)
    r = f"{p}transformer.resblocks.{layers}."
    shapes = {
        "ln_1.weight": [width], "ln_1.bias": [width], "ln_2.weight": [width], "ln_2.bias": [width],
        "attn.in_proj_weight": [3 * width, width], "attn.in_proj_bias": [3 * width],
        "attn.out_proj.weight": [width, width], "attn.out_proj.bias": [width],
        "mlp.c_fc.weight": [inter, width], "mlp.c_fc.bias": [inter],
        "mlp.c_proj.weight": [width, inter], "mlp.c_proj.bias": [width],
    }
    for k, s in shapes.items():
        out[r + k] = torch.randn(s, generator=g).to(dtype)
    out[p + "text_projection"] = torch.randn(width, config["projection_dim"], generator=g).to(dtype)
    out[p + "logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    return out


def ldm_extras(dtype, unet_ldm):
    """What original checkpoints carry besides the three models: schedule buffers, EMA bits."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    out = {
        "betas": betas.to(dtype),
        "alphas_cumprod": alphas_cumprod.to(dtype),
        "alphas_cumprod_prev": torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).to(dtype),
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt().to(dtype),
        "model_ema.decay": torch.tensor(0.9999, dtype=torch.float32),
        "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
    }
    # EMA copies use flattened names ("model_ema.diffusion_modelinput_blocks00weight").
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.bias"):
        flat = "model_ema." + "".join(key.split(".")[1:])
        out[flat] = unet_ldm[key].clone()
    return out


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def build(folder, openclip):
    unet_cfg = read_json(os.path.join(folder, "unet", "config.json"))
    vae_cfg = read_json(os.path.join(folder, "vae", "config.json"))
    te_cfg = read_json(os.path.join(folder, "text_encoder", "config.json"))
    unet = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    vae = load_file(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
    te = load_file(os.path.join(folder, "text_encoder", "model.safetensors"))
    out = {}
    unet_ldm = unet_to_ldm(unet, unet_cfg)
    out.update(unet_ldm)
    out.update(vae_to_ldm(vae, vae_cfg))
    out.update(openclip_to_ldm(te, te_cfg, extra_seed=21) if openclip else clip_to_ldm(te))
    out.update(ldm_extras(unet["conv_in.weight"].dtype, unet_ldm))
    expected = len(unet) + len(vae) + len(te)
    return {k: v.contiguous() for k, v in out.items()}, expected


def config_only_copy(folder, dest):
    """The folder's configs and tokenizer without any weights, so diffusers must use the file."""
    for root, _dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        for f in files:
            if f.endswith((".safetensors", ".bin")):
                continue
            os.makedirs(os.path.join(dest, rel), exist_ok=True)
            shutil.copy(os.path.join(root, f), os.path.join(dest, rel, f))


def verify(path, folder):
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    with tempfile.TemporaryDirectory() as cfg:
        config_only_copy(folder, cfg)
        # Different random init, so a tensor the file failed to provide cannot match by accident.
        torch.manual_seed(12345)
        got = StableDiffusionPipeline.from_single_file(
            path, config=cfg, torch_dtype=torch.float32, local_files_only=True
        )
    checked = 0
    for comp in ("unet", "vae", "text_encoder"):
        a = getattr(ref, comp).state_dict()
        b = getattr(got, comp).state_dict()
        if set(a) != set(b):
            raise SystemExit(f"{path}: {comp} has different tensor names after from_single_file")
        for k in a:
            if a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
                raise SystemExit(f"{path}: {comp}.{k} differs after diffusers' from_single_file")
            checked += 1
    if got.scheduler.config.prediction_type != ref.scheduler.config.prediction_type:
        raise SystemExit(f"{path}: scheduler prediction_type differs")
    return checked


def main():
    import diffusers

    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    for name, openclip in (("tiny-sd", False), ("tiny-sd2", True)):
        folder = os.path.join(REPO, "weights", name)
        path = os.path.join(REPO, "weights", f"{name}.safetensors")
        tensors, n_model = build(folder, openclip)
        save_file(tensors, path, metadata={"format": "pt", "source": f"tools/make_single_files.py from weights/{name}"})
        checked = verify(path, folder)
        if checked != n_model:
            raise SystemExit(f"{path}: checked {checked} tensors, the folder has {n_model}")
        print(f"wrote {path}: {len(tensors)} tensors; diffusers' from_single_file reproduces all {checked} model tensors")


if __name__ == "__main__":
    sys.exit(main())
