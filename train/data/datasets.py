"""``load_reid_set``: one entry point for every data set the project trains or evaluates on.

Real data sets are read in place from ``root``; ``root`` may be the data set's own folder or a folder
holding it under its usual name (``viper/``, ``prid2011/``, ``market1501/``...). Without ``root`` the
``JLML_DATA`` environment variable is tried, then the shared data folder beside the repository
(``../shared/data``), which is where CI keeps VIPeR and PRID2011.
"""
from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import DataError

from .folders import check_root
from .market import load_market
from .reidset import ReidSet
from .single_shot import load_prid2011, load_viper
from .synthetic import load_synthetic

DATA_ENV = "JLML_DATA"
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Usual folder names of each data set inside a data root.
FOLDER_NAMES: dict[str, tuple[str, ...]] = {
    "viper": ("viper", "VIPeR"),
    "prid2011": ("prid2011", "prid_2011", "PRID2011"),
    "market1501": ("market1501", "Market-1501", "Market-1501-v15.09.15"),
    "dukemtmc": ("dukemtmc", "DukeMTMC-reID", "dukemtmc-reid"),
}
LOADERS: dict[str, Callable[..., ReidSet]] = {
    "synthetic": load_synthetic,
    "viper": load_viper,
    "prid2011": load_prid2011,
    "market1501": functools.partial(load_market, name="market1501"),
    "dukemtmc": functools.partial(load_market, name="dukemtmc"),
}
DATASETS: tuple[str, ...] = tuple(LOADERS)


def resolve_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    """The folder that holds ``name``'s files: ``root`` itself or its usual sub-folder."""
    base = Path(root) if root is not None else Path(os.environ.get(DATA_ENV, DEFAULT_DATA_ROOT))
    for sub in FOLDER_NAMES[name]:
        if (base / sub).is_dir():
            return check_root(base / sub, name)
    return check_root(base, name)


def load_reid_set(name: str, root: str | os.PathLike[str] | None = None, *, height: int = 160,
                  width: int = 64, split_seed: int = 0, progress: bool | None = None, **options: Any) -> ReidSet:
    """Load data set ``name`` (one of ``DATASETS``) resized to height x width, split by ``split_seed``.

    ``options`` go to the data set's loader: synthetic takes num_ids, num_test, cams, images_per_cam,
    seed (and ignores ``root``); viper and prid2011 take num_train, num_test (prid2011 also
    cam_a_only_train); the Market layouts have a fixed split and take none. ``progress``: the
    "loading images" bar of the real data sets (None: only for many images; False: never).
    """
    key = name.lower()
    if key not in LOADERS:
        raise DataError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    options = check_options(key, options)
    if key == "synthetic":
        return load_synthetic(height=height, width=width, split_seed=split_seed, **options)
    if key in ("market1501", "dukemtmc"):
        return LOADERS[key](resolve_root(key, root), height=height, width=width, progress=progress)
    return LOADERS[key](resolve_root(key, root), height=height, width=width, split_seed=split_seed,
                        progress=progress, **options)


# Loader parameters that are not --data-option values: load_reid_set passes them itself.
_NOT_OPTIONS = {"root", "height", "width", "split_seed", "name", "progress"}


def option_defaults(name: str) -> dict[str, Any]:
    """The options data set ``name``'s loader takes, with their defaults."""
    params = inspect.signature(LOADERS[name]).parameters.values()
    return {p.name: p.default for p in params
            if p.name not in _NOT_OPTIONS and p.default is not inspect.Parameter.empty}


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against what ``name``'s loader takes and cast to the type of each default
    (``--data-option`` values arrive as int or str; a bool option takes true/false/1/0)."""
    known = option_defaults(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(f"{k}={v}" for k, v in known.items()) or "none (its split is fixed)"
        raise DataError(f"{name} takes no option {', '.join(unknown)}; its --data-option KEY=VALUE "
                        f"options (defaults) are: {takes}")
    return {k: _cast(name, k, v, known[k]) for k, v in options.items()}


def _cast(name: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        text = str(value).lower()
        if text in ("1", "true", "yes", "0", "false", "no"):
            return text in ("1", "true", "yes")
    elif not isinstance(default, int) or isinstance(value, int) and not isinstance(value, bool):
        return value
    raise DataError(f"{name} option {key}={value!r}: expected {type(default).__name__} like {key}={default} "
                    "(--data-option KEY=VALUE)")
