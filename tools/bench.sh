#!/usr/bin/env bash
# Side-by-side benchmark: sdgen and diffusers on the same weights, size, steps, dtype, device
# and threads; prints each figure with the ratio sdgen/diffusers.
#
#   tools/bench.sh MODEL_DIR [--width 512 --height 512 --steps 20 --dtype fp32 --device cpu]
#                            [--threads N] [--repeat R] [--decode-only] [-- extra sdgen bench options]
#
# Each run is a fresh process: "process start → image" is its wall time, from the shell
# (Python's includes importing torch and diffusers). With --decode-only both load the model
# and time only the VAE decode of seeded random latents (first and second decode).
#
# With --repeat R (default 1) the two run alternately R times each, so that a busy machine
# slows both alike; each figure is then the median of its R runs, and every run's steps/s is
# printed too. Options after `--` go to `sdgen bench` only (e.g. `-- --cpu-conv direct`).
#
# SDGEN: the sdgen binary (default target/release/sdgen). PYTHON: a Python with torch 2.11
# and diffusers (default .venv-ref/bin/python, made by tools/make_ref_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; shift
width=512 height=512 steps=20 dtype=fp32 device=cpu threads=${THREADS:-$(nproc)} repeat=1 decode_only=0
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --width) width=$2; shift 2;; --height) height=$2; shift 2;; --steps) steps=$2; shift 2;;
        --dtype) dtype=$2; shift 2;; --device) device=$2; shift 2;; --threads) threads=$2; shift 2;;
        --repeat) repeat=$2; shift 2;;
        --decode-only) decode_only=1; shift;;
        --) shift; extra=("$@"); break;;
        *) echo "bench.sh: unknown option $1" >&2; exit 2;;
    esac
done
sdgen=${SDGEN:-target/release/sdgen}
python=${PYTHON:-.venv-ref/bin/python}
args=(--width "$width" --height "$height" --steps "$steps" --dtype "$dtype" --device "$device")
if ((decode_only)); then args+=(--decode-only); fi
echo "bench: $model ${width}x${height} ${steps} steps $dtype on $device, $threads threads, $repeat run(s) each" >&2
ours=() theirs=()
# Runs a command and prints its JSON line with "wall_s" (process start to exit) added.
timed() {
    local t0 out
    t0=$(date +%s.%N)
    out=$("$@")
    printf '%s, "wall_s": %s}' "${out%\}}" "$(awk "BEGIN { print $(date +%s.%N) - $t0 }")"
}
for ((i = 1; i <= repeat; i++)); do
    ours+=("$(OMP_NUM_THREADS=$threads timed "$sdgen" bench --model "$model" "${args[@]}" "${extra[@]}" --json)")
    theirs+=("$(OMP_NUM_THREADS=$threads timed "$python" tools/bench_diffusers.py "$model" "${args[@]}" --threads "$threads")")
done
"$python" - "$repeat" "${ours[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
runs = [json.loads(a) for a in sys.argv[2:]]
a_runs, b_runs = runs[:n], runs[n:]
key = "steps_per_s" if "steps_per_s" in a_runs[0] else "vae_decode_s"
if n > 1:
    print(f"{key} per run   sdgen: " + ", ".join(f"{r[key]:.3f}" for r in a_runs))
    print(" " * len(key) + "           diffusers: " + ", ".join(f"{r[key]:.3f}" for r in b_runs))
def med(rs, key):
    vals = [r.get(key) for r in rs]
    return None if any(v is None for v in vals) else statistics.median(vals)
rows = [("load time (s)", "load_s", 1), ("RSS before load (MiB)", "rss_before_load_bytes", 2**-20),
        ("peak RSS after load (MiB)", "load_peak_rss_bytes", 2**-20), ("weights on disk (MiB)", "weights_bytes", 2**-20),
        ("time to first step (s)", "first_step_s", 1), ("steps/s", "steps_per_s", 1),
        ("VAE decode (s)", "vae_decode_s", 1), ("VAE decode again (s)", "vae_decode_again_s", 1),
        ("peak RSS, whole run (MiB)", "peak_rss_bytes", 2**-20),
        ("peak VRAM (MiB)", "peak_vram_bytes", 2**-20), ("process start → exit (s)", "wall_s", 1)]
label = "median of %d" % n if n > 1 else ""
print(f"{'figure':28} {'sdgen':>12} {'diffusers':>12} {'sdgen/diffusers':>16}  {label}")
for name, key, scale in rows:
    x, y = med(a_runs, key), med(b_runs, key)
    if x is None or y is None:
        print(f"{name:28} {'-':>12} {'-':>12} {'-':>16}")
        continue
    ratio = f"{x / y:.3f}" if y else "-"
    if key in ("load_s", "first_step_s", "vae_decode_s", "vae_decode_again_s", "wall_s") and x:
        ratio += f" ({y / x:.2f}x faster)" if x < y else f" ({x / y:.2f}x slower)"
    print(f"{name:28} {x * scale:12.3f} {y * scale:12.3f} {ratio:>16}")
PY
