"""Squared-L2 gallery search, after FAISS's shape: one façade, one plan, one class per path.

    gallery.py      Gallery: the façade (rows, ids, cams, add, search, save, load)
    rows.py         RowStore: the rows on their device, norms, ids, cams, tie order, bounds
    checks.py       every input check (vectors, labels, k, nprobe, options)
    file.py         the .npz file: format, atomic save, careful load, row paths
    plan.py         which path answers a batch, blocks and threads: the measured crossovers
    faiss_flat.py   FaissFlat: faiss's exact knn_L2sqr on the rows ("faiss")
    twopass.py      TwoPassSearch: proven-exact shortlist + FP64 re-rank ("bf16", "fp32", "fp16")
    gemm.py         Gemm: one chunked GEMM pass with a running top-k ("torch"; CUDA and CPU)
    approximate.py  Approximate: faiss IVF / HNSW / IVF-SQ8 ("ivf", "hnsw", "ivf-sq8")
    distance.py     the squared-L2 expansion (also used by engine.metrics and engine.rerank)
    buffers.py      row buffers with amortised growth

Every path class has ``search(queries, k, exclusion) -> (distances, ids)``; a query batch goes
through ``Gallery.search`` once and one path (FaissFlat hands the rare queries whose k-th distance
ties beyond its candidates to its own Gemm, which ranks ties by id). On CUDA the paths are Gemm
(FP32 rows) and TwoPassSearch "fp16" (FP16 rows): the same classes on the gallery's device, no CUDA
twin. torch and faiss are imported when first needed.
"""
from .file import read as read_gallery_file
from .gallery import METHODS, UNKNOWN_CAM, Gallery

__all__ = ["METHODS", "UNKNOWN_CAM", "Gallery", "read_gallery_file"]
