#!/usr/bin/env python3
"""Writes the fuzz seed corpora, fuzz/corpus/<target>/seed-*, from the repository's fixtures.

Run from anywhere with plain python3 (no third-party packages): seeds are small on purpose,
so libFuzzer mutates them quickly; they cover each parser's main paths and known edge cases.
"""
import json
import struct
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)


def st_header(path):
    """The tensor names and shapes of a .safetensors file (its JSON header only)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    return {k: v["shape"] for k, v in h.items() if k != "__metadata__"}


def safetensors_bytes(tensors, metadata=None, align=8):
    """A safetensors file from {name: (dtype, shape, bytes)}."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}
    header, data = {}, b""
    for name, (dtype, shape, raw) in sorted(tensors.items()):
        n = sizes[dtype]
        for d in shape:
            n *= d
        raw = raw if raw is not None else bytes(range(256)) * (n // 256 + 1)
        raw = raw[:n]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % align)
    return struct.pack("<Q", len(text)) + text + data


def mini_checkpoint(shapes):
    """An original-layout checkpoint with the same names as `shapes`, every dimension 1 except
    the few the layout detection reads (so it inspects successfully), stored as F16."""
    out = {}
    for k, s in shapes.items():
        small = [1] * len(s)
        if k.endswith("input_blocks.0.0.weight") or k.endswith("out.2.weight"):
            small = [4 if i < 2 else 1 for i in range(len(s))]
        if k.endswith("decoder.conv_in.weight"):
            small = [1, 4, 1, 1][: len(s)]
        if k.endswith("attn.in_proj_weight") or k.endswith("attn.in_proj_bias"):
            small[0] = 3
        out[k] = ("F16", small, None)
    return out


