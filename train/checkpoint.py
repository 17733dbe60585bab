"""Self-describing checkpoints: weights + config + spec + epoch (+ optimiser/scheduler/extra state).

A checkpoint alone rebuilds the exact network that wrote it, so export and evaluation need no flags
that could disagree with training. Writes are atomic: a crash never leaves a half ``last.pt``.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.atomic import write_with
from engine.errors import CheckpointError, InputError
from engine.spec import ModelSpec

from .config import JLMLConfig
from .model import JLML

FORMAT = "jlml-checkpoint"
FORMAT_VERSION = 1
_KEYS = ("format", "version", "state_dict", "config", "spec", "epoch", "num_classes")


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns; ``model`` is rebuilt from ``config`` and in eval mode."""

    path: Path
    model: JLML
    config: JLMLConfig
    spec: ModelSpec
    epoch: int
    num_classes: int
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], model: JLML, cfg: JLMLConfig, *, epoch: int,
                    num_classes: int, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``model``'s weights with everything needed to rebuild and resume it."""
    if model.cfg != cfg or model.num_classes != num_classes:
        raise InputError(
            f"model was built for {model.num_classes} classes with another config "
            f"(differs in {sorted(model.cfg.diff(cfg))}) than the cfg/num_classes={num_classes} given; "
            "pass the config the model was built from"
        )
    payload = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(), "spec": model.spec.to_dict(), "epoch": int(epoch),
        "num_classes": int(num_classes),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": dict(extra or {}),
    }
    return write_with(path, lambda tmp: torch.save(payload, tmp))


def _read_payload(path: Path, map_location: Any) -> dict[str, Any]:
    fix = "point at a last.pt written by `python -m train`, or retrain to write a new one"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {fix}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or truncated: {exc}); {fix}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a JLML checkpoint (no '{FORMAT}' marker); {fix}")
    missing = [k for k in _KEYS if k not in payload]
    if missing or payload["version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {payload.get('version')!r} (this code reads "
            f"{FORMAT_VERSION}) and lacks {missing}; {fix}"
        )
    return payload


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes and load its weights (model in eval mode)."""
    path = Path(path)
    payload = _read_payload(path, map_location)
    try:
        cfg = JLMLConfig.from_dict(payload["config"])
        spec = ModelSpec.from_dict(payload["spec"])
        model = JLML(cfg, payload["num_classes"])
        model.load_state_dict(payload["state_dict"])
    except (InputError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not rebuild a model ({exc}); it was written by an incompatible "
            "jlml-engine version, retrain or use that version"
        ) from exc
    return Checkpoint(path=path, model=model.eval(), config=cfg, spec=spec, epoch=payload["epoch"],
                      num_classes=payload["num_classes"], optimizer_state=payload["optimizer"],
                      scheduler_state=payload["scheduler"], extra=payload["extra"])


def check_same_config(ckpt: Checkpoint, cfg: JLMLConfig, num_classes: int) -> None:
    """Raise CheckpointError naming every field in which ``ckpt`` differs from the run asked for."""
    diffs = {k: f"{a!r} in checkpoint, {b!r} asked" for k, (a, b) in ckpt.config.diff(cfg).items()}
    if ckpt.num_classes != num_classes:
        diffs["num_classes"] = f"{ckpt.num_classes} in checkpoint, {num_classes} in the data set"
    if diffs:
        listed = "; ".join(f"{k}: {v}" for k, v in diffs.items())
        raise CheckpointError(
            f"cannot resume from {ckpt.path}: it was trained with another configuration ({listed}); "
            "use the same flags and data set, or start a fresh run with another --out"
        )
