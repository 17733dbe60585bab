"""A Triton Inference Server model repository for the exported artefacts.

``jlml_onnx`` (onnxruntime_onnx, ``1/model.onnx``) is always written; ``jlml_trt`` (tensorrt_plan,
``1/model.plan``) only when a plan was built for a profile starting at batch 1. Model files are copied,
not symlinked, so the repository can be moved or mounted into a container on its own. Names, dims
(without the batch axis), dtypes and ``max_batch_size`` come from the spec, so the server validates
requests against the same contract.

Two facts Triton's config cannot enforce are handled here: a Triton container loads only plans of its
own TensorRT version, so ``jlml_trt`` records the version that built it (a config parameter and the
repository's README.md); and Triton accepts any batch from 1 to ``max_batch_size``, so a plan whose
profile starts above 1 would reject small requests. Such a plan is refused for Triton (not padded:
Triton's TensorRT backend has no padding, and an ensemble only for that is more to run than a
``--min-batch 1`` rebuild).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.atomic import write_text, write_with
from engine.errors import InputError
from engine.spec import ModelSpec

ONNX_MODEL = "jlml_onnx"
TRT_MODEL = "jlml_trt"
# Triton waits at most this long to fill a preferred batch: small next to a re-id query's latency.
MAX_QUEUE_DELAY_US = 2000


def preferred_batch_sizes(spec: ModelSpec) -> list[int]:
    """The batch sizes the dynamic batcher should aim for: the profile's opt and max batch."""
    return sorted({spec.opt_batch, spec.max_batch})


def config_pbtxt(name: str, platform: str, spec: ModelSpec, *, kind: str, instances: int = 1,
                 parameters: dict[str, str] | None = None) -> str:
    """Text of one ``config.pbtxt``; ``kind`` is a Triton instance kind such as KIND_GPU or KIND_AUTO;
    ``parameters`` become string-valued ``parameters`` entries (facts for whoever deploys it)."""
    dims = ", ".join(str(d) for d in spec.image_shape)
    preferred = ", ".join(str(b) for b in preferred_batch_sizes(spec))
    extra = "".join(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
                    for k, v in (parameters or {}).items())
    return extra + f"""name: "{name}"
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


def check_plan_for_triton(spec: ModelSpec) -> None:
    """Raise InputError when Triton could send the plan batches its profile rejects (min batch > 1)."""
    if spec.min_batch > 1:
        raise InputError(
            f"the TensorRT profile starts at batch {spec.min_batch}, but Triton sends any batch from 1 to "
            f"{spec.max_batch} and the plan would reject the smaller ones; for Triton rebuild with "
            "--min-batch 1 (the jlml_onnx model serves every batch size)"
        )


def write_triton_repo(root: str | os.PathLike[str], spec: ModelSpec, *, onnx_path: str | os.PathLike[str],
                      plan_path: str | os.PathLike[str] | None = None, tensorrt_version: str = "",
                      instances: int = 1) -> Path:
    """Write the repository under ``root`` (e.g. ``OUT/triton``) and return ``root``.

    The TensorRT model needs a GPU (KIND_GPU), the TensorRT version that built ``plan_path`` and a
    profile that starts at batch 1 (``check_plan_for_triton``); the ONNX model uses KIND_AUTO so it also
    serves on a CPU-only Triton.
    """
    root = Path(root)
    models = [(ONNX_MODEL, "onnxruntime_onnx", "KIND_AUTO", Path(onnx_path), "model.onnx", {})]
    if plan_path is not None:
        check_plan_for_triton(spec)
        if not tensorrt_version:
            raise InputError("pass tensorrt_version=: a Triton container loads only plans of its own version")
        models.append((TRT_MODEL, "tensorrt_plan", "KIND_GPU", Path(plan_path), "model.plan",
                       {"tensorrt_version": tensorrt_version}))
    for name, platform, kind, source, file_name, parameters in models:
        write_text(root / name / "config.pbtxt",
                   config_pbtxt(name, platform, spec, kind=kind, instances=instances, parameters=parameters))
        write_with(root / name / "1" / file_name, lambda tmp, src=source: shutil.copyfile(src, tmp))
    write_text(root / "README.md", _readme(spec, tensorrt_version if plan_path is not None else ""))
    return root


def _readme(spec: ModelSpec, tensorrt_version: str) -> str:
    lines = ["# Triton model repository (written by `python -m export.build_engine`)", "",
             f"- `{ONNX_MODEL}`: ONNX Runtime, any batch 1..{spec.max_batch}, CPU or GPU."]
    if tensorrt_version:
        lines.append(f"- `{TRT_MODEL}`: TensorRT plan built with **TensorRT {tensorrt_version}**; load it only "
                     f"in a Triton container whose TensorRT is {tensorrt_version} (and on the GPU model it "
                     f"was built on), batch 1..{spec.max_batch}.")
    else:
        lines.append(f"- no `{TRT_MODEL}`: no plan was built, or its profile starts above batch 1 (Triton "
                     "sends batches from 1; rebuild with `--min-batch 1` to serve the plan here).")
    lines += ["", f"Input `{spec.input_name}`: uint8 HxWx3 = {spec.height}x{spec.width}x3 (preprocessing is "
              f"inside the model); output `{spec.output_name}`: float32 {spec.embedding_dim}-D unit vectors."]
    return "\n".join(lines) + "\n"
