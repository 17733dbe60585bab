"""The complete Triton model repository of an artefact (``ARTIFACT/triton``), served two ways.

``embed`` (uint8 N,H,W,3 -> unit embeddings, dynamic batching), ``search`` and ``gallery_add``
(engine.client's protocol). ``embed/config.pbtxt`` is ONNX Runtime on ``1/model.onnx``, for a stock
NVIDIA Triton container; ``embed/configs/engine.pbtxt`` runs the same graph through engine.Embedder
in Triton's Python backend (``1/model.py``), for the ``tritonserver`` inside the PyTriton wheel, which
has only that backend (``python -m serve`` selects it with ``--model-config-name engine``); with a
plan whose profile starts at batch 1, ``embed/configs/tensorrt.pbtxt`` serves ``1/model.plan``.
``search`` and ``gallery_add`` are Python-backend models over engine.Gallery; they embed query images
by calling ``embed`` (BLS), so every image goes through the one batched model. The ``model.py`` files
are three lines importing serve.triton_models: the server needs this package importable.

Readiness means answering: ``embed`` runs a warm-up request before Triton marks it ready (``model_warmup``),
so ``/v2/health/ready`` is 200 only once every model answers. Model files are copied, not symlinked,
so the artefact can be moved or mounted into a container on its own.

Two facts Triton's config cannot enforce are handled here: a Triton container loads only plans of its
own TensorRT version, so the tensorrt config records the version that built it (a config parameter and
the repository's README.md); and Triton accepts any batch from 1 to ``max_batch_size``, so a plan whose
profile starts above 1 would reject small requests and is refused for Triton (rebuild with ``--min-batch 1``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.atomic import write_text, write_with
from engine.client import (
    ADD_MODEL,
    CAMS,
    COUNT,
    DISTANCES,
    EMBED_MODEL,
    EMBEDDINGS,
    ENGINE_CONFIG,
    IDS,
    IMAGES,
    SEARCH_MODEL,
    K,
)
from engine.errors import InputError
from engine.spec import ModelSpec

TENSORRT_CONFIG = "tensorrt"
MODEL_CLASSES = {EMBED_MODEL: "EmbedModel", SEARCH_MODEL: "SearchModel", ADD_MODEL: "AddModel"}
# No wait to fill a batch: a lone request runs at once (the batch-1 cost), and under load requests
# queue while the one instance runs, so the next batch forms anyway.
MAX_QUEUE_DELAY_US = 0


def preferred_batch_sizes(spec: ModelSpec) -> list[int]:
    """The batch sizes the dynamic batcher should aim for: the profile's opt and max batch."""
    return sorted({spec.opt_batch, spec.max_batch})


def _tensor(name: str, data_type: str, dims: tuple[int, ...], *, optional: bool = False) -> str:
    flag = "\n    optional: true" if optional else ""
    return (f'  {{\n    name: "{name}"\n    data_type: TYPE_{data_type}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]{flag}\n  }}')


def _io(inputs: list[str], outputs: list[str]) -> str:
    return "input [\n" + ",\n".join(inputs) + "\n]\noutput [\n" + ",\n".join(outputs) + "\n]\n"


def _parameters(parameters: dict[str, str]) -> str:
    return "".join(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
                   for k, v in parameters.items())


def embed_config(spec: ModelSpec, *, runtime: str, kind: str, instances: int = 1,
                 parameters: dict[str, str] | None = None) -> str:
    """Text of one ``embed`` config; ``runtime`` is ``backend: "onnxruntime"``-style text (backend or
    platform line), ``kind`` a Triton instance kind (KIND_AUTO, KIND_GPU, KIND_CPU)."""
    preferred = ", ".join(str(b) for b in preferred_batch_sizes(spec))
    warmup_dims = ", ".join(str(d) for d in spec.image_shape)
    return _parameters(parameters or {}) + f'name: "{EMBED_MODEL}"\n{runtime}\nmax_batch_size: {spec.max_batch}\n' + \
        _io([_tensor(IMAGES, "UINT8", spec.image_shape)], [_tensor(EMBEDDINGS, "FP32", (spec.embedding_dim,))]) + \
        f"""dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: {instances}
    kind: {kind}
  }}
]
model_warmup [
  {{
    name: "one_image"
    batch_size: 1
    inputs {{
      key: "{IMAGES}"
      value: {{ data_type: TYPE_UINT8 dims: [ {warmup_dims} ] zero_data: true }}
    }}
  }}
]
"""


def gallery_configs(spec: ModelSpec) -> dict[str, str]:
    """Texts of the unbatched Python-backend ``search`` and ``gallery_add`` configs."""
    images = _tensor(IMAGES, "UINT8", (-1, *spec.image_shape))
    tail = 'instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n'
    search = _io([_tensor(IMAGES, "UINT8", (-1, *spec.image_shape), optional=True),
                  _tensor(EMBEDDINGS, "FP32", (-1, spec.embedding_dim), optional=True), _tensor(K, "INT32", (1,))],
                 [_tensor(DISTANCES, "FP32", (-1, -1)), _tensor(IDS, "INT64", (-1, -1))])
    add = _io([images, _tensor(IDS, "INT64", (-1,)), _tensor(CAMS, "INT64", (-1,), optional=True)],
              [_tensor(COUNT, "INT64", (1,))])
    return {name: f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n{io}{tail}'
            for name, io in ((SEARCH_MODEL, search), (ADD_MODEL, add))}


