"""Which exact search path answers a query batch: the measured crossovers, kept in this one place.

Paths (all exact, same neighbours as faiss.IndexFlatL2, ties by id):
  "faiss" faiss.knn_L2sqr on the Gallery's own FP32 rows (engine.faiss_search); distances as faiss
          rounds them (FP32 GEMM from 20 queries up, direct sums below).
  "bf16"  bf16 shortlist + FP64 re-rank, proven exact (engine.twopass); needs native bf16 (AVX512_BF16
          or AMX) to pay off; distances FP64-exact rounded to FP32, independent of batching.
  "fp32"  the same two-pass with an FP32 shortlist (any CPU, also without faiss).
  "torch" one chunked FP32 GEMM pass with a running top-k (engine.topk): the CUDA path, and the CPU
          fallback without faiss.

Crossovers measured on the 2-core AMD EPYC (AVX-512, AVX512_BF16) dev box with
``python -m benchmarks.gallery`` (sizes 10^3..10^6, dims 512 and 1024, batches 1..1000, all paths
interleaved in one process; see benchmarks/README.md): faiss's single C++ call wins at small
galleries and single queries, where a torch search is dominated by per-op overhead; the bf16
two-pass wins once a batch has enough rows x queries for its 2x GEMM rate to pay the re-rank. On
CPUs without native bf16 the bf16 rows are never chosen (emulated bf16 is slower than FP32).
"""
from __future__ import annotations

from dataclasses import dataclass

EXACT = ("faiss", "bf16", "fp32", "torch")

# bf16 two-pass from this many gallery rows x queries in the batch (and at least BF16_MIN_ROWS rows):
# below, its fixed costs (query conversion, re-rank, proof) lose to faiss.
BF16_MIN_WORK = 2_000_000
BF16_MIN_ROWS = 16_384
# Without faiss: the FP32 two-pass beats the one-pass torch search from this many rows (its shortlist
# scan needs no tie keys); below, the single pass is cheaper.
FP32_TWO_PASS_MIN_ROWS = 16_384


# One CPU thread per this many multiply-adds of the batch's distance GEMM (rows x batch x dim). Below,
# a thread's share is well under a millisecond and an OpenMP fork/join (and, on a shared machine, a
# barrier waiting for a descheduled thread) costs more than it saves: measured on the loaded 2-core
# box, faiss at 1,000 x 512 with 10 queries took 0.4 ms on one thread and 47-58 ms on two.
THREAD_GRAIN = 1 << 26


@dataclass(frozen=True)
class Shape:
    """What the choice depends on."""

    rows: int
    batch: int
    dim: int
    device: str  # "cpu" or "cuda"
    storage: str  # "float32" or "float16"
    excluding: bool  # same-id-same-camera exclusion asked for (faiss cannot)
    has_faiss: bool
    bf16_fast: bool


def choose(shape: Shape) -> str:
    """The fastest exact path for this batch (one of EXACT)."""
    if shape.device != "cpu":
        return "torch"
    big = shape.rows >= BF16_MIN_ROWS and shape.rows * shape.batch >= BF16_MIN_WORK
    if big and shape.bf16_fast and shape.storage == "float32":
        return "bf16"
    if shape.has_faiss and shape.storage == "float32" and not shape.excluding:
        return "faiss"
    return "fp32" if shape.rows >= FP32_TWO_PASS_MIN_ROWS else "torch"


def threads(shape: Shape, available: int) -> int:
    """CPU threads for this batch: one per THREAD_GRAIN multiply-adds, at most ``available``."""
    return max(1, min(available, shape.rows * shape.batch * shape.dim // THREAD_GRAIN))
