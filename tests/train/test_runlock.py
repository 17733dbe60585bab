"""One run per run folder: a second ``python -m train --out SAME`` at once is refused naming the holder;
a lock left by a killed run is taken over, and said so."""
import os
import signal
import subprocess
import sys

import pytest

from engine.errors import ArtifactError
from train.__main__ import main
from train.runlock import LOCK_FILE, run_lock

TINY = ["--dataset", "synthetic", "--data-option", "num_ids=12", "--data-option", "num_test=4", "--height", "32",
        "--width", "16", "--widths", "4,8", "--blocks", "1,1", "--feat-dim", "16", "--batch-size", "8",
        "--threads", "1", "--no-progress", "--epochs", "1"]
HOLD = "import sys, time; from pathlib import Path; from train.runlock import run_lock\n" \
       "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)"


def test_a_second_run_into_a_held_folder_exits_2_naming_the_holder_then_a_dead_holder_is_taken_over(
        tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([*TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is in use: pid {holder.pid} on " in err and "another --out" in err
        assert "Traceback" not in err and not (out / "last.pt").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the lock file still names it
        holder.wait()
    assert (out / LOCK_FILE).read_text().startswith(f"pid {holder.pid} on ")
    assert main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"taking over the stale run lock {out / LOCK_FILE} of pid {holder.pid} on " in printed
    assert (out / "last.pt").is_file() and not (out / LOCK_FILE).exists()  # released at the end


def test_the_lock_is_exclusive_within_one_process_and_released_on_error(tmp_path, capsys):
    held = f"pid {os.getpid()} on .* is training into it"
    with run_lock(tmp_path), pytest.raises(ArtifactError, match=held), run_lock(tmp_path):
        pass
    with pytest.raises(RuntimeError), run_lock(tmp_path):
        raise RuntimeError("the run failed")
    with run_lock(tmp_path):  # free again, and not reported as stale: it was released
        pass
    assert not (tmp_path / LOCK_FILE).exists() and "stale" not in capsys.readouterr().out


def test_under_torchrun_only_rank_0_takes_the_lock(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with run_lock(tmp_path):  # rank 0 holds it; rank 1 goes on to join the group (here: no group to join)
        assert main([*TINY, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "MASTER_ADDR" in err and "in use" not in err


def test_only_rank_0_removes_the_temporary_files_of_a_folder(tmp_path, monkeypatch):
    from train.checkpoint import prepare_out

    leftover = tmp_path / ".last.pt.abc123.tmp"  # a write in flight, or one a killed run left
    leftover.write_bytes(b"x")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    prepare_out(tmp_path, resume=False, overwrite=False, log=print)
    assert leftover.exists()
    monkeypatch.setenv("RANK", "0")
    prepare_out(tmp_path, resume=False, overwrite=False, log=print)
    assert not leftover.exists()
