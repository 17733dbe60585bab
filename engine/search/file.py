"""The gallery's .npz file: its format, the atomic save and the careful load.

The file is one unit: the rows, their ids and cameras, and the image behind each row (``paths``,
relative to the header's ``images_root``; "" for a row added as pixels, e.g. through the server), so
whatever adds rows keeps what describes them in step. Galleries written before that kept the paths in
a ``<file>.paths.json`` beside the .npz; ``read`` still takes them from there.

The header also records how the rows are searched (method, nprobe) and which model embedded them
(``model_fingerprint``: ``model_fingerprint(spec)`` of the artefact), so a consumer can refuse to
search them with another model's queries (``check_fingerprint``): distances between embeddings of two
models of the same dimension are meaningless, and nothing else would say so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_path, remove_stale_temps
from ..errors import ArtifactError, InputError, SpecMismatchError
from .checks import STORAGES
from .plan import METHODS

if TYPE_CHECKING:
    from ..spec import ModelSpec

FORMAT_NAME = "jlml-gallery"
FORMAT_VERSION = 1
STALE_TMP_SECONDS = 600  # a save's temp file untouched this long belongs to a killed save
log = logging.getLogger("engine.gallery")
# What a model's fingerprint covers: the contract fields of ModelSpec.check_compatible (input size,
# normalisation, tensor names, embedding size) and the sha256 of the FP32 ONNX graph (its weights).
# Not the batch range, opset or the FP16/INT8/TensorRT variants: they serve the same model.
FINGERPRINT_FIELDS = ("height", "width", "channels", "embedding_dim", "mean", "std", "input_name",
                      "output_name", "layout", "input_dtype", "onnx_sha256")


def model_fingerprint(spec: ModelSpec) -> str:
    """The hex sha256 identifying the model an artefact serves (see FINGERPRINT_FIELDS)."""
    fields = {name: getattr(spec, name) for name in FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def check_fingerprint(recorded: str | None, spec: ModelSpec, *, source: str, artifact: str = "the artefact",
                      override: str = "--allow-other-model") -> None:
    """Raise SpecMismatchError when the gallery ``source`` records rows embedded by another model than
    ``spec``'s (``recorded``: its header's ``model_fingerprint``). A gallery that records none (written
    before fingerprints, or through the Gallery API without one) is searched with a warning."""
    if recorded is None:
        log.warning("%s records no model fingerprint (written before they were): it is searched without "
                    "checking that %s embedded it", source, artifact)
        return
    current = model_fingerprint(spec)
    if recorded != current:
        raise SpecMismatchError(
            f"{source} was embedded by model {recorded[:16]}, {artifact} is model {current[:16]}: its "
            "distances to these rows would be meaningless; re-embed the gallery with this artefact "
            "(python -m engine.embed), use the artefact that embedded it, or pass "
            f"{override} if the two models share one embedding space on purpose")


def save(path: str | os.PathLike[str], header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Atomic .npz write; stale temp files of killed earlier saves of this path are removed first. A
    gallery of no rows is refused: saving one is always a mistake upstream (nothing matched)."""
    final = Path(path)
    if not header["count"]:
        raise InputError(f"refusing to save an empty gallery to {final}: no rows were added; embed and "
                         "add images first (an image list that matched nothing gives none: list a "
                         "folder with engine.images.list_images, which says when it holds none)")
    if final.is_dir():
        raise ArtifactError(f"cannot save the gallery to {final}: it is a folder; pass a file path such "
                            f"as {final / 'gallery.npz'}")
    remove_stale_temps(final, STALE_TMP_SECONDS, log)
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, header=np.array(json.dumps(header)), **arrays)


