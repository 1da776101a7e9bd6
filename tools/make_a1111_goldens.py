"""Reference outputs for A1111's prompt syntax on the tiny models (tests/fixtures/goldens-a1111).

AUTOMATIC1111's web UI reads prompts with its own syntax: emphasis `(x)` ×1.1, `[x]` ÷1.1,
`(x:w)`, escapes, `BREAK`, prompts longer than 75 tokens in chunks (text after a comma near a
chunk's end moves to the next), "Original" emphasis (states × weights, rescaled to the
chunk's mean), prompt editing `[from:to:when]` and alternation `[a|b]`, and a prompt and a
negative prompt of different chunk counts run as separate UNet calls. This script
reimplements those documented semantics independently of sdgen (the schedule grammar is
parsed with lark, as A1111 does), encodes with transformers' text encoders, and runs the
denoising loop with diffusers' UNet, scheduler and VAE, feeding them the embeddings per
step. sdgen's `--prompt-syntax a1111` must match it.

    /work/refenv/bin/python tools/make_a1111_goldens.py [OUT_DIR]   # needs lark (pip install lark)
"""

import argparse
import json
import logging
import os
import re

import lark
import numpy as np
import torch
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 75
BACKTRACK = 20

# ---------------------------------------------------------------- emphasis (documented syntax)

