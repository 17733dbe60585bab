"""``train.run``: the typed entry point behind ``python -m train``, for code that trains without argv.

One call loads the data set, pre-trains on another one if asked, trains (fresh, resumed, or
fine-tuned from a checkpoint), evaluates, and writes ``OUT/metrics.json``. Every check that can fail
(output folder, device, options, data set) runs before the first epoch. The checkpoint records the data
set, its options and the split, so ``python -m train.evaluate`` scores it on the people it never saw.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.atomic import write_text
from engine.errors import DataError, InputError
from engine.provenance import code_version
from engine.spec import file_sha256

from . import distributed
from .checkpoint import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    InitReport,
    check_same_data,
    load_checkpoint,
    make_out_folder,
    prepare_out,
)
from .config import JLMLConfig
from .fusion import fit_and_save
from .hybrid import MATCHERS
from .lomo import LOMOConfig
from .loop import AugmentFactory, Runtime, TrainOptions, evaluate_model, fit, place
from .model import JLML
from .runlock import run_lock


@dataclass(frozen=True)
class DataChoice:
    """Which data set, loader options and split a run trains on; ``root`` says where it lies here
    (None: ``$JLML_DATA`` or ``../shared/data``). A checkpoint records the first three (``record``,
    what must match to evaluate) and, apart, the folder they were read from (``where``)."""

    dataset: str = "synthetic"
    split_seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    root: str | None = None

    def __post_init__(self) -> None:
        from .data.datasets import DATASETS, check_options

        if self.dataset not in DATASETS:
            raise DataError(f"--dataset {self.dataset!r} is unknown; expected one of {', '.join(DATASETS)}")
        object.__setattr__(self, "options", check_options(self.dataset, dict(self.options)))

    def load(self, cfg: JLMLConfig, progress: bool = True) -> Any:
        """The ``ReidSet`` at ``cfg``'s input size (``progress=False``: no "loading images" bar)."""
        from .data import load_reid_set

        return load_reid_set(self.dataset, self.root, height=cfg.height, width=cfg.width,
                             split_seed=self.split_seed, progress=None if progress else False, **self.options)

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores: data set, split seed, loader options (JSON-able)."""
        return {"dataset": self.dataset, "split_seed": self.split_seed, "options": dict(self.options)}

    def where(self) -> str | None:
        """The absolute folder the data set is read from here (None for the generated synthetic set);
        checkpoints keep it as ``data_root`` so train.evaluate finds the data without --data-root."""
        if self.dataset == "synthetic":
            return None
        from .data.datasets import resolve_root

        return str(resolve_root(self.dataset, self.root).resolve())

    def trained_on(self) -> dict[str, Any]:
        """A checkpoint's record of its data: ``data`` (compared by train.evaluate) and ``data_root``."""
        return {"data": self.record(), "data_root": self.where()}


@dataclass(frozen=True)
class Pretrain:
    """Train first on ``data`` (another data set: none of the evaluated people) for ``epochs``."""

    data: DataChoice
    epochs: int


@dataclass
class TrainResult:
    """A finished run: its folder, checkpoint, trained model (eval mode), metrics (None when not
    evaluated), per-epoch log records, the loaded data set, and what ``init`` loaded."""

    out: Path
    checkpoint: Path
    model: Any  # the JLML network, or the train.hybrid.HybridMatcher served around it
    metrics: dict[str, float] | None
    history: list[dict[str, Any]]
    data: Any
    init: InitReport | None = None


def augment_factory(augment: bool, options: dict[str, Any] | None = None) -> AugmentFactory | None:
    """The training augmentation (flip, shift, erase; ``options`` for ``Augment``) seeded per epoch, or None."""
    from .data import Augment

    return (lambda seed: Augment(seed=seed, **(options or {}))) if augment else None


def join_training(data: Any, others: Sequence[Any]) -> Any:
    """``data`` whose training set also holds every person of the ``others`` sets (joint training);
    its query and gallery, the people evaluated, stay its own. ``data`` itself when there are none."""
    from .data.combine import combine_train_sets, everyone

    return combine_train_sets([data, *map(everyone, others)]) if others else data


def pretrain_state(cfg: JLMLConfig, opts: TrainOptions, data: DataChoice, folder: Path, *,
                   augment: bool = True, runtime: Runtime | None = None) -> dict[str, Any]:
    """Weights of ``cfg`` trained on ``data`` in ``folder`` (continuing its ``last.pt`` if a run there
    was interrupted; a finished one is reused as it is)."""
    reid = data.load(cfg, progress=opts.progress)
    if distributed.is_main():
        print(f"pre-training on {reid.describe()}")
    resume = folder / CHECKPOINT_FILE
    return fit(cfg, reid, opts, folder, resume=resume if resume.is_file() else None, runtime=runtime,
               make_augment=augment_factory(augment), record=data.trained_on()).model.state_dict()


def _resume_path(resume: bool | str | Path | None, out: Path) -> Path | None:
    if resume is None or resume is False:
        return None
    return out / CHECKPOINT_FILE if resume is True or resume == "" else Path(resume)


