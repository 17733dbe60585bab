"""Data-parallel training: sharded batches, gradient averaging, and 2 gloo processes under torchrun
against one process (same weights, resumable in one process)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import InputError
from train import distributed
from train.__main__ import main
from train.checkpoint import load_checkpoint
from train.distributed import GlobalBatchNorm2d, ShardedBatches, World
from train.loop import EpochBatches
from train.losses import JLMLLoss
from train.model import JLML

# A tiny model on a tiny synthetic set; no dropout and no augmentation, so the only randomness left is
# the batch order, which the ranks share; sparsity weights large enough to matter.
EXACT_ARGS = ["--dataset", "synthetic", "--data-option", "num_ids=12", "--data-option", "num_test=4",
              "--height", "32", "--width", "16", "--widths", "4,8", "--blocks", "1,1", "--feat-dim", "16",
              "--batch-size", "8", "--threads", "1", "--no-progress", "--dropout", "0", "--no-augment",
              "--lambda-global", "0.01", "--lambda-local", "1e-5"]


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_shares_make_up_the_one_process_batch(size):
    one = EpochBatches(n=23, batch_size=6, seed=1)  # batches of 6, 6, 6, 5
    ranks = [ShardedBatches(EpochBatches(n=23, batch_size=6, seed=1), World(r, size)) for r in range(size)]
    for epoch in (0, 3):
        for sampler in [one, *ranks]:
            sampler.set_epoch(epoch)
        shares = [list(r) for r in ranks]
        assert {len(s) for s in shares} == {len(ranks[0])} == {len(one)}
        for step, batch in enumerate(one.batches()):
            parts = [s[step] for s in shares]
            assert len({len(p) for p in parts}) == 1  # equal shares: DDP's mean needs no loss scaling
            keep = len(batch) - len(batch) % size
            assert sorted(np.concatenate(parts)) == sorted(batch[:keep])
        assert sum(len(p) for p in shares[0]) == ranks[0].samples() == (23 - 23 % 6 + 5 - 5 % size) // size


def test_batch_size_must_split_over_the_ranks():
    with pytest.raises(InputError, match="--batch-size 6 does not split evenly over 4 processes"):
        ShardedBatches(EpochBatches(n=10, batch_size=6, seed=0), World(0, 4))


def _grads(model: JLML, loss: torch.Tensor) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


def test_averaged_rank_gradients_are_the_one_process_gradient_with_the_penalty_once(tiny_cfg, stand_in):
    """What DDP computes (the mean over ranks of each rank's gradient on its equal share) is the gradient
    of the loss on the whole batch, sparsity penalty included once. Batch norm in eval mode here, so the
    split cannot change the forward pass (the torchrun test below covers global-batch statistics)."""
    cfg = tiny_cfg.replace(lambda_global=0.05, lambda_local=1e-4)
    torch.manual_seed(0)
    model = JLML(cfg, stand_in.num_classes).eval()
    loss_fn = JLMLLoss(cfg)
    images, labels = torch.from_numpy(stand_in.train_images), torch.from_numpy(stand_in.train_pids)

    def loss(idx, fn=loss_fn):
        return fn(model, model.forward_head(model.forward_features(images[idx])), labels[idx])["total"]

    batch = np.arange(len(labels))
    one = _grads(model, loss(batch))
    ranks = [_grads(model, loss(batch[r::2])) for r in range(2)]
    for g, g0, g1 in zip(one, *ranks, strict=True):
        torch.testing.assert_close((g0 + g1) / 2, g, rtol=1e-4, atol=1e-6)
    # the penalty matters here: counted twice, the averaged gradient would be visibly off
    without = _grads(model, loss(batch, JLMLLoss(cfg.replace(sparsity=False))))
    assert max(float((a - b).abs().max()) for a, b in zip(one, without, strict=True)) > 1e-2


def test_every_parameter_gets_a_gradient_in_each_ablation(ablation_cfg, stand_in):
    """Why DDP runs with find_unused_parameters=False: no ablation leaves a parameter out of a step."""
    model = JLML(ablation_cfg, stand_in.num_classes).train()
    images, labels = torch.from_numpy(stand_in.train_images[:8]), torch.from_numpy(stand_in.train_pids[:8])
    terms = JLMLLoss(ablation_cfg)(model, model.forward_head(model.forward_features(images)), labels)
    grads = torch.autograd.grad(terms["total"], list(model.parameters()), allow_unused=True)
    unused = [n for (n, _), g in zip(model.named_parameters(), grads, strict=True) if g is None]
    assert unused == []


def test_global_batch_norm_shares_the_tensors_and_is_plain_batch_norm_in_one_process(tiny_cfg, tiny_images):
    torch.manual_seed(0)
    model = JLML(tiny_cfg, 4).train()
    params, reference = list(model.parameters()), JLML(tiny_cfg, 4).train()
    reference.load_state_dict(model.state_dict())
    distributed._to_global_batch_norm(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(type(m) is GlobalBatchNorm2d for m in norms)
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))  # the optimiser's tensors
    torch.testing.assert_close(model(tiny_images), reference(tiny_images), rtol=0, atol=0)
    torch.testing.assert_close(model.state_dict(), reference.state_dict(), rtol=0, atol=0)


def test_environment_of_a_torchrun_worker(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.world() == World(rank=1, size=2, local_rank=0) and not distributed.is_main()
    assert distributed.rank_seed(5) != 5
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(InputError, match="MASTER_ADDR.*torchrun"):
        distributed.setup(torch.device("cpu"))
    assert main([*EXACT_ARGS, "--epochs", "1"]) == 2  # ranks could name different default folders
    assert "pass --out" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE='two'"):
        distributed.world()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.rank_seed(5) == 5 and distributed.is_main()


def _torchrun(args: list[str], processes: int = 2) -> None:
    """``python -m torch.distributed.run --standalone`` (rendezvous on a free localhost port)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback, whatever the host name resolves to
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "train", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "last.pt").model.state_dict(), load_checkpoint(b / "last.pt").model.state_dict()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-4, atol=2e-5, msg=key)


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_and_resume_in_one(tmp_path, capsys):
    two, one = tmp_path / "two", tmp_path / "one"
    _torchrun([*EXACT_ARGS, "--epochs", "1", "--out", str(two)])
    assert main([*EXACT_ARGS, "--epochs", "1", "--out", str(one)]) == 0
    _assert_same_weights(two, one)  # batch norm, per-branch losses and sparsity terms as in one process
    assert sorted(p.name for p in two.iterdir()) == ["last.pt", "log.jsonl", "metrics.json"]  # one writer
    [ddp], [single] = _log(two), _log(one)
    assert (ddp["world_size"], ddp["samples"]) == (2, 48)  # gathered over both ranks
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-5) and ddp["acc"] == pytest.approx(single["acc"])
    ck = load_checkpoint(two / "last.pt")
    assert ck.epoch == 1 and all(int(s["step"]) == 6 for s in ck.optimizer_state["state"].values())

    # the 2-process checkpoint continues in one process, exactly as the one-process run continues
    assert main([*EXACT_ARGS, "--epochs", "2", "--out", str(two), "--resume"]) == 0
    assert main([*EXACT_ARGS, "--epochs", "2", "--out", str(one), "--resume"]) == 0
    resumed = _log(two)
    assert [r["epoch"] for r in resumed] == [1, 2] and "world_size" not in resumed[1]
    assert np.isfinite(resumed[1]["loss"]["total"])
    _assert_same_weights(two, one)


@pytest.mark.slow
def test_two_gloo_processes_train_a_triplet_term_on_whole_pairs(tmp_path):
    """Each process mines triplets in its share of the batch; a share that split a person's pair would
    have no positives and stop the run (batch_hard_triplet refuses such a batch)."""
    out = tmp_path / "two"
    _torchrun([*EXACT_ARGS, "--epochs", "1", "--triplet-weight", "1", "--out", str(out)])
    [ddp] = _log(out)
    assert (ddp["world_size"], ddp["samples"]) == (2, 16)  # 8 training people x 2 images, over both ranks
    assert 0 < ddp["loss"]["triplet"] < 10 and load_checkpoint(out / "last.pt").config.triplet_weight == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (nccl: one GPU per process)")
def test_two_nccl_processes_train_as_one_gpu(tmp_path):
    args = [*EXACT_ARGS, "--device", "cuda", "--epochs", "1"]
    _torchrun([*args, "--out", str(tmp_path / "two")])
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    [ddp], [single] = _log(tmp_path / "two"), _log(tmp_path / "one")
    assert ddp["world_size"] == 2 and ddp["loss"]["total"] == pytest.approx(single["loss"]["total"], rel=1e-3)