def model_py(name: str) -> str:
    """The Python-backend ``model.py`` of ``name``: the class the backend instantiates, from serve."""
    return (f'"""Triton Python-backend model `{name}` of jlml-engine (written by `python -m export.build_engine`).\n\n'
            "Needs jlml-engine importable where Triton runs (pip install 'jlml-engine[serve]'); see ../../README.md.\n"
            '"""\n'
            f"from serve.triton_models import {MODEL_CLASSES[name]} as TritonPythonModel  # noqa: F401\n")


def check_plan_for_triton(spec: ModelSpec) -> None:
    """Raise InputError when Triton could send the plan batches its profile rejects (min batch > 1)."""
    if spec.min_batch > 1:
        raise InputError(
            f"the TensorRT profile starts at batch {spec.min_batch}, but Triton sends any batch from 1 to "
            f"{spec.max_batch} and the plan would reject the smaller ones; for Triton rebuild with "
            "--min-batch 1 (embed's ONNX Runtime config serves every batch size)"
        )


def _copy(source: Path, target: Path) -> None:
    write_with(target, lambda tmp: shutil.copyfile(source, tmp))


def write_triton_repo(root: str | os.PathLike[str], spec: ModelSpec, *, onnx_path: str | os.PathLike[str],
                      plan_path: str | os.PathLike[str] | None = None, tensorrt_version: str = "",
                      instances: int = 1) -> Path:
    """Write the repository under ``root`` (``ARTIFACT/triton``) and return ``root``.

    ``embed``'s ONNX Runtime config uses KIND_AUTO so it serves on a CPU-only Triton too; the TensorRT
    config (only with ``plan_path``) needs a GPU, the TensorRT version that built the plan and a
    profile that starts at batch 1 (``check_plan_for_triton``).
    """
    root = Path(root)
    if plan_path is not None:
        check_plan_for_triton(spec)
        if not tensorrt_version:
            raise InputError("pass tensorrt_version=: a Triton container loads only plans of its own version")
    embed = root / EMBED_MODEL
    configs = {embed / "config.pbtxt": embed_config(spec, runtime='backend: "onnxruntime"', kind="KIND_AUTO",
                                                    instances=instances),
               embed / "configs" / f"{ENGINE_CONFIG}.pbtxt": embed_config(spec, runtime='backend: "python"',
                                                                          kind="KIND_CPU")}
    _copy(Path(onnx_path), embed / "1" / "model.onnx")
    if plan_path is not None:
        configs[embed / "configs" / f"{TENSORRT_CONFIG}.pbtxt"] = embed_config(
            spec, runtime='platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"', kind="KIND_GPU",
            instances=instances, parameters={"tensorrt_version": tensorrt_version})
        _copy(Path(plan_path), embed / "1" / "model.plan")
    configs.update({root / name / "config.pbtxt": text for name, text in gallery_configs(spec).items()})
    configs.update({root / name / "1" / "model.py": model_py(name) for name in MODEL_CLASSES})
    for path, text in configs.items():
        write_text(path, text)
    write_text(root / "README.md", _readme(spec, tensorrt_version if plan_path is not None else ""))
    return root


def _readme(spec: ModelSpec, tensorrt_version: str) -> str:
    lines = ["# Triton model repository (written by `python -m export.build_engine`)", "",
             f"- `{EMBED_MODEL}`: uint8 `{IMAGES}` HxWx3 = {spec.height}x{spec.width}x3 (preprocessing is inside the "
             f"model) -> float32 `{EMBEDDINGS}`, {spec.embedding_dim}-D unit vectors; batch 1..{spec.max_batch}, "
             "dynamic batching. `config.pbtxt`: ONNX Runtime, CPU or GPU. "
             f"`configs/{ENGINE_CONFIG}.pbtxt` (`--model-config-name {ENGINE_CONFIG}`): the same graph through "
             "engine.Embedder in the Python backend (what `python -m serve` runs)."]
    if tensorrt_version:
        lines.append(f"  `configs/{TENSORRT_CONFIG}.pbtxt` (`--model-config-name {TENSORRT_CONFIG}`): the TensorRT "
                     f"plan built with **TensorRT {tensorrt_version}**; only in a Triton container whose TensorRT is "
                     f"{tensorrt_version}, on the GPU model it was built on.")
    else:
        lines.append(f"  No `configs/{TENSORRT_CONFIG}.pbtxt`: no plan was built, or its profile starts above batch 1 "
                     "(Triton sends batches from 1; rebuild with `--min-batch 1`).")
    lines += [f"- `{SEARCH_MODEL}`, `{ADD_MODEL}`: Python backend over engine.Gallery (`1/model.py`); they need "
              "jlml-engine importable and the gallery file in `JLML_GALLERY` (see the project README, \"Serving\").",
              "", "Readiness: `GET /v2/health/ready` (200 once every model answered its warm-up), per model "
              "`GET /v2/models/NAME/ready`."]
    return "\n".join(lines) + "\n"
