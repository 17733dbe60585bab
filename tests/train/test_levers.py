"""Accuracy levers around the study: pooled pre-training sets, colour jitter, extra metrics per run."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import DataError, InputError
from train import study
from train.data import Augment, load_reid_set
from train.data.combine import combine_train_sets, everyone
from train.data.reidset import make_reid_set
from train.recipes import RECIPES, Recipe

SYN = dict(height=32, width=16, num_test=2, cams=2, images_per_cam=1)


def test_combined_sets_keep_every_identity_apart():
    a = load_reid_set("synthetic", num_ids=6, seed=1, **SYN)
    b = load_reid_set("synthetic", num_ids=5, seed=2, **SYN)
    both = combine_train_sets([a, b])
    assert both.num_classes == a.num_classes + b.num_classes == 7
    assert len(both.train_images) == len(a.train_images) + len(b.train_images)
    assert np.array_equal(both.train_pids[len(a.train_pids):], b.train_pids + a.num_classes)
    assert np.array_equal(both.train_images[len(a.train_images):], b.train_images)
    assert np.array_equal(both.query_pids, a.query_pids) and both.name == "synthetic+synthetic"
    with pytest.raises(DataError, match="image sizes"):
        combine_train_sets([a, load_reid_set("synthetic", num_ids=5, **{**SYN, "height": 64})])


def test_everyone_makes_every_person_a_training_id_once():
    a = load_reid_set("synthetic", num_ids=6, seed=1, **SYN)  # 4 train people, 2 test people
    every = everyone(a)
    n, q = len(a.train_images), len(a.query_images)
    assert every.num_classes == 6 and len(every.train_images) == n + q + len(a.gallery_images)
    assert np.array_equal(every.train_images[n:], np.concatenate([a.query_images, a.gallery_images]))
    new_q, new_g = every.train_pids[n:n + q], every.train_pids[n + q:]
    assert sorted(set(new_q.tolist())) == [4, 5]  # after the training ids
    pairs = [dict(zip(part.tolist(), new.tolist(), strict=True)) for part, new in ((a.query_pids, new_q), (a.gallery_pids, new_g))]
    assert pairs[0] == pairs[1]
    assert np.array_equal(every.query_pids, a.query_pids) and np.array_equal(every.gallery_images, a.gallery_images)
    images = np.zeros((3, 32, 16, 3), np.uint8)
    part = (images, np.array([1, 1, 2]), np.zeros(3, np.int64))
    market = make_reid_set("m", "market", {"train": part, "query": (images[:1], np.array([7]), np.zeros(1)),
                                          "gallery": (images, np.array([-1, 0, 7]), np.ones(3))})
    assert everyone(market).train_pids.tolist() == [0, 0, 1, 2, 2]  # junk and distractor left out


def test_recipe_refuses_joining_its_own_data_set_to_training():
    with pytest.raises(InputError, match="test people must never train"):
        Recipe("bad", "viper", train_also={"viper": {}})


def test_study_trains_on_the_joined_sets_and_evaluates_the_split_only(tmp_path, stand_in_loader):
    from train.checkpoint import load_checkpoint

    smoke = RECIPES["smoke"]
    recipe = Recipe("smoke_joint", "synthetic", config=smoke.config, options=smoke.options,
                    data_options=smoke.data_options, train_also={"prid2011": {"num_train": 9, "num_test": 1}})
    # another synthetic population stands in for PRID2011
    fake_prid = stand_in_loader("prid2011", {"num_train": 9, "num_test": 1}, num_ids=10, num_test=2, seed=99)
    study.run_study(recipe, study.plan_runs(1), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "joint" / "split0" / "last.pt").num_classes == 8 + 10
    record = json.loads((tmp_path / "joint" / "split0" / "metrics.json").read_text())
    assert record["train_also"] == {"prid2011": {"num_train": 9, "num_test": 1}}
    split = fake_prid("synthetic", height=32, width=16, **smoke.data_options)
    assert study.join_training(split, []) is split
    joined = study.join_training(split, [fake_prid("prid2011", height=32, width=16, num_train=9, num_test=1)])
    assert np.array_equal(joined.query_images, split.query_images) and joined.num_classes == 18


def test_colour_jitter_changes_colours_within_bounds_and_is_seeded():
    batch = torch.full((4, 8, 4, 3), 100, dtype=torch.uint8)
    batch[:, :4] = 200
    plain = Augment(flip=False, pad=0, erase_prob=0.0, seed=0)
    jitter = Augment(flip=False, pad=0, erase_prob=0.0, jitter=0.3, seed=0)
    assert torch.equal(plain(batch), batch)
    out = jitter(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and not torch.equal(out, batch)
    assert torch.equal(out, Augment(flip=False, pad=0, erase_prob=0.0, jitter=0.3, seed=0)(batch))
    ratio = out.float().mean(dim=(1, 2)) / batch.float().mean(dim=(1, 2))  # per-channel gain
    assert ratio.min() >= 0.69 and ratio.max() <= 1.31
    with pytest.raises(InputError, match="jitter"):
        Augment(jitter=1.5)


def _smoke_recipe(**changes):
    smoke = RECIPES["smoke"]
    base = dict(dataset="synthetic", config={**smoke.config, "bnneck": True, "flip_test": True},
                options=smoke.options, data_options=smoke.data_options, extra_metrics=("rerank", "no_flip"))
    return Recipe("smoke_levers", **{**base, **changes})


def test_study_records_rerank_and_no_flip_metrics_of_the_same_weights(tmp_path):
    recipe = _smoke_recipe()
    study.run_study(recipe, study.plan_runs(2, ["joint"]), tmp_path, progress=False)
    record = json.loads((tmp_path / "joint" / "split0" / "metrics.json").read_text())
    assert set(record["extra_metrics"]) == {"rerank", "no_flip"} and record["cpu_s"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"joint", "joint+rerank", "joint+no_flip"} <= set(summary["variants"])
    lever = summary["minus_same_weights"]["joint+rerank"]
    assert lever["n"] == 2 and lever["rank1"]["mean"] == pytest.approx(
        summary["variants"]["joint+rerank"]["rank1"]["mean"] - summary["variants"]["joint"]["rank1"]["mean"])


def test_first_split_runs_only_the_later_splits(tmp_path):
    assert study.plan_runs(4, ["joint"], first=2) == [study.RunKey("joint", 2), study.RunKey("joint", 3)]
    assert study.main(["--recipe", "smoke", "--splits", "2", "--first-split", "2", "--out", str(tmp_path)]) == 2


def test_recipe_checks_pretraining_sets_and_extra_metrics():
    with pytest.raises(InputError, match="pretrain_also"):
        Recipe("r", "viper", pretrain_also={"synthetic": {}})
    with pytest.raises(InputError, match="pretrain_also"):
        Recipe("r", "viper", pretrain="prid2011", pretrain_epochs=1, pretrain_also={"viper": {}})
    with pytest.raises(InputError, match="extra_metrics"):
        Recipe("r", "viper", extra_metrics=("nope",))


def test_pretraining_pools_every_named_set(tmp_path, monkeypatch):
    seen = []
    import train.data as data_pkg  # study imports its loader lazily, from the data package

    original = data_pkg.load_reid_set

    def spy(name, *args, **kwargs):
        seen.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(data_pkg, "load_reid_set", spy)
    root = tmp_path / "data"  # a generated VIPeR layout (6 people x 2 cameras), not the real set
    for pid in range(1, 7):
        for cam in (1, 2):
            (root / "viper").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 6, 3), 20 * pid + cam, np.uint8)).save(root / "viper" / f"{pid:04d}{cam:04d}.png")
    recipe = _smoke_recipe(dataset="prid2011", pretrain="synthetic", pretrain_epochs=1,
                           pretrain_options={"num_ids": 6, "num_test": 1},
                           pretrain_also={"viper": {"num_train": 5, "num_test": 1}}, extra_metrics=())
    weights = study.pretrained_weights(recipe, "joint", tmp_path, data_root=str(root))
    assert seen == ["synthetic", "viper"]
    log = (tmp_path / "pretrain" / "joint" / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and weights["classifiers.global.weight"].shape[0] == 5 + 5
