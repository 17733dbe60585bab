"""``python -m train`` end to end on a tiny synthetic set with a tiny model."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from train.__main__ import main
from train.checkpoint import load_checkpoint

TINY_ARGS = ["--dataset", "synthetic", "--data-option", "num_ids=12", "--data-option", "num_test=4",
             "--height", "32", "--width", "16", "--widths", "4,8", "--blocks", "1,1", "--feat-dim", "16",
             "--batch-size", "8", "--threads", "1", "--no-progress"]


def test_cli_trains_evaluates_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic" in printed and "rank1" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["rank1"] <= 1.0 and metrics["config"]["widths"] == [4, 8]
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    ck = load_checkpoint(out / "last.pt")
    assert ck.epoch == 1 and ck.spec.embedding_dim == 32
    # resuming a finished run with the same flags trains nothing more and succeeds
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out), "--resume"]) == 0


def test_cli_resume_with_other_model_flags_fails_with_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out), "--no-augment"]) == 0
    assert main([*TINY_ARGS, "--epochs", "1", "--out", str(out), "--resume", "--branches", "global"]) == 2
    err = capsys.readouterr().err
    assert "branches: 'both' in checkpoint, 'global' asked" in err and "--out" in err


def test_resume_with_other_data_or_split_refuses_and_keeps_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny(out)) == 0
    metrics, ckpt = (out / "metrics.json").read_bytes(), (out / "last.pt").read_bytes()
    capsys.readouterr()
    # same number of ids, another split of the people: would leak test people into a "resumed" run
    assert main([*TINY_ARGS, "--epochs", "2", "--out", str(out), "--resume", "--split-seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "trained on other data (split_seed: 0 in checkpoint, 3 asked)" in err and "Traceback" not in err
    assert main([*TINY_ARGS, "--epochs", "2", "--out", str(out), "--resume", "--data-option", "num_test=5",
                 "--data-option", "images_per_cam=3"]) == 2
    err = capsys.readouterr().err
    assert "options.images_per_cam: None in checkpoint, 3 asked" in err
    assert "options.num_test: 4 in checkpoint, 5 asked" in err
    assert (out / "metrics.json").read_bytes() == metrics and (out / "last.pt").read_bytes() == ckpt
    assert load_checkpoint(out / "last.pt").extra["data"]["split_seed"] == 0


def test_flags_that_would_be_ignored_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny(out)) == 0
    capsys.readouterr()
    assert main(_tiny(out, "--resume", "--force")) == 2
    assert "--force overwrites the run in --out and --resume continues it" in capsys.readouterr().err
    assert main(_tiny(tmp_path / "other", "--data-root", str(tmp_path))) == 2
    assert f"--data-root {tmp_path}: the synthetic data set is generated" in capsys.readouterr().err
    assert not (tmp_path / "other" / "last.pt").exists()


def test_cli_bad_config_exits_2(tmp_path, capsys):
    assert main([*TINY_ARGS, "--height", "30", "--out", str(tmp_path)]) == 2
    assert "height=30" in capsys.readouterr().err


def _tiny(out, *extra):
    return [*TINY_ARGS, "--epochs", "1", "--out", str(out), *extra]


def test_help_shows_every_default():
    from train.__main__ import build_parser

    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"
               and not (isinstance(a, argparse._StoreTrueAction) and a.default is False)]  # switches: off
    assert parser.format_help().count("(default:") == len(options)


def test_defaults_train_with_adam():
    from train.__main__ import config_from_args, parse_args

    _, opts = config_from_args(parse_args([]))
    assert opts.optimizer == "adam" and opts.learning_rate == 1e-3


def test_recipe_sets_defaults_and_explicit_flags_override_it(tmp_path):
    from train.__main__ import config_from_args, data_from_args, joined_sets, parse_args

    args = parse_args(["--recipe", "smoke", "--feat-dim", "8", "--out", str(tmp_path)])
    cfg, opts = config_from_args(args)
    data, pretrain = data_from_args(args)
    assert (cfg.widths, cfg.height, cfg.feat_dim) == ((4, 8), 32, 8)           # recipe, recipe, flag
    assert (opts.epochs, opts.batch_size) == (1, 8) and pretrain is None
    assert dict(data.options) == {"num_ids": 12, "num_test": 4}
    other, _ = data_from_args(parse_args(["--recipe", "smoke", "--dataset", "viper"]))
    assert dict(other.options) == {}                                          # the recipe's set only
    _, pre = data_from_args(parse_args(["--recipe", "viper_long"]))
    assert pre.data.dataset == "prid2011" and pre.epochs == 30
    assert data_from_args(parse_args(["--recipe", "viper_long", "--no-pretrain"]))[1] is None
    joined = joined_sets(parse_args(["--recipe", "prid2011_joint", "--data-root", str(tmp_path)]))
    assert [(d.dataset, dict(d.options), d.root) for d in joined] == [
        ("viper", {"num_train": 631, "num_test": 1}, str(tmp_path))]
    assert joined_sets(parse_args(["--recipe", "viper_long"])) == ()
    neck, _ = config_from_args(parse_args(["--recipe", "viper_bnneck_long", "--no-flip-test"]))
    assert neck.bnneck and not neck.flip_test                                  # recipe, flag
    plain, _ = config_from_args(parse_args(["--bnneck", "--flip-test"]))
    assert plain.bnneck and plain.flip_test


def test_cli_runs_a_recipe_on_cpu_with_a_loader_worker(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--recipe", "smoke", "--device", "cpu", "--workers", "1", "--threads", "1", "--no-progress",
                 "--out", str(out)]) == 0
    assert f"run folder: {out}" in capsys.readouterr().out
    ck = load_checkpoint(out / "last.pt")
    assert ck.extra["data"] == {"dataset": "synthetic", "split_seed": 0, "options": {"num_ids": 12, "num_test": 4}}
    assert ck.config.widths == (4, 8)


def test_refuses_to_overwrite_a_run_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny(out)) == 0
    before = (out / "last.pt").read_bytes()
    assert main(_tiny(out, "--seed", "3")) == 2
    err = capsys.readouterr().err
    assert "holds a checkpoint of epoch 1" in err and "--resume" in err and "--force" in err
    assert (out / "last.pt").read_bytes() == before
    assert main(_tiny(out, "--seed", "3", "--force")) == 0
    assert (out / "last.pt").read_bytes() != before


def test_default_out_is_a_fresh_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY_ARGS, "--epochs", "1"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("synthetic-") and (run / "last.pt").is_file()
    assert main([*TINY_ARGS, "--resume"]) == 2
    assert "pass --out of that run" in capsys.readouterr().err


def test_resume_extends_the_epochs_and_cleans_temporary_leftovers(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny(out)) == 0
    (out / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    assert main([*TINY_ARGS, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert "removed 1 temporary file(s)" in capsys.readouterr().out
    assert not list(out.glob("*.tmp")) and load_checkpoint(out / "last.pt").epoch == 2
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def test_out_that_is_a_file_or_not_writable_fails_before_loading_data(tmp_path, monkeypatch, capsys):
    from train import runner

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before --out was checked")

    monkeypatch.setattr(runner.DataChoice, "load", no_loading)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(_tiny(blocker)) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err
    assert main(_tiny(blocker / "below")) == 2
    assert "is not a writable folder" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to fill a disk")
def test_disk_full_during_the_checkpoint_names_the_path(tmp_path, monkeypatch, capsys):
    import train.checkpoint

    real_save = torch.save

    def onto_a_full_disk(obj, f, *args, **kwargs):
        """torch.save with every byte going to /dev/full, which fails each write as a full disk does:
        given a file name, torch's C++ writer raises `RuntimeError: [enforce fail at
        inline_container.cc:...] unexpected pos`; given a Python file, the write raises ENOSPC."""
        if isinstance(f, str | os.PathLike):
            return real_save(obj, "/dev/full", *args, **kwargs)
        with open("/dev/full", "wb") as full:
            return real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(train.checkpoint.torch, "save", onto_a_full_disk)
    out = tmp_path / "run"
    assert main(_tiny(out)) == 2
    err = capsys.readouterr().err
    assert f"writing {out / 'last.pt'} failed: No space left on device; free some space" in err
    assert "Traceback" not in err and "inline_container" not in err
    assert not list(out.iterdir())


def test_bad_options_exit_2_with_the_flag_named(tmp_path, capsys):
    assert main(_tiny(tmp_path / "a", "--data-option", "foo=3")) == 2
    assert "synthetic takes no option foo" in capsys.readouterr().err
    for bad in (["--threads", "-2"], ["--workers", "-1"], ["--epochs", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(_tiny(tmp_path / "b", *bad))
        assert exit_.value.code == 2 and "expected a whole number" in capsys.readouterr().err
    assert main(_tiny(tmp_path / "c", "--device", "gpu")) == 2
    assert "--device 'gpu'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_or_amp_without_a_gpu_exit_2_before_loading_data(tmp_path, monkeypatch, capsys):
    from train import runner

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the device was checked")

    monkeypatch.setattr(runner.DataChoice, "load", no_loading)
    assert main(_tiny(tmp_path / "a", "--device", "cuda")) == 2
    assert "sees no CUDA GPU; pass --device cpu" in capsys.readouterr().err
    assert main(_tiny(tmp_path / "b", "--amp")) == 2
    assert "--amp (mixed precision) needs a CUDA device" in capsys.readouterr().err


def test_random_bytes_as_resume_never_suggest_unsafe_loading(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(_tiny(out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and "weights_only" not in err


def test_sigterm_prints_the_resume_hint(tmp_path, monkeypatch, capsys):
    import train.__main__ as cli

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into an interrupt")

    monkeypatch.setattr(cli, "run", killed)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)  # not always SIG_DFL: ray.init in an earlier test sets one
    assert main(_tiny(out)) == 143
    assert f"continue with --resume --out {out}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_init_fine_tunes_from_a_checkpoint_with_another_id_count(tmp_path, capsys):
    first = tmp_path / "first"
    assert main(_tiny(first)) == 0
    capsys.readouterr()
    more_ids = [*TINY_ARGS, "--data-option", "num_ids=14", "--epochs", "1"]
    assert main([*more_ids, "--out", str(tmp_path / "second"), "--init", str(first / "last.pt")]) == 0
    printed = capsys.readouterr().out
    assert f"initialised from {first / 'last.pt'}: loaded" in printed and "dropped (fresh) classifiers." in printed
    assert main([*more_ids, "--widths", "4,16", "--out", str(tmp_path / "third"),
                 "--init", str(first / "last.pt")]) == 2
    assert "holds another network" in capsys.readouterr().err


def test_market_layout_folder_trains_and_evaluates_with_a_recipe(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "mine"
    rng = np.random.default_rng(0)
    files = {"bounding_box_train": [(p, c, i) for p in range(1, 7) for c in (1, 2) for i in range(2)],
             "query": [(p, 1, 0) for p in range(7, 10)],
             "bounding_box_test": [(p, c, 1) for p in range(7, 10) for c in (2, 3)] + [(-1, 1, 5)]}
    for folder, entries in files.items():
        (root / folder).mkdir(parents=True)
        for pid, cam, i in entries:
            pixels = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
            name = "-1" if pid < 0 else f"{pid:04d}"  # -1: a junk image, as Market names them
            Image.fromarray(pixels).save(root / folder / f"{name}_c{cam}s1_{i:06d}_00.jpg")
    out = tmp_path / "run"
    assert main(["--dataset", "market1501", "--data-root", str(root), "--recipe", "few_hundred_ids",
                 "--epochs", "1", "--widths", "4,8", "--blocks", "1,1", "--feat-dim", "16", "--batch-size", "8", "--threads", "1",
                 "--no-progress", "--out", str(out)]) == 0
    assert "market1501 (market, 128x64): train 6 ids / 24 imgs" in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["data"]["dataset"] == "market1501" and saved["metrics"]["num_query"] == 3
    assert load_checkpoint(out / "last.pt").extra["data_root"] == saved["data_root"] == str(root.resolve())
    assert load_checkpoint(out / "last.pt").extra["fusion"]["kind"] == "gog_xqda"  # the recipe serves the matcher
    # train.evaluate finds the data where the run read it, without --data-root (it looked in the default
    # data root and exited 2); a moved folder is a note and --data-root names the new place
    from train.evaluate import main as evaluate

    report = tmp_path / "eval.json"
    assert evaluate(["--checkpoint", str(out / "last.pt"), "--threads", "1", "--no-progress",
                     "--json", str(report)]) == 0
    assert json.loads(report.read_text())["rows"]["pytorch"]["rank1"] == saved["metrics"]["rank1"]
    moved = root.rename(tmp_path / "moved")
    capsys.readouterr()
    assert evaluate(["--checkpoint", str(out / "last.pt"), "--threads", "1", "--no-progress"]) == 2
    assert f"trained on data in {root.resolve()}, which is not here" in capsys.readouterr().err
    assert evaluate(["--checkpoint", str(out / "last.pt"), "--threads", "1", "--no-progress",
                     "--data-root", str(moved)]) == 0
    # resuming reads the data the run read: another --data-root is refused, naming both folders
    capsys.readouterr()
    assert main(["--dataset", "market1501", "--data-root", str(moved), "--recipe", "few_hundred_ids",
                 "--epochs", "1", "--widths", "4,8", "--blocks", "1,1", "--feat-dim", "16", "--batch-size", "8",
                 "--threads", "1", "--no-progress", "--out", str(out), "--resume"]) == 2
    assert f"data_root: {str(root.resolve())!r} in checkpoint, {str(moved.resolve())!r} asked" in capsys.readouterr().err


def test_demo_module_points_at_the_real_demo():
    done = subprocess.run([sys.executable, "-m", "train.demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "python -m benchmarks.demo" in done.stderr


def test_training_logs_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, capsys):
    args = [a for a in TINY_ARGS if a != "--no-progress"]
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert "\r" not in err and [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("batches (100%)" in line and "loss" in line for line in epochs)
