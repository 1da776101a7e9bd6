"""Write tests/fixtures/clip_gelu.safetensors: transformers' CLIPTextModel output with
`hidden_act: "gelu"` (SD 2.x's OpenCLIP in diffusers layout), for the tiny text encoder's
weights with only that config field changed.

    /work/main/.venv-ref/bin/python tools/make_clip_gelu_goldens.py

tests/fixtures/goldens covers quick_gelu (SD 1.x); this covers the other activation.
"""

import os

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "weights", "tiny-sd", "text_encoder")
OUT = os.path.join(ROOT, "tests", "fixtures", "clip_gelu.safetensors")


def main():
    torch.set_num_threads(1)
    cfg = CLIPTextConfig.from_pretrained(SRC)
    assert cfg.hidden_act == "quick_gelu"
    cfg.hidden_act = "gelu"
    model = CLIPTextModel.from_pretrained(SRC, config=cfg).eval()
    g = torch.Generator("cpu").manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size - 2, (2, 77), generator=g)
    ids[:, 0] = 49406
    ids[0, 20:] = 49407
    ids[1, 60:] = 49407
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    save_file(
        {
            "input_ids": ids.contiguous(),
            "last_hidden_state": out.last_hidden_state.contiguous(),
            "clip_skip_1": model.text_model.final_layer_norm(out.hidden_states[-2]).detach().contiguous(),
        },
        OUT,
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
