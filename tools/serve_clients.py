"""Drive a running `sdgen serve` with the real client packages: `webuiapi` (A1111's API) and
`openai` (the images API), checking what they get back; exits non-zero on any mismatch.
tools/test.sh installs both into a throwaway venv (target/clients-venv) and
tests/serve.rs::real_clients_drive_the_server runs this script against a live server:

    python3 -m venv /tmp/clients && /tmp/clients/bin/pip install webuiapi==0.9.17 openai==3.57.0
    sdgen serve --model weights/tiny-sd --listen 127.0.0.1:7911 &
    /tmp/clients/bin/python tools/serve_clients.py 127.0.0.1 7911
"""
import base64
import io
import sys

host, port = sys.argv[1], int(sys.argv[2])

import webuiapi  # noqa: E402
from openai import BadRequestError, OpenAI  # noqa: E402
from PIL import Image  # noqa: E402

api = webuiapi.WebUIApi(host=host, port=port)
r = api.txt2img(
    prompt="a red fox", negative_prompt="blurry", seed=5, steps=4, width=64, height=64, cfg_scale=7,
    sampler_name="Euler a",
)
assert r.image.size == (64, 64), r.image.size
assert r.info["seed"] == 5, r.info
assert "Steps: 4" in r.info["infotexts"][0] and "Sampler: Euler a" in r.info["infotexts"][0], r.info
print("webuiapi txt2img:", r.image.size, r.info["infotexts"][0].splitlines()[-1][:80])
r2 = api.img2img(images=[r.image], prompt="a red fox", seed=5, steps=4, denoising_strength=0.5, width=64, height=64)
assert r2.image.size == (64, 64), r2.image.size
assert "Denoising strength: 0.5" in r2.info["infotexts"][0], r2.info
samplers = [s["name"] for s in api.get_samplers()]
assert "Euler a" in samplers and "DPM++ 2M" in samplers, samplers
models = [m["title"] for m in api.get_sd_models()]
assert models, models
assert api.get_options()["sd_model_checkpoint"] in models
assert 0.0 <= api.get_progress()["progress"] <= 1.0
print("webuiapi img2img, samplers, models, options, progress: ok")

client = OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused")
res = client.images.generate(prompt="a cat", n=2, size="64x64", response_format="b64_json", model="sdgen")
sizes = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in res.data]
assert sizes == [(64, 64), (64, 64)], sizes
print("openai images.generate:", sizes)
try:
    client.images.generate(prompt="a cat", size="65x64")
    sys.exit("openai: a 65x64 size was accepted")
except BadRequestError as e:
    assert e.status_code == 400 and "size" in str(e.body), e.body
    print("openai bad size: 400 naming size")
print("all client checks passed")
