import pytest
import torch

from engine import CheckpointError
from train.checkpoint import check_same_config, load_checkpoint, save_checkpoint
from train.model import JLML


def _saved(tmp_path, cfg, **kw):
    torch.manual_seed(0)
    model = JLML(cfg, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, cfg.height, cfg.width, 3, dtype=torch.uint8)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ck" / "last.pt", model, cfg, epoch=3, num_classes=5,
                           optimizer=opt, extra={"note": "x"}, **kw)
    return model, path


def test_round_trip_rebuilds_same_model(tmp_path, tiny_cfg, tiny_images):
    model, path = _saved(tmp_path, tiny_cfg.replace(shared_layers=False))
    ck = load_checkpoint(path)
    assert ck.config == model.cfg and ck.spec == model.spec and ck.epoch == 3 and ck.num_classes == 5
    assert ck.extra == {"note": "x"} and ck.optimizer_state["state"] and ck.scheduler_state is None
    assert not ck.model.training
    with torch.no_grad():
        assert torch.equal(ck.model(tiny_images), model.eval()(tiny_images))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_pickle", "missing"])
def test_bad_files_raise_checkpoint_error_with_path(tmp_path, tiny_cfg, damage):
    _, path = _saved(tmp_path, tiny_cfg)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif damage == "other_pickle":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_check_same_config_names_differing_fields(tmp_path, tiny_cfg):
    _, path = _saved(tmp_path, tiny_cfg)
    ck = load_checkpoint(path)
    check_same_config(ck, tiny_cfg, 5)
    with pytest.raises(CheckpointError, match=r"stripes: 4 in checkpoint, 2 asked.*num_classes"):
        check_same_config(ck, tiny_cfg.replace(stripes=2), 7)