def _check_choices(matcher: str, data: DataChoice, init: str | Path | None, resume_path: Path | None,
                   pretrain: Pretrain | None, train_also: Sequence[DataChoice], force: bool) -> None:
    """Refuse the combinations of ``run``'s arguments that cannot make a sound run."""
    if matcher not in MATCHERS:
        raise InputError(f"matcher {matcher!r}; expected one of {MATCHERS}")
    if init is not None and resume_path is not None:
        raise InputError(f"--init {init} starts a fresh run and --resume continues one; pass one of them")
    if force and resume_path is not None:
        raise InputError("--force overwrites the run in --out and --resume continues it; pass one of them")
    used = [data, *([pretrain.data] if pretrain else []), *train_also]
    if data.root is not None and all(d.dataset == "synthetic" for d in used):
        raise InputError(f"--data-root {data.root}: the synthetic data set is generated and reads no folder; "
                         "drop --data-root, or pass the --dataset that lies there")
    if pretrain is not None and pretrain.data.dataset == data.dataset:
        raise InputError(f"pre-training on {data.dataset}, the data set evaluated, could show the model its "
                         "test people; pre-train on another data set")
    if any(other.dataset == data.dataset for other in train_also):
        raise InputError(f"training also on all of {data.dataset}, the data set evaluated, would train on its "
                         "test people; join other data sets only")


def _write_metrics(out: Path, data: DataChoice, source: str | None, config: JLMLConfig, options: TrainOptions,
                   metrics: dict[str, float]) -> None:
    write_text(out / METRICS_FILE, json.dumps(
        {"dataset": data.dataset, "split_seed": data.split_seed, **data.trained_on(), "init": source,
         "checkpoint_sha256": file_sha256(out / CHECKPOINT_FILE),
         "config": config.to_dict(), "options": options.settings(), "metrics": metrics}, indent=2) + "\n")


def run(config: JLMLConfig, options: TrainOptions, data: DataChoice, out: str | Path, *,
        runtime: Runtime | None = None, augment: bool = True, resume: bool | str | Path | None = None,
        init: str | Path | None = None, pretrain: Pretrain | None = None, force: bool = False,
        evaluate: bool = True, log: Callable[[str], object] = print,
        train_also: Sequence[DataChoice] = (), matcher: str = "jlml", lomo: LOMOConfig | None = None,
        mirror_metric: bool = False) -> TrainResult:
    """Train ``config`` with ``options`` on ``data`` into ``out`` and evaluate it.

    ``resume``: True (``out/last.pt``) or a checkpoint path to continue; ``init``: a checkpoint to
    fine-tune from (classifiers of another id count are dropped, anything else must match);
    ``pretrain``: train on another data set first (skipped when resuming or with ``init``);
    ``train_also``: other data sets whose every person joins the training ids (joint training);
    ``force``: overwrite a checkpoint already in ``out``; ``matcher``: what is served, "jlml", or a
    hand-crafted descriptor + XQDA alone ("lomo_xqda", "gog_xqda") or fused with JLML ("fused",
    "gog_fused", ``train.fusion``: JLML then
    trains on two thirds of the people, the fusion weight is chosen on the others; ``mirror_metric``: XQDA
    also learns from the training images' mirror images). ``out`` is locked for the run's life
    (``train.runlock``): a second run into it at once is refused naming the first one's pid.
    """
    out = Path(out)
    resume_path = _resume_path(resume, out)
    _check_choices(matcher, data, init, resume_path, pretrain, train_also, force)
    make_out_folder(out)  # the lock lives in it; under torchrun rank 0 holds it for the group
    with run_lock(out, log) if distributed.is_main() else contextlib.nullcontext():
        prepare_out(out, resume=resume_path is not None, overwrite=force, log=log)
        trained_on = {**data.trained_on(),
                      **({"train_also": [o.record() for o in train_also]} if train_also else {})}
        if resume_path is not None:  # before loading any data: a resumed run reads the data it was trained on
            check_same_data(load_checkpoint(resume_path), trained_on)
        place(runtime or Runtime())
        init_state, source = None, None
        if init is not None:
            init_state, source = load_checkpoint(init).trained_network().state_dict(), str(init)
        reid = join_training(data.load(config, progress=options.progress),
                             [other.load(config, progress=options.progress) for other in train_also])
        log(reid.describe())
        if init_state is None and pretrain is not None and resume_path is None:
            pre_opts = dataclasses.replace(options, epochs=pretrain.epochs)
            init_state = pretrain_state(config, pre_opts, pretrain.data, out / "pretrain", augment=augment,
                                        runtime=runtime)
            source = f"pre-training on {pretrain.data.dataset} ({out / 'pretrain'})"
        record = {**trained_on, "init": source, "code": code_version()}
        fits: list[Any] = []

        def train_jlml(train_set: Any) -> JLML:
            fits.append(fit(config, train_set, options, out, resume=resume_path,
                            make_augment=augment_factory(augment), init=init_state, init_source=source,
                            runtime=runtime, overwrite=force, record=record))
            return fits[-1].model

        if matcher == "jlml":
            model = train_jlml(reid)
        else:
            model, report = fit_and_save(matcher, reid, config, lomo or LOMOConfig(), train_jlml, out,
                                         seed=data.split_seed, extra=record, progress=options.progress,
                                         mirror=mirror_metric)
            log(f"{matcher}: XQDA {report.xqda_dims} dims, metric share {report.share} (chosen on "
                f"{report.held_out_ids} held-out training people)")
        metrics = evaluate_model(model, reid) if evaluate else None
        if metrics is not None:
            _write_metrics(out, data, source, config, options, metrics)
    result = fits[-1] if fits else None
    return TrainResult(out=out, checkpoint=out / CHECKPOINT_FILE, model=model, metrics=metrics,
                       history=result.history if result else [], data=reid, init=result.init if result else None)
