#!/usr/bin/env bash
# The prepared GPU run: environment, the TensorRT plan (where TensorRT imports), GPU/TensorRT tests,
# embedding latency and gallery benchmarks.
#
#   PYTHONPATH=. bash benchmarks/gpu_run.sh ARTIFACT_DIR OUT_DIR [CHECKPOINT]
#
# Run from the repository root. CHECKPOINT defaults to ARTIFACT_DIR/../train/last.pt (the demo layout);
# export does not record which checkpoint an artefact came from, and the PyTorch baseline needs it.
# Writes at most 8 files into OUT_DIR, no subfolders: env.txt, gpu_log.txt, latency.{json,md,png},
# gallery.{json,md,png}. Every step runs under `timeout` and a shared time budget (GPU_RUN_BUDGET_S,
# default 420 s: with the last step's kill grace the whole run stays under 8 minutes) so one failing
# or slow step never loses the others; a step's exit code is logged and the script goes on. The
# checks come first (plan, tests), then the figures. Steps that improve on an earlier one
# (torch.compile; a 10^7 gallery, only with GPU_RUN_1E7=1 and a larger budget: generating and copying
# its 40 GB takes minutes the 8-minute run does not have) write to a scratch folder and replace the
# earlier files only when they finish.
# Overrides for a dry run on a CPU machine: GPU_RUN_DEVICE=cpu GPU_RUN_QUICK=1.
set -u

