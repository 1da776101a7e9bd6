"""Write small LoRA files for the tiny models and record diffusers' outputs with them applied.

LoRA files (tests/fixtures/lora/), random but seeded, for every Linear/Conv2d layer of the
UNet's blocks and of the text encoders:

- `sd_kohya.safetensors` (weights/tiny-sd): kohya names (`lora_unet_…`, `lora_te_…`),
  `lora_down`/`lora_up`/`alpha` (alpha != rank), LoCon convolutions (3x3 down, 1x1 up) for the
  resnets' convolutions and the 1x1 `proj_in`/`proj_out`.
- `sd_peft.safetensors` (weights/tiny-sd): the diffusers/PEFT format as `save_lora_weights`
  writes it (`unet.….lora_A.weight`, `text_encoder.….lora_B.weight`), attention and MLP only;
  no alphas (scale 1).
- `sdxl_kohya.safetensors` (weights/tiny-sdxl): kohya SDXL (`lora_unet_…`, `lora_te1_…`,
  `lora_te2_…`).
- `sd_loha.safetensors`, `sd_lokr.safetensors` (weights/tiny-sd): LyCORIS LoHa
  (`hada_w1_a/b`, `hada_w2_a/b`, `alpha`) and LoKr (`lokr_w1` full with `lokr_w2_a/b` factors,
  and `lokr_w1_a/b` factors with a full `lokr_w2`).
- `sdxl_kohya_ldm.safetensors`: the same with the UNet's modules under their original
  LDM/SGM names (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`, `…_in_layers_2`),
  as kohya's SDXL trainer writes them; diffusers must give the same latents for both.
- `sd_unmatched.safetensors`: kohya names of layers tiny-sd does not have (none apply).

Goldens (tests/fixtures/lora/goldens/<case>.safetensors, index in cases.json): Euler, 4 steps,
seed 0. kohya and PEFT files through diffusers' `load_lora_weights` + `set_adapters(names,
adapter_weights)`; diffusers cannot load LoHa/LoKr, so for those the script merges
ΔW = weight · scale · delta into copies of the model's weights with LyCORIS' formulas (below)
and runs the plain pipeline. Per case: `noise`, `latents` [steps, 1, 4, h/8, w/8] after each
step, `image` (NHWC float) and `image_u8`, as tests/fixtures/goldens.

    /work/refenv/bin/python tools/make_lora_goldens.py     # needs peft (pip install peft)
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import PROMPTS, f32, versions  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "lora")
SD = os.path.join(REPO, "weights", "tiny-sd")
SDXL = os.path.join(REPO, "weights", "tiny-sdxl")
STEPS = 4
SEED = 0
POSITIVE, NEGATIVE = PROMPTS["negative"]
BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


def layers(module, prefix_filter=None):
    """(name, module) of every Linear/Conv2d, in a stable order."""
    out = []
    for name, m in module.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if prefix_filter and not name.startswith(prefix_filter):
            continue
        out.append((name, m))
    return out


def shape_of(m):
    """(out, in, kernel) of a Linear (kernel None) or Conv2d."""
    if isinstance(m, torch.nn.Linear):
        return m.out_features, m.in_features, None
    return m.out_channels, m.in_channels, m.kernel_size


def kohya_pair(g, m, rank, scale=0.25):
    """lora_down/lora_up for one layer: LoCon for convolutions (k x k down, 1x1 up)."""
    out, inn, k = shape_of(m)
    if k is None:
        down = torch.randn(rank, inn, generator=g) * scale
        up = torch.randn(out, rank, generator=g) * scale
    else:
        down = torch.randn(rank, inn, k[0], k[1], generator=g) * scale
        up = torch.randn(out, rank, 1, 1, generator=g) * scale
    return down, up


def kohya_file(pipe, sdxl, seed):
    g = torch.Generator("cpu").manual_seed(seed)
    sd = {}
    rank = 4
    for name, m in layers(pipe.unet):
        if not name.startswith(BLOCKS):
            continue
        down, up = kohya_pair(g, m, rank)
        key = "lora_unet_" + name.replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
        sd[key + ".alpha"] = torch.tensor(2.0)
    encoders = [("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)] if sdxl else [
        ("lora_te_", pipe.text_encoder)
    ]
    for prefix, te in encoders:
        for name, m in layers(te, "text_model.encoder."):
            down, up = kohya_pair(g, m, rank)
            key = prefix + name.replace(".", "_")
            sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
            sd[key + ".alpha"] = torch.tensor(8.0)
    return sd


def ldm_name(name, unet):
    """The original (LDM/SGM) name of a diffusers UNet module, as kohya's SDXL LoRAs use:
    input_blocks.{1 + i·(L+1) + j}.{0 resnet | 1 attention}, input_blocks.{(i+1)·(L+1)}.0.op,
    middle_block.{0, 1, 2}, output_blocks.{i·(L+1) + j}.{0 | 1 | 1 or 2 upsampler}; resnet
    conv1/conv2/time_emb_proj/conv_shortcut are in_layers.2/out_layers.3/emb_layers.1/skip_connection."""
    per = unet.config.layers_per_block + 1
    parts = name.split(".")
    inner = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
             "conv_shortcut": "skip_connection"}
    if parts[0] == "down_blocks":
        i, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            return f"input_blocks.{(i + 1) * per}.0.op"
        j, rest = int(parts[3]), parts[4:]
        block = f"input_blocks.{1 + i * per + j}"
    elif parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        block = "middle_block." + {("resnets", 0): "0", ("attentions", 0): "1", ("resnets", 1): "2"}[(kind, j)]
        if kind == "resnets":
            return block + "." + inner.get(rest[0], rest[0])
        return block + "." + ".".join(rest)
    else:
        i, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":
            has_attn = hasattr(unet.up_blocks[i], "attentions") and unet.up_blocks[i].attentions is not None
            return f"output_blocks.{i * per + per - 1}.{2 if has_attn else 1}.conv"
        j, rest = int(parts[3]), parts[4:]
        block = f"output_blocks.{i * per + j}"
    if kind == "resnets":
        return block + ".0." + inner.get(rest[0], rest[0])
    return block + ".1." + ".".join(rest)


def ldm_kohya_file(pipe, sd):
    """The same LoRA with the UNet's modules under their original (LDM/SGM) names."""
    names = {"lora_unet_" + n.replace(".", "_"): "lora_unet_" + ldm_name(n, pipe.unet).replace(".", "_")
             for n, _ in layers(pipe.unet) if n.startswith(BLOCKS)}
    out = {}
    for k, v in sd.items():
        module, param = k.split(".", 1)
        out[names.get(module, module) + "." + param] = v
    return out


