#!/usr/bin/env bash
# The test command for a fresh machine: install libtorch if needed, run the txt2img example
# on the bundled tiny model, then build and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# Test binaries run many tests at once on few cores; libtorch's intra-op threads would only
# spin against each other there (one 20-step case went from 0.3 s to 76 s under load).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo run --quiet --example txt2img -- weights/tiny-sd target/example-out
cargo test --all-targets
