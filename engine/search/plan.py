"""Which search path answers a query batch, and with what blocks and threads: the measured
crossovers, kept in this one place.

Exact paths (same neighbours as faiss.IndexFlatL2, ties by id; one class each, see engine.search):
  "faiss" faiss.knn_L2sqr on the Gallery's own FP32 rows (engine.search.faiss_flat); distances as faiss
          rounds them (FP32 GEMM from 20 queries up, direct sums below).
  "bf16"  bf16 shortlist + FP64 re-rank, proven exact (engine.search.twopass); needs native bf16 (AVX512_BF16
          or AMX) to pay off; distances FP64-exact rounded to FP32, independent of batching.
  "fp32"  the same two-pass with an FP32 shortlist (any CPU, also without faiss).
  "fp16"  FP16 rows on the device (half the memory: 10^7 x 1024 is 20 GB) shortlisted with an FP32
          GEMM, re-ranked exactly against FP32 rows kept in host memory: a GPU gallery with
          storage="float16" (and method="fp16" anywhere, e.g. to test it on CPU).
  "torch" one chunked FP32 GEMM pass with a running top-k (engine.search.gemm): the CUDA path, and the CPU
          fallback without faiss.

Crossovers measured on the 2-core AMD EPYC (AVX-512, AVX512_BF16) dev box with
``python -m benchmarks.gallery`` (sizes 10^3..10^6, dims 512 and 1024, batches 1..1000, all paths
interleaved in one process; see benchmarks/README.md): faiss's single C++ call wins at small
galleries and single queries, where a torch search is dominated by per-op overhead; the bf16
two-pass wins once a batch has enough rows x queries for its 2x GEMM rate to pay the re-rank. On
CPUs without native bf16 the bf16 rows are never chosen (emulated bf16 is slower than FP32).

Approximate paths ("ivf", "hnsw", "ivf-sq8"; engine.search.approximate) are chosen only by name.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

EXACT = ("faiss", "bf16", "fp32", "fp16", "torch")
APPROXIMATE = ("ivf", "hnsw", "ivf-sq8")
METHODS = ("auto", *EXACT, *APPROXIMATE)

# Scores per block: on CPU 8M for the one-pass search (FP32 scores + int64 keys, 96 MB) and 32M for the
# two-pass shortlist scan (bf16 scores, 64 MB: at 10^5 x 1024 x 1,000 queries 32,768-row chunks ran
# 1.93x faiss against 1.63x for 8,192, interleaved); on CUDA 64M, few launches.
BLOCK_ELEMENTS = {"cpu": 1 << 23, "cpu-two-pass": 1 << 25, "cuda": 1 << 26}
MIN_CHUNK = 1024

# bf16 two-pass from this many gallery rows x queries in the batch and this many rows: below, its
# fixed costs (query conversion, re-rank, proof) lose to faiss. Measured (interleaved, loaded box):
# 10^4 x 1024 x 10 queries bf16 2.1x faiss, 10^5 x 10 2.6x, 10^5 x 100 4.9x; at one query faiss's
# single pass wins (10^5 x 1: faiss path 2.8-3.9x IndexFlatL2 on one thread, bf16 2.7x).
BF16_MIN_WORK = 100_000
BF16_MIN_ROWS = 4_096
# From BIG_BATCH queries faiss's BLAS blocks run at full GEMM efficiency, and the bf16 path's re-rank
# (~0.2 ms a query whatever the gallery size) needs a bigger gallery to pay off: at 10^4 x 1024 x 1,000
# queries bf16 ran 0.86x faiss, at 10^5 1.3-1.6x.
BIG_BATCH = 512  # also where faiss becomes the GEMM of choice without bf16
BF16_MIN_ROWS_BIG_BATCH = 32_768
# A GEMM (torch, one pass) from this many gallery bytes and GEMM_MIN_BATCH up to BIG_BATCH queries (the
# path of CPUs without native bf16): up to a few hundred queries faiss's BLAS blocks are small
# (10^4 x 100: torch 1.8-3.4x faiss; 3.5-6x on a real AVX2 EPYC); below ~20 queries faiss's per-query
# scans win. Measured with AVX-512 and bf16 switched off (ATEN_CPU_CAPABILITY=avx2, FAISS_SIMD_LEVEL=AVX2,
# JLML_NATIVE_BF16=0), 10^4-10^5 x 512-1024: torch 0.61-1.05x faiss at 10 queries, 0.90-1.58x at 16,
# 1.17-2.10x at 24, 1.30-2.29x at 32. A gallery under GEMM_MIN_BYTES stays in cache: faiss's lean call wins.
GEMM_MIN_BYTES = 8 << 20
GEMM_MIN_BATCH = 24

# One CPU thread per this many multiply-adds of the batch's distance GEMM (rows x batch x dim): below,
# a thread's share is ~50 us and an OpenMP fork/join costs about as much as it saves. Measured both
# ways on the 2-core box: with 2^26 here (one thread up to ~5 ms of work) the loaded machine (load
# 17) gained up to 20x on sub-millisecond searches (faiss's two threads stalled on barriers), but the
# quiet machine (load 1-3) lost 2x on them (10^3 x 512-1024 x 10-100 queries: 0.50-0.58x faiss);
# a library should be tuned for the quiet case, so the grain is small.
THREAD_GRAIN = 1 << 20


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
    """The fastest exact path for this batch (one of EXACT; "fp32" only when asked for: on CPUs
    without native bf16 the one-pass GEMM beat the FP32 shortlist, 3.5x against 0.54x faiss at
    10^3 x 1024 x 100 on an AVX2 EPYC)."""
    if shape.device != "cpu":
        return "fp16" if shape.storage == "float16" else "torch"
    fp32 = shape.storage == "float32"
    work = shape.rows * shape.batch
    min_rows = BF16_MIN_ROWS_BIG_BATCH if shape.batch >= BIG_BATCH else BF16_MIN_ROWS
    if fp32 and shape.bf16_fast and shape.batch >= 2 and shape.rows >= min_rows \
            and work >= BF16_MIN_WORK:  # one query: no bf16 copy (nor its build on a first search)
        return "bf16"
    gemm = shape.rows * shape.dim * 4 >= GEMM_MIN_BYTES and GEMM_MIN_BATCH <= shape.batch < BIG_BATCH
    if fp32 and shape.has_faiss and not shape.excluding and not gemm:
        return "faiss"
    return "torch"


def keeps_fp32_rows(method: str, device: str, storage: str) -> bool:
    """Whether a gallery keeps FP32 rows in host memory beside its FP16 ones: every search of it then
    takes the "fp16" path (shortlist on the FP16 rows, exact re-rank against the FP32 ones)."""
    return method == "fp16" or (method == "auto" and device != "cpu" and storage == "float16")


def path_for(method: str, shape: Shape, fp32_rows: bool) -> str:
    """The path of a batch of ``shape`` in a gallery made with ``method`` (``fp32_rows``: it keeps
    FP32 rows beside FP16 ones, see keeps_fp32_rows)."""
    if method == "faiss" and shape.excluding:
        return "torch"  # faiss cannot skip same-id-same-camera rows per query
    if fp32_rows:
        return "fp16"
    if method != "auto":
        return method
    return choose(shape)


def chunk_rows(path: str, device: str, batch: int) -> int:
    """Gallery rows scored at once by a torch path for ``batch`` queries: one block of BLOCK_ELEMENTS."""
    block = BLOCK_ELEMENTS["cpu-two-pass" if path in ("bf16", "fp32") and device == "cpu" else device]
    return max(MIN_CHUNK, block // max(1, batch))


def keeps_threads(shape: Shape) -> bool:
    """Whether this batch runs on the threads it finds (no switch): one query, as faiss parallelises
    over queries (one runs on one thread anyway) and torch's GEMV has its own grain size, so switching
    would only cost time."""
    return shape.batch == 1


def threads(shape: Shape, available: int) -> int:
    """CPU threads for this batch: one per THREAD_GRAIN multiply-adds, at most ``available``
    (``available`` itself where ``keeps_threads``)."""
    if keeps_threads(shape):
        return available
    return max(1, min(available, shape.rows * shape.batch * shape.dim // THREAD_GRAIN))


@contextlib.contextmanager
def cpu_threads(n: int, faiss: Any = None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (and ``n`` OpenMP threads in ``faiss``, its own runtime, when
    given), then restore both counts."""
    import torch

    cap = torch.get_num_threads()
    faiss_cap = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(cap)
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_cap)
