"""VIPeR, PRID2011 and Market-layout loaders on tiny fake folders, and on the real data when present."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import DataError
from train.data import load_reid_set

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SIZE = {"height": 16, "width": 8}


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 6, 3), value % 256, np.uint8)).save(path)


@pytest.fixture
def viper(tmp_path):
    root = tmp_path / "viper"
    for pid in range(1, 9):
        for cam in (1, 2):
            _png(root / f"{pid:04d}{cam:04d}.png", pid * 20 + cam)
    return root


@pytest.fixture
def prid(tmp_path):
    root = tmp_path / "prid2011"
    for pid in range(1, 8):           # 1..5 in both cameras, 6..7 different people in camera A
        _png(root / "cam_a" / f"person_{pid:04d}.png", pid)
    for pid in range(1, 10):          # 6..9 camera-B-only people
        _png(root / "cam_b" / f"person_{pid:04d}.png", 100 + pid)
    return root


def test_viper_split_sizes_and_cameras(viper):
    data = load_reid_set("viper", viper.parent, num_train=4, num_test=3, **SIZE)
    assert data.protocol == "single_shot" and data.train_images.shape == (8, 16, 8, 3)
    assert data.num_classes == 4
    assert np.all(data.query_cams == 0) and np.all(data.gallery_cams == 1)
    assert sorted(data.query_pids) == sorted(data.gallery_pids) and len(data.query_pids) == 3
    # pixel value encodes pid*20+cam: each query image really is camera A of its person
    np.testing.assert_array_equal(data.query_images[:, 0, 0, 0], data.query_pids * 20 + 1)
    assert not set(data.train_images[:, 0, 0, 0] // 20) & set(data.query_pids)


def test_viper_splits_are_seeded(viper):
    a = load_reid_set("viper", viper, num_train=4, num_test=4, split_seed=1, **SIZE)
    b = load_reid_set("viper", viper, num_train=4, num_test=4, split_seed=1, **SIZE)
    c = load_reid_set("viper", viper, num_train=4, num_test=4, split_seed=2, **SIZE)
    np.testing.assert_array_equal(a.query_pids, b.query_pids)
    assert set(a.query_pids) != set(c.query_pids)


def test_viper_too_few_people(viper):
    with pytest.raises(DataError, match=r"too few people.*8 eligible.*5 train \+ 4 test"):
        load_reid_set("viper", viper, num_train=5, num_test=4, **SIZE)


def test_corrupt_image_is_skipped_and_counted(viper):
    (viper / "00030001.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*00030001.png"):
        data = load_reid_set("viper", viper, num_train=4, num_test=4, **SIZE)
    assert data.skipped == 1 and "1 unreadable skipped" in data.describe()
    assert len(data.train_images) + len(data.query_images) + len(data.gallery_images) == 15


def test_prid_gallery_holds_camera_b_only_people(prid):
    data = load_reid_set("prid2011", prid, num_train=2, num_test=3, num_shared=5, **SIZE)
    assert data.num_classes == 2 and len(data.train_images) == 4
    assert len(data.query_pids) == 3 and set(data.query_pids) <= {1, 2, 3, 4, 5}
    assert len(data.gallery_pids) == 3 + 4 and {6, 7, 8, 9} <= set(data.gallery_pids)
    assert not set(data.query_pids) & {6, 7, 8, 9}
    extra = load_reid_set("prid2011", prid, num_train=2, num_test=3, num_shared=5,
                          cam_a_only_train=True, **SIZE)
    assert extra.num_classes == 4 and len(extra.train_images) == 6


def _market(root: Path) -> Path:
    names = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_0001_01.jpg",
                               "0000_c1s1_0002_00.jpg", "-1_c1s1_0003_00.jpg"],
        "query": ["0005_c1s1_001051_00.jpg", "0009_c2s1_0004_00.jpg"],
        "bounding_box_test": ["0005_c1s1_001151_01.jpg", "0005_c4s1_0011_01.jpg", "0009_c6s1_0005_02.jpg",
                              "0000_c2s1_000000_00.jpg", "-1_c1s1_000401_03.jpg", "Thumbs.db"],
    }
    for folder, files in names.items():
        for i, name in enumerate(files):
            path = root / folder / name
            if name.endswith(".jpg"):
                _png(path.with_suffix(".png"), i)
                path.with_suffix(".png").rename(path)
            else:
                path.write_bytes(b"not an image")
    return root


def test_market_keeps_junk_and_distractors_in_the_gallery(tmp_path):
    data = load_reid_set("market1501", _market(tmp_path / "Market-1501"), **SIZE)
    assert data.protocol == "market"
    assert data.num_classes == 2 and len(data.train_images) == 3           # -1 and 0 skipped
    assert sorted(data.gallery_pids.tolist()) == [-1, 0, 5, 5, 9]
    assert sorted(data.query_cams.tolist()) == [0, 1]                       # c1 -> 0
    assert data.gallery_cams[data.gallery_pids == 9].tolist() == [5]
    assert "gallery 2 ids / 5 imgs" in data.describe()


def test_dukemtmc_reads_the_same_layout_from_a_parent_folder(tmp_path):
    _market(tmp_path / "DukeMTMC-reID")
    data = load_reid_set("dukemtmc", tmp_path, **SIZE)
    assert data.name == "dukemtmc" and len(data.query_pids) == 2


def test_root_errors(tmp_path, viper):
    with pytest.raises(DataError, match="does not exist"):
        load_reid_set("viper", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_reid_set("viper", tmp_path / "empty")
    with pytest.raises(DataError, match=r"expected folder .*bounding_box_train"):
        load_reid_set("market1501", viper)
    _png(viper / "photo.png", 1)
    with pytest.raises(DataError, match=r"expected files named PPPPCCCC.png.*found photo.png"):
        load_reid_set("viper", viper)
    with pytest.raises(DataError, match="market1501 takes no option num_test"):
        load_reid_set("market1501", viper, num_test=3)


@pytest.mark.skipif(not (SHARED_DATA / "viper").is_dir(), reason=f"VIPeR not found under {SHARED_DATA}")
def test_real_viper_protocol():
    data = load_reid_set("viper", SHARED_DATA, height=32, width=16, split_seed=7)
    assert (data.num_classes, len(data.train_images)) == (316, 632)
    assert len(data.query_pids) == len(data.gallery_pids) == 316
    assert not set(map(bytes, data.train_images)) & set(map(bytes, data.query_images))


@pytest.mark.skipif(not (SHARED_DATA / "prid2011").is_dir(), reason=f"PRID2011 not found under {SHARED_DATA}")
def test_real_prid2011_protocol():
    data = load_reid_set("prid2011", SHARED_DATA, height=32, width=16)
    assert (data.num_classes, len(data.train_images)) == (100, 200)
    assert len(data.query_pids) == 100 and len(data.gallery_pids) == 649
    assert set(data.query_pids) <= set(data.gallery_pids) and max(data.query_pids) <= 200


def test_no_progress_reaches_the_loading_images_bar(viper, monkeypatch, capsys):
    from engine import images
    from train.__main__ import main

    monkeypatch.setattr(images, "PROGRESS_MIN_IMAGES", 1)  # 16 images would get the automatic bar
    load_reid_set("viper", viper, num_train=4, num_test=4, **SIZE)
    assert "loading images" in capsys.readouterr().err
    load_reid_set("viper", viper, num_train=4, num_test=4, progress=False, **SIZE)
    assert capsys.readouterr().err == ""
    argv = ["--dataset", "viper", "--data-root", str(viper), "--data-option", "num_train=4", "--data-option",
            "num_test=4", "--height", "32", "--width", "16", "--widths", "4,8", "--blocks", "1,1",
            "--feat-dim", "16", "--batch-size", "8", "--epochs", "1", "--threads", "1", "--no-progress"]
    assert main([*argv, "--out", str(viper.parent / "run")]) == 0
    assert "loading images" not in capsys.readouterr().err
