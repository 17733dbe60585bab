#!/usr/bin/env bash
# Build .gpu/pylib: pytest and its pure-Python dependencies, unpacked for the GPU machine's Python
# (3.12), which has no network and may have no pytest. benchmarks/gpu_run.sh appends it to PYTHONPATH
# (the machine's own packages win), so its pytest steps run. Needs pip and network here, not there.
#
#   bash benchmarks/gpu_pylib.sh [DEST]        # or: make gpu-pylib; DEST defaults to .gpu/pylib
#
# Only pure-Python wheels (py3-none-any) are taken, so it works whatever this machine's CPU or Python;
# the folder must stay under the 64 MiB a device call carries (pytest and its needs are ~10 MiB).
set -euo pipefail

DEST=${1:-.gpu/pylib}
PY=${PYTHON:-python3}
TARGET=${GPU_PYLIB_PYTHON:-3.12}
LIMIT_MIB=64
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT

"$PY" -m pip download -q --only-binary=:all: --python-version "$TARGET" --implementation py --abi none \
    --platform any -d "$WHEELS" pytest
rm -rf "$DEST"
mkdir -p "$DEST"
for wheel in "$WHEELS"/*.whl; do
    "$PY" -m zipfile -e "$wheel" "$DEST"  # a pure-Python wheel imports as unpacked, no install step
done
size=$(du -sm "$DEST" | cut -f1)
if [ "$size" -ge "$LIMIT_MIB" ]; then
    echo "error: $DEST is $size MiB, a device call carries $LIMIT_MIB MiB in all; remove what is not pytest's" >&2
    exit 1
fi
echo "wrote $DEST ($size MiB) for Python $TARGET from: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
