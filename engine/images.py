"""Host-side image decoding and resizing: the only image I/O in the project.

Images leave here as raw uint8 RGB pixels of the model's input size and nothing more. Mean/std
normalisation is deliberately absent: it lives inside the model graph, so every backend (PyTorch,
ONNX Runtime, TensorRT) sees the same pixels and the classic double-normalisation bug cannot happen.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ArtifactError, DataError, InputError
from .progress import progress as progress_bar

# The image files every command looks for (case-insensitive); the one copy.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Above this many images a progress bar is worth its noise on stderr.
PROGRESS_MIN_IMAGES = 500
# How many failing paths a skip warning names before it only counts them.
WARN_MAX_PATHS = 3

PathLike = str | os.PathLike[str]


def _check_size(height: int, width: int) -> None:
    if int(height) <= 0 or int(width) <= 0:
        raise InputError(f"image size must be positive, got height={height} width={width}; "
                         "use the model's input size, e.g. ModelSpec().height / .width")


def list_images(folder: PathLike) -> list[Path]:
    """The image files under ``folder``, recursively, sorted; DataError saying where it looked and for
    what when the folder is missing or holds none (an empty gallery is never what was meant)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder.resolve()} does not exist or is not a folder; pass a folder "
                        "of person crops")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {folder.resolve()} (searched "
                        "recursively, any case); pass a folder of person crops")
    return paths


def load_image(path: PathLike, height: int, width: int) -> np.ndarray:
    """Decode ``path`` to uint8 (height, width, 3) RGB, resized with antialiased bilinear filtering.

    PIL's bilinear resize widens its kernel when shrinking, so downsized crops do not alias; greyscale,
    palette and RGBA files are converted to RGB so every caller gets three channels.
    """
    _check_size(height, width)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, inside the try, not later
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ArtifactError(
            f"cannot read image {os.fspath(path)}: {exc}; expected a readable PNG/JPEG file, "
            "replace or remove the file"
        ) from exc
    if rgb.size != (width, height):
        rgb = rgb.resize((int(width), int(height)), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_images(
    paths: Sequence[PathLike], height: int, width: int, *, on_error: str = "skip", progress: bool | None = None
) -> tuple[np.ndarray, list[int]]:
    """Decode many images into one uint8 (N, height, width, 3) array.

    Returns the stacked pixels and the indices into ``paths`` that loaded, so callers can drop the
    labels of skipped files. With ``on_error="skip"`` one warning summarises every unreadable file
    (a data set with a few corrupt crops is still worth training on); ``"raise"`` stops at the first.
    ``progress``: a bar on stderr (None: only above ``PROGRESS_MIN_IMAGES`` images; CLIs pass False
    for ``--no-progress``).
    """
    if on_error not in ("skip", "raise"):
        raise InputError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if not len(paths):
        raise InputError("load_images got no paths, expected at least one image file; list a folder's "
                         "images with engine.images.list_images(folder), which says when it holds none")
    _check_size(height, width)
    out = np.empty((len(paths), int(height), int(width), 3), np.uint8)
    loaded: list[int] = []
    failed: list[str] = []
    show = len(paths) > PROGRESS_MIN_IMAGES if progress is None else progress
    bar = progress_bar(paths, desc="loading images", unit="img", disable=not show)
    for i, path in enumerate(bar):
        try:
            out[len(loaded)] = load_image(path, height, width)
        except ArtifactError:
            if on_error == "raise":
                raise
            failed.append(os.fspath(path))
            continue
        loaded.append(i)
    if failed:
        shown = ", ".join(failed[:WARN_MAX_PATHS]) + (", ..." if len(failed) > WARN_MAX_PATHS else "")
        warnings.warn(f"skipped {len(failed)} unreadable image(s) of {len(paths)}: {shown}",
                      stacklevel=2)
    return (out[: len(loaded)].copy() if failed else out), loaded
