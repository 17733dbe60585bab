"""``train.run`` (the typed entry point), ``Runtime`` (device, AMP, layout, workers) and the loop's parts."""
import dataclasses
import math

import pytest
import torch

from engine.errors import InputError
from train import Runtime, TrainOptions, run
from train.checkpoint import load_checkpoint
from train.loop import EpochBatches, fit, lr_factor, place
from train.runner import DataChoice, Pretrain

OPTS = TrainOptions(epochs=1, batch_size=8, progress=False)
SMALL = DataChoice("synthetic", options={"num_ids": 12, "num_test": 4})


def test_runtime_parses_devices_and_resolves_on_this_machine():
    here = place(Runtime(device="cpu"))
    assert here.device == torch.device("cpu") and here.amp_dtype is None
    assert (here.workers, here.channels_last) == (0, False)                    # CPU defaults
    assert place(Runtime(device="cpu", workers=2, channels_last=True)).workers == 2
    for bad in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(InputError, match="--device"):
            Runtime(device=bad)
    with pytest.raises(InputError, match="--workers -1"):
        Runtime(workers=-1)
    with pytest.raises(InputError, match="--amp .* needs a CUDA device"):
        place(Runtime(device="cpu", amp=True))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="sees no CUDA GPU; pass --device cpu"):
            place(Runtime(device="cuda:0"))
        assert place(Runtime(device="auto")).device == torch.device("cpu")


def test_run_is_a_typed_entry_point(tmp_path, tiny_cfg):
    result = run(tiny_cfg, OPTS, SMALL, tmp_path / "run", runtime=Runtime(device="cpu"))
    assert result.checkpoint == tmp_path / "run" / "last.pt" and 0.0 <= result.metrics["rank1"] <= 1.0
    assert result.data.num_classes == 8 and [h["epoch"] for h in result.history] == [1]
    assert load_checkpoint(result.checkpoint).extra["data"] == SMALL.record()
    with pytest.raises(InputError, match="pass one of them"):
        run(tiny_cfg, OPTS, SMALL, tmp_path / "x", resume=True, init=result.checkpoint)
    with pytest.raises(InputError, match="could show the model its test people"):
        run(tiny_cfg, OPTS, SMALL, tmp_path / "y", pretrain=Pretrain(SMALL, 1))
    with pytest.raises(InputError, match="would train on its test people"):
        run(tiny_cfg, OPTS, SMALL, tmp_path / "z", train_also=[SMALL])
    assert not (tmp_path / "z" / "last.pt").exists()


def test_run_pretrains_on_another_set_then_fine_tunes(tmp_path, tiny_cfg, monkeypatch, capsys):
    import train.data

    real_load = train.data.load_reid_set

    def fake_prid(name, root=None, **kwargs):  # another synthetic population stands in for PRID2011
        if name != "prid2011":
            return real_load(name, root, **kwargs)
        assert (kwargs.pop("num_train"), kwargs.pop("num_test")) == (9, 1)
        return real_load("synthetic", num_ids=12, num_test=2, seed=5, **kwargs)  # 10 ids

    monkeypatch.setattr(train.data, "load_reid_set", fake_prid)
    monkeypatch.setenv("JLML_DATA", str(tmp_path))  # the run records a data root; none need exist here
    pretrain = Pretrain(DataChoice("prid2011", options={"num_train": 9, "num_test": 1}), epochs=1)
    tuned = run(tiny_cfg, OPTS, SMALL, tmp_path, pretrain=pretrain, evaluate=False)
    assert load_checkpoint(tmp_path / "pretrain" / "last.pt").extra["data"]["dataset"] == "prid2011"
    assert tuned.metrics is None and not (tmp_path / "metrics.json").exists()
    assert tuned.init.dropped == ("classifiers.global.bias", "classifiers.global.weight",
                                  "classifiers.local.bias", "classifiers.local.weight")
    assert "pre-training on prid2011" in load_checkpoint(tuned.checkpoint).extra["init"]
    assert "initialised from pre-training on prid2011" in capsys.readouterr().out
    longer = run(tiny_cfg, dataclasses.replace(OPTS, epochs=2), SMALL, tmp_path, pretrain=pretrain, resume=True)
    assert longer.init is None and [h["epoch"] for h in longer.history] == [1, 2]   # no second pre-training


