#!/usr/bin/env bash
# The test command for a fresh machine: install libtorch if needed, run the txt2img example
# on the bundled tiny model, then build and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# Test binaries run many tests at once on few cores; libtorch's intra-op threads would only
# spin against each other there (one 20-step case went from 0.3 s to 76 s under load).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# The real client packages that drive `sdgen serve` in tests/serve.rs (A1111's `webuiapi`,
# `openai`), in a throwaway venv kept under target/ so reruns are quick.
CLIENTS=target/clients-venv
if [ ! -x "$CLIENTS/bin/python" ] || ! "$CLIENTS/bin/python" -c "import webuiapi, openai" 2>/dev/null; then
    rm -rf "$CLIENTS"
    python3 -m venv "$CLIENTS"
    "$CLIENTS/bin/pip" install --quiet --disable-pip-version-check webuiapi==0.9.17 openai==3.57.0
fi
export SDGEN_CLIENTS_PYTHON="$PWD/$CLIENTS/bin/python"
# Debian's headless Chromium for the web page's browser test (tests/serve.rs), when it can
# be installed here; without it that one test says it skipped.
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
            && apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null 2>&1; } \
        || echo "test.sh: could not install chromium-headless-shell; the browser test will skip" >&2
fi
cargo run --quiet --example txt2img -- weights/tiny-sd target/example-out
cargo test --all-targets
