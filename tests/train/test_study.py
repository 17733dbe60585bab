"""``python -m train.study``: aggregation, resumability and recipe checks on the synthetic smoke recipe."""
import json

import pytest
import torch

from engine.errors import CheckpointError, InputError
from train import runner, study
from train.checkpoint import load_init
from train.model import JLML
from train.recipes import ABLATIONS, RECIPES, Recipe, get_recipe
from train.study import RunKey, aggregate, main, paired_differences, plan_runs, summary_table

SMOKE = ["--recipe", "smoke", "--splits", "2", "--threads", "1", "--no-progress"]


def _record(variant, seed, rank1, mAP):
    metrics = {"rank1": rank1, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0, "mAP": mAP, "num_query": 10}
    return {"variant": variant, "split_seed": seed, "metrics": metrics, "train_s": 10.0 * (seed + 1)}


def test_aggregate_gives_mean_and_sample_std_per_variant():
    records = [_record("joint", 0, 0.2, 0.1), _record("joint", 1, 0.4, 0.3), _record("joint", 2, 0.6, 0.2),
               _record("local_only", 0, 0.5, 0.25)]
    summary = aggregate(records)
    joint = summary["joint"]
    assert joint["n"] == 3 and joint["splits"] == [0, 1, 2]
    assert joint["rank1"]["mean"] == pytest.approx(0.4) and joint["rank1"]["std"] == pytest.approx(0.2)
    assert joint["mAP"]["mean"] == pytest.approx(0.2) and joint["mAP"]["std"] == pytest.approx(0.1)
    assert joint["train_s"] == pytest.approx(20.0)
    assert summary["local_only"]["rank1"] == {"mean": 0.5, "std": None}  # one run: no spread
    table = summary_table(summary)
    assert "| joint | 40.0 ± 20.0 |" in table and "| local_only | 50.0 |" in table


def test_paired_differences_compare_variants_on_the_splits_both_ran():
    records = [_record("joint", 0, 0.2, 0.1), _record("joint", 1, 0.4, 0.3), _record("joint", 2, 0.6, 0.2),
               _record("local_only", 0, 0.1, 0.1), _record("local_only", 1, 0.4, 0.2),
               _record("global_only", 5, 0.9, 0.9)]  # no joint run on split 5: nothing to pair with
    paired = paired_differences(records)
    assert list(paired) == ["local_only"]
    row = paired["local_only"]
    assert row["n"] == 2 and row["splits"] == [0, 1]
    assert row["rank1"]["mean"] == pytest.approx(-0.05) and row["rank1"]["std"] == pytest.approx(0.0707107)
    assert row["mAP"]["mean"] == pytest.approx(-0.05) and row["mAP"]["std"] == pytest.approx(0.0707107)
    assert "| local_only | -5.0 ± 7.1 | +0.0 ± 0.0 |" in summary_table(paired, signed=True)


def test_plan_goes_split_by_split():
    assert plan_runs(2, ["joint", "local_only"]) == [
        RunKey("joint", 0), RunKey("local_only", 0), RunKey("joint", 1), RunKey("local_only", 1)]


def test_recipes_build_every_ablation_and_reject_unknown_names():
    recipe = RECIPES["viper"]
    for variant, changes in ABLATIONS.items():
        cfg, opts = recipe.build(variant, seed=3)
        assert all(getattr(cfg, k) == v for k, v in changes.items()) and opts.seed == 3
        assert cfg.widths == recipe.build("joint", seed=0)[0].widths  # the recipe itself never varies
    with pytest.raises(InputError, match="unknown ablation"):
        recipe.build("no_such_variant", seed=0)
    with pytest.raises(InputError, match="unknown recipe"):
        get_recipe("market")


def test_study_runs_saves_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    assert main([*SMOKE, "--out", str(out), "--variants", "joint", "local_only"]) == 0
    for seed in (0, 1):
        record = json.loads((out / "joint" / f"split{seed}" / "metrics.json").read_text())
        assert record["split_seed"] == seed and 0.0 <= record["metrics"]["rank1"] <= 1.0
    first = json.loads((out / "summary.json").read_text())
    assert first["variants"]["joint"]["n"] == 2 and first["minus_joint"]["local_only"]["splits"] == [0, 1]
    variants = first["variants"]  # both ran on the same splits: mean of differences = difference of means
    assert first["minus_joint"]["local_only"]["rank1"]["mean"] == pytest.approx(
        variants["local_only"]["rank1"]["mean"] - variants["joint"]["rank1"]["mean"])
    assert "| joint |" in (out / "summary.md").read_text() and "| joint |" in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study, "fit", no_training)
    assert main([*SMOKE, "--out", str(out), "--variants", "joint", "local_only"]) == 0
    assert json.loads((out / "summary.json").read_text()) == first


def test_unfinished_run_continues_from_its_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "study"
    assert main([*SMOKE, "--splits", "1", "--out", str(out)]) == 0
    (out / "joint" / "split0" / "metrics.json").unlink()  # as if killed after training, before evaluating
    resumed = []
    real_fit = study.fit

    def spy(*args, resume=None, **kwargs):
        resumed.append(resume)
        return real_fit(*args, resume=resume, **kwargs)

    monkeypatch.setattr(study, "fit", spy)
    assert main([*SMOKE, "--splits", "1", "--out", str(out)]) == 0
    assert resumed == [out / "joint" / "split0" / "last.pt"]
    assert (out / "joint" / "split0" / "metrics.json").is_file()


