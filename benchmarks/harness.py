"""How a backend benchmark runs: open each candidate through the engine, measure, refuse an empty run.

Before anything is timed every candidate is opened once and embeds one image of the artefact's size.
What the engine refuses to open here (a missing runtime or device, a precision it does not serve on
this device, a graph file export did not write) is skipped with the engine's own reason, which lands
in the report. An artefact that contradicts its spec.json, or the checkpoint it is compared with, is
an error that stops the run before any timing: its figures would be meaningless. A run in which no
candidate could be measured is an error too, so a benchmark never exits 0 having measured nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.backends import BASELINE, Candidate, open_embedder
from benchmarks.common import environment, write_json
from engine import cli
from engine.atomic import write_text
from engine.errors import (
    ArtifactError,
    BackendUnavailableError,
    InputError,
    JLMLError,
    SpecMismatchError,
)
from engine.spec import ModelSpec, file_sha256

Rows = list[dict[str, Any]]
# What the engine raises when it cannot serve a candidate on this machine (SpecMismatchError is no
# subclass of these: a self-contradicting artefact stops the run instead).
CANNOT_SERVE = (BackendUnavailableError, InputError, ArtifactError)
NO_MODULE = "no PyTorch module: pass --checkpoint (the checkpoint the artefact was exported from)"


@dataclass
class Report:
    """What a backend benchmark returns and writes as ``<name>.json``."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    results: Rows
    skipped: dict[str, str]  # candidate name -> why it was not measured

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_positive(**named: int | Iterable[int] | None) -> None:
    """InputError naming every count that is not a whole number >= 1 (None: use the default)."""
    bad = []
    for name, value in named.items():
        values = [] if value is None else [value] if isinstance(value, int) else list(value)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values) or (
                value is not None and not values):
            bad.append(f"{name}={value!r}")
    if bad:
        raise InputError(f"{', '.join(bad)}: expected whole numbers of at least 1")


def load_module(checkpoint: str | os.PathLike[str], spec: ModelSpec, folder: str | os.PathLike[str]) -> Any:
    """The FP32 eval-mode JLML module of ``checkpoint`` (the PyTorch baseline), after checking that the
    artefact in ``folder`` (whose spec is ``spec``) serves the same contract."""
    from train.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    ck.spec.check_compatible(spec, what=f"artefact {folder} (compared with checkpoint {checkpoint})")
    check_exported_from(checkpoint, spec, folder)
    return ck.model.float().eval()


def check_exported_from(checkpoint: str | os.PathLike[str], spec: ModelSpec, folder: str | os.PathLike[str]) -> None:
    """SpecMismatchError unless ``checkpoint`` is the file the artefact in ``folder`` was exported from
    (the sha256 its spec.json's provenance records; an export that recorded none is not checked): a
    model of the same contract but other weights would make every ratio and cosine meaningless."""
    recorded = spec.extra.get("provenance", {}).get("checkpoint", {})
    expected = recorded.get("sha256")
    got = file_sha256(checkpoint) if expected else expected
    if got != expected:
        raise SpecMismatchError(
            f"--checkpoint {checkpoint} (sha256 {got[:12]}...) is not the checkpoint artefact {folder} was "
            f"exported from ({recorded.get('path')}, sha256 {expected[:12]}..., epoch {recorded.get('epoch')}); "
            "pass --checkpoint that file, or re-export the artefact from this checkpoint")


def _open_and_probe(cand: Candidate, ctx: dict[str, Any]) -> str | None:
    """Why ``cand`` cannot run here (None: it opened and embedded one image)."""
    if cand.backend == "torch" and ctx["module"] is None:
        return NO_MODULE
    try:
        embed = open_embedder(cand, ctx["folder"], ctx["device"], ctx["module"])
    except SpecMismatchError:
        raise
    except CANNOT_SERVE as exc:
        return str(exc)
    with embed:
        if cand.compile:
            return None  # compiling takes long; the eager twin already proved the module
        try:
            embed(ctx["probe"])
        except JLMLError:
            raise
        except Exception as exc:  # a runtime's own error type, e.g. ONNX Runtime's "invalid dimensions"
            spec = embed.spec
            raise SpecMismatchError(
                f"{cand.name} cannot embed one {spec.height}x{spec.width} image, the size "
                f"{ctx['folder']}/spec.json describes ({' '.join(str(exc).split())}); the graph and "
                "spec.json disagree: re-export the artefact"
            ) from exc
    return None


