#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and Python torch 2.11 (no Rust, no internet), in
# one call of about 8 minutes (BUDGET_S, default 500 s: secondary runs are skipped, saying
# so, when the budget is spent). Run it with a 600 s limit.
#
# Needs, carried from the build machine (tools/build_gpu.sh makes both):
#   .gpu/sdgen   a release binary built against a CUDA libtorch 2.11, with the CUDA shim
#   .whl/        wheels for diffusers 0.36.0, transformers 4.57.6, tokenizers 0.22.2,
#                huggingface_hub 0.36.2, importlib_metadata (Python 3.12)
#
# 1. sdgen info: CUDA and the shim (CUDA graphs) must be usable.
# 2. Correctness on the tiny models: CUDA against the diffusers goldens (fp32 and fp16, with
#    graphs on and off, channels-last, fp16 accumulation), graphs on against off (the same
#    kernels: at most 1 level apart), the tiny SDXL UNet (added conditioning) through a
#    graph, CUDA against the CPU from the same seed.
# 3. An SD 1.5-architecture model with random weights (fp16), then tools/bench.sh against
#    diffusers at 512x512, 20 steps: batch 1 and 4, sdgen's options one by one, per-op
#    profiles (libtorch's profiler: graphs, no graphs, channels-last), peak VRAM with
#    VAE tiling, diffusers with torch.compile; then SDXL 1024x1024 (tools/make_sdxl_random.py)
#    when the budget allows.
#
# Every failed check prints "!!! FAILED" at once; the script ends with the list of them and
# exits 1 if there is any. Set SDGEN, WORK, BUDGET_S to override the defaults. The device
# tool carries at most 64 MiB with the working tree, which is ~190 MiB whole: first
# `tools/gpu_tree.sh slim` (sparse checkout; `tools/gpu_tree.sh full` after), then carry
# [".gpu/sdgen.xz", ".whl"], timeout_s 600, command
#   set -o pipefail; tools/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log
# (the reply keeps only the output's last 12,000 characters; the log comes back whole).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
start=$SECONDS
budget=${BUDGET_S:-500}
failed=()
fail() {
    echo "!!! FAILED: $*"
    failed+=("$*")
}
notes=()
note() {
    echo "--- note: $*"
    notes+=("$*")
}
# Seconds of the budget left.
left() { echo $((budget - (SECONDS - start))); }
finish() {
    echo "=== done in $((SECONDS - start)) s"
    for n in ${notes[@]+"${notes[@]}"}; do echo "note: $n"; done
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "=== ${#failed[@]} check(s) FAILED:"
        printf '  - %s\n' "${failed[@]}"
        exit 1
    fi
    echo "=== all checks passed"
    exit 0
}

torch_lib=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))') || {
    echo "gpu_check: python3 has no torch"
    exit 1
}
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
sdgen=${SDGEN:-.gpu/sdgen}
# tools/build_gpu.sh also leaves .gpu/sdgen.xz: a quarter of the size, for the 64 MiB the
# device tool carries; unpacked here when the binary itself was not carried.
if [[ ! -x $sdgen && -f $sdgen.xz ]]; then
    mkdir -p /tmp/sdgen-bin && xz -dc "$sdgen.xz" > /tmp/sdgen-bin/sdgen && chmod +x /tmp/sdgen-bin/sdgen \
        && sdgen=/tmp/sdgen-bin/sdgen
fi
[[ -x $sdgen ]] || {
    echo "gpu_check: no sdgen binary at $sdgen (tools/build_gpu.sh makes it)"
    exit 1
}
work=${WORK:-/tmp/sdgen-gpu}
mkdir -p "$work"
if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl \
        && export PYTHONPATH=$work/site || fail "installing the carried wheels"
else
    note "no .whl/: the diffusers side uses whatever python3 has"
fi