def safetensors_seeds():
    t = "safetensors"
    f32 = {"a.weight": ("F32", [2, 3], None), "a.bias": ("F32", [3], None)}
    write(t, "f32", safetensors_bytes(f32))
    write(t, "dtypes", safetensors_bytes({
        f"t_{d.lower()}": (d, [2, 2], None) for d in ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL"]
    }))
    write(t, "scalar-and-empty", safetensors_bytes({"s": ("F32", [], None), "e": ("F32", [0, 4], None)}))
    write(t, "metadata", safetensors_bytes(f32, {"format": "pt", "note": "x"}))
    write(t, "unaligned", safetensors_bytes({"b": ("U8", [3], None), "c": ("F32", [2], None)}, align=1))
    good = safetensors_bytes(f32)
    write(t, "truncated", good[: len(good) - 5])
    write(t, "header-only", good[: 8 + struct.unpack("<Q", good[:8])[0]])
    write(t, "huge-header-len", struct.pack("<Q", 1 << 62) + good[8:])
    write(t, "empty-header", struct.pack("<Q", 2) + b"{}")
    write(t, "not-json", struct.pack("<Q", 6) + b"{oops}")
    bad = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}}).encode()
    write(t, "offsets-backwards", struct.pack("<Q", len(bad)) + bad + bytes(16))
    bad = json.dumps({"x": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}}).encode()
    write(t, "shape-overflow", struct.pack("<Q", len(bad)) + bad + bytes(4))
    bad = json.dumps({"x": {"dtype": "F32", "shape": [0, 1 << 40, 1 << 40], "data_offsets": [0, 0]}}).encode()
    write(t, "empty-huge-dims", struct.pack("<Q", len(bad)) + bad)
    bad = json.dumps({"x": {"dtype": "F32", "shape": [0, (1 << 63) + 1], "data_offsets": [0, 0]}}).encode()
    write(t, "empty-dim-over-i64", struct.pack("<Q", len(bad)) + bad)
    bad = json.dumps({"x": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    write(t, "exotic-dtype", struct.pack("<Q", len(bad)) + bad + bytes(2))
    for name in ["tiny-sd", "tiny-sd2"]:
        write(t, f"mini-{name}", safetensors_bytes(mini_checkpoint(st_header(ROOT / f"weights/{name}.safetensors"))))


def header_lines(shapes):
    return "".join(f"{k} {' '.join(map(str, v))}\n" for k, v in sorted(shapes.items()))


def ldm_keys_seeds():
    t = "ldm_keys"
    layouts = {
        "sd15": json.loads((ROOT / "tests/fixtures/ldm-layouts/sd15.json").read_text()),
        "sd21": json.loads((ROOT / "tests/fixtures/ldm-layouts/sd21.json").read_text()),
        "tiny-sd": st_header(ROOT / "weights/tiny-sd.safetensors"),
        "tiny-sd2": st_header(ROOT / "weights/tiny-sd2.safetensors"),
    }
    for name, shapes in layouts.items():
        write(t, name, header_lines(shapes))
    tiny, tiny2 = layouts["tiny-sd"], layouts["tiny-sd2"]
    # Variants: each model on its own, a missing level, a foreign key, both text encoders.
    for prefix, name in [("model.diffusion_model.", "unet"), ("first_stage_model.", "vae"), ("cond_stage_model.", "text")]:
        write(t, f"tiny-sd-only-{name}", header_lines({k: v for k, v in tiny.items() if k.startswith(prefix)}))
        write(t, f"tiny-sd-without-{name}", header_lines({k: v for k, v in tiny.items() if not k.startswith(prefix)}))
    write(t, "tiny-sd-no-downsampler", header_lines({k: v for k, v in tiny.items() if ".op." not in k}))
    write(t, "tiny-sd-no-decoder-up0", header_lines({k: v for k, v in tiny.items() if "decoder.up.0." not in k}))
    write(t, "tiny-sd-both-text", header_lines({**tiny, **{k: v for k, v in tiny2.items() if k.startswith("cond")}}))
    extra = dict(tiny)
    extra["conditioner.embedders.0.transformer.x"] = [1]
    write(t, "sdxl-key", header_lines(extra))
    extra = dict(tiny)
    extra["model.diffusion_model.label_emb.0.0.weight"] = [4, 4]
    write(t, "label-emb", header_lines(extra))
    extra = dict(tiny)
    extra["model_ema.decay"] = []
    extra["betas"] = [1000]
    write(t, "ema-and-buffers", header_lines(extra))
    inpaint = dict(tiny)
    s = list(inpaint["model.diffusion_model.input_blocks.0.0.weight"])
    s[1] = 9
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = s
    write(t, "inpainting", header_lines(inpaint))
    write(t, "tiny-sd2-pruned-block", header_lines(
        {k: v for k, v in tiny2.items() if ".resblocks.1." not in k or "resblocks.1" == k}))
    extra = dict(tiny)
    extra["model.diffusion_model.input_blocks.0.1.weight"] = [4]
    write(t, "input-block-0-extra", header_lines(extra))
    wide = {k: ([v[0], 1 << 62] if k.endswith("token_embedding.weight") else v) for k, v in tiny2.items()}
    write(t, "openclip-width-overflow", header_lines(wide))
    write(t, "empty", "")


def batch_seeds():
    t = "batch"
    write(t, "text", "# prompts\na cat\n\n  a dog, oil painting  \n# end\n")
    write(t, "text-bom-crlf", "\ufeffone\r\ntwo\r\n")
    write(t, "jsonl-every-key", (
        '{"prompt": "a", "negative": "blurry", "seed": 7, "steps": 9, "guidance": 3.5, "width": 128, '
        '"height": 96, "scheduler": "ddim", "num_images": 2, "clip_skip": 2}\n# a comment\n'
        '{"prompt": "b", "filename": "bee", "negative": null, "clip_skip": null}\n\n'
        '{"prompt": "c", "num_images": 3, "filename": "cee.png", "seed": 18446744073709551615}\n'))
    write(t, "jsonl-bad", (ROOT / "tests/batch.rs").read_text().split('const BAD_JSONL: &str = r#"')[1].split('"#;')[0])
    write(t, "jsonl-schedulers", "".join(
        json.dumps({"prompt": "p", "scheduler": s}) + "\n"
        for s in ["Euler a", "DPM++ 2M Karras", "dpmpp_2m_karras", "DDIM Karras", "lms", "unipc exponential", ""]))
    write(t, "jsonl-numbers", "".join(json.dumps({"prompt": "p", k: v}) + "\n" for k, v in [
        ("steps", 1e300), ("guidance", -0.0), ("guidance", 1e308), ("width", 4294967296), ("seed", -1),
        ("clip_skip", 0), ("num_images", 0), ("height", 8.0), ("steps", True), ("prompt", ["x"])]))
    write(t, "jsonl-dup-keys", '{"prompt": "a", "prompt": "b"}\n{"prompt": "x", "filename": "x", "filename": "y"}\n')
    write(t, "csv", 'prompt,seed,width,negative,filename\n"a fox, running",5,,,\n# skip me\n\nplain,,256,ugly,plain\n')
    write(t, "csv-multiline", 'prompt,steps\n"line one\nline two",3\n"say ""hi""",4\nshort\na,b,c\n')
    write(t, "csv-bad-header", "prompt,colour,prompt\ncat,red,x\n")
    write(t, "csv-only-header", "seed,steps\n")
    write(t, "csv-filenames", "prompt,filename,num_images\na,x,2\nb,X.PNG,1\nc,.hidden,1\nd,a/b,1\ne,f.jpg,1\n")
    write(t, "empty", "")
    write(t, "unicode", "猫 🐱 ça\u200b\n{\"prompt\": \"\\ud83d\\ude00\"}\n")


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(chunks_before, chunks_after=(), width=1, height=1):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x00" * (3 * width) for _ in range(height))
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    out += b"".join(png_chunk(k, d) for k, d in chunks_before)
    out += png_chunk(b"IDAT", zlib.compress(raw))
    out += b"".join(png_chunk(k, d) for k, d in chunks_after)
    return out + png_chunk(b"IEND", b"")


RECORD = {
    "sdgen_version": "0.1.0",
    "request": {"prompt": "a cat", "negative_prompt": "blurry", "seed": 1234, "steps": 20, "guidance": 7.0,
                "width": 8, "height": 4, "scheduler": "euler_a", "num_images": 1, "clip_skip": 2},
    "model": {"source": "/models/sd15", "name": "v1-5-pruned", "hash": "6ce0161689b3853acaa0", "architecture": "sd1",
              "license": {"name": "CreativeML OpenRAIL-M", "url": "https://example.invalid", "source": "model card"}},
    "scheduler_config": {"_class_name": "EulerAncestralDiscreteScheduler", "beta_end": 0.012},
    "device": "cpu",
    "dtype": "f32",
}

PARAMETERS = ("girl with an artist's beret, determined\nNegative prompt: ugly, fat, (extra_limb)\n"
              "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b")


def png_metadata_seeds():
    t = "png_metadata"
    record = json.dumps(RECORD, separators=(",", ":"))
    write(t, "parameters", PARAMETERS)
    write(t, "parameters-quoted", 'a cat\nSteps: 20, Sampler: "Euler, a", Lora hashes: "x: 1, y: 2", Seed: 1, '
          'Bad: "\\x", Size: 8x8')
    write(t, "parameters-short-last", "a cat\nSteps: 20, Seed: 1")
    write(t, "parameters-multiline", "line one\nline two\nNegative prompt: n1\nn2\nSteps: 1, Sampler: DDIM, Seed: 3")
    write(t, "record-json", record)
    write(t, "record-bad-field", record.replace('"seed":1234', '"seed":-1'))
    write(t, "record-extra-field", record.replace('"num_images":1', '"num_images":1,"bogus":1'))
    write(t, "png-text", png_bytes([(b"tEXt", b"parameters\x00" + PARAMETERS.encode()),
                                    (b"tEXt", b"sdgen\x00" + record.encode())]))
    write(t, "png-ztxt-after-idat", png_bytes([], [(b"zTXt", b"sdgen\x00\x00" + zlib.compress(record.encode()))]))
    write(t, "png-itxt", png_bytes([(b"iTXt", b"sdgen\x00\x00\x00\x00\x00" + record.replace("a cat", "猫").encode())]))
    write(t, "png-itxt-compressed", png_bytes([(b"iTXt", b"sdgen\x00\x01\x00en\x00\x00" + zlib.compress(record.encode()))]))
    write(t, "png-no-text", png_bytes([], width=2, height=2))
    write(t, "png-bad-crc", png_bytes([(b"tEXt", b"sdgen\x00{}")])[:-5] + b"\x00\x00\x00\x00\x00")
    write(t, "png-truncated", png_bytes([(b"tEXt", b"sdgen\x00" + record.encode())])[:60])


def tokenizer_seeds():
    t = "tokenizer"
    cases = json.loads((ROOT / "tests/fixtures/tokenizer_cases.json").read_text())
    prompts = []
    for variant in cases["variants"].values():
        for case in variant["cases"]:
            if case["prompt"] not in prompts:
                prompts.append(case["prompt"])
    for i, p in enumerate(prompts[:30]):
        write(t, f"case-{i:02}", p)
    write(t, "specials", "<|startoftext|>a<|endoftext|> <|ENDOFTEXT|> it's I'LL")
    write(t, "long", "a photo of a cat, " * 20)
    write(t, "mixed-scripts", "Ça va? 猫がいる。 Привет 🐱🏳️‍🌈 \u0345\u0301e\u0301 ﬁ ①②")
    write(t, "controls", "\x00\x01\t\n\r\x7f\u200b\ufeff\ufffd")


if __name__ == "__main__":
    safetensors_seeds()
    ldm_keys_seeds()
    batch_seeds()
    png_metadata_seeds()
    tokenizer_seeds()
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