TOKEN_RE = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:",
)
BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text):
    """[(text, weight)], BREAK as ("BREAK", -1)."""
    res, round_open, square_open = [], [], []

    def mul(start, m):
        for p in range(start, len(res)):
            res[p][1] *= m

    for m in TOKEN_RE.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(res))
        elif tok == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            mul(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            mul(round_open.pop(), 1.1)
        elif tok == "]" and square_open:
            mul(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(BREAK_RE.split(tok)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for p in round_open:
        mul(p, 1.1)
    for p in square_open:
        mul(p, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


# ---------------------------------------------------------------- editing / alternation

GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""
PARSER = lark.Lark(GRAMMAR)


def schedules(prompt, steps):
    """[(end_step, text)]: step k (0-based) uses the first entry with k <= end_step."""
    try:
        tree = PARSER.parse(prompt)
    except lark.exceptions.LarkError:
        return [(steps, prompt)]
    ends = [steps]

    class Collect(lark.Visitor):
        def scheduled(self, t):
            s = t.children[-2]
            v = float(s)
            v = v * steps if "." in s else v
            t.children[-2] = min(steps, int(v))
            if t.children[-2] >= 1:
                ends.append(t.children[-2])

        def alternate(self, t):
            ends.extend(range(1, steps + 1))

    Collect().visit(tree)

    def at(step):
        class At(lark.Transformer):
            def scheduled(self, args):
                before, after, _, when, _ = args
                yield before or () if step <= when else after

            def alternate(self, args):
                args = ["" if not a else a for a in args]
                yield args[(step - 1) % len(args)]

            def start(self, args):
                def flat(x):
                    if isinstance(x, str):
                        yield x
                    else:
                        for g in x:
                            yield from flat(g)

                return "".join(flat(args))

            def plain(self, args):
                yield args[0].value

            def __default__(self, data, children, meta):
                for c in children:
                    yield c

        return At().transform(tree)

    return [(t, at(t)) for t in sorted(set(ends))]


def index_at(sched, k):
    for i, (end, _) in enumerate(sched):
        if k <= end:
            return i
    return len(sched) - 1


# ---------------------------------------------------------------- chunks and encoding


def chunk_ids(tokenizer, text):
    """[(ids[77], weights[77])]: pad = the tokenizer's pad token after the end token."""
    comma = tokenizer.get_vocab().get(",</w>")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    parsed = parse_attention(text)
    out, toks, ws, last_comma = [], [], [], -1

    def close():
        nonlocal toks, ws, last_comma
        ids = [bos] + toks + [eos]
        w = [1.0] + ws + [1.0]
        ids += [pad] * (CHUNK + 2 - len(ids))
        w += [1.0] * (CHUNK + 2 - len(w))
        out.append((ids, w))
        toks, ws, last_comma = [], [], -1

    for piece, weight in parsed:
        if piece == "BREAK" and weight == -1:
            close()
            continue
        for t in tokenizer(piece, add_special_tokens=False).input_ids:
            if t == comma:
                last_comma = len(toks)
            elif len(toks) == CHUNK and last_comma != -1 and len(toks) - last_comma <= BACKTRACK:
                moved_t, moved_w = toks[last_comma + 1 :], ws[last_comma + 1 :]
                toks, ws = toks[: last_comma + 1], ws[: last_comma + 1]
                close()
                toks, ws = moved_t, moved_w
            if len(toks) == CHUNK:
                close()
            toks.append(t)
            ws.append(weight)
    if toks or not out:
        close()
    return out


def emphasis(z, w):
    if all(x == 1.0 for x in w):
        return z
    before = z.mean()
    z = z * torch.tensor(w, dtype=z.dtype).reshape(1, -1, 1)
    return z * (before / z.mean())


def encode(pipe, text, sdxl):
    """(states [1, 77k, D], pooled or None, ids per chunk)."""
    chunks = chunk_ids(pipe.tokenizer, text)
    # The second tokenizer chunks the text itself (it splits its pad token "!" out of words,
    # as diffusers' does); if that gives another chunk count, the first's ids are used with
    # its pad token after the end token, as A1111 does.
    chunks2 = chunk_ids(pipe.tokenizer_2, text) if sdxl else None
    states, pooled, all_ids = [], None, []
    with torch.no_grad():
        for n, (ids, w) in enumerate(chunks):
            all_ids.append(ids)
            t = torch.tensor([ids])
            if sdxl:
                h1 = pipe.text_encoder(t, output_hidden_states=True).hidden_states[-2]
                if len(chunks2) == len(chunks):
                    ids2 = chunks2[n][0]
                else:
                    eos = ids.index(pipe.tokenizer.eos_token_id)
                    ids2 = [i if k <= eos else pipe.tokenizer_2.pad_token_id for k, i in enumerate(ids)]
                o2 = pipe.text_encoder_2(torch.tensor([ids2]), output_hidden_states=True)
                if n == 0:
                    pooled = o2.text_embeds
                states.append(torch.cat([emphasis(h1, w), emphasis(o2.hidden_states[-2], w)], dim=-1))
            else:
                states.append(emphasis(pipe.text_encoder(t).last_hidden_state, w))
    return torch.cat(states, dim=1), pooled, all_ids


# ---------------------------------------------------------------- fixtures


def derived_model(name, src):
    """weights/<src>-a1111: <src> with a text encoder whose final layer norm has a non-zero
    bias. A random tiny CLIP's normed states average to ~0, where A1111's mean-restoring
    emphasis divides by ~0; real CLIP states do not. Everything else is a symlink to <src>."""
    from transformers import CLIPTextModel

    out = os.path.join(REPO, "weights", name)
    os.makedirs(out, exist_ok=True)
    for entry in sorted(os.listdir(os.path.join(REPO, "weights", src))):
        if entry == "text_encoder":
            continue
        link = os.path.join(out, entry)
        if not os.path.islink(link):
            os.symlink(os.path.join("..", src, entry), link)
    te = CLIPTextModel.from_pretrained(os.path.join(REPO, "weights", src, "text_encoder"), local_files_only=True)
    dtype = next(te.parameters()).dtype
    with torch.no_grad():
        n = te.text_model.final_layer_norm.bias.numel()
        te.text_model.final_layer_norm.bias.copy_(0.25 + 0.1 * torch.cos(torch.arange(n, dtype=torch.float32)))
    stored = os.path.join(REPO, "weights", src, "text_encoder", "model.safetensors")
    from safetensors import safe_open

    with safe_open(stored, "pt") as f:
        half = f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    (te.half() if half else te.to(dtype)).save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
    return out


# ---------------------------------------------------------------- the loop


def run(pipe, sdxl, prompt, negative, seed, steps, guidance, width, height, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler_base_config)
    sch = pipe.scheduler
    sch.set_timesteps(steps)
    gen = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((1, 4, height // 8, width // 8), generator=gen) * sch.init_noise_sigma
    noise0 = latents.clone()
    cond_s = schedules(prompt, steps)
    uncond_s = schedules(negative, steps)
    enc = {}
    zero_uncond = sdxl and negative == ""

    def embeds(text, is_uncond):
        key = (text, is_uncond)
        if key not in enc:
            e, p, ids = encode(pipe, text, sdxl)
            if is_uncond and zero_uncond:
                e, p = torch.zeros_like(e), (torch.zeros_like(p) if p is not None else None)
            enc[key] = (e, p, ids)
        return enc[key]

    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
    after = []
    with torch.no_grad():
        for k, t in enumerate(sch.timesteps):
            x = sch.scale_model_input(latents, t)
            cu, pu, _ = embeds(uncond_s[index_at(uncond_s, k)][1], True)
            cc, pc, _ = embeds(cond_s[index_at(cond_s, k)][1], False)

            def unet(xx, ctx, pooled, ids):
                extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}} if sdxl else {}
                return pipe.unet(xx, t, encoder_hidden_states=ctx, **extra).sample

            if cu.shape[1] == cc.shape[1]:
                both = unet(
                    torch.cat([x, x]),
                    torch.cat([cu, cc]),
                    torch.cat([pu, pc]) if sdxl else None,
                    torch.cat([time_ids, time_ids]) if sdxl else None,
                )
                eu, ec = both.chunk(2)
            else:
                eu = unet(x, cu, pu, time_ids)
                ec = unet(x, cc, pc, time_ids)
            eps = eu + guidance * (ec - eu)
            latents = sch.step(eps, t, latents, generator=gen).prev_sample
            after.append(latents.clone())
        vae = pipe.vae
        image = vae.decode(latents / vae.config.scaling_factor).sample
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()
    image_u8 = (image.numpy() * 255).round().astype("uint8")
    tensors = {
        "noise": noise0.contiguous(),
        "latents": torch.stack(after).contiguous(),
        "image_u8": torch.from_numpy(image_u8).contiguous(),
    }
    texts = {}
    for n, (key, (e, p, ids)) in enumerate(sorted(enc.items(), key=lambda kv: (kv[0][1], kv[0][0]))):
        tensors[f"embeds_{n}"] = e.contiguous()
        tensors[f"ids_{n}"] = torch.tensor(ids, dtype=torch.int64)
        if p is not None:
            tensors[f"pooled_{n}"] = p.contiguous()
        texts[n] = {"text": key[0], "negative": key[1], "zeros": key[1] and zero_uncond, "chunks": len(ids)}
    return tensors, {
        "cond_schedule": [[e, s] for e, s in cond_s],
        "uncond_schedule": [[e, s] for e, s in uncond_s],
        "encodings": texts,
        "separate_unet_calls": any(
            enc[(uncond_s[index_at(uncond_s, k)][1], True)][0].shape[1]
            != enc[(cond_s[index_at(cond_s, k)][1], False)][0].shape[1]
            for k in range(steps)
        ),
    }


LONG = (
    "an extremely detailed oil painting of a quiet harbour town at dawn, with fishing boats, seagulls, old stone "
    "houses, narrow streets, flower boxes, a lighthouse on the cliff, mist over the water, warm golden light, soft "
    "shadows, reflections in the puddles, a cat sleeping on a windowsill, children playing near the pier, a baker "
    "opening his shop, fresh bread on the counter, bicycles leaning on the walls, and distant mountains covered in snow"
)

CASES = [
    # (id, model, prompt, negative, steps, scheduler)
    ("sd1_emphasis", "tiny-sd-a1111", "a (red:1.5) cube on a [wooden] table, ((studio light))", "(blurry:1.2), lowres", 4, "euler"),
    ("sd1_long", "tiny-sd-a1111", LONG, "blurry", 4, "euler"),
    ("sd1_long_both", "tiny-sd-a1111", LONG + ", (masterpiece:1.3)", LONG, 4, "euler_a"),
    ("sd1_break", "tiny-sd-a1111", "a cat BREAK a (dog:0.8) in the snow", "", 4, "euler"),
    ("sd1_editing", "tiny-sd-a1111", "a [cat:dog:0.5] in a [red|blue] field", "[ugly:3]", 6, "euler"),
    ("sd1_escapes", "tiny-sd-a1111", "a sign saying \\(hello\\) [[unbalanced", "", 4, "euler"),
    ("sd2_emphasis_long", "tiny-sd2-a1111", "(a lighthouse:1.4), " + LONG, "[[low quality]]", 4, "euler"),
    ("sdxl_emphasis", "tiny-sdxl", "a (red:1.5) cube, [wooden] table BREAK studio light", "", 4, "euler"),
    ("sdxl_bangs", "tiny-sdxl", "a (fox:1.2)!! jumping, wow!!!", "ugly!!", 4, "euler"),
    ("sdxl_long_editing", "tiny-sdxl", "[a fox:a wolf:2], " + LONG, "(blurry:1.3)", 4, "euler_a"),
]


def main():
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )
    import diffusers
    import transformers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(REPO, "tests", "fixtures", "goldens-a1111"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    os.makedirs(args.out, exist_ok=True)
    schedulers = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler}
    derived_model("tiny-sd-a1111", "tiny-sd")
    derived_model("tiny-sd2-a1111", "tiny-sd2")
    pipes = {}
    cases = []
    for cid, model, prompt, negative, steps, sname in CASES:
        sdxl = model == "tiny-sdxl"
        if model not in pipes:
            cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
            kw = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
            pipe = cls.from_pretrained(os.path.join(REPO, "weights", model), local_files_only=True, **kw)
            pipe.scheduler_base_config = pipe.scheduler.config
            pipes[model] = pipe
        width, height = 64, 64
        guidance = 5.0 if sdxl else 7.5
        tensors, info = run(pipes[model], sdxl, prompt, negative, 0, steps, guidance, width, height, schedulers[sname])
        save_file(tensors, os.path.join(args.out, f"{cid}.safetensors"), metadata={"format": "pt"})
        cases.append(
            dict(
                id=cid,
                file=f"{cid}.safetensors",
                model=f"weights/{model}",
                prompt=prompt,
                negative_prompt=negative,
                seed=0,
                steps=steps,
                guidance=guidance,
                width=width,
                height=height,
                scheduler="EulerDiscreteScheduler" if sname == "euler" else "EulerAncestralDiscreteScheduler",
                **info,
            )
        )
        print(cid, info["separate_unet_calls"], [e["chunks"] for e in info["encodings"].values()], flush=True)
    index = {
        "generator": "tools/make_a1111_goldens.py",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "lark": lark.__version__},
        "semantics": "A1111 'Original' emphasis, 75-token chunks with comma backtrack 20, BREAK, new-style "
        "editing schedules (when with '.' = fraction of steps), step k uses the first schedule entry with "
        "k <= end; SDXL: both encoders' penultimate states, emphasis per encoder, pooled from chunk 0, empty "
        "negative = zeros; different chunk counts = separate UNet calls",
        "tensors": "noise (initial latents), latents [steps,1,4,h/8,w/8], image_u8 [1,h,w,3]; per encoding n "
        "(see cases[].encodings): embeds_n, ids_n [chunks,77], pooled_n (SDXL)",
        "cases": cases,
    }
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
