#!/usr/bin/env bash
# Long fuzzing run of one target with libFuzzer: tools/fuzz.sh TARGET SECONDS [libFuzzer flags...]
#
# Targets: safetensors, ldm_keys, batch, png_metadata, tokenizer (fuzz/fuzz_targets/). Needs a
# nightly toolchain and cargo-fuzz (`rustup toolchain install nightly; cargo install cargo-fuzz`);
# CI does not: `cargo test --test fuzz_corpus` runs the same entry points on stable in seconds.
#
# New inputs go to fuzz/work/TARGET (ignored by git); the committed seeds in fuzz/corpus/TARGET
# are only read. A crash is saved under fuzz/artifacts/TARGET/ and replays with
#   tools/fuzz.sh TARGET 0 fuzz/artifacts/TARGET/crash-...
# (a file argument runs just that input). Built without a sanitizer: the parsers are safe
# Rust, and AddressSanitizer does not mix well with libtorch, which the targets link.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:?usage: tools/fuzz.sh TARGET SECONDS [libFuzzer flags...]}
seconds=${2:?usage: tools/fuzz.sh TARGET SECONDS [libFuzzer flags...]}
shift 2

export LIBTORCH=${LIBTORCH:-$root/.venv/site/torch}
export LIBTORCH_CXX11_ABI=${LIBTORCH_CXX11_ABI:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# The fuzz binaries do not get sdgen's rpath (build.rs adds it to sdgen's own binaries only).
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cd "$root"
if [[ $# -gt 0 && -f "$1" ]]; then
    exec cargo +nightly fuzz run -s none "$target" "$@"
fi
mkdir -p "$root/fuzz/work/$target"
# -timeout: one input taking 10 s is a hang worth reporting; -rss_limit_mb: room for libtorch.
exec cargo +nightly fuzz run -s none "$target" "$root/fuzz/work/$target" "$root/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 "$@"