def _arrays(path: str | os.PathLike[str], fix: str) -> dict[str, np.ndarray]:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ArtifactError(f"{path} holds a single .npy array, expected a gallery .npz; {fix}")
    with data:
        keys = ("header", "embeddings", "ids", "cams") + (("paths",) if "paths" in data.files else ())
        return {key: data[key] for key in keys}


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a file written by ``save``; ArtifactError saying what is wrong otherwise."""
    fix = "rebuild it with Gallery.save"
    try:
        arrays = _arrays(path, fix)
        header = json.loads(str(arrays.pop("header")))
    except FileNotFoundError as exc:
        raise ArtifactError(f"no gallery file at {path}; write one with Gallery.save") from exc
    except IsADirectoryError as exc:
        raise ArtifactError(f"{path} is a folder, expected a gallery .npz file; pass the file") from exc
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"gallery file {path} is corrupt, truncated or not a gallery ({exc}); {fix}") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"gallery file {path} has a {type(header).__name__} header, expected a JSON "
                            f"object with format, version, dim, count, storage; {fix}")
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"gallery file {path} has format {header.get('format')!r} version {header.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}; rebuild it with this jlml-engine"
        )
    n, dim = header.get("count"), header.get("dim")
    emb = arrays["embeddings"]
    if not isinstance(n, int) or not isinstance(dim, int) or emb.shape != (n, dim) or arrays["ids"].shape != (n,) or arrays["cams"].shape != (n,) \
            or header.get("storage") not in STORAGES \
            or arrays.get("paths", np.empty(n, "U1")).shape != (n,):
        raise ArtifactError(f"gallery file {path} is inconsistent: header {header}, embeddings "
                            f"{emb.shape}, ids {arrays['ids'].shape}; {fix}")
    _check_search_settings(path, header, fix)
    if "paths" not in arrays:
        _legacy_paths(Path(path), n, header, arrays)
    return header, arrays


def _check_search_settings(path: str | os.PathLike[str], header: dict[str, Any], fix: str) -> None:
    """The recorded method and nprobe (files before they were recorded have neither: "auto")."""
    method, nprobe = header.get("method", "auto"), header.get("nprobe")
    if method not in METHODS or not (nprobe is None or (type(nprobe) is int and nprobe > 0)):
        raise ArtifactError(f"gallery file {path} records method {method!r} nprobe {nprobe!r}, expected one "
                            f"of {METHODS} and a positive int or null; {fix}")
    fingerprint = header.get("model_fingerprint")
    if fingerprint is not None and not is_fingerprint(fingerprint):
        raise ArtifactError(f"gallery file {path} records model_fingerprint {fingerprint!r}, expected 64 hex "
                            f"digits; {fix}")


def is_fingerprint(value: Any) -> bool:
    """Whether ``value`` is what model_fingerprint returns (64 lowercase hex digits)."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def legacy_paths_file(gallery: Path) -> Path:
    """Where galleries written before the paths moved into the .npz kept them: ``g.npz.paths.json``."""
    return gallery.with_name(gallery.name + ".paths.json")


def _legacy_paths(path: Path, n: int, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Take an old gallery's row paths from its ``.paths.json``. Rows added later (by the server, which
    never updated that file) were appended, so a shorter list covers the first rows; the rest are "".
    A sidecar that is not one, or lists more images than the gallery has rows (another gallery's), is
    an ArtifactError naming it: its names would be wrong answers."""
    sidecar = legacy_paths_file(path)
    if not sidecar.is_file():
        return
    fix = (f"delete or rename {sidecar} (the rows then show no image), or re-embed the gallery with "
           "`python -m engine.embed`, which keeps each row's image inside the .npz")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        root, rows = data["root"], data["paths"]
        if not (isinstance(root, str) and isinstance(rows, list) and all(isinstance(r, str) for r in rows)):
            raise TypeError(f"root {type(root).__name__}, paths {type(rows).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{sidecar}, the image list of gallery {path}, is unreadable or not one "
                            f"({type(exc).__name__}: {exc}); expected JSON {{\"root\": folder, \"paths\": "
                            f"[one image per row]}}; {fix}") from exc
    if len(rows) > n:
        raise ArtifactError(f"{sidecar} lists {len(rows)} images, but gallery {path} has {n} rows: it belongs "
                            f"to another gallery; {fix}")
    header["images_root"] = root
    arrays["paths"] = np.array(rows + [""] * (n - len(rows)), dtype=str)


class RowPaths:
    """The image behind each gallery row, relative to ``root``; "" where a row has none. Kept only once
    some row has a path (a gallery filled from pixels alone keeps nothing)."""

    def __init__(self, root: str | None = None, paths: Sequence[str] | None = None) -> None:
        self.root = root
        self.paths: list[str] | None = None if paths is None else [str(p) for p in paths]

    def check(self, paths: Sequence[str] | None, m: int) -> None:
        if paths is not None and len(paths) != m:
            raise InputError(f"paths must give one image per row, got {len(paths)} paths for {m} rows")

    def extend(self, n: int, paths: Sequence[str] | None, m: int) -> None:
        """Rows [n, n + m) were added with ``paths`` (None: without images)."""
        if paths is None and self.paths is None:
            return
        if self.paths is None:
            self.paths = [""] * n
        self.paths += [""] * m if paths is None else [str(p) for p in paths]

    def header_and_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What ``save`` writes for them: the header's images_root and the ``paths`` array."""
        if self.paths is None:
            return {}, {}
        return ({"images_root": self.root} if self.root is not None else {},
                {"paths": np.array(self.paths, dtype=str).reshape(len(self.paths))})
