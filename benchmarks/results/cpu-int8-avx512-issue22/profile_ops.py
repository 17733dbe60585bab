"""Issue 22 measurement script: ONNX Runtime's per-op time of a graph at batch 64 (profile_ops.txt).

Run from the repository root with PYTHONPATH=. (see benchmarks/README.md, INT8 embedding on CPU).
"""

import collections
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort

path = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.enable_profiling = True
so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "jlml_prof")
for kv in sys.argv[3:]:
    k, v = kv.split("=")
    so.add_session_config_entry(k, v)
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).integers(0, 256, (64, 160, 64, 3), dtype=np.uint8)
for _ in range(3):
    s.run(None, {"images": x})
f = s.end_profiling()
with open(f) as fh:
    ev = json.load(fh)
t = collections.Counter()
c = collections.Counter()
runs = [e for e in ev if e.get("name") == "model_run"]
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        op = e["args"]["op_name"]
        t[op] += e["dur"]
        c[op] += 1
tot = sum(t.values())
print(path, "run ms", [round(r["dur"] / 1000, 1) for r in runs])
for op, d in t.most_common(12):
    print(f"  {op:28s} {d / 3 / 1000:8.1f} ms/run  {100 * d / tot:5.1f}%  n={c[op] // 3}")

os.remove(f)
