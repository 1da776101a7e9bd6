"""Goldens for the CLIP text encoder's pooled output (tests/fixtures/clip_pooled.safetensors).

transformers pools the final layer's normed state at the end-of-text token: the first
`eos_token_id` in each row, or the largest id when the config carries the legacy value 2
(SD 1.5's config does). `CLIPTextModelWithProjection` then applies `text_projection`. This
script records, with transformers 4:

- `input_ids` [3, 77] through weights/tiny-sd's text encoder (eos_token_id 49407):
  `pooled_eos`, and with the config's eos_token_id set to 2, `pooled_legacy`; row 0 pads
  with <|endoftext|> (SD 1.x), row 1 with "!" (id 0, SD 2.x), row 2 has no special tokens
  at all (the two rules differ there);
- a tiny `CLIPTextModelWithProjection` (vocab 256, projection_dim 16), saved in
  tests/fixtures/clip_projection/, and its `proj.text_embeds`, `proj.last_hidden_state`
  for `proj.input_ids` [3, 12].

    /work/refenv/bin/python tools/make_clip_pooled_goldens.py           # write (transformers 4)
    /work/refenv5/bin/python tools/make_clip_pooled_goldens.py --check  # transformers 5 agrees
"""

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDENS = os.path.join(REPO, "tests", "fixtures", "clip_pooled.safetensors")
PROJECTION = os.path.join(REPO, "tests", "fixtures", "clip_projection")
TINY = os.path.join(REPO, "weights", "tiny-sd", "text_encoder")


def tiny_ids():
    # "a photograph of an astronaut riding a horse" as CLIP tokenizes it.
    words = [320, 8853, 539, 550, 18376, 6765, 320, 4558]
    eos_pad = [49406] + words + [49407] * (77 - 1 - len(words))
    bang_pad = [49406] + words + [49407] + [0] * (77 - 2 - len(words))
    # No special tokens: legacy argmax picks the largest word id, the eos rule position 0.
    no_eos = [(i * 7919) % 49000 + 10 for i in range(77)]
    return torch.tensor([eos_pad, bang_pad, no_eos], dtype=torch.int64)


def projection_ids():
    eos_pad = [254, 17, 42, 9, 255] + [255] * 7
    bang_pad = [254, 3, 200, 77, 31, 255] + [0] * 6
    no_eos = [(i * 37) % 250 + 1 for i in range(12)]
    return torch.tensor([eos_pad, bang_pad, no_eos], dtype=torch.int64)


def build_projection_model():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(5)
    config = CLIPTextConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="quick_gelu",
        vocab_size=256,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=254,
        eos_token_id=255,
        pad_token_id=255,
        layer_norm_eps=1e-5,
    )
    return CLIPTextModelWithProjection(config)


def compute(projection_dir):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out = {}
    ids = tiny_ids()
    out["input_ids"] = ids
    with torch.no_grad():
        model = CLIPTextModel.from_pretrained(TINY).eval()
        assert model.config.eos_token_id == 49407
        r = model(ids)
        out["last_hidden_state"] = r.last_hidden_state
        out["pooled_eos"] = r.pooler_output
        legacy = CLIPTextConfig.from_pretrained(TINY, eos_token_id=2)
        model = CLIPTextModel.from_pretrained(TINY, config=legacy).eval()
        out["pooled_legacy"] = model(ids).pooler_output
        pids = projection_ids()
        out["proj.input_ids"] = pids
        proj = CLIPTextModelWithProjection.from_pretrained(projection_dir).eval()
        r = proj(pids)
        out["proj.text_embeds"] = r.text_embeds
        out["proj.last_hidden_state"] = r.last_hidden_state
    # The rules must differ on row 2 (no end-of-text token), or the test proves nothing.
    assert not torch.allclose(out["pooled_eos"][2], out["pooled_legacy"][2])
    assert torch.equal(out["pooled_eos"][:2], out["pooled_legacy"][:2])
    return {k: v.contiguous() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored goldens instead of writing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import transformers
    from safetensors.torch import load_file, save_file

    if args.check:
        want = load_file(GOLDENS)
        got = compute(PROJECTION)
        worst = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
        print(f"transformers {transformers.__version__}: max abs diff from the goldens {worst:.3e}")
        sys.exit(0 if worst <= 1e-6 else 1)

    if int(transformers.__version__.split(".")[0]) != 4:
        sys.exit("write the goldens with transformers 4 (the reference environment); use --check with 5")
    os.makedirs(PROJECTION, exist_ok=True)
    build_projection_model().save_pretrained(PROJECTION, safe_serialization=True)
    save_file(compute(PROJECTION), GOLDENS)
    print(f"wrote {GOLDENS} and {PROJECTION} with transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
