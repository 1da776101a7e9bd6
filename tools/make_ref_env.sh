#!/usr/bin/env bash
# Makes .venv-ref: the pinned Python reference (diffusers and its dependencies) that the fixture
# scripts (tools/make_*.py) and tools/bench.sh use. CPU-only: torch without its CUDA wheels,
# except the two CUDA runtime wheels libtorch_cpu.so links against (as tools/setup.sh).
#
#   tools/make_ref_env.sh [DIR]     (default .venv-ref; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.venv-ref}
python=${PYTHON:-python3}
stamp="$dir/.sdgen-ref"
want="torch==2.11.0 diffusers==0.36.0 transformers==4.57.6 peft==0.21.2"
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
"$python" -m venv "$dir"
pip=("$dir/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" --no-deps torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
"${pip[@]}" numpy filelock sympy networkx jinja2 fsspec typing_extensions pillow safetensors==0.8.0 \
    diffusers==0.36.0 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 peft==0.21.2 \
    accelerate==1.15.0 lark==1.3.1
"${pip[@]}" --no-deps clip-anytorch==2.6.0
echo "$want" > "$stamp"
echo "reference environment ready: $dir/bin/python" >&2
