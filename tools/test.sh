#!/usr/bin/env bash
# The test command for a fresh machine: install libtorch if needed, run the txt2img example
# on the bundled tiny model, then build and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo run --quiet --example txt2img -- weights/tiny-sd target/example-out
cargo test --all-targets
