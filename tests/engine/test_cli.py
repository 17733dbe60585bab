"""engine.cli: the one error tail, output-folder check and flag helpers every command line uses."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine import cli
from engine.errors import ArtifactError, InputError, ParityError


def _raise(exc: BaseException):
    def body() -> None:
        raise exc
    return body


def test_run_cli_maps_outcomes_to_exit_codes(capsys) -> None:
    assert cli.run_cli(lambda: None) == 0
    assert cli.run_cli(lambda: {"rank1": 0.5}) == 0   # a library result means success
    assert cli.run_cli(lambda: 1) == 1
    assert cli.run_cli(_raise(InputError("k must be positive, got 0"))) == 2
    assert capsys.readouterr().err == "error: k must be positive, got 0\n"
    assert cli.run_cli(_raise(ParityError("cosine 0.9")), failed=(ParityError,)) == 1
    assert cli.run_cli(_raise(ParityError("cosine 0.9"))) == 2
    assert cli.run_cli(_raise(KeyboardInterrupt()), hint="rerun with --resume") == 130
    assert capsys.readouterr().err.endswith("interrupted; rerun with --resume\n")


def test_sigterm_prints_the_hint_exits_143_and_restores_the_handler(capsys) -> None:
    import os
    import signal
    import time

    def killed() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into an interrupt")

    before = signal.getsignal(signal.SIGTERM)
    assert cli.run_cli(killed, hint="continue with --resume") == 143
    assert capsys.readouterr().err == "terminated (SIGTERM); continue with --resume\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_cli_off_the_main_thread_leaves_signals_alone() -> None:
    import signal
    import threading

    seen: list[object] = []

    def body() -> None:
        seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=lambda: cli.run_cli(body))
    thread.start()
    thread.join()
    assert seen == [before]


def test_run_cli_leaves_bugs_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        cli.run_cli(lambda: 1 / 0)


def test_check_out_dir_creates_folders_and_refuses_files(tmp_path: Path) -> None:
    assert cli.check_out_dir(tmp_path / "a" / "b").is_dir()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ArtifactError, match="is a file, expected a folder"):
        cli.check_out_dir(afile)
    with pytest.raises(ArtifactError, match="--run-dir .* is not a writable folder"):
        cli.check_out_dir(afile / "sub", flag="--run-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "file"]  # the write check leaves nothing


def test_positive_int_is_a_usage_error_for_zero_and_words() -> None:
    assert cli.positive_int("3") == 3
    for text in ("0", "-2", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.positive_int(text)


def test_non_negative_int_takes_zero_and_refuses_negatives() -> None:
    assert cli.non_negative_int("0") == 0
    for text in ("-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a whole number"):
            cli.non_negative_int(text)


def test_help_shows_defaults_except_where_help_already_says_or_none() -> None:
    p = cli.parser("prog", "what it does")
    cli.add_out(p, "artifacts/x")
    cli.add_device(p)
    cli.add_threads(p)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument("--lr", type=float, help="learning rate (default: per optimiser)")
    text = " ".join(p.format_help().split())
    assert "output folder (default: artifacts/x)" in text and "(default: auto)" in text
    assert "--epochs EPOCHS (default: 14)" in text and "random seed (default: 0)" in text
    assert "a smoke run (default" not in text
    assert "(default: per optimiser)" in text and "(default: None)" not in text


def test_no_progress_reaches_the_image_loader_bar(tmp_path: Path, monkeypatch, capsys) -> None:
    import numpy as np
    from PIL import Image

    from engine import images

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(paths[-1])
    monkeypatch.setattr(images, "PROGRESS_MIN_IMAGES", 1)  # 3 images would get the automatic bar
    images.load_images(paths, 8, 4)
    assert "loading images" in capsys.readouterr().err
    images.load_images(paths, 8, 4, progress=False)
    assert capsys.readouterr().err == ""


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command line with --backend (those that import optional packages load them lazily)."""
    import benchmarks.ray_embed
    import benchmarks.serve
    import engine.embed
    import engine.query
    import serve.__main__
    import train.evaluate

    return {"engine.embed": engine.embed.build_parser(), "engine.query": engine.query.build_parser(),
            "serve": serve.__main__.build_parser(), "train.evaluate": train.evaluate.build_parser(),
            "benchmarks.serve": benchmarks.serve.build_parser(), "benchmarks.ray_embed": benchmarks.ray_embed.build_parser()}


@pytest.mark.parametrize("name", ["engine.embed", "engine.query", "serve", "train.evaluate", "benchmarks.serve",
                                  "benchmarks.ray_embed"])
def test_every_command_with_backend_has_precision_defaulting_to_the_artefacts_choice(name) -> None:
    actions = {a.dest: a for a in _parsers()[name]._actions}
    assert "backend" in actions and actions["precision"].default is None
    assert set(actions["precision"].choices) == {"fp32", "fp16", "int8"}