echo "=== sdgen info"
"$sdgen" info | tee "$work/info.txt" || fail "sdgen info"
grep -q "^CUDA: available" "$work/info.txt" || {
    fail "sdgen sees no CUDA"
    finish
}
grep -q "^CUDA graphs shim: loaded" "$work/info.txt" || fail "the CUDA shim did not load (see its line above)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# compare LABEL BOUND A B: the largest pixel difference between two images, each a folder's
# first PNG or a golden .safetensors (its image_u8); fails above BOUND (in 1/255).
compare() {
    python3 - "$@" <<'PY' || fail "$1 (bound $2/255)"
import glob, sys
import numpy as np
from PIL import Image
label, bound, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(p):
    if p.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return load_file(p)["image_u8"].astype(int).reshape(-1)
    files = sorted(glob.glob(p + "/*.png"))
    if not files:
        sys.exit(f"{label}: no image in {p}")
    return np.asarray(Image.open(files[0]).convert("RGB")).astype(int).reshape(-1)
x, y = load(a), load(b)
if x.shape != y.shape:
    sys.exit(f"{label}: shapes differ {x.shape} {y.shape}")
d = np.abs(x - y)
print(f"{label}: max {d.max()}/255, mean {d.mean():.4f}, differing {(d > 0).mean():.3%} (bound {bound})")
sys.exit(0 if d.max() <= bound else 1)
PY
}

# gen NAME MODEL [sdgen options]: the golden case plain_s42_64x64_ddim into $work/gen-NAME.
# A graph capture that falls back to eager is a failure here (it says so on stderr).
gen() {
    local name=$1 model=$2
    shift 2
    rm -rf "$work/gen-$name"
    if ! "$sdgen" generate "a photograph of an astronaut riding a horse" --model "$model" --seed 42 --steps 4 \
        --width 64 --height 64 --scheduler DDIM --guidance 7.5 --quiet --out "$work/gen-$name" "$@" \
        >/dev/null 2>"$work/gen-$name.err"; then
        cat "$work/gen-$name.err"
        fail "generate $name"
        return 1
    fi
    if grep -q "CUDA graph" "$work/gen-$name.err"; then
        cat "$work/gen-$name.err"
        fail "$name: CUDA graphs did not run (see the warning above)"
    fi
}

golden=tests/fixtures/goldens/plain_s42_64x64_ddim.safetensors
echo "=== tiny SD against the diffusers golden ($golden), bounds of tests/precision.rs"
gen fp32-graphs weights/tiny-sd --device cuda --dtype fp32 && compare "fp32 CUDA, graphs" 4 "$work/gen-fp32-graphs" "$golden"
gen fp32-eager weights/tiny-sd --device cuda --dtype fp32 --no-cuda-graphs \
    && compare "fp32 CUDA, no graphs" 4 "$work/gen-fp32-eager" "$golden"
compare "fp32 graphs against no graphs" 1 "$work/gen-fp32-graphs" "$work/gen-fp32-eager"
gen fp16-graphs weights/tiny-sd --device cuda --dtype fp16 && compare "fp16 CUDA, graphs" 4 "$work/gen-fp16-graphs" "$golden"
gen fp16-eager weights/tiny-sd --device cuda --dtype fp16 --no-cuda-graphs \
    && compare "fp16 CUDA, no graphs" 4 "$work/gen-fp16-eager" "$golden"
compare "fp16 graphs against no graphs" 1 "$work/gen-fp16-graphs" "$work/gen-fp16-eager"
gen fp16-nhwc weights/tiny-sd --device cuda --dtype fp16 --channels-last \
    && compare "fp16 CUDA, graphs, channels-last" 4 "$work/gen-fp16-nhwc" "$golden"
# fp16 accumulation is off by default; this says whether the fp16 bounds allow turning it on.
if gen fp16-acc weights/tiny-sd --device cuda --dtype fp16 --channels-last --fp16-accumulation; then
    compare "fp16 CUDA, graphs, channels-last, fp16 accumulation" 4 "$work/gen-fp16-acc" "$golden" \
        || note "fp16 accumulation exceeds the fp16 goldens' bounds: keep it off"
fi
echo "=== tiny SDXL (added conditioning through the graph)"
if [[ -d weights/tiny-sdxl ]]; then
    gen xl-graphs weights/tiny-sdxl --device cuda --dtype fp16
    gen xl-eager weights/tiny-sdxl --device cuda --dtype fp16 --no-cuda-graphs
    compare "SDXL fp16 graphs against no graphs" 1 "$work/gen-xl-graphs" "$work/gen-xl-eager"
    gen xl-nhwc weights/tiny-sdxl --device cuda --dtype fp16 --channels-last
    compare "SDXL fp16 channels-last against NCHW" 4 "$work/gen-xl-nhwc" "$work/gen-xl-eager"
else
    note "weights/tiny-sdxl was not carried (tools/gpu_tree.sh slim leaves it out): tiny SDXL checks skipped"
fi

