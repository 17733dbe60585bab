"""A Triton Inference Server model repository for the exported artefacts.

``jlml_onnx`` (onnxruntime_onnx, ``1/model.onnx``) is always written; ``jlml_trt`` (tensorrt_plan,
``1/model.plan``) only when a plan was built. Model files are copied, not symlinked, so the repository
can be moved or mounted into a container on its own. Names, dims (without the batch axis), dtypes and
``max_batch_size`` come from the spec, so the server validates requests against the same contract.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.atomic import write_text, write_with
from engine.spec import ModelSpec

ONNX_MODEL = "jlml_onnx"
TRT_MODEL = "jlml_trt"
# Triton waits at most this long to fill a preferred batch: small next to a re-id query's latency.
MAX_QUEUE_DELAY_US = 2000


def preferred_batch_sizes(spec: ModelSpec) -> list[int]:
    """The batch sizes the dynamic batcher should aim for: the profile's opt and max batch."""
    return sorted({spec.opt_batch, spec.max_batch})


def config_pbtxt(name: str, platform: str, spec: ModelSpec, *, kind: str, instances: int = 1) -> str:
    """Text of one ``config.pbtxt``; ``kind`` is a Triton instance kind such as KIND_GPU or KIND_AUTO."""
    dims = ", ".join(str(d) for d in spec.image_shape)
    preferred = ", ".join(str(b) for b in preferred_batch_sizes(spec))
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {spec.max_batch}
input [
  {{
    name: "{spec.input_name}"
    data_type: TYPE_UINT8
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "{spec.output_name}"
    data_type: TYPE_FP32
    dims: [ {spec.embedding_dim} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: {instances}
    kind: {kind}
  }}
]
"""


def write_triton_repo(root: str | os.PathLike[str], spec: ModelSpec, *, onnx_path: str | os.PathLike[str],
                      plan_path: str | os.PathLike[str] | None = None, instances: int = 1) -> Path:
    """Write the repository under ``root`` (e.g. ``OUT/triton``) and return ``root``.

    The TensorRT model needs a GPU (KIND_GPU); the ONNX model uses KIND_AUTO so it also serves on a
    CPU-only Triton.
    """
    root = Path(root)
    models = [(ONNX_MODEL, "onnxruntime_onnx", "KIND_AUTO", Path(onnx_path), "model.onnx")]
    if plan_path is not None:
        models.append((TRT_MODEL, "tensorrt_plan", "KIND_GPU", Path(plan_path), "model.plan"))
    for name, platform, kind, source, file_name in models:
        write_text(root / name / "config.pbtxt",
                   config_pbtxt(name, platform, spec, kind=kind, instances=instances))
        write_with(root / name / "1" / file_name, lambda tmp, src=source: shutil.copyfile(src, tmp))
    return root