def peft_file(pipe, seed):
    g = torch.Generator("cpu").manual_seed(seed)
    sd = {}
    rank = 2
    for prefix, model, filt in (("unet.", pipe.unet, BLOCKS), ("text_encoder.", pipe.text_encoder, ("text_model.",))):
        for name, m in layers(model):
            if not isinstance(m, torch.nn.Linear) or not name.startswith(filt):
                continue
            if not any(s in name for s in ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "v_proj", "fc1", "ff.net.2")):
                continue
            out, inn, _ = shape_of(m)
            sd[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, inn, generator=g) * 0.3
            sd[f"{prefix}{name}.lora_B.weight"] = torch.randn(out, rank, generator=g) * 0.3
    return sd


def loha_file(pipe, seed):
    """LoHa on the attention projections and the resnets' conv1 (conv: w1a·w1b gives [out, in·k·k])."""
    g = torch.Generator("cpu").manual_seed(seed)
    sd = {}
    rank = 4
    for prefix, model, filt in (("lora_unet_", pipe.unet, BLOCKS), ("lora_te_", pipe.text_encoder, ("text_model.",))):
        for name, m in layers(model):
            if not name.startswith(filt) or not any(s in name for s in ("to_q", "to_v", "q_proj", "fc2", "conv1")):
                continue
            out, inn, k = shape_of(m)
            cols = inn if k is None else inn * k[0] * k[1]
            key = prefix + name.replace(".", "_")
            sd[key + ".hada_w1_a"] = torch.randn(out, rank, generator=g) * 0.4
            sd[key + ".hada_w1_b"] = torch.randn(rank, cols, generator=g) * 0.4
            sd[key + ".hada_w2_a"] = torch.randn(out, rank, generator=g) * 0.4
            sd[key + ".hada_w2_b"] = torch.randn(rank, cols, generator=g) * 0.4
            sd[key + ".alpha"] = torch.tensor(2.0)
    return sd


