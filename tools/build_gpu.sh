#!/usr/bin/env bash
# Builds what tools/gpu_check.sh needs on the GPU machine (which has Python torch 2.11 with
# CUDA, but no Rust and no internet), on this machine:
#
#   tools/build_gpu.sh
#
#   .gpu/sdgen   the release binary, linked against the CUDA libtorch 2.11 (full wheel set in
#                .venv-cuda/site, made by `SDGEN_CUDA=1 SDGEN_SITE=.venv-cuda/site tools/setup.sh`,
#                about 5 GB; built in target-cuda/ so the CPU build's target/ is left alone).
#                It embeds the CUDA shim (CUDA graphs); on the GPU machine it uses that
#                machine's torch libraries through LD_LIBRARY_PATH (gpu_check.sh sets it).
#   .whl/        wheels for diffusers 0.36.0, transformers 4.57.6, tokenizers 0.22.2,
#                huggingface_hub 0.36.2 and importlib_metadata (Python 3.12, as on the GPU
#                machine), installed there with --no-index by gpu_check.sh for the diffusers side.
#
# Then carry both with the working tree: `run(carry=[".gpu", ".whl"], command="tools/gpu_check.sh")`.
# Exits non-zero, saying which, when the CUDA libtorch cannot be installed or the binary does
# not link libtorch_cuda or lacks the shim.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
site=${SDGEN_CUDA_SITE:-$root/.venv-cuda/site}
python=${PYTHON:-python3}

echo "build_gpu: CUDA libtorch in $site" >&2
env -u LIBTORCH SDGEN_CUDA=1 SDGEN_SITE="$site" PYTHON="$python" tools/setup.sh

echo "build_gpu: cargo build --release (target-cuda/)" >&2
env LIBTORCH="$site/torch" LIBTORCH_CXX11_ABI=1 SDGEN_CUDA=1 CARGO_TARGET_DIR=target-cuda \
    cargo build --release --bin sdgen
bin=target-cuda/release/sdgen
if ! readelf -d "$bin" | grep -q 'NEEDED.*libtorch_cuda'; then
    echo "build_gpu: $bin is not linked with libtorch_cuda.so (see the cargo warnings above)" >&2
    exit 1
fi
# The shim is embedded as a shared object: its exported entry points are in the binary's data.
if ! grep -aq sdgen_cuda_graph_replay "$bin"; then
    echo "build_gpu: $bin carries no CUDA shim; was crt/host_config.h found? (see the cargo warnings)" >&2
    exit 1
fi
mkdir -p .gpu
cp -f "$bin" .gpu/sdgen
xz -T0 -6 -c "$bin" > .gpu/sdgen.xz
echo "build_gpu: .gpu/sdgen ($(du -h .gpu/sdgen | cut -f1)) links libtorch_cuda and carries the CUDA shim" >&2

mkdir -p .whl
# The GPU machine's image has Python 3.12 with torch 2.11, transformers 5 and huggingface_hub 1
# (too new for diffusers 0.36); these are installed over them for the diffusers side only.
if ! ls .whl/diffusers-0.36.0-*.whl >/dev/null 2>&1; then
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        diffusers==0.36.0 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 importlib_metadata
fi
echo "build_gpu: $(ls .whl | wc -l) wheels in .whl/" >&2
echo "carry: .gpu .whl   (then run tools/gpu_check.sh on the GPU machine)"
