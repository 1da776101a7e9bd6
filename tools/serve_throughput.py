"""Images per minute from a running `sdgen serve`: one client in a row, then 8 at once (their
requests share UNet batches). Standard library only:

    sdgen serve --model weights/tiny-sd --listen 127.0.0.1:7911 &
    python3 tools/serve_throughput.py http://127.0.0.1:7911
"""
import json, sys, time, threading, urllib.request
base = sys.argv[1]
def one(seed):
    body = json.dumps({"prompt": "a red fox in the snow", "seed": seed, "steps": 20, "width": 128, "height": 128, "sampler_name": "Euler a", "cfg_scale": 7}).encode()
    r = urllib.request.urlopen(urllib.request.Request(base + "/sdapi/v1/txt2img", body, {"Content-Type": "application/json"}), timeout=600)
    return len(json.loads(r.read())["images"])
def run(clients, per_client):
    count = [0]
    def worker(c):
        for i in range(per_client):
            n = one(c * 1000 + i); count[0] += n
    t = time.time()
    ths = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    [x.start() for x in ths]; [x.join() for x in ths]
    dt = time.time() - t
    return count[0], dt
one(0)  # warm up
for clients, per in [(1, 16), (8, 2)]:
    n, dt = run(clients, per)
    print(f"{clients} client(s): {n} images in {dt:.1f}s = {60*n/dt:.1f} images/min")