if [ $# -lt 2 ]; then
    echo "usage: bash benchmarks/gpu_run.sh ARTIFACT_DIR OUT_DIR [CHECKPOINT]" >&2
    exit 2
fi
ART=$1
OUT=$2
CKPT=${3:-$ART/../train/last.pt}
DEVICE=${GPU_RUN_DEVICE:-cuda}
QUICK=${GPU_RUN_QUICK:-0}
export PYTHONPATH=${PYTHONPATH:-.}
# pytest for a GPU machine without it and without network: the pure-Python copy that
# `bash benchmarks/gpu_pylib.sh` (make gpu-pylib) unpacks into .gpu/pylib (ignored by git; carry it),
# after the machine's own packages on PYTHONPATH so an installed pytest wins.
[ -d .gpu/pylib ] && export PYTHONPATH=$PYTHONPATH:$PWD/.gpu/pylib
PY=${PYTHON:-$(command -v python || command -v python3)}
mkdir -p "$OUT"
LOG=$OUT/gpu_log.txt
ENVF=$OUT/env.txt
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
: >"$LOG"
DEADLINE=$(($(date +%s) + ${GPU_RUN_BUDGET_S:-420}))
SUMMARY=""

say() { echo "[gpu_run $(date +%T)] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left), output appended to the log.
step() {
    local name=$1 limit=$2 left rc start
    shift 2
    left=$((DEADLINE - $(date +%s)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        say "$name: skipped, time budget spent"
        SUMMARY="$SUMMARY$name: skipped (budget)"$'\n'
        return 99
    fi
    say "$name: start (limit ${limit}s): $*"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    say "$name: exit $rc after $(($(date +%s) - start))s$([ $rc -eq 124 ] && echo ' (timed out)')"
    SUMMARY="$SUMMARY$name: exit $rc"$'\n'
    return $rc
}

environment() {
    echo "# date: $(date -u +%FT%TZ)  host: $(hostname)  device: $DEVICE"
    echo "# nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    echo "# libnvinfer in the linker cache"; (ldconfig -p 2>/dev/null | grep -i libnvinfer) || echo "none"
    echo "# python packages"
    "$PY" - <<'PYEOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("torch", "numpy", "onnx", "onnxruntime", "matplotlib", "tensorrt", "pycuda.driver", "faiss"):
    try:
        mod = importlib.import_module(name)
        print(f"{name}: importable, {getattr(mod, '__version__', getattr(sys.modules[name.split('.')[0]], '__version__', '?'))}")
    except Exception as exc:  # record why, never pretend
        print(f"{name}: NOT importable ({type(exc).__name__}: {exc})")
import torch
print("torch.cuda:", torch.version.cuda, "available:", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import onnxruntime
    print("onnxruntime providers:", onnxruntime.get_available_providers())
except ImportError:
    pass
PYEOF
    echo "# host memory"; grep -E "MemTotal|MemAvailable" /proc/meminfo
    echo "# cpu"; nproc; grep -m1 "model name" /proc/cpuinfo
}

# Enough memory for a 10^7 x 1024 float32 gallery twice on the GPU (ours + the naive baseline, 80 GB)
# and its generation on the host (~80 GB peak)?
big_gallery_fits() {
    local gpu_mib host_kib
    gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n1)
    host_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
    [ "${gpu_mib:-0}" -ge 120000 ] && [ "${host_kib:-0}" -ge 100000000 ]
}

# adopt SRC_DIR NAME: replace OUT_DIR's NAME.{json,md,png} with an upgraded run's files.
adopt() {
    if [ -f "$1/$2.json" ]; then
        cp "$1/$2".json "$1/$2".md "$OUT"/ && { [ ! -f "$1/$2.png" ] || cp "$1/$2.png" "$OUT"/; }
        say "$2: replaced by the upgraded run"
    fi
}

if [ "$QUICK" = 1 ]; then
    LAT_ARGS=(--quick --batches 1 2 --repeats 2)
    GAL_SMALL=(--quick --sizes 300 1000 --queries 8 --batches 1 4 --repeats 2)
    GAL_BIG=("${GAL_SMALL[@]}")
else
    LAT_ARGS=()
    if [[ "$DEVICE" == cuda* ]]; then LAT_ARGS=(--cpu-max-batch 32); fi  # it limits a CUDA run's CPU reference
    GAL_SMALL=(--sizes 1000 10000 100000 1000000)
    GAL_BIG=(--sizes 1000 10000 100000 1000000 10000000)
fi
LATENCY=("$PY" -m benchmarks.latency --artifact "$ART" --checkpoint "$CKPT" --device "$DEVICE" "${LAT_ARGS[@]}")
GALLERY=("$PY" -m benchmarks.gallery --device "$DEVICE")

say "artefact $ART, checkpoint $CKPT, out $OUT, device $DEVICE, quick $QUICK, PYTHONPATH $PYTHONPATH"
"$PY" -c "import pytest" 2>/dev/null || say "pytest is not importable: the test steps will fail; run \
\`bash benchmarks/gpu_pylib.sh\` where pip has network and carry .gpu/pylib"
export -f environment
export PY DEVICE
step environment 60 bash -c 'environment | tee "$1"' _ "$ENVF"
# The plan: built here, where the GPU and TensorRT that will serve it are (a plan only loads on the
# TensorRT version and GPU that built it), so the trt-fp16 row can exist. The probe is the engine's
# own (engine.backends.trt.import_runtime): a real TensorRT (tensorrt.Builder, not the empty namespace
# tensorrt-stubs leaves) and pycuda, without which the plan could be built but never run.
if why=$("$PY" -c "from engine.backends.trt import import_runtime; import_runtime()" 2>&1); then
    read -r -a BATCH_ARGS < <("$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); \
print('--min-batch', s['min_batch'], '--opt-batch', s['opt_batch'], '--max-batch', s['max_batch'])" "$ART/spec.json")
    step build-plan 150 "$PY" -m export.build_engine "$CKPT" --out "$ART" --require-trt "${BATCH_ARGS[@]}"
else
    say "build-plan: skipped, tensorrt or pycuda is not importable here (no trt-fp16 row): $(echo "$why" | tail -n1)"
fi
step pytest-gpu-trt 120 "$PY" -m pytest -q -rs -p no:cacheprovider -m "gpu or trt" tests/
step pytest-conformance 90 "$PY" -m pytest -q -rs -p no:cacheprovider tests/engine/test_backends.py \
    tests/engine/test_embedder.py
step latency 90 "${LATENCY[@]}" --no-compile --out "$OUT"
step gallery 90 "${GALLERY[@]}" "${GAL_SMALL[@]}" --out "$OUT"
step latency-compile 120 "${LATENCY[@]}" --compile --out "$SCRATCH/latency" && adopt "$SCRATCH/latency" latency
if [ "${GPU_RUN_1E7:-0}" != 1 ]; then
    say "gallery-1e7: left out: generating and copying a 10^7 x 1024 gallery (40 GB) takes minutes the" \
        "8-minute run does not have; GPU_RUN_1E7=1 with GPU_RUN_BUDGET_S >= 900 on a longer lease"
elif [ "$QUICK" = 1 ] || big_gallery_fits; then
    step gallery-1e7 600 "${GALLERY[@]}" "${GAL_BIG[@]}" --out "$SCRATCH/gallery" && adopt "$SCRATCH/gallery" gallery
else
    say "gallery-1e7: skipped, needs >= 120000 MiB GPU and >= 100 GB free host memory"
fi

say "summary:"$'\n'"$SUMMARY$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$LOG" | sed 's/^/pytest: /')"
ls -l "$OUT" | tee -a "$LOG"
