#!/usr/bin/env bash
# Installs libtorch 2.11.0 from the PyPI torch wheel into .venv/site, for the Rust build.
#
#   tools/setup.sh            the minimal set: torch (no deps) + the two CUDA runtime wheels
#                             that libtorch_cpu.so links against; enough to build and run on CPU
#   SDGEN_CUDA=1 tools/setup.sh
#                             the full wheel set with every CUDA library, for GPUs
#
# A user who already has libtorch 2.11 sets LIBTORCH and this script does nothing.
# It is idempotent: a second run only checks a stamp file.
set -euo pipefail

TORCH_VERSION=2.11.0
# The exact versions torch 2.11.0 pins (through cuda-toolkit 13.0.2); found with ldd on libtorch_cpu.so.
MINIMAL_WHEELS=("nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85")

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
site="$root/.venv/site"

if [[ -n "${LIBTORCH:-}" ]]; then
    echo "setup: LIBTORCH is set ($LIBTORCH); using it and installing nothing" >&2
    exit 0
fi

mode=minimal
[[ "${SDGEN_CUDA:-0}" == "1" ]] && mode=cuda
stamp="$site/.sdgen-setup"
want="torch==$TORCH_VERSION mode=$mode"

if [[ -f "$stamp" ]] && { [[ "$(cat "$stamp")" == "$want" ]] || [[ "$mode" == minimal && "$(cat "$stamp")" == "torch==$TORCH_VERSION mode=cuda" ]]; }; then
    exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "setup: python3 with pip is needed to fetch the torch wheel" >&2; exit 1; }

start=$(date +%s)
echo "setup: installing torch==$TORCH_VERSION ($mode) into $site" >&2
rm -rf "$site"
mkdir -p "$site"
pip_args=(-m pip install --quiet --disable-pip-version-check --no-compile --target "$site")
if [[ "$mode" == cuda ]]; then
    "$python" "${pip_args[@]}" "torch==$TORCH_VERSION"
else
    "$python" "${pip_args[@]}" --no-deps "torch==$TORCH_VERSION" "${MINIMAL_WHEELS[@]}"
fi
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s; $(du -sh "$site" | cut -f1) in $site" >&2
