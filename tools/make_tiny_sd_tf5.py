"""Save the tiny SD 1.x model's text encoder and tokenizer as transformers 5 does (weights/tiny-sd-tf5).

transformers 5 writes a freshly built `CLIPTextModel` without the `text_model.` prefix
(`embeddings.…`, `encoder.layers.…`, `final_layer_norm.…`) and a tokenizer as
`tokenizer.json` + `tokenizer_config.json` only (no vocab.json/merges.txt). Every model made
with current transformers looks like this, so sdgen must read it. This script takes the
weights of an existing tiny-sd folder (made by tools/make_tiny_sd.py with transformers 4),
puts them into a fresh transformers-5 `CLIPTextModel` and saves it, and saves the tokenizer
through transformers 5's `CLIPTokenizer`. The UNet and the VAE are the same files: relative
symlinks to SRC's, so the fixture adds only the text encoder and the tokenizer to the repo.

    /work/refenv5/bin/python tools/make_tiny_sd_tf5.py [SRC] [OUT]   # weights/tiny-sd weights/tiny-sd-tf5

Needs transformers 5 (torch and safetensors as for make_tiny_sd.py); nothing is downloaded.
tools/make_tiny_sd.py --tf5-python PY runs it after building SRC.
"""

import argparse
import os
import shutil
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_CARD = """---
license: creativeml-openrail-m
tags:
- stable-diffusion
- testing
library_name: diffusers
---

# tiny-sd-tf5: tiny-sd as saved with transformers 5

The same tiny random Stable Diffusion 1.x as `../tiny-sd` (same weights, same goldens), with
its text encoder and tokenizer saved by transformers {version}, which writes them in another
layout than transformers 4:

| component | layout |
|---|---|
| text_encoder | `CLIPTextModel` tensors without the `text_model.` prefix (`embeddings.…`, `encoder.layers.…`, `final_layer_norm.…`) |
| tokenizer | `tokenizer.json` + `tokenizer_config.json` only; the BPE is CLIP's (see tokenizer/LICENSE-CLIP, MIT) |
| unet, vae | symlinks to `../tiny-sd/` |
| scheduler | a copy of `../tiny-sd/scheduler` |

This is **not a useful image model**; it exists so that sdgen's tests load both layouts.

## Regenerate

    /work/refenv5/bin/python tools/make_tiny_sd_tf5.py weights/tiny-sd weights/tiny-sd-tf5

(transformers {version}, tokenizers {tokenizers}, torch {torch}). The output is reproducible;
compare `sha256sum` of every file after a rebuild.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", nargs="?", default=os.path.join(REPO, "weights", "tiny-sd"))
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "weights", "tiny-sd-tf5"))
    args = ap.parse_args()

    import tokenizers
    import transformers
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if int(transformers.__version__.split(".")[0]) < 5:
        sys.exit(f"needs transformers 5, this Python has {transformers.__version__}")
    torch.set_num_threads(1)
    src, out = args.src, args.out
    os.makedirs(out, exist_ok=True)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        path = os.path.join(out, sub)
        if os.path.islink(path):
            os.remove(path)
        else:
            shutil.rmtree(path, ignore_errors=True)

    # A model built here (not loaded) is saved in transformers 5's own layout; one loaded
    # from a transformers 4 folder would be written back with the old names.
    config = CLIPTextConfig.from_pretrained(os.path.join(src, "text_encoder"))
    model = CLIPTextModel(config)
    state = load_file(os.path.join(src, "text_encoder", "model.safetensors"))
    model.load_state_dict({k.removeprefix("text_model."): v for k, v in state.items()}, strict=True)
    model.save_pretrained(os.path.join(out, "text_encoder"))
    with safe_open(os.path.join(out, "text_encoder", "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        if any(k.startswith("text_model.") for k in keys) or "embeddings.token_embedding.weight" not in keys:
            sys.exit(f"transformers {transformers.__version__} did not save the bare layout: {sorted(keys)[:3]}")
        for k in keys:
            if not torch.equal(f.get_tensor(k), state["text_model." + k]):
                sys.exit(f"tensor {k} changed on the way")

    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(src, "tokenizer"))
    tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
    saved = sorted(os.listdir(os.path.join(out, "tokenizer")))
    if saved != ["tokenizer.json", "tokenizer_config.json"]:
        sys.exit(f"unexpected tokenizer files from transformers {transformers.__version__}: {saved}")
    shutil.copy(os.path.join(src, "tokenizer", "LICENSE-CLIP"), os.path.join(out, "tokenizer", "LICENSE-CLIP"))

    for sub in ("unet", "vae"):
        os.symlink(os.path.relpath(os.path.join(src, sub), out), os.path.join(out, sub))
    shutil.copytree(os.path.join(src, "scheduler"), os.path.join(out, "scheduler"))
    shutil.copy(os.path.join(src, "model_index.json"), os.path.join(out, "model_index.json"))
    for root, _, files in os.walk(out):
        for name in files:
            # save_pretrained writes weights with mode 0600; keep the tree readable like SRC.
            os.chmod(os.path.join(root, name), 0o644)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            MODEL_CARD.format(
                version=transformers.__version__, tokenizers=tokenizers.__version__, torch=torch.__version__
            )
        )
    print(f"wrote {out} from {src} with transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
