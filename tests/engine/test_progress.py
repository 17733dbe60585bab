"""Progress: a tqdm bar on a terminal, plain lines (no carriage returns) in a log."""
from __future__ import annotations

import io

from engine.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_line_per_quarter_and_one_at_the_end():
    log = io.StringIO()
    assert list(progress(range(100), desc="loading images", unit="img", stream=log)) == list(range(100))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 4
    assert [line.split(",")[0] for line in lines] == [
        "loading images: 25/100 img (25%)", "loading images: 50/100 img (50%)",
        "loading images: 75/100 img (75%)", "loading images: 100/100 img (100%)"]


def test_one_line_per_epoch_with_its_postfix_and_updates_in_steps():
    log = io.StringIO()
    bar = progress(range(7), desc="epoch 2/5", unit="batches", every=1.0, stream=log)
    for _ in bar:
        bar.set_postfix(loss="0.123", acc="0.50")
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("epoch 2/5: 7/7 batches (100%), ")
    assert log.getvalue().rstrip().endswith("loss 0.123, acc 0.50")
    log = io.StringIO()
    with progress(total=600, desc="embedding", unit="img", stream=log) as counted:
        for _ in range(3):
            counted.update(256 if counted.n < 512 else 88)  # chunks cross 25% and 75% at once
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == [
        "embedding: 256/600 img (42%)", "embedding: 512/600 img (85%)", "embedding: 600/600 img (100%)"]


def test_on_a_terminal_the_tqdm_bar_and_disabled_is_silent():
    tty = Terminal()
    list(progress(range(50), desc="loading images", stream=tty))
    assert "\r" in tty.getvalue() and "50/50" in tty.getvalue()
    quiet = io.StringIO()
    list(progress(range(50), desc="x", disable=True, stream=quiet))
    assert quiet.getvalue() == ""


def test_embed_cli_logs_lines_not_frames(tmp_path, artifact_dir, make_images, capsys):
    """stderr is not a terminal under pytest, as in a log: the embed command's progress is lines."""
    from PIL import Image

    from engine.embed import main

    for n, pixels in enumerate(make_images(6, seed=1)):
        Image.fromarray(pixels).save(tmp_path / f"{n // 2 + 1:04d}_c1s1_{n:06d}_00.png")
    assert main([str(tmp_path), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "embedding: 6/6 img (100%)" in err
