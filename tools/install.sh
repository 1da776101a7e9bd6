#!/usr/bin/env bash
# Installs sdgen with the libtorch libraries it needs into a prefix that can be moved:
#
#   tools/install.sh PREFIX            # builds target/release/sdgen first if it is missing
#   SDGEN_BIN=path/to/sdgen tools/install.sh PREFIX
#
# PREFIX/bin/sdgen finds PREFIX/lib/*.so through its `$ORIGIN/../lib` rpath (see build.rs),
# so the whole PREFIX can be copied or moved elsewhere, or to another machine with the same
# system libraries, and run without LD_LIBRARY_PATH. Only the libraries the binary loads
# from the libtorch it was built against are copied (about 0.5 GB for CPU libtorch; CUDA
# builds take their CUDA libraries too). `sdgen info` prints where libtorch was found.
set -euo pipefail

PREFIX=${1:?usage: tools/install.sh PREFIX}
cd "$(dirname "$0")/.."
BIN=${SDGEN_BIN:-target/release/sdgen}
if [[ ! -x $BIN ]]; then
    if [[ -n ${SDGEN_BIN:-} ]]; then
        echo "install.sh: $BIN is not an executable" >&2
        exit 1
    fi
    cargo build --release --bin sdgen
fi

# The libtorch folder the binary was linked against: its last rpath entry (build.rs puts the
# `$ORIGIN` entries first).
RUNPATH=$(readelf -d "$BIN" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p' | head -n 1)
TORCH_LIB=${RUNPATH##*:}
if [[ -z $TORCH_LIB || ! -d $TORCH_LIB ]]; then
    echo "install.sh: cannot find the libtorch folder in $BIN's rpath ($RUNPATH)" >&2
    exit 1
fi

mkdir -p "$PREFIX/bin" "$PREFIX/lib"
# Every library the loader resolves outside the system folders: libtorch's (libtorch_cpu,
# libc10, its libgomp) and the CUDA runtime libraries it names, which pip's torch keeps in
# ../../nvidia and finds through its own rpath; libtorch_cpu's rpath also lists `$ORIGIN`, so
# the copies beside it are found. System libraries stay the system's.
mapfile -t LIBS < <(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
copied=0
for lib in "${LIBS[@]}"; do
    real=$(readlink -f "$lib")
    case $real in
        /lib/* | /lib64/* | /usr/lib/* | /usr/lib64/* | /usr/local/lib/*) ;;
        *)
            cp -f "$real" "$PREFIX/lib/$(basename "$lib")"
            copied=$((copied + 1))
            ;;
    esac
done
if [[ $copied -eq 0 ]]; then
    echo "install.sh: ldd found no libtorch library for $BIN; is LD_LIBRARY_PATH hiding them?" >&2
    exit 1
fi
cp -f "$BIN" "$PREFIX/bin/sdgen.tmp"
mv -f "$PREFIX/bin/sdgen.tmp" "$PREFIX/bin/sdgen"
echo "installed $PREFIX/bin/sdgen with $copied libraries in $PREFIX/lib"
