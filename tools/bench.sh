#!/usr/bin/env bash
# Side-by-side benchmark: sdgen and diffusers on the same weights, size, steps, dtype, device
# and threads; prints each figure with the ratio sdgen/diffusers.
#
#   tools/bench.sh MODEL_DIR [--width 512 --height 512 --steps 20 --dtype fp32 --device cpu]
#                            [--threads N] [--repeat R] [--batch N] [--runs R] [--decode-only]
#                            [--channels-last] [--vae-tiling] [--compile[=MODE]] [--diffusers-mkl-avx512]
#                            [-- extra sdgen bench options]
#
# --batch N makes N images per call on both sides, --runs R calls R times after one load
# (speed figures are the last call's, first-image latency the first's). --channels-last and
# --vae-tiling go to both sides; --compile[=MODE] wraps diffusers' UNet in torch.compile (see
# tools/bench_diffusers.py) and has no sdgen counterpart.
#
# --diffusers-mkl-avx512 gives diffusers' MKL the same kernels as sdgen's (src/mkl.rs): on an
# AMD CPU, MKL otherwise runs generic AVX2 kernels in Python; a one-line library defining
# mkl_serv_intel_cpu_true is compiled into target/ and preloaded (LD_PRELOAD) for diffusers.
#
# Each run is a fresh process: "process start → exit" is its wall time, from the shell
# (Python's includes importing torch and diffusers). With --decode-only both load the model
# and time only the VAE decode of seeded random latents (first and second decode).
#
# With --repeat R (default 1) the two run alternately R times each, so that a busy machine
# slows both alike; each figure is then the median of its R runs, and every run's steps/s is
# printed too. Options after `--` go to `sdgen bench` only (e.g. `-- --cpu-conv direct`).
#
# BENCH_SAVE=PREFIX also writes each side's JSON lines to PREFIX.sdgen.jsonl and
# PREFIX.diffusers.jsonl (tools/gpu_check.sh reads them).
# SDGEN: the sdgen binary (default target/release/sdgen). PYTHON: a Python with torch 2.11
# and diffusers (default .venv-ref/bin/python, made by tools/make_ref_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; shift
width=512 height=512 steps=20 dtype=fp32 device=cpu threads=${THREADS:-$(env -u OMP_NUM_THREADS nproc)} repeat=1
batch=1 runs=1 decode_only=0 mkl_preload=
extra=() both=() theirs_only=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --width) width=$2; shift 2;; --height) height=$2; shift 2;; --steps) steps=$2; shift 2;;
        --dtype) dtype=$2; shift 2;; --device) device=$2; shift 2;; --threads) threads=$2; shift 2;;
        --repeat) repeat=$2; shift 2;;
        --batch) batch=$2; shift 2;; --runs) runs=$2; shift 2;;
        --channels-last|--vae-tiling) both+=("$1"); shift;;
        --compile) theirs_only+=(--compile); shift;;
        --compile=*) theirs_only+=(--compile "${1#--compile=}"); shift;;
        --decode-only) decode_only=1; shift;;
        --diffusers-mkl-avx512)
            mkdir -p target
            printf 'int mkl_serv_intel_cpu_true(void) { return 1; }\n' >target/mkl_intel_cpu.c
            cc -shared -fPIC -O2 -o target/libmkl_intel_cpu.so target/mkl_intel_cpu.c
            mkl_preload=$PWD/target/libmkl_intel_cpu.so; shift;;
        --) shift; extra=("$@"); break;;
        *) echo "bench.sh: unknown option $1" >&2; exit 2;;
    esac
done
sdgen=${SDGEN:-target/release/sdgen}
python=${PYTHON:-.venv-ref/bin/python}
args=(--width "$width" --height "$height" --steps "$steps" --dtype "$dtype" --device "$device")
if ((decode_only)); then args+=(--decode-only); else args+=(--batch "$batch" --runs "$runs"); fi
args+=(${both[@]+"${both[@]}"})
echo "bench: $model ${width}x${height} ${steps} steps $dtype on $device, batch $batch, $runs call(s) per load," \
    "$threads threads, $repeat run(s) each ${both[*]+${both[*]}} ${theirs_only[*]+(diffusers: ${theirs_only[*]})}" \
    "${mkl_preload:+(diffusers: MKL AVX-512 kernels preloaded)}" >&2
ours=() theirs=()
# Runs a command and prints its JSON line with "wall_s" (process start to exit) added.
timed() {
    local t0 out
    t0=$(date +%s.%N)
    out=$("$@")
    printf '%s, "wall_s": %s}' "${out%\}}" "$(awk "BEGIN { print $(date +%s.%N) - $t0 }")"
}
for ((i = 1; i <= repeat; i++)); do
    ours+=("$(OMP_NUM_THREADS=$threads timed "$sdgen" bench --model "$model" "${args[@]}" ${extra[@]+"${extra[@]}"} --json)")
    theirs+=("$(OMP_NUM_THREADS=$threads LD_PRELOAD=$mkl_preload timed "$python" tools/bench_diffusers.py "$model" "${args[@]}" \
        ${theirs_only[@]+"${theirs_only[@]}"} --threads "$threads")")
done
if [[ -n ${BENCH_SAVE:-} ]]; then
    printf '%s\n' "${ours[@]}" >"$BENCH_SAVE.sdgen.jsonl"
    printf '%s\n' "${theirs[@]}" >"$BENCH_SAVE.diffusers.jsonl"
fi
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
        ("time to first step (s)", "first_step_s", 1), ("first image (s)", "first_image_s", 1),
        ("steps/s", "steps_per_s", 1), ("images/min", "images_per_min", 1),
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
g = a_runs[-1].get("cuda_graphs")
if g is not None:
    print(f"sdgen CUDA graphs: {g['captures']} captured, {g['replays']} replayed, {g['eager']} eager, {g['failures']} failed")
elif a_runs[-1].get("cuda_graphs_off"):
    print(f"sdgen CUDA graphs: off ({a_runs[-1]['cuda_graphs_off']})")
PY