echo "=== tiny model: CUDA vs CPU, same seed, fp32, 256x256, DPM++ 2M Karras 20 steps"
for dev in cuda cpu; do
    rm -rf "$work/tiny-$dev"
    "$sdgen" generate "a lighthouse on a cliff at dawn" --model weights/tiny-sd --seed 42 --steps 20 \
        --width 256 --height 256 --scheduler "DPM++ 2M Karras" --device $dev --dtype fp32 --quiet \
        --out "$work/tiny-$dev" >/dev/null || fail "generate tiny on $dev"
done
compare "tiny 256x256 CUDA against CPU" 8 "$work/tiny-cuda" "$work/tiny-cpu"

echo "=== SD 1.5-architecture model with random weights (fp16 files)"
if [[ ! -f $work/sd15/unet/diffusion_pytorch_model.safetensors ]]; then
    python3 tools/make_sd15_random.py "$work/sd15" --fp16 --device cuda >"$work/sd15.log" 2>&1 || {
        grep -v Warning "$work/sd15.log"
        fail "making the SD 1.5 random model"
        finish
    }
fi
echo "($((SECONDS - start)) s so far)"

bench() { # NAME [bench.sh options]
    local name=$1
    shift
    echo "=== bench $name"
    BENCH_SAVE="$work/bench-$name" SDGEN=$sdgen PYTHON=python3 tools/bench.sh "$work/sd15" --width 512 --height 512 \
        --dtype fp16 --device cuda "$@" || fail "bench $name"
}
# sdgen alone, with options (steps/s of the last of 2 calls).
solo() { # NAME [sdgen bench options]
    local name=$1
    shift
    "$sdgen" bench --model "$work/sd15" --width 512 --height 512 --steps 20 --dtype fp16 --device cuda --runs 2 \
        --json "$@" >"$work/solo-$name.json" 2>"$work/solo-$name.err" || {
        cat "$work/solo-$name.err"
        fail "sdgen bench $name"
        return 1
    }
    python3 - "$name" "$work/solo-$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
g = r.get("cuda_graphs") or {}
print(f"sdgen {sys.argv[1]:34} {r['steps_per_s']:8.2f} steps/s  {r['images_per_min']:7.1f} images/min  "
      f"first image {r['first_image_s']:.3f} s  peak VRAM {(r['peak_vram_bytes'] or 0) / 2**20:.0f} MiB  "
      f"graphs {g.get('replays', '-')} replays / {g.get('failures', '-')} failed")
PY
}

bench batch1 --steps 20 --batch 1 --runs 3
if [[ $(left) -gt 240 ]]; then
    echo "=== diffusers with torch.compile (reduce-overhead), batch 1, last of 3 calls"
    timeout $(( $(left) - 150 < 240 ? $(left) - 150 : 240 )) env BENCH_SAVE="$work/bench-compile" SDGEN=$sdgen PYTHON=python3 tools/bench.sh \
        "$work/sd15" --width 512 --height 512 --dtype fp16 --device cuda --steps 20 --runs 3 --compile \
        || note "diffusers + torch.compile did not finish or failed here"
else
    note "torch.compile run skipped (budget)"
fi
echo "=== sdgen options one by one (batch 1, 20 steps, last of 2 calls)"
solo "default (graphs)"
solo "--no-cuda-graphs" --no-cuda-graphs
solo "--channels-last" --channels-last
solo "--channels-last --fp16-accumulation" --channels-last --fp16-accumulation
solo "--channels-last --no-cuda-graphs" --channels-last --no-cuda-graphs
# profile NAME [sdgen bench options]: libtorch's profiler over a 5-step run (after a warm-up
# run): GPU kernels per step, their time, launches, and the ten costliest kernels.
profile() {
    local name=$1
    shift
    "$sdgen" bench --model "$work/sd15" --width 512 --height 512 --steps 5 --dtype fp16 --device cuda --runs 2 \
        --json --profile "$work/prof-$name.json" "$@" >/dev/null 2>"$work/prof-$name.err" || {
        cat "$work/prof-$name.err"
        fail "profiling $name"
        return 1
    }
    python3 - "$name" "$work/prof-$name.json" 5 <<'PY' || fail "reading the profile of $name"
import collections, json, sys
name, path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = json.load(open(path))
ev = t["traceEvents"] if isinstance(t, dict) else t
gpu = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
rt = [e for e in ev if e.get("cat") == "cuda_runtime"]
launches = [e for e in rt if "Launch" in e.get("name", "")]
graph_launches = [e for e in launches if "Graph" in e.get("name", "")]
by = collections.defaultdict(lambda: [0, 0.0])
for e in gpu:
    by[e["name"]][0] += 1
    by[e["name"]][1] += e["dur"]
total = sum(v[1] for v in by.values())
print(f"profile {name}: per step {len(gpu) / steps:.0f} GPU kernels/copies, {total / steps / 1000:.2f} ms GPU time, "
      f"{len(launches) / steps:.1f} launch calls ({len(graph_launches)} graph launches in all)")
for kname, (n, dur) in sorted(by.items(), key=lambda kv: -kv[1][1])[:10]:
    print(f"    {dur / total:6.1%} {dur / steps / 1000:7.3f} ms/step {n / steps:6.1f}x  {kname[:110]}")
PY
}
if [[ $(left) -gt 200 ]]; then
    echo "=== per-op profiles (5 steps, batch 1)"
    profile graphs
    profile eager --no-cuda-graphs
    profile channels-last --channels-last
