"""Write the CLIP BPE tokenizer files (vocab.json, merges.txt, configs) in Hugging Face layout.

The merges come from `bpe_simple_vocab_16e6.txt.gz` in the PyPI package `clip-anytorch`
(MIT licence, see weights/tiny-sd/tokenizer/LICENSE-CLIP). The vocabulary is built from them
the way OpenAI's CLIP does, which gives the same files as openai/clip-vit-large-patch14.

    python tools/make_tokenizer_files.py OUT_DIR [--pad-token '<|endoftext|>']
"""

import argparse
import gzip
import json
import os
import sys
from importlib.util import find_spec

LICENSE_CLIP = """The BPE merges in merges.txt and the vocabulary in vocab.json derive from
bpe_simple_vocab_16e6.txt.gz, shipped by OpenAI's CLIP and by the PyPI package clip-anytorch.

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def byte_symbols():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--pad-token", default="<|endoftext|>")
    args = ap.parse_args()
    spec = find_spec("clip")
    if spec is None:
        sys.exit("clip-anytorch is not installed: pip install --no-deps clip-anytorch==2.6.0")
    bpe = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    syms = byte_symbols()
    vocab = syms + [s + "</w>" for s in syms] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False, sort_keys=False)
    with open(os.path.join(args.out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": args.pad_token,
    }
    with open(os.path.join(args.out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2, sort_keys=True)
        f.write("\n")
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True,
                  clean_up_tokenization_spaces=True, errors="replace", add_prefix_space=False)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(args.out, "LICENSE-CLIP"), "w") as f:
        f.write(LICENSE_CLIP)


if __name__ == "__main__":
    main()
