import dataclasses
import json

import numpy as np
import pytest
import torch

from engine import CheckpointError, InputError
from train.checkpoint import load_checkpoint
from train.loop import TrainOptions, embed, evaluate_model, fit
from train.losses import JLMLLoss
from train.model import JLML

OPTS = TrainOptions(epochs=2, batch_size=8, lr=0.05, progress=False)


def test_each_ablation_learns_a_fixed_batch(ablation_cfg, stand_in):
    cfg = ablation_cfg
    torch.manual_seed(0)
    model = JLML(cfg, stand_in.num_classes).train()
    loss_fn = JLMLLoss(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.from_numpy(stand_in.train_images)
    labels = torch.from_numpy(stand_in.train_pids)
    losses = []
    for _ in range(8):
        terms = loss_fn(model, model.forward_head(model.forward_features(images)), labels)
        assert all(torch.isfinite(v) for v in terms.values())
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        losses.append(float(terms["total"].detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_fit_writes_checkpoint_and_log_and_resumes(tmp_path, tiny_cfg, stand_in):
    batches_per_epoch = 2  # 16 images, batch 8

    def crash_in_epoch_two(images, calls=[]):  # noqa: B006 - the list counts calls across batches
        calls.append(1)
        if len(calls) > batches_per_epoch:
            raise KeyboardInterrupt
        return images

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg, stand_in, OPTS, tmp_path, make_augment=lambda seed: crash_in_epoch_two)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and {"ce_global", "l12_local", "total"} <= set(log[0]["loss"])
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1
    resumed = fit(tiny_cfg, stand_in, OPTS, tmp_path, resume=tmp_path / "last.pt")
    straight = fit(tiny_cfg, stand_in, OPTS, tmp_path / "straight")
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[1]["loss"]["total"] == pytest.approx(straight.history[1]["loss"]["total"], rel=1e-4)
    assert resumed.history[1]["lr"] == straight.history[1]["lr"]
    with pytest.raises(CheckpointError, match="epochs: 2 done in checkpoint, 1 asked"):
        fit(tiny_cfg, stand_in, dataclasses.replace(OPTS, epochs=1), tmp_path, resume=resumed.checkpoint)
    with pytest.raises(CheckpointError, match="lr: 0.05 in checkpoint, 0.1 asked"):
        fit(tiny_cfg, stand_in, dataclasses.replace(OPTS, lr=0.1), tmp_path, resume=resumed.checkpoint)


def test_resume_with_another_config_names_the_fields(tmp_path, tiny_cfg, stand_in):
    first = fit(tiny_cfg, stand_in, dataclasses.replace(OPTS, epochs=1), tmp_path)
    with pytest.raises(CheckpointError, match="branches: 'both' in checkpoint, 'global' asked"):
        fit(tiny_cfg.replace(branches="global"), stand_in, OPTS, tmp_path, resume=first.checkpoint)


def test_embed_and_evaluate(tiny_cfg, stand_in):
    model = JLML(tiny_cfg, stand_in.num_classes)
    emb = embed(model, stand_in.query_images, batch_size=3)
    assert emb.dtype == np.float32 and emb.shape == (4, 32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert model.training  # embed restores the mode it found
    with pytest.raises(InputError, match="expected uint8 images"):
        embed(model, stand_in.query_images.astype(np.float32))
    metrics = evaluate_model(model, stand_in)
    assert 0.0 <= metrics["rank1"] <= 1.0 and "mAP" in metrics


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=1), dict(optimizer="lbfgs"),
                                 dict(lr=-1.0)])
def test_bad_options_raise(bad):
    with pytest.raises(InputError):
        TrainOptions(**bad)
