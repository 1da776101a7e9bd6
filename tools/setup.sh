#!/usr/bin/env bash
# Installs libtorch 2.11.0 from the PyPI torch wheel into .venv/site, for the Rust build.
#
#   tools/setup.sh            the minimal set: torch (no deps) + the two CUDA runtime wheels
#                             that libtorch_cpu.so links against; enough to build and run on CPU
#   SDGEN_CUDA=1 tools/setup.sh
#                             the full wheel set with every CUDA library, for GPUs
#
# A user who already has libtorch 2.11 sets LIBTORCH and this script installs only the CUDA
# runtime's `crt/` headers (nvidia-cuda-crt, 134 KB) into .venv/cuda-include, which build.rs
# needs to compile the CUDA shim (src/cuda/graphs.cpp; without them sdgen builds without CUDA
# graphs). It is idempotent: a second run only checks a stamp file and the headers.
#
# SDGEN_SITE=DIR installs into DIR instead of .venv/site (tools/build_gpu.sh puts the full
# CUDA set apart from the CPU one that way).
set -euo pipefail

TORCH_VERSION=2.11.0
# The exact versions torch 2.11.0 pins (through cuda-toolkit 13.0.2); found with ldd on libtorch_cpu.so.
MINIMAL_WHEELS=("nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85")
# cuda_runtime.h includes crt/host_config.h, which nvidia-cuda-runtime does not ship.
CRT_WHEEL="nvidia-cuda-crt==13.0.88"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
site="${SDGEN_SITE:-$root/.venv/site}"
python=${PYTHON:-python3}

# The crt headers into $1 (a folder that gets crt/), unless a folder in $2... has them.
# Unpacked from the wheel rather than pip-installed into the site: `pip --target` would
# refuse (or, with --upgrade, replace) the existing nvidia/ folder.
crt_headers() {
    local dest=$1; shift
    for d in "$dest" "$@"; do
        [[ -f $d/crt/host_config.h ]] && return 0
    done
    local tmp
    tmp=$(mktemp -d)
    if "$python" -m pip download --quiet --disable-pip-version-check --timeout 15 --retries 1 --no-deps -d "$tmp" "$CRT_WHEEL" \
        && "$python" -m zipfile -e "$tmp"/nvidia_cuda_crt-*.whl "$tmp/x" \
        && mkdir -p "$dest" && cp -r "$tmp/x/nvidia/cu13/include/crt" "$dest/"; then
        echo "setup: CUDA crt headers in $dest" >&2
    else
        echo "setup: could not fetch $CRT_WHEEL; sdgen will build without its CUDA shim (no CUDA graphs)" >&2
    fi
    rm -rf "$tmp"
}

if [[ -n "${LIBTORCH:-}" ]]; then
    echo "setup: LIBTORCH is set ($LIBTORCH); using it and installing only the CUDA crt headers" >&2
    crt_headers "$root/.venv/cuda-include" "$LIBTORCH/../nvidia/cu13/include" /usr/local/cuda/include
    exit 0
fi

mode=minimal
[[ "${SDGEN_CUDA:-0}" == "1" ]] && mode=cuda
stamp="$site/.sdgen-setup"
want="torch==$TORCH_VERSION mode=$mode"

if [[ -f "$stamp" ]] && { [[ "$(cat "$stamp")" == "$want" ]] || [[ "$mode" == minimal && "$(cat "$stamp")" == "torch==$TORCH_VERSION mode=cuda" ]]; }; then
    crt_headers "$site/nvidia/cu13/include"
    exit 0
fi

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
crt_headers "$site/nvidia/cu13/include"
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s; $(du -sh "$site" | cut -f1) in $site" >&2