def run_each(candidates: list[Candidate], ctx: dict[str, Any], bench: Callable[[Candidate], Rows],
             rate: str) -> tuple[Rows, dict[str, str]]:
    """``bench`` every candidate; return the rows with ``vs_torch_fp32`` (``rate`` over the baseline's
    at the same batch) and failed name -> reason."""
    rows: Rows = []
    failed: dict[str, str] = {}
    for cand in candidates:
        print(f"== {cand.name}", flush=True)
        try:
            rows += bench(cand)
        except SpecMismatchError:
            raise
        except (JLMLError, RuntimeError) as exc:  # unusable runtime, compiler failure, out of memory
            failed[cand.name] = f"failed to run: {exc}"
            print(f"== {cand.name}: {failed[cand.name]}", flush=True)
    return add_ratios(rows, rate), failed


def add_ratios(rows: Rows, rate: str) -> Rows:
    """``rows`` with ``vs_torch_fp32``: ``rate`` over the baseline's at the same batch (None without one)."""
    base = {r["batch"]: r[rate] for r in rows if r["backend"] == BASELINE}
    for row in rows:
        row["vs_torch_fp32"] = row[rate] / base[row["batch"]] if row["batch"] in base else None
    return rows


def measure(candidates: list[Candidate], ctx: dict[str, Any], bench: Callable[[Candidate, dict[str, Any]], Rows],
            rate: str, settings: dict[str, Any],
            together: Callable[[list[Candidate], dict[str, Any]], Rows] | None = None) -> Report:
    """Open and probe every candidate, then ``bench`` those that can run (``ctx``: folder, device,
    module, probe and what ``bench`` reads), one after another, or all at once with ``together``
    (interleaved timing); BackendUnavailableError when none could be measured."""
    env = environment(ctx["device"])
    runnable, skipped = [], {}
    for cand in candidates:
        reason = _open_and_probe(cand, ctx)
        if reason is None:
            runnable.append(cand)
        else:
            skipped[cand.name] = reason
            print(f"== {cand.name}: skipped, {reason}", flush=True)
    if together is not None and runnable:
        rows, failed = add_ratios(together(runnable, ctx), rate), {}
    else:
        rows, failed = run_each(runnable, ctx, lambda cand: bench(cand, ctx), rate)
    skipped.update(failed)
    if not rows:
        raise BackendUnavailableError(
            "nothing was measured, every backend was skipped or failed: "
            + "; ".join(f"{name}: {why}" for name, why in skipped.items())
        )
    return Report(env, settings, rows, skipped)


def write_report(report: Report, out: str | os.PathLike[str], name: str, markdown: str) -> list[Path]:
    """``OUT/<name>.json`` (the whole report) and ``OUT/<name>.md`` (``markdown``), atomically."""
    return [write_json(Path(out) / f"{name}.json", report.to_dict()),
            write_text(Path(out) / f"{name}.md", markdown)]


def skipped_notes(skipped: dict[str, str]) -> str:
    """The markdown list of skipped candidates that ends every backend report."""
    notes = "".join(f"- {name} skipped: {why}\n" for name, why in skipped.items())
    return "\n" + notes if notes else ""


def bench_main(argv: list[str] | None, parser: argparse.ArgumentParser,
               options: Callable[[argparse.Namespace], Any], run: Callable[..., Report],
               write_outputs: Callable[[Report, Path], list[Path]]) -> int:
    """The ``main`` of a backend benchmark: flags -> options (bad values exit 2 here), ``--out`` checked
    writable and ``--threads`` applied before the run, then run, write, and say where it all went."""
    args = parser.parse_args(argv)

    def body() -> None:
        opts = options(args)
        out = cli.check_out_dir(args.out)
        cli.set_threads(args.threads)
        paths = write_outputs(run(args.artifact, args.checkpoint, opts), out)
        print("wrote " + ", ".join(str(p) for p in paths))

    return cli.run_cli(body)