else
    note "profiles skipped (budget)"
fi
if [[ $(left) -gt 150 ]]; then bench batch4 --steps 20 --batch 4 --runs 2; else note "batch 4 skipped (budget)"; fi
if [[ $(left) -gt 90 ]]; then
    solo "--vae-tiling" --vae-tiling
    python3 - "$work/solo---vae-tiling.json" <<'PY' || fail "peak VRAM with --vae-tiling above 2.5 GB"
import json, sys
v = json.load(open(sys.argv[1]))["peak_vram_bytes"] or 0
print(f"peak VRAM with --vae-tiling: {v / 2**30:.2f} GiB (target <= 2.5 GB = 2.33 GiB)")
sys.exit(0 if v <= 2.5e9 else 1)
PY
else
    note "VAE tiling run skipped (budget)"
fi
if [[ $(left) -gt 150 ]]; then
    echo "=== SDXL-architecture model with random weights (fp16), 1024x1024, 10 steps, last of 2 calls"
    if [[ -f $work/sdxl/unet/diffusion_pytorch_model.safetensors ]] \
        || python3 tools/make_sdxl_random.py "$work/sdxl" --device cuda >"$work/sdxl.log" 2>&1; then
        timeout $(($(left) - 10)) env BENCH_SAVE="$work/bench-sdxl" SDGEN=$sdgen PYTHON=python3 tools/bench.sh \
            "$work/sdxl" --width 1024 --height 1024 --dtype fp16 --device cuda --steps 10 --runs 2 \
            || fail "bench SDXL 1024x1024 (or it ran out of the budget)"
    else
        grep -v Warning "$work/sdxl.log"
        fail "making the SDXL random model"
    fi
else
    note "SDXL 1024x1024 skipped (budget)"
fi

echo "=== targets (issue 19)"
python3 - "$work" <<'PY' || note "a target of issue 19 is not met (see above)"
import json, os, sys
w = sys.argv[1]
def last(path):
    if not os.path.exists(path):
        return None
    lines = [l for l in open(path) if l.strip()]
    return json.loads(lines[-1]) if lines else None
ok = True
ours, theirs = last(f"{w}/bench-batch1.sdgen.jsonl"), last(f"{w}/bench-batch1.diffusers.jsonl")
if ours and theirs:
    s, d = ours["steps_per_s"], theirs["steps_per_s"]
    print(f"SD 1.5 512² fp16 batch 1: sdgen {s:.1f} steps/s (target >= 100): {'met' if s >= 100 else 'NOT met'}")
    print(f"  diffusers SDPA {d:.1f} steps/s, ratio {s / d:.2f}")
    ok &= s >= 100
    vo, vt = ours.get("peak_vram_bytes"), theirs.get("peak_vram_bytes")
    if vo and vt:
        print(f"  peak VRAM sdgen {vo / 2**20:.0f} MiB, diffusers {vt / 2**20:.0f} MiB: "
              f"{'met' if vo <= vt else 'NOT met'} (no higher than diffusers)")
        ok &= vo <= vt
comp = last(f"{w}/bench-compile.diffusers.jsonl")
if ours and comp:
    r = ours["steps_per_s"] / comp["steps_per_s"]
    print(f"  diffusers + torch.compile {comp['steps_per_s']:.1f} steps/s; sdgen/compile {r:.2f} (target >= 1.5): "
          f"{'met' if r >= 1.5 else 'NOT met'}")
    ok &= r >= 1.5
sys.exit(0 if ok else 1)
PY
finish
