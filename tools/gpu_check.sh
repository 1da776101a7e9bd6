#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and Python torch 2.11 (no Rust, no internet).
#
# Needs, carried from the build machine:
#   .gpu/sdgen   a release binary built against a CUDA libtorch 2.11, e.g.
#                LIBTORCH=<site-packages>/torch CARGO_TARGET_DIR=target-cuda cargo build --release
#   .whl/        wheels for diffusers 0.36.0, transformers 4.57.6, tokenizers 0.22.2,
#                huggingface_hub 0.36.2, importlib_metadata (see tools/README.md)
# Prints: sdgen info; the tiny model on CUDA vs CPU from the same seed (max abs pixel
# difference, fp32); then an SD 1.5-architecture model with random weights, built here, and
# the side-by-side benchmark sdgen vs diffusers at 512x512, 20 steps, fp16.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
torch_lib=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
sdgen=${SDGEN:-.gpu/sdgen}
work=${WORK:-/tmp/sdgen-gpu}
mkdir -p "$work"
if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl \
        && export PYTHONPATH=$work/site
fi

echo "=== sdgen info"
"$sdgen" info || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "=== tiny model: CUDA vs CPU, same seed, fp32"
for dev in cuda cpu; do
    rm -rf "$work/tiny-$dev"
    "$sdgen" generate "a lighthouse on a cliff at dawn" --model weights/tiny-sd --seed 42 --steps 20 \
        --width 256 --height 256 --scheduler "DPM++ 2M Karras" --device $dev --dtype fp32 --quiet \
        --out "$work/tiny-$dev" >/dev/null || exit 1
done
python3 - "$work" <<'PY'
import glob, sys
import numpy as np
from PIL import Image
w = sys.argv[1]
a = np.asarray(Image.open(glob.glob(f"{w}/tiny-cuda/*.png")[0])).astype(int)
b = np.asarray(Image.open(glob.glob(f"{w}/tiny-cpu/*.png")[0])).astype(int)
d = np.abs(a - b)
print(f"tiny 256x256 DPM++ 2M Karras 20 steps: max abs diff {d.max()}/255, mean {d.mean():.4f}, pixels differing {(d > 0).mean():.4%}")
PY

echo "=== SD 1.5-architecture model with random weights (fp16 files)"
[[ -f $work/sd15/unet/diffusion_pytorch_model.safetensors ]] || \
    python3 tools/make_sd15_random.py "$work/sd15" --fp16 --device cuda 2>&1 | grep -v Warning || exit 1

echo "=== benchmark 512x512, 20 steps, fp16, cuda (sdgen vs diffusers, same process conditions)"
SDGEN=$sdgen PYTHON=python3 tools/bench.sh "$work/sd15" --width 512 --height 512 --steps 20 --dtype fp16 --device cuda
echo "=== again (warm files)"
SDGEN=$sdgen PYTHON=python3 tools/bench.sh "$work/sd15" --width 512 --height 512 --steps 20 --dtype fp16 --device cuda