def test_run_trains_jointly_on_every_person_of_the_joined_sets(tmp_path, tiny_cfg, monkeypatch):
    import train.data

    real_load = train.data.load_reid_set

    def fake_viper(name, root=None, **kwargs):  # another synthetic population stands in for VIPeR
        return real_load("synthetic", num_ids=7, num_test=2, seed=3, **kwargs) if name == "viper" \
            else real_load(name, root, **kwargs)

    monkeypatch.setattr(train.data, "load_reid_set", fake_viper)
    joint = run(tiny_cfg, OPTS, SMALL, tmp_path, train_also=[DataChoice("viper")])
    assert joint.data.num_classes == 8 + 7 and len(joint.data.query_pids) == len(SMALL.load(tiny_cfg).query_pids)
    assert load_checkpoint(joint.checkpoint).extra["train_also"] == [DataChoice("viper").record()]
    assert 0.0 <= joint.metrics["rank1"] <= 1.0


def test_resume_extends_a_finished_run_on_the_stretched_schedule(tmp_path, tiny_cfg, stand_in):
    first = fit(tiny_cfg, stand_in, OPTS, tmp_path)
    longer = fit(tiny_cfg, stand_in, dataclasses.replace(OPTS, epochs=3), tmp_path, resume=first.checkpoint)
    assert [h["epoch"] for h in longer.history] == [1, 2, 3]
    base = OPTS.learning_rate
    assert [h["lr"] for h in longer.history] == pytest.approx([base, base * lr_factor("cosine", 1, 3),
                                                               base * lr_factor("cosine", 2, 3)])
    assert lr_factor("cosine", 1, 2) == pytest.approx(0.5) and lr_factor("step", 2, 3) == 0.1
    assert math.isclose(lr_factor("step", 1, 3), 1.0)


def test_batches_cover_the_epoch_once_and_loader_workers_change_nothing(tmp_path, tiny_cfg, stand_in):
    sampler = EpochBatches(17, 8, seed=0)
    sampler.set_epoch(3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 and sorted(i for b in batches for i in b) != list(range(17))
    assert len({int(i) for b in batches for i in b}) == 16                     # a last single sample dropped
    sampler.set_epoch(4)
    assert not all((a == b).all() for a, b in zip(batches, list(sampler), strict=True))
    opts = dataclasses.replace(OPTS, epochs=2)
    inline = fit(tiny_cfg, stand_in, opts, tmp_path / "a", runtime=Runtime(device="cpu", workers=0))
    workers = fit(tiny_cfg, stand_in, opts, tmp_path / "b", runtime=Runtime(device="cpu", workers=2))
    assert [h["loss"]["total"] for h in workers.history] == pytest.approx(
        [h["loss"]["total"] for h in inline.history], rel=1e-5)


@pytest.mark.gpu
def test_cuda_training_with_amp_and_channels_last_loads_on_the_cpu(tmp_path, tiny_cfg, stand_in):
    result = fit(tiny_cfg, stand_in, dataclasses.replace(OPTS, epochs=2), tmp_path,
                 runtime=Runtime(device="cuda", amp=True, workers=2))
    assert next(result.model.parameters()).is_cuda and all(torch.isfinite(torch.tensor(h["loss"]["total"]))
                                                           for h in result.history)
    ck = load_checkpoint(result.checkpoint)                                    # map_location cpu
    assert all(t.device.type == "cpu" for t in ck.model.state_dict().values())
    images = torch.from_numpy(stand_in.query_images)
    with torch.inference_mode():
        on_gpu = result.model(images.cuda()).float().cpu()
        on_cpu = ck.model(images)
    assert torch.nn.functional.cosine_similarity(on_gpu, on_cpu).min() > 0.999
    resumed = fit(tiny_cfg, stand_in, dataclasses.replace(OPTS, epochs=3), tmp_path, resume=result.checkpoint,
                  runtime=Runtime(device="cpu"))                               # a GPU run continues on a CPU
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_a_triplet_run_trains_on_pairs_and_logs_the_term(tmp_path, tiny_cfg, monkeypatch):
    """With triplet_weight > 0 the loop draws identity pairs (each step sees both images of its people)
    and the log carries the triplet term beside the identity losses."""
    import train.loop

    seen: list[torch.Tensor] = []
    real_step = train.loop.train_step

    def recording_step(model, loss_fn, opt, scaler, images, labels, *rest):
        seen.append(labels.clone())
        return real_step(model, loss_fn, opt, scaler, images, labels, *rest)

    monkeypatch.setattr(train.loop, "train_step", recording_step)
    result = run(tiny_cfg.replace(triplet_weight=1.0), OPTS, SMALL, tmp_path / "run", runtime=Runtime(device="cpu"))
    assert result.history[0]["loss"]["triplet"] > 0 and 0.0 <= result.metrics["rank1"] <= 1.0
    assert len(seen) == 2  # 8 training people, 4 a batch
    for labels in seen:
        first, second = labels.chunk(2)
        assert torch.equal(first, second) and len(set(first.tolist())) == 4
    assert load_checkpoint(result.checkpoint).config.triplet_weight == 1.0
