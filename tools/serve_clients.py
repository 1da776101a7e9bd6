"""Drive a running `sdgen serve` with the real client packages: `webuiapi` (A1111's API) and
`openai` (the images API). Not part of CI, which has no network to install them:

    python3 -m venv /tmp/clients && /tmp/clients/bin/pip install webuiapi openai
    sdgen serve --model weights/tiny-sd --listen 127.0.0.1:7911 &
    /tmp/clients/bin/python tools/serve_clients.py 127.0.0.1 7911

Checked with webuiapi 0.9.17 and openai 3.57.0.
"""
import base64, io, sys
host, port = sys.argv[1], int(sys.argv[2])
import webuiapi
api = webuiapi.WebUIApi(host=host, port=port)
r = api.txt2img(prompt="a red fox", negative_prompt="blurry", seed=5, steps=4, width=64, height=64, cfg_scale=7, sampler_name="Euler a")
print("webuiapi txt2img:", r.image.size, r.info["seed"], r.info["infotexts"][0].splitlines()[-1][:80])
r2 = api.img2img(images=[r.image], prompt="a red fox", seed=5, steps=4, denoising_strength=0.5, width=64, height=64)
print("webuiapi img2img:", r2.image.size)
print("webuiapi samplers:", [s["name"] for s in api.get_samplers()][:4])
print("webuiapi models:", [m["title"] for m in api.get_sd_models()])
print("webuiapi options:", api.get_options()["sd_model_checkpoint"])
print("webuiapi progress:", api.get_progress()["progress"])
from openai import OpenAI
client = OpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused")
res = client.images.generate(prompt="a cat", n=2, size="64x64", response_format="b64_json", model="sdgen")
from PIL import Image
print("openai images.generate:", [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in res.data])
try:
    client.images.generate(prompt="a cat", size="65x64")
except Exception as e:
    print("openai bad size:", type(e).__name__, getattr(e, "body", None))
