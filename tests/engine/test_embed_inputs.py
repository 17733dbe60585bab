"""`python -m engine.embed`: every file it does not embed is counted and named; bad labels, flags and
outputs are refused before the first image is embedded (exit 2, one line)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.embed import main as embed_main
from engine.gallery import Gallery


def _crops(folder, make_images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in zip(names, make_images(len(names), seed=4), strict=True):
        Image.fromarray(pixels).save(folder / name)
    return folder


def test_skipped_files_are_counted_and_named(tmp_path, artifact_dir, make_images, capsys):
    folder = _crops(tmp_path / "crops", make_images, ["0001_c1s1_01.png", "0001_c2s1_02.png", "0002_c1s1_03.png"])
    ramp = (np.arange(32 * 16).reshape(32, 16) * 120).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "0002_c2s1_04.png")  # 16-bit grey: a row, not a white image
    Image.fromarray(make_images(1, seed=5)[0]).save(folder / "0003_c1s1_05.gif")
    (folder / "0003_c2s1_06.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "g.npz"
    assert embed_main([str(folder), "--artifact", str(artifact_dir), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 file(s) that are not .jpg/.jpeg/.png/.bmp images: 0003_c1s1_05.gif\n" in captured.err
    assert "skipped 1 unreadable image(s) of 5: 0003_c2s1_06.png\n" in captured.err
    assert "4 images" in captured.out and "skipped 2 files" in captured.out
    gallery = Gallery.load(out)
    assert gallery.paths == ["0001_c1s1_01.png", "0001_c2s1_02.png", "0002_c1s1_03.png", "0002_c2s1_04.png"]


@pytest.fixture
def no_embedding(monkeypatch):
    """Embedding fails the test: what is refused must be refused before the first image is embedded."""
    import engine.embed

    def refuse(*args, **kwargs):
        raise AssertionError("embedding started")

    monkeypatch.setattr(engine.embed, "_embed_all", refuse)


def _refused(argv, capsys) -> str:
    assert embed_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


MARKET = ["0001_c1s1_01.png", "-1_c1s1_02.png", "0002_c2s1_03.png", "-1_c2s1_04.png"]


def test_market_junk_is_refused_before_embedding(tmp_path, artifact_dir, make_images, capsys, no_embedding):
    folder = _crops(tmp_path / "crops", make_images, MARKET)
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz")], capsys)
    assert "2 image(s) have a negative id (e.g. -1): -1_c1s1_02.png, -1_c2s1_04.png; pass --skip-junk" in err


def test_skip_junk_leaves_market_junk_out_and_counts_it(tmp_path, artifact_dir, make_images, capsys):
    folder = _crops(tmp_path / "crops", make_images, MARKET)
    out = tmp_path / "g.npz"
    assert embed_main([str(folder), "--artifact", str(artifact_dir), "--out", str(out), "--skip-junk",
                       "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 junk image(s) with id -1 (--skip-junk): -1_c1s1_02.png, -1_c2s1_04.png\n" in captured.err
    assert "2 images" in captured.out and "skipped 2 files" in captured.out
    with np.load(out) as saved:
        assert sorted(saved["ids"].tolist()) == [1, 2]
    assert Gallery.load(out).paths == ["0001_c1s1_01.png", "0002_c2s1_03.png"]


@pytest.mark.parametrize("content,reason", [
    ("path,id\na.png,3\nb.png,-7\n", "1 image(s) have a negative id (e.g. -7): b.png; ids must be >= 0"),
    ("path,id\na.png,3\nb.png,4\na.png,5\n", "names 'a.png' twice (lines 2 and 4); keep one row per image"),
    (b"path,id\na.png,3\nb\xe9.png,4\n", "is not UTF-8 text (byte 0xe9"),
])
def test_bad_label_files_are_refused_before_embedding(tmp_path, artifact_dir, make_images, capsys, no_embedding,
                                                       content, reason):
    folder = _crops(tmp_path / "crops", make_images, ["a.png", "b.png"])
    labels = tmp_path / "labels.csv"
    labels.write_bytes(content if isinstance(content, bytes) else content.encode())
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz"),
                    "--labels", str(labels)], capsys)
    assert reason in err and (str(labels) in err or "negative id" in reason), err


def test_an_unwritable_out_is_found_before_embedding(tmp_path, artifact_dir, make_images, capsys, no_embedding):
    folder = _crops(tmp_path / "crops", make_images, ["0001_c1s1_01.png"])
    (tmp_path / "a-file").write_text("x")
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", str(tmp_path / "a-file" / "g.npz")],
                   capsys)
    assert f"--out's folder {tmp_path / 'a-file'} is a file" in err
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", "/proc/g.npz"], capsys)
    assert "--out's folder /proc is not a writable folder" in err
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", str(folder)], capsys)
    assert f"--out {folder} is a folder, expected a file path" in err


def test_an_unreachable_ray_address_is_one_line(tmp_path, artifact_dir, make_images, capsys):
    import socket

    pytest.importorskip("ray.data")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"ray://127.0.0.1:{sock.getsockname()[1]}"
    folder = _crops(tmp_path / "crops", make_images, ["0001_c1s1_01.png"])
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz"),
                    "--ray", address], capsys)
    assert f"cannot reach the Ray cluster at {address} (" in err


def test_ray_auto_without_a_cluster_is_one_line(tmp_path, artifact_dir, make_images, capsys, monkeypatch):
    """What ray.init("auto") raises on a machine without a running cluster."""
    import engine.ray_embed

    class NoCluster:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs):
            raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to "
                                  "by setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(engine.ray_embed, "_ray", lambda: NoCluster)
    folder = _crops(tmp_path / "crops", make_images, ["0001_c1s1_01.png"])
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz"),
                    "--ray", "auto"], capsys)
    assert "no Ray cluster at --ray auto (Could not find any running Ray instance" in err
    assert "ray start --head" in err


@pytest.mark.parametrize("extra,reason", [
    (["--labels", "labels.csv", "--index-ids"], "--labels and --index-ids both say where the ids come from"),
    (["--index-ids", "--skip-junk"], "--index-ids has none"),
    (["--ray", "--url", "grpc://127.0.0.1:1"], "--ray and --url both say where the images are embedded"),
    (["--ray-workers", "4", "--gpus-per-worker", "1"], "--ray-workers, --gpus-per-worker only apply with --ray"),
    (["--url", "grpc://127.0.0.1:1", "--backend", "ort"], "so --artifact, --backend would be ignored"),
])
def test_conflicting_or_ignored_flags_are_refused(tmp_path, artifact_dir, make_images, capsys, no_embedding,
                                                  extra, reason):
    folder = _crops(tmp_path / "crops", make_images, ["0001_c1s1_01.png"])
    (tmp_path / "labels.csv").write_text("path,id\n0001_c1s1_01.png,1\n")
    extra = [str(tmp_path / e) if e == "labels.csv" else e for e in extra]
    err = _refused([str(folder), "--artifact", str(artifact_dir), "--out", str(tmp_path / "g.npz"), *extra], capsys)
    assert reason in err


def test_a_negative_worker_reservation_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        embed_main(["crops", "--out", "g.npz", "--ray", "--cpus-per-worker", "-1"])
    assert stopped.value.code == 2 and "expected a finite number of at least 0, got -1" in capsys.readouterr().err
