"""What every command line of the project shares: the error tail, the output-folder check, common flags.

A CLI is ``main(argv=None) -> int`` that parses its flags and hands its work to ``run_cli``::

    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        return run_cli(lambda: run(args), hint=f"continue with --resume --out {args.out}")

``run_cli`` turns the project's own errors (engine.errors.JLMLError) into one ``error: ...`` line and
exit code 2, the errors passed as ``failed`` (e.g. ParityError: the work ran, its result failed a
check) into exit code 1, Ctrl-C into exit code 130 and SIGTERM into exit code 143, both printing
``interrupted; HINT`` / ``terminated (SIGTERM); HINT`` (how to continue). SIGTERM is raised as
``Terminated`` (a KeyboardInterrupt) where the program is, so it unwinds and cleans up like Ctrl-C;
the handler is installed in the main thread only and the previous one is restored afterwards. A body
that returns an int sets the exit code; any other return (None, a result) means success, so a library
function can be the body as it is. Nothing else is caught: a bug still shows its traceback.

Every command of the project ends in ``run_cli`` (export passes ``failed=(ParityError,)`` to keep its
exit code 1); the argparse pieces live here too, once: ``parser``/``HelpFormatter`` (defaults shown
in --help), ``positive_int``, ``non_negative_int`` and ``non_negative_float``. Types only training
needs stay in train/cli.py.

The flag helpers keep one name and one meaning per thing across commands: ``--checkpoint`` (a
training checkpoint file), ``--artifact`` (an export folder), ``--out`` (a folder, or a file where
the command writes one; ``check_out_dir`` / ``check_out_file`` prove it writable before any work),
``--device``, ``--precision``, ``--threads`` and ``--no-progress``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ArtifactError, JLMLError

# What the add_* helpers add flags to: a parser or one of its argument groups.
Flags = argparse._ActionsContainer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds (and cleans up) like Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` (main thread only: signals are delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(body: Callable[[], object], *, failed: tuple[type[JLMLError], ...] = (), hint: str = "") -> int:
    """Run ``body`` and map its outcome to an exit code (see the module docstring)."""
    with sigterm_as_interrupt():
        try:
            code = body()
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            what = "terminated (SIGTERM)" if terminated else "interrupted"
            print(f"{what}; {hint}" if hint else what, file=sys.stderr)
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except JLMLError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED if isinstance(exc, failed) else EXIT_USAGE
    return code if type(code) is int else EXIT_OK


def check_out_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create the output folder ``path`` and prove it writable now, before hours of work are spent.

    ArtifactError (exit 2 under ``run_cli``) when it is a file, cannot be created or takes no files.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{flag} {out} is a file, expected a folder; pass a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ArtifactError(
            f"{flag} {out} is not a writable folder ({exc.strerror or exc}); pass a folder you can write to"
        ) from exc
    return out


def check_out_file(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """The output file ``path``: its folder created (as the atomic writer would) and proven writable now,
    before the work is spent; ArtifactError when ``path`` is a folder or its folder takes no files."""
    out = Path(path)
    if out.is_dir():
        raise ArtifactError(f"{flag} {out} is a folder, expected a file path; pass e.g. {out / 'gallery.npz'}")
    check_out_dir(out.parent, flag=f"{flag}'s folder")
    return out


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts (threads, batches, k): a clear usage error for 0 or less."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for counts where 0 means none (data loader workers)."""
    return _whole_number(text, 0)


def non_negative_float(text: str) -> float:
    """argparse ``type=`` for amounts where 0 means none (CPUs or GPUs a worker reserves)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of at least 0, got {text}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows every flag's default that is not None/False
    (unless its help already says what the default is)."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        return bool(action.option_strings) and not any(action.default is v for v in (None, False, argparse.SUPPRESS))

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # argparse prints nothing for help-less flags
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)"


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser with the house formatter (defaults shown in --help)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_artifact(p: Flags, *, required: bool = True,
                 help: str = "artefact folder written by `python -m export.build_engine`") -> None:
    p.add_argument("--artifact", type=Path, required=required, metavar="DIR", help=help)


def add_checkpoint(p: Flags, help: str, *, required: bool = False) -> None:
    p.add_argument("--checkpoint", type=Path, required=required, metavar="CKPT", help=help)


def add_out(p: Flags, default: str | None, help: str = "output folder") -> None:
    p.add_argument("--out", type=Path, default=None if default is None else Path(default), metavar="DIR",
                   required=default is None, help=help)


def add_device(p: Flags, default: str = "auto", help: str = "") -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default,
                   help=help or "auto: CUDA when PyTorch sees a GPU, else the CPU")


def add_precision(p: Flags) -> None:
    """``--precision`` of every command with ``--backend``: None lets the artefact decide (Embedder)."""
    from .backends.base import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="engine precision (default: the best the artefact has for the device: the TensorRT "
                   "plan's own where it serves, else FP32; one the artefact lacks is an error listing what it has)")


def add_threads(p: Flags) -> None:
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="PyTorch CPU threads (default: PyTorch's choice; ONNX Runtime keeps its own)")


def add_no_progress(p: Flags) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` to PyTorch (None: leave its default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
