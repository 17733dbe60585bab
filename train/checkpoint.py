"""Self-describing checkpoints (weights + config + spec + epoch + optimiser/extra state) and run folders.

A checkpoint alone rebuilds the exact network that wrote it, so export and evaluation need no flags
that could disagree with training. Every tensor is saved on the CPU, so a checkpoint written on a GPU
loads on any machine. Writes are atomic: a crash never leaves a half ``last.pt``, and the temporary
files a killed run leaves are removed by the next run in that folder (``prepare_out``).
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.atomic import write_with
from engine.errors import ArtifactError, CheckpointError, InputError
from engine.spec import ModelSpec

from . import distributed
from .config import JLMLConfig
from .model import JLML

FORMAT = "jlml-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILE = "last.pt"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
_KEYS = ("format", "version", "state_dict", "config", "spec", "epoch", "num_classes")


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns, in eval mode: ``network`` is the JLML rebuilt from ``config``
    (None for a LOMO + XQDA matcher, which trains none); ``model`` is what is served: the network, or
    the ``train.hybrid.HybridMatcher`` the checkpoint records around it."""

    path: Path
    model: Any
    network: JLML | None
    config: JLMLConfig
    spec: ModelSpec
    epoch: int
    num_classes: int
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def non_finite(self) -> list[str]:
        """Names of the served model's floating-point tensors holding NaN or inf (a diverged run)."""
        state = self.model.state_dict() if self.model is not None else {}
        return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]

    def trained_network(self) -> JLML:
        """The JLML network, for what continues or inspects training (resume, --init, sparsity)."""
        if self.network is None:
            raise CheckpointError(f"checkpoint {self.path} holds a LOMO + XQDA matcher and no JLML network "
                                  "(nothing was trained); pass a checkpoint of a jlml or fused run")
        return self.network


def save_checkpoint(path: str | os.PathLike[str], model: JLML, cfg: JLMLConfig, *, epoch: int,
                    num_classes: int, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, extra: dict[str, Any] | None = None) -> Path:
    """Atomically write ``model``'s weights with everything needed to rebuild and resume it."""
    return _write(path, _payload(model, cfg, epoch=epoch, num_classes=num_classes, optimizer=optimizer,
                                 scheduler=scheduler, extra=extra))


