#!/bin/bash
# The Gallery-vs-faiss sweep with AVX-512 and native bf16 switched off in every library: what an AVX2-only CPU runs.
set -u
OUT=$1; mkdir -p $OUT
export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 FAISS_SIMD_LEVEL=AVX2 OPENBLAS_CORETYPE=Haswell JLML_NATIVE_BF16=0
cd /work/main
PY=.venv/bin/python
(uptime; date -u) > $OUT/uptime.txt
$PY -m benchmarks.gallery --sizes 1000 10000 --dims 512 1024 --batches 1 10 100 1000 --queries 1000 --repeats 200 --rounds 50 --no-naive --out $OUT/small > $OUT/small.log 2>&1
(uptime; date -u) >> $OUT/uptime.txt
$PY -m benchmarks.gallery --sizes 100000 --dims 512 1024 --batches 1 10 100 1000 --queries 1000 --repeats 7 --rounds 3 --no-naive --out $OUT/1e5 > $OUT/1e5.log 2>&1
(uptime; date -u) >> $OUT/uptime.txt
$PY -m benchmarks.gallery --sizes 1000000 --dims 512 1024 --batches 1 10 100 1000 --queries 1000 --repeats 2 --rounds 1 --no-naive --out $OUT/1e6 > $OUT/1e6.log 2>&1
(uptime; date -u) >> $OUT/uptime.txt
echo done >> $OUT/uptime.txt