def lokr_file(pipe, seed):
    """LoKr on linear layers: w1 full [2, 2] with w2 = w2_a·w2_b, or w1 = w1_a·w1_b with w2 full."""
    g = torch.Generator("cpu").manual_seed(seed)
    sd = {}
    rank = 2
    i = 0
    for prefix, model, filt in (("lora_unet_", pipe.unet, BLOCKS), ("lora_te_", pipe.text_encoder, ("text_model.",))):
        for name, m in layers(model):
            if not isinstance(m, torch.nn.Linear) or not name.startswith(filt):
                continue
            if not any(s in name for s in ("to_k", "to_out.0", "k_proj", "fc1", "ff.net.0.proj")):
                continue
            out, inn, _ = shape_of(m)
            if out % 4 or inn % 2:
                continue
            key = prefix + name.replace(".", "_")
            if i % 2 == 0:
                sd[key + ".lokr_w1"] = torch.randn(2, 2, generator=g) * 0.5
                sd[key + ".lokr_w2_a"] = torch.randn(out // 2, rank, generator=g) * 0.5
                sd[key + ".lokr_w2_b"] = torch.randn(rank, inn // 2, generator=g) * 0.5
                sd[key + ".alpha"] = torch.tensor(1.0)
            else:
                sd[key + ".lokr_w1_a"] = torch.randn(4, rank, generator=g) * 0.5
                sd[key + ".lokr_w1_b"] = torch.randn(rank, 2, generator=g) * 0.5
                sd[key + ".lokr_w2"] = torch.randn(out // 4, inn // 2, generator=g) * 0.5
                sd[key + ".alpha"] = torch.tensor(4.0)
            i += 1
    return sd


def lycoris_deltas(sd):
    """{kohya module name: ΔW (weight 1)} by LyCORIS' / A1111's formulas:

    LoHa: ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha/rank, rank = w1_b.shape[0].
    LoKr: w1 = lokr_w1 or w1_a·w1_b, w2 = lokr_w2 or w2_a·w2_b, ΔW = kron(w1, w2) · scale,
    scale = alpha/rank where rank is the inner size of the factored pair (w1_b or w2_b's
    first dimension), 1 when neither is factored or alpha is absent."""
    names = sorted({k.split(".")[0] for k in sd})
    out = {}
    for n in names:
        get = lambda s: sd.get(f"{n}.{s}")  # noqa: E731
        alpha = get("alpha")
        if get("hada_w1_a") is not None:
            rank = get("hada_w1_b").shape[0]
            scale = alpha.item() / rank if alpha is not None else 1.0
            out[n] = (get("hada_w1_a") @ get("hada_w1_b")) * (get("hada_w2_a") @ get("hada_w2_b")) * scale
        else:
            w1 = get("lokr_w1") if get("lokr_w1") is not None else get("lokr_w1_a") @ get("lokr_w1_b")
            w2 = get("lokr_w2") if get("lokr_w2") is not None else get("lokr_w2_a") @ get("lokr_w2_b")
            rank = None
            if get("lokr_w1_b") is not None:
                rank = get("lokr_w1_b").shape[0]
            elif get("lokr_w2_b") is not None:
                rank = get("lokr_w2_b").shape[0]
            scale = alpha.item() / rank if alpha is not None and rank is not None else 1.0
            out[n] = torch.kron(w1, w2) * scale
    return out


def merge(pipe, deltas, weight):
    """Adds weight·ΔW to the named layers in place; returns how many were patched."""
    modules = {}
    for prefix, model in (("lora_unet_", pipe.unet), ("lora_te_", pipe.text_encoder)):
        for name, m in layers(model):
            modules[prefix + name.replace(".", "_")] = m
    with torch.no_grad():
        for n, d in deltas.items():
            m = modules[n]
            m.weight += (weight * d).reshape(m.weight.shape).to(m.weight.dtype)
    return len(deltas)


def run(pipe, width, height, guidance):
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler_base_config)
    after = []

    def on_step(_pipe, _i, _t, kw):
        after.append(kw["latents"].detach().clone())
        return kw

    out = pipe(
        POSITIVE,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        width=width,
        height=height,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
        callback_on_step_end=on_step,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    noise = torch.randn((1, 4, height // 8, width // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    return {
        "noise": noise.contiguous(),
        "latents": torch.stack([f32(s) for s in after]),
        "image": torch.from_numpy(np.ascontiguousarray(out.images)).to(torch.float32).contiguous(),
        "image_u8": torch.from_numpy((out.images * 255).round().astype("uint8")).contiguous(),
    }


def lora_modules(pipe):
    """How many modules carry a LoRA adapter after load_lora_weights, per model."""
    counts = {}
    for label in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, label, None)
        if model is None:
            continue
        counts[label] = sum(1 for _, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)
    return counts


def main():
    from make_goldens import load_pipe
    from make_goldens_sdxl import load_pipe as load_pipe_xl

    os.makedirs(os.path.join(OUT, "goldens"), exist_ok=True)
    sd_pipe = load_pipe(SD)
    xl_pipe = load_pipe_xl(SDXL)
    files = {
        "sd_kohya.safetensors": kohya_file(sd_pipe, False, 1),
        "sd_peft.safetensors": peft_file(sd_pipe, 2),
        "sdxl_kohya.safetensors": kohya_file(xl_pipe, True, 3),
        "sd_loha.safetensors": loha_file(sd_pipe, 4),
        "sd_lokr.safetensors": lokr_file(sd_pipe, 5),
        "sd_unmatched.safetensors": {
            "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 4),
        },
    }
    files["sdxl_kohya_ldm.safetensors"] = ldm_kohya_file(xl_pipe, files["sdxl_kohya.safetensors"])
    # The PEFT file again, with its alphas only in diffusers' `lora_adapter_metadata` header
    # (as `save_lora_weights(..., unet_lora_adapter_metadata=...)` writes them): lora_alpha
    # 8 for the UNet with an alpha_pattern of 4 for the self-attention queries, 1 for the text
    # encoder, rank 2.
    files["sd_peft_alpha.safetensors"] = dict(files["sd_peft.safetensors"])
    header = {}
    for prefix, alpha, pattern in (("unet", 8, {"attn1.to_q": 4}), ("text_encoder", 1, {})):
        targets = sorted({k[len(prefix) + 1:].rsplit(".", 2)[0] for k in files["sd_peft.safetensors"]
                          if k.startswith(prefix + ".")})
        header.update({f"{prefix}.r": 2, f"{prefix}.lora_alpha": alpha, f"{prefix}.target_modules": targets,
                       f"{prefix}.rank_pattern": {}, f"{prefix}.alpha_pattern": pattern})
    modules = {}
    for name, sd in files.items():
        sd = {k: v.to(torch.float32).contiguous() for k, v in sd.items()}
        files[name] = sd
        # One metadata key per file: safetensors writes several in a random order.
        meta = ({"lora_adapter_metadata": json.dumps(header, indent=2, sort_keys=True)}
                if name == "sd_peft_alpha.safetensors" else {"generator": "tools/make_lora_goldens.py"})
        save_file(sd, os.path.join(OUT, name), metadata=meta)
        modules[name] = len({k.rsplit(".", 2)[0] if k.startswith(("unet.", "text_encoder")) else k.split(".")[0]
                             for k in sd})

    cases = []

    def record(cid, pipe, model, loras, width, height, guidance, how, applied):
        t = run(pipe, width, height, guidance)
        save_file(t, os.path.join(OUT, "goldens", cid + ".safetensors"), metadata={"case": cid})
        cases.append({
            "id": cid, "file": f"goldens/{cid}.safetensors", "model": model,
            "loras": [{"file": f, "weight": w} for f, w in loras], "how": how, "applied": applied,
            "prompt": POSITIVE, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "guidance": guidance,
            "scheduler": "EulerDiscreteScheduler", "width": width, "height": height,
        })
        print(cid, applied, flush=True)

    # Without LoRA first, so a test can show that each LoRA changes the picture.
    record("sd_none_64x64", sd_pipe, "weights/tiny-sd", [], 64, 64, 7.5, "plain pipeline", {})

    def diffusers_case(cid, pipe, model, loras, width, height, guidance):
        names = []
        for i, (f, _) in enumerate(loras):
            pipe.load_lora_weights(os.path.join(OUT, f), adapter_name=f"a{i}")
            names.append(f"a{i}")
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
        applied = lora_modules(pipe)
        record(cid, pipe, model, loras, width, height, guidance, "load_lora_weights + set_adapters", applied)
        pipe.unload_lora_weights()

    diffusers_case("sd_kohya_w0.8_64x64", sd_pipe, "weights/tiny-sd", [("sd_kohya.safetensors", 0.8)], 64, 64, 7.5)
    diffusers_case("sd_kohya_w1.0_64x96", sd_pipe, "weights/tiny-sd", [("sd_kohya.safetensors", 1.0)], 64, 96, 7.5)
    diffusers_case("sd_peft_w1.0_64x64", sd_pipe, "weights/tiny-sd", [("sd_peft.safetensors", 1.0)], 64, 64, 7.5)
    diffusers_case("sd_peft_alpha_w1.0_64x64", sd_pipe, "weights/tiny-sd", [("sd_peft_alpha.safetensors", 1.0)], 64,
                   64, 7.5)
    diffusers_case("sd_stack_kohya0.8_peft0.5_64x64", sd_pipe, "weights/tiny-sd",
                   [("sd_kohya.safetensors", 0.8), ("sd_peft.safetensors", 0.5)], 64, 64, 7.5)
    diffusers_case("sdxl_kohya_w0.8_64x96", xl_pipe, "weights/tiny-sdxl", [("sdxl_kohya.safetensors", 0.8)], 64, 96,
                   5.0)
    diffusers_case("sdxl_kohya_ldm_w0.8_64x96", xl_pipe, "weights/tiny-sdxl", [("sdxl_kohya_ldm.safetensors", 0.8)],
                   64, 96, 5.0)
    a = load_file(os.path.join(OUT, "goldens", "sdxl_kohya_w0.8_64x96.safetensors"))
    b = load_file(os.path.join(OUT, "goldens", "sdxl_kohya_ldm_w0.8_64x96.safetensors"))
    if not torch.equal(a["latents"], b["latents"]):
        raise RuntimeError("diffusers gives another result for the LDM-named copy of the SDXL LoRA")

    for cid, f, w in (("sd_loha_w1.0_64x64", "sd_loha.safetensors", 1.0),
                      ("sd_lokr_w0.8_64x64", "sd_lokr.safetensors", 0.8)):
        fresh = load_pipe(SD)
        n = merge(fresh, lycoris_deltas(files[f]), w)
        record(cid, fresh, "weights/tiny-sd", [(f, w)], 64, 64, 7.5,
               "deltas merged into the weights in Python (LyCORIS formulas), plain pipeline", {"merged_modules": n})

    index = {
        "generator": "tools/make_lora_goldens.py",
        "versions": versions(),
        "modules_per_file": modules,
        "lycoris_math": lycoris_deltas.__doc__,
        "kohya_scale": "weight * alpha / rank, rank = lora_down.shape[0]; no alpha: scale 1 (diffusers, A1111)",
        "peft_scale": "weight * lora_alpha / r; files without alphas or metadata: lora_alpha = r (scale 1)",
        "cases": cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
