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


def named(paths: Sequence[PathLike], limit: int = WARN_MAX_PATHS) -> str:
    """The first ``limit`` of ``paths`` and how many more: ``a.png, b.png, c.png and 4 more``."""
    shown = ", ".join(os.fspath(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def scan_images(folder: PathLike) -> tuple[list[Path], list[Path]]:
    """(image files, every other file) under ``folder``, recursively, sorted: the second list is what a
    command skips without reading (a ``.gif``, a ``.tif``, notes), so it can count and name it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder.resolve()} does not exist or is not a folder; pass a folder "
                        "of person crops")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {folder.resolve()} (searched "
                        "recursively, any case); pass a folder of person crops")
    return images, [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]


def list_images(folder: PathLike) -> list[Path]:
    """The image files under ``folder``, recursively, sorted; DataError saying where it looked and for
    what when the folder is missing or holds none (an empty gallery is never what was meant)."""
    return scan_images(folder)[0]


def _sixteen_bit_grey(img: Image.Image) -> Image.Image:
    """An 8-bit greyscale image of a 16-bit one (PIL's ``I;16*`` modes, or ``I`` holding 0..65535):
    scaled by 255/65535 with rounding. PIL's own ``convert`` clips at 255, which makes almost every
    pixel of a 16-bit file white."""
    values = np.asarray(img)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{img.mode} pixels range {values.min()}..{values.max()}, not 16-bit (0..65535)")
    return Image.fromarray(((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def _rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB: 16-bit greyscale scaled (16-bit colour PIL already reads as 8-bit);
    float pixels are refused, they have no one 8-bit meaning."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _sixteen_bit_grey(img)
    elif img.mode == "F":
        raise ValueError("32-bit float pixels (PIL mode F) have no 8-bit meaning; save it as 8-bit RGB")
    return img.convert("RGB")


def load_image(path: PathLike, height: int, width: int) -> np.ndarray:
    """Decode ``path`` to uint8 (height, width, 3) RGB, resized with antialiased bilinear filtering.

    PIL's bilinear resize widens its kernel when shrinking, so downsized crops do not alias; greyscale,
    palette, RGBA and 16-bit files are converted to 8-bit RGB so every caller gets three channels.
    """
    _check_size(height, width)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated files fail here, inside the try, not later
            rgb = _rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ArtifactError(
            f"cannot read image {os.fspath(path)}: {exc}; expected a readable PNG/JPEG file, "
            "replace or remove the file"
        ) from exc
    if rgb.size != (width, height):
        rgb = rgb.resize((int(width), int(height)), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_images(
    paths: Sequence[PathLike], height: int, width: int, *, on_error: str = "skip", progress: bool | None = None,
    warn: bool = True,
) -> tuple[np.ndarray, list[int]]:
    """Decode many images into one uint8 (N, height, width, 3) array.

    Returns the stacked pixels and the indices into ``paths`` that loaded, so callers can drop the
    labels of skipped files. With ``on_error="skip"`` one warning summarises every unreadable file
    (a data set with a few corrupt crops is still worth training on; ``warn=False``: none, for a
    caller that reports the skipped paths itself); ``"raise"`` stops at the first.
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
    if failed and warn:
        warnings.warn(f"skipped {len(failed)} unreadable image(s) of {len(paths)}: {named(failed)}", stacklevel=2)
    return (out[: len(loaded)].copy() if failed else out), loaded