def test_finished_run_of_another_recipe_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    assert main([*SMOKE, "--splits", "1", "--out", str(out)]) == 0
    smoke = RECIPES["smoke"]
    changed = Recipe(smoke.name, smoke.dataset, config=smoke.config, options={**smoke.options, "epochs": 2},
                     data_options=smoke.data_options)
    with pytest.raises(CheckpointError, match=r"differs in \['options'\]"):
        study.finished_record(changed, RunKey("joint", 0), out)
    monkeypatch.setattr(study, "get_recipe", lambda name: changed)
    assert main([*SMOKE, "--splits", "1", "--out", str(out)]) == 2
    assert "fresh --out" in capsys.readouterr().err


def test_bad_split_count_exits_2(tmp_path, capsys):
    assert main([*SMOKE, "--splits", "0", "--out", str(tmp_path)]) == 2
    assert "--splits 0" in capsys.readouterr().err


def test_recipe_refuses_pretraining_on_its_own_data_set():
    with pytest.raises(InputError, match="another data set"):
        Recipe("bad", "viper", pretrain="viper", pretrain_epochs=1)
    with pytest.raises(InputError, match="give both"):
        Recipe("bad", "viper", pretrain="prid2011")


def test_pretraining_runs_once_per_variant_and_seeds_every_fine_tune(tmp_path, monkeypatch, stand_in_loader):
    from train.checkpoint import load_checkpoint

    smoke = RECIPES["smoke"]
    recipe = Recipe("smoke_pre", "synthetic", config=smoke.config, options=smoke.options,
                    data_options=smoke.data_options, pretrain="prid2011", pretrain_epochs=2,
                    pretrain_options={"num_train": 9, "num_test": 1})
    # another synthetic population stands in for PRID2011
    stand_in_loader("prid2011", {"num_train": 9, "num_test": 1}, num_ids=10, num_test=2, seed=99)
    inits = []
    real_fit = study.fit

    def spy(cfg, data, opts, out, **kwargs):
        inits.append((out.name, kwargs.get("init")))
        return real_fit(cfg, data, opts, out, **kwargs)

    monkeypatch.setattr(study, "fit", spy)
    monkeypatch.setattr(runner, "fit", spy)  # pre-training goes through train.runner
    study.run_study(recipe, plan_runs(2), tmp_path, progress=False)
    pre = load_checkpoint(tmp_path / "pretrain" / "joint" / "last.pt")
    assert pre.epoch == 2 and pre.num_classes == 8
    assert [name for name, _ in inits] == ["joint", "split0", "split1"]
    for _, init in inits[1:]:
        assert init.keys() == pre.model.state_dict().keys()
        assert all(torch.equal(init[k], v) for k, v in pre.model.state_dict().items())
    record = json.loads((tmp_path / "joint" / "split0" / "metrics.json").read_text())
    assert record["pretrain"] == {"dataset": "prid2011", "epochs": 2, "options": {"num_train": 9, "num_test": 1}}


def test_load_init_copies_all_but_the_other_data_sets_classifiers_and_refuses_another_network():
    cfg = RECIPES["smoke"].build("joint", seed=0)[0]
    torch.manual_seed(0)
    source = JLML(cfg, num_classes=7)
    torch.manual_seed(1)
    target = JLML(cfg, num_classes=5)
    report = load_init(target, source.state_dict(), "ck.pt")
    assert report.dropped == ("classifiers.global.bias", "classifiers.global.weight", "classifiers.local.bias",
                              "classifiers.local.weight")
    assert "loaded" in report.describe() and "classifiers.local.weight" in report.describe()
    for name, tensor in target.state_dict().items():
        if name not in report.dropped:
            assert name in report.loaded and torch.equal(tensor, source.state_dict()[name]), name
    other = JLML(cfg.replace(widths=(4, 16)), num_classes=5)
    with pytest.raises(CheckpointError, match=r"cannot initialise from ck.pt: it holds another network.*other shape"):
        load_init(other, source.state_dict(), "ck.pt")
    with pytest.raises(CheckpointError, match="missing: branches.global"):
        load_init(target, {k: v for k, v in source.state_dict().items() if not k.startswith("branches.global")},
                  "ck.pt")


def test_a_record_written_before_a_config_field_existed_counts_it_as_its_default(tmp_path):
    out = tmp_path / "study"
    assert main([*SMOKE, "--splits", "1", "--out", str(out)]) == 0
    path = out / "joint" / "split0" / "metrics.json"
    record = json.loads(path.read_text())
    for field in ("triplet_weight", "triplet_margin"):  # as an older jlml-engine wrote it
        del record["config"][field]
    path.write_text(json.dumps(record))
    assert study.finished_record(RECIPES["smoke"], RunKey("joint", 0), out)["metrics"] == record["metrics"]
    record["config"]["triplet_weight"] = 1.0  # a run that really trained otherwise is still refused
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"differs in \['config'\]"):
        study.finished_record(RECIPES["smoke"], RunKey("joint", 0), out)
