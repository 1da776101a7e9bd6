"""Write tests/fixtures/tokenizer_cases.json: prompts and the ids transformers' CLIPTokenizer
gives them, for the SD 1.x tokenizer (pad `<|endoftext|>`) and an SD 2.x-style copy whose pad
token is `!`.

Each case holds the ids exactly as diffusers' encode_prompt builds them (padding to
model_max_length, truncation) and, when the prompt is too long, the text diffusers reports as
removed in its truncation warning.

    /work/main/.venv-ref/bin/python tools/make_tokenizer_goldens.py

ftfy must NOT be importable: the reference environment lacks it, so transformers cleans text
with its BasicTokenizer, and that is the behaviour sdgen reproduces.
"""

import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "weights", "tiny-sd", "tokenizer")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer_cases.json")

LONG = "a photograph of an astronaut riding a horse on the moon, highly detailed, 8k, " * 6
CASES = [
    "",
    " ",
    "   \t\n  ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "  leading and trailing spaces  ",
    "multiple     spaces\tand\ttabs\nand\nnewlines\r\nCRLF",
    "hello, world!!! what?!... yes;;; (no) [maybe] {ok}",
    "!!!!!!!!",
    "wow! amazing!",
    "a!b!c",
    "cafe\u0301 na\u0308ive re\u0301sume\u0301",  # NFD accents
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9",  # NFC accents
    "\u00c9COLE \u00c0 PARIS \u00d1and\u00da",
    "Stra\u00dfe GROSSE \u1e9e",
    "\u0130stanbul \u0131s\u0131k",
    "\u03a3\u0391\u03a3 \u039f\u0394\u039f\u03a3 \u03c3\u03c2",
    "\u0423\u043a\u0440\u0430\u0457\u043d\u0430 \u041c\u043e\u0441\u043a\u0432\u0430",
    "\U0001f600 \U0001f680\U0001f31f a cat \U0001f431",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
    "\u2764\ufe0f love",
    "\U0001f44d\U0001f3fd thumbs",
    "\u732b\u304c\u597d\u304d cat",
    "\u4e00\u5e45\u5c71\u6c34\u753b",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a",
    "\uf900\uf901 compat",
    "\U00020000\U0002a700 ext",
    "1234567890 3.14159 1,000,000",
    "\u0661\u0662\u0663 \u00bd \u2167 \u2460",
    "it's don't they're we've I'm you'll he'd",
    "IT'S DON'T THEY'RE",
    "\u017fs '\u017f it'\u017f",
    "a\u0345b \u1fb3 \u0399\u0345",
    "<|\u017ftartoftext|> <|startoftext|>",
    "rock'n'roll o'clock ''quoted''",
    "`backtick` \"double\" \u2018curly\u2019 \u201cquotes\u201d",
    "tab\tseparated\u000bvertical\u000cformfeed",
    "null\u0000char bell\u0007 esc\u001b del\u007f",
    "zero\u200bwidth\u200cjoiner\u200d soft\u00adhyphen \ufeffbom",
    "nbsp\u00a0here ideographic\u3000space thin\u2009space",
    "line\u2028separator para\u2029graph next\u0085line",
    "private\ue000use \U000f0000",
    "replacement\ufffdchar",
    "unassigned\u0378char",
    "combining q\u0303 a\u20dd",
    "<|endoftext|>",
    "a cat <|endoftext|> a dog",
    "<|startoftext|>hello<|endoftext|>",
    "<|ENDOFTEXT|> upper special",
    "<|endoftext",
    "(masterpiece:1.2), (best quality), [[ugly]], {detailed}",
    "(word:1.2) AND (other:0.8) BREAK next",
    "a_b-c/d\\e|f@g#h$i%j^k&l*m+n=o~p",
    "<lora:foo:0.7> embedding:bar",
    "https://example.com/path?x=1&y=2",
    "email@example.com #hashtag @mention",
    "cat cat cat cat cat cat cat cat cat cat",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 200,
    "hello" + "!" * 100,
    " ".join(["word"] * 75),
    " ".join(["word"] * 76),
    " ".join(["word"] * 74) + " \u732b",
    LONG,
    LONG.replace(",", " ! "),
    ("a red car, " * 30) + "<|endoftext|> tail",
    "\u00c5ngstr\u00f6m \u212b \u212a kelvin",
    "\ufb01 ligature \u2460 circled \uff21\uff22\uff23 fullwidth",
]


def golden(tok, prompt):
    enc = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True)
    ids = enc.input_ids
    untruncated = tok(prompt, padding="longest").input_ids
    removed = None
    if len(untruncated) >= len(ids) and untruncated != ids:
        removed = tok.batch_decode([untruncated[tok.model_max_length - 1 : -1]])[0]
    return {"ids": ids, "removed_text": removed}


def main():
    try:
        import ftfy  # noqa: F401

        sys.exit("ftfy is installed; the reference behaviour is transformers without ftfy")
    except ImportError:
        pass
    from transformers import CLIPTokenizer

    out = {"tokenizer": "weights/tiny-sd/tokenizer", "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bang = os.path.join(tmp, "tokenizer")
        shutil.copytree(TOKENIZER, bang)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(bang, name)
            with open(path) as f:
                cfg = json.load(f)
            cfg["pad_token"] = "!"
            with open(path, "w") as f:
                json.dump(cfg, f, indent=2, sort_keys=True)
        for variant, folder in (("pad_endoftext", TOKENIZER), ("pad_bang", bang)):
            tok = CLIPTokenizer.from_pretrained(folder)
            assert tok.model_max_length == 77
            out["variants"][variant] = {
                "pad_token": tok.pad_token,
                "pad_id": tok.pad_token_id,
                "cases": [dict(prompt=p, **golden(tok, p)) for p in CASES],
            }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(CASES)} prompts x {len(out['variants'])} variants")


if __name__ == "__main__":
    main()
