"""Write tiny textual-inversion embeddings and record diffusers' outputs with them as goldens.

Embeddings (tests/fixtures/embeddings/), random vectors for the tiny models' text encoders:

    sd1/tinystyle.safetensors      A1111, `emb_params` [1, 32]             token: the file name
    sd1/tinyneg.safetensors        A1111, `string_to_param.*` [2, 32]       token: the file name
    sd1/tinytriple.safetensors     A1111, `emb_params` [3, 32] (3 vectors)  token: the file name
    sd1/learned_embeds.safetensors diffusers, `<cat-toy>` [32]              token: the stored key
    sdxl/tinyxl.safetensors        A1111 SDXL, `clip_l` [2, 32] + `clip_g` [2, 48]
    sdxl/tinyxlneg.safetensors     A1111 SDXL, `clip_l` [1, 32] + `clip_g` [1, 48]

Goldens (tests/fixtures/goldens-embeddings/): diffusers' `load_textual_inversion` puts them in
the pipelines (SD: all four files, in the order above, the A1111 ones with `token=` their file
name; SDXL: `clip_l` into text_encoder/tokenizer and `clip_g` into text_encoder_2/tokenizer_2,
as diffusers documents), then Euler runs 4 steps at 64x64 with the tokens in the prompt and
the negative prompt; stored as tools/make_goldens.py stores its cases (token ids, text
embeddings, noise, latents after every step, image). See the README beside the goldens.

    /work/refenv/bin/python tools/make_embedding_goldens.py
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as sd  # noqa: E402
import make_goldens_sdxl as xl  # noqa: E402

REPO = sd.REPO
EMB = os.path.join(REPO, "tests", "fixtures", "embeddings")
OUT = os.path.join(REPO, "tests", "fixtures", "goldens-embeddings")
STEPS = 4
SIZE = 64

# (file, stored tensors' shapes, how diffusers is told the token). Vectors are N(0, 0.05²):
# wider than the tiny vocabulary's N(0, 0.02²), as trained embeddings are.
SD1 = [
    ("tinystyle.safetensors", {"emb_params": (1, 32)}, "stem"),
    ("tinyneg.safetensors", {"string_to_param.*": (2, 32)}, "stem"),
    ("tinytriple.safetensors", {"emb_params": (3, 32)}, "stem"),
    ("learned_embeds.safetensors", {"<cat-toy>": (32,)}, "key"),
]
SDXL = [
    ("tinyxl.safetensors", {"clip_l": (2, 32), "clip_g": (2, 48)}),
    ("tinyxlneg.safetensors", {"clip_l": (1, 32), "clip_g": (1, 48)}),
]

SD1_CASES = [
    # id, prompt, negative, seed
    ("tokens_s0", "a photo of <cat-toy> in tinystyle", "tinyneg, blurry", 0),
    ("multi_vector_s42", "tinytriple, a castle on a hill", "tinyneg", 42),
    # Added tokens are cut out before BPE, even inside a word; a token may repeat.
    ("glued_s1", "a tinytriple-style<cat-toy>backpack, tinystyle tinystyle", "lowres tinyneg", 1),
    # Near the 77-token limit: the 3-vector token expands before truncation, which cuts its last vector.
    ("truncated_s2", " ".join(["red"] * 73) + " tinytriple tinystyle", None, 2),
]
SDXL_CASES = [
    ("xl_tokens", "a photo of tinyxl on a table", "tinyxlneg"),
    # No negative prompt: zeros (force_zeros_for_empty_prompt).
    ("xl_no_negative", "tinyxl, a red house", None),
]


def tensors(shapes, seed):
    g = torch.Generator("cpu").manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.05).contiguous() for k, s in shapes.items()}


def write_embeddings():
    os.makedirs(os.path.join(EMB, "sd1"), exist_ok=True)
    os.makedirs(os.path.join(EMB, "sdxl"), exist_ok=True)
    for i, (name, shapes, _) in enumerate(SD1):
        save_file(tensors(shapes, 100 + i), os.path.join(EMB, "sd1", name))
    for i, (name, shapes) in enumerate(SDXL):
        save_file(tensors(shapes, 200 + i), os.path.join(EMB, "sdxl", name))


def added_ids(tokenizer):
    """The tokens load_textual_inversion added (multi-vector ones as `tok`, `tok_1`, ...), by id."""
    return {t: i for t, i in sorted(tokenizer.added_tokens_encoder.items(), key=lambda kv: kv[1]) if i >= 49408}


def sd1_goldens(cases_out):
    pipe = sd.load_pipe()
    from diffusers import EulerDiscreteScheduler

    tokens = []
    for name, shapes, how in SD1:
        path = os.path.join(EMB, "sd1", name)
        if how == "stem":
            token = os.path.splitext(name)[0]
            pipe.load_textual_inversion(path, token=token)
        else:
            (token,) = shapes
            pipe.load_textual_inversion(path)
        tokens.append({"file": f"tests/fixtures/embeddings/sd1/{name}", "token": token})
    ids = added_ids(pipe.tokenizer)
    for case_id, prompt, negative, seed in SD1_CASES:
        t, config, init_sigma = sd.run_case(
            pipe, EulerDiscreteScheduler, prompt, negative, seed, SIZE, SIZE, steps=STEPS
        )
        save_file(t, os.path.join(OUT, f"{case_id}.safetensors"), metadata={"case": case_id})
        cases_out.append(
            {
                "id": case_id,
                "model": "weights/tiny-sd",
                "embeddings": tokens,
                "added_tokens": ids,
                "file": f"{case_id}.safetensors",
                "prompt": prompt,
                "negative_prompt": negative,
                "seed": seed,
                "width": SIZE,
                "height": SIZE,
                "scheduler": "EulerDiscreteScheduler",
                "scheduler_config": config,
                "init_noise_sigma": init_sigma,
                "steps": STEPS,
                "guidance": sd.GUIDANCE,
            }
        )
        print(case_id, flush=True)


def sdxl_goldens(cases_out):
    import diffusers

    pipe = xl.load_pipe()
    tokens = []
    for name, _ in SDXL:
        path = os.path.join(EMB, "sdxl", name)
        token = os.path.splitext(name)[0]
        state = load_file(path)
        # As diffusers' docs load A1111 SDXL embeddings: clip_g into the second encoder.
        pipe.load_textual_inversion(
            state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
        )
        pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        tokens.append({"file": f"tests/fixtures/embeddings/sdxl/{name}", "token": token})
    ids, ids_2 = added_ids(pipe.tokenizer), added_ids(pipe.tokenizer_2)
    classes = {"EulerDiscreteScheduler": diffusers.EulerDiscreteScheduler}
    for case_id, prompt, negative in SDXL_CASES:
        c = xl.case(case_id, "EulerDiscreteScheduler", prompt, negative, size=(SIZE, SIZE), steps=STEPS)
        t, entry = xl.run_case(pipe, c, classes)
        save_file(t, os.path.join(OUT, entry["file"]), metadata={"case": case_id})
        entry.update({"model": "weights/tiny-sdxl", "embeddings": tokens, "added_tokens": ids, "added_tokens_2": ids_2})
        cases_out.append(entry)
        print(case_id, flush=True)


def main():
    os.makedirs(OUT, exist_ok=True)
    write_embeddings()
    cases = []
    sd1_goldens(cases)
    sdxl_goldens(cases)
    index = {
        "generator": "tools/make_embedding_goldens.py",
        "versions": sd.versions(),
        "device": "cpu",
        "dtype": "float32",
        "loading": "SD: pipe.load_textual_inversion(file, token=<file stem>) for A1111 files, "
        "pipe.load_textual_inversion(file) for diffusers' learned_embeds (token = its key), in the order "
        "listed; SDXL: load_textual_inversion(clip_g, token, text_encoder_2, tokenizer_2) then (clip_l, token, "
        "text_encoder, tokenizer). A token of N vectors becomes the added tokens tok, tok_1 .. tok_{N-1} "
        "(ids from 49408 in loading order) and maybe_convert_prompt expands it in prompts before tokenizing",
        "pooling": "tiny-sdxl's encoders have the legacy eos_token_id 2, so transformers pools at the largest "
        "id (argmax of input_ids): with an added token in the prompt, at the last added token's position",
        "noise": "torch.Generator('cpu').manual_seed(seed); torch.randn([1,4,h/8,w/8], float32)",
        "latents": "latents[i] = scheduler output after step i, shape [steps,1,4,h/8,w/8]",
        "image": "output_type='np', NHWC float32; image_u8 = (image*255).round() as uint8",
        "cases": cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