def _write(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` ``payload`` to ``path``. Given a file name, torch writes through its
    own C++ writer, which reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos``; given a Python file it writes through Python, so a full disk is an OSError with
    its errno, which ``write_with`` turns into "writing PATH failed: No space left on device"."""
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            torch.save(payload, file)

    return write_with(path, save)


def save_matcher(path: str | os.PathLike[str], matcher: Any, cfg: JLMLConfig, *,
                 extra: dict[str, Any] | None = None) -> Path:
    """Record a fitted ``train.hybrid.HybridMatcher`` in a checkpoint: added to the JLML checkpoint at
    ``path`` when the run trained one (it keeps its weights, optimiser state and record, also when the
    matcher serves the metric part alone), else a new checkpoint holding only the matcher (``cfg`` then
    gives the input size)."""
    if Path(path).is_file():
        payload = _read_payload(Path(path), "cpu")
        payload["extra"] = {**payload["extra"], **(extra or {})}
    else:
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "state_dict": {}, "config": cfg.to_dict(),
                   "epoch": 0, "num_classes": 0, "optimizer": None, "scheduler": None, "extra": dict(extra or {})}
    payload.update(spec=matcher.spec.to_dict(), matcher=matcher.record())
    return _write(path, payload)


def _payload(model: JLML, cfg: JLMLConfig, *, epoch: int, num_classes: int,
             optimizer: torch.optim.Optimizer | None, scheduler: Any, extra: dict[str, Any] | None,
             ) -> dict[str, Any]:
    if model.cfg != cfg or model.num_classes != num_classes:
        raise InputError(
            f"model was built for {model.num_classes} classes with another config "
            f"(differs in {sorted(model.cfg.diff(cfg))}) than the cfg/num_classes={num_classes} given; "
            "pass the config the model was built from"
        )
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(), "spec": model.spec.to_dict(), "epoch": int(epoch),
        "num_classes": int(num_classes),
        "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": dict(extra or {}),
    }


def _to_cpu(value: Any) -> Any:
    """Optimiser state with every tensor moved to the CPU (so it loads without a GPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _read_payload(path: Path, map_location: Any) -> dict[str, Any]:
    fix = "point at a last.pt written by `python -m train`, or retrain to write a new one"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {fix}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        # torch's own message advises weights_only=False, which would run code from the file: not quoted.
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt, truncated or not a file "
                              f"written by torch.save of plain tensors ({type(exc).__name__}); {fix}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a JLML checkpoint (no '{FORMAT}' marker); {fix}")
    version = payload.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this code reads ({FORMAT_VERSION}): "
            "a newer jlml-engine wrote it; update this code to read it (retraining is not needed)")
    missing = [k for k in _KEYS if k not in payload]
    if missing or version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {payload.get('version')!r} (this code reads "
            f"{FORMAT_VERSION}) and lacks {missing}; {fix}"
        )
    return payload


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes and load its weights (model in eval mode)."""
    path = Path(path)
    payload = _read_payload(path, map_location)
    matcher = payload.get("matcher")
    try:
        cfg = JLMLConfig.from_dict(payload["config"])
        spec = ModelSpec.from_dict(payload["spec"])
        network = None
        if payload["state_dict"] or matcher is None:  # a LOMO + XQDA matcher alone may hold no network
            network = JLML(cfg, payload["num_classes"])
            network.load_state_dict(payload["state_dict"])
            network.eval()
    except (InputError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not rebuild a model ({exc}); it was written by an incompatible "
            "jlml-engine version, retrain or use that version"
        ) from exc
    model = network
    if matcher is not None:
        from .hybrid import HybridMatcher

        model = HybridMatcher.from_record(matcher, network).eval()
    return Checkpoint(path=path, model=model, network=network, config=cfg, spec=spec, epoch=payload["epoch"],
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


# The data a run trains on, as ``train.run`` records it in the checkpoint (``DataChoice.trained_on``
# and the joined sets): a resumed run must read the very same, or its checkpoint and metrics would
# mix two data sets or leak another split's test people.
DATA_FIELDS = ("data", "data_root", "train_also")


def check_same_data(ckpt: Checkpoint, record: dict[str, Any]) -> None:
    """Raise CheckpointError naming every data or split field in which ``record`` (the data a resumed
    run asks for) differs from what ``ckpt`` was trained on; a record without data fields checks nothing."""
    if not any(k in record for k in DATA_FIELDS):
        return
    saved, asked = _flat_data(ckpt.extra), _flat_data(record)
    diffs = [f"{k}: {saved.get(k)!r} in checkpoint, {asked.get(k)!r} asked"
             for k in sorted(set(saved) | set(asked)) if saved.get(k) != asked.get(k)]
    if diffs:
        raise CheckpointError(
            f"cannot resume from {ckpt.path}: it was trained on other data ({'; '.join(diffs)}); resume with "
            "the same --dataset, --data-root, --split-seed and --data-option flags, or start a fresh --out")


def _flat_data(record: dict[str, Any]) -> dict[str, Any]:
    """``record``'s data fields flattened to flag-like names (dataset, split_seed, options.num_ids, ...)."""
    data = record.get("data") or {}
    flat = {k: v for k, v in data.items() if k != "options"}
    flat.update({f"options.{k}": v for k, v in (data.get("options") or {}).items()})
    flat["data_root"] = record.get("data_root")
    flat["train_also"] = record.get("train_also", [])
    return flat


@dataclass(frozen=True)
class InitReport:
    """What ``load_init`` did: tensors copied, and classifier tensors left fresh (another id count)."""

    source: str
    loaded: tuple[str, ...]
    dropped: tuple[str, ...]

    def describe(self) -> str:
        dropped = f"; dropped (fresh) {', '.join(self.dropped)}" if self.dropped else ""
        return f"initialised from {self.source}: loaded {len(self.loaded)} tensors{dropped}"


CLASSIFIER_PREFIX = "classifiers."


def load_init(model: JLML, state: dict[str, torch.Tensor], source: str = "init weights") -> InitReport:
    """Copy ``state`` into ``model`` for fine-tuning, after timm's ``load_pretrained``.

    Only the identity classifiers may differ (another data set has another number of people): those
    keep their fresh initialisation and are reported as dropped. Any other missing, unexpected or
    differently shaped tensor means another network, and raises CheckpointError listing them.
    """
    own = model.state_dict()

    def fits(k: str) -> bool:
        return k in own and k in state and own[k].shape == state[k].shape

    loaded = tuple(k for k in own if fits(k))
    dropped = tuple(sorted(k for k in set(own) | set(state) if not fits(k) and k.startswith(CLASSIFIER_PREFIX)))
    wrong = {
        "missing": [k for k in own if k not in state and k not in dropped],
        "unexpected": [k for k in state if k not in own and k not in dropped],
        "other shape": [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                        if k in state and not fits(k) and k not in dropped],
    }
    if any(wrong.values()):
        listed = "; ".join(f"{kind}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for kind, keys in wrong.items() if keys)
        raise CheckpointError(f"cannot initialise from {source}: it holds another network ({listed}); pass "
                              "--init a checkpoint of the same architecture (same --widths, --blocks, "
                              "--stripes, --feat-dim, --branches, ...)")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return InitReport(source=source, loaded=loaded, dropped=dropped)


# Temporary files of ``engine.atomic`` writes of a run's own files, left behind when a run is killed.
_OWN_TEMPORARIES = tuple(f".{name}.*.tmp" for name in (CHECKPOINT_FILE, LOG_FILE, METRICS_FILE))


def make_out_folder(out: Path) -> None:
    """``out`` exists (created if need be) and is a folder this user can write; ArtifactError if not."""
    fix = "pass another --out"
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out} is a file; expected a folder for {CHECKPOINT_FILE}, {LOG_FILE} "
                            f"and {METRICS_FILE}; {fix}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ArtifactError(f"--out {out} is not a writable folder ({exc.strerror or exc}); expected a "
                            f"folder this user can create and write; {fix} or fix its permissions") from exc


def prepare_out(out: Path, *, resume: bool, overwrite: bool,
                log: Callable[[str], object] = print) -> None:
    """Before any work: ``out`` must be (or become) a writable folder and, unless resuming or told to
    overwrite, hold no checkpoint; temporary files a killed run left there are removed (logged), so
    ``train.run`` calls this only once it holds the folder's lock (``train.runlock``)."""
    make_out_folder(out)
    # Under torchrun only rank 0 writes (and holds the lock): another rank would delete the files of
    # a write in flight, its own group's or, before rank 0 found the folder locked, another run's.
    stale = sorted(p for pattern in _OWN_TEMPORARIES for p in out.glob(pattern)) if distributed.is_main() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} temporary file(s) an interrupted run left in {out}: "
            f"{', '.join(p.name for p in stale)}")
    path = out / CHECKPOINT_FILE
    if resume or overwrite or not path.exists():
        return
    try:
        held = f"a checkpoint of epoch {load_checkpoint(path).epoch}"
    except CheckpointError:
        held = "an unreadable checkpoint"
    raise CheckpointError(f"--out {out} holds {held} ({path.name}); pass --resume to continue it, --force to "
                          f"overwrite it, or another --out")
