#!/usr/bin/env bash
# The device tool carries the working tree (tracked and untracked files) plus the carried
# paths, 64 MiB in all; sdgen's tracked files are about 200 MB (tiny models and goldens for
# every test). Before a GPU check, thin the checkout to what tools/gpu_check.sh reads:
#
#   tools/gpu_tree.sh slim      sparse checkout: code, tools, weights/tiny-sd and the SD 1.x
#                               goldens (not tiny-sdxl: its checks are then skipped)
#   (run: carry=[".gpu/sdgen.xz", ".whl"], command="tools/gpu_check.sh ...")
#   tools/gpu_tree.sh full      everything back
#   tools/gpu_tree.sh size      what would travel, in MiB
set -euo pipefail
cd "$(dirname "$0")/.."
size() {
    local tree carried=0
    # du skips (and fails on) the files a sparse checkout leaves out.
    tree=$(git ls-files -z | { xargs -0 -r du -cb 2>/dev/null || true; } | tail -1 | cut -f1)
    for p in .gpu/sdgen.xz .whl; do
        if [[ -e $p ]]; then carried=$((carried + $(du -sb "$p" | cut -f1))); fi
    done
    echo "tracked files $((tree / 1048576)) MiB + .gpu/sdgen.xz and .whl $((carried / 1048576)) MiB = $(((tree + carried) / 1048576)) MiB (limit 64)"
}
case ${1:-} in
    slim)
        git sparse-checkout set --no-cone '/*' '!/weights/*' '!/tests/fixtures/*' \
            '/weights/tiny-sd/' '/tests/fixtures/goldens/'
        size
        ;;
    full)
        git sparse-checkout disable
        size
        ;;
    size) size ;;
    *)
        echo "usage: tools/gpu_tree.sh slim|full|size" >&2
        exit 2
        ;;
esac
