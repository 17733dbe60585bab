import pytest
import torch

from engine import InputError, ModelSpec
from train.config import JLMLConfig
from train.model import JLML


def test_shapes_unit_norm_and_heads(ablation_cfg, tiny_images):
    cfg = ablation_cfg
    torch.manual_seed(0)
    model = JLML(cfg, num_classes=5).eval()
    emb = model(tiny_images)
    assert emb.dtype == torch.float32 and emb.shape == (6, cfg.embedding_dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)
    feats = model.forward_features(tiny_images)
    assert list(feats) == list(cfg.branch_names)
    assert all(f.shape == (6, cfg.feat_dim) for f in feats.values())
    logits = model.forward_head(feats)
    expected = ["joint"] if cfg.loss == "single" else list(cfg.branch_names)
    assert list(logits) == expected and all(v.shape == (6, 5) for v in logits.values())
    assert torch.equal(model.forward_embedding(tiny_images), emb)


def test_embedding_dim_follows_branches(tiny_cfg):
    assert tiny_cfg.embedding_dim == 32
    assert tiny_cfg.replace(branches="global").embedding_dim == 16
    assert JLML(tiny_cfg, 3).spec == ModelSpec(height=32, width=16, embedding_dim=32)


def test_shared_layers_switch_changes_trunk_count(tiny_cfg):
    shared = JLML(tiny_cfg, 3)
    separate = JLML(tiny_cfg.replace(shared_layers=False), 3)
    assert list(shared.trunks) == ["shared"] and list(separate.trunks) == ["global", "local"]
    n = sum(p.numel() for p in shared.trunks.parameters())
    assert sum(p.numel() for p in separate.trunks.parameters()) == 2 * n


def test_local_stripes_only_see_their_rows(tiny_cfg, tiny_images):
    """Changing the bottom stripe's pixels must leave the top stripe stream's output unchanged."""
    model = JLML(tiny_cfg.replace(branches="local"), 3).eval()
    seen = []
    model.branches["local"].streams[0].register_forward_hook(lambda m, i, o: seen.append(o))
    other = tiny_images.clone()
    other[:, -8:] = 255 - other[:, -8:]
    with torch.no_grad():
        model(tiny_images), model(other)
    assert torch.allclose(seen[0], seen[1])


def test_preprocess_is_inside_the_model(tiny_cfg, tiny_images):
    model = JLML(tiny_cfg, 3)
    x = model.preprocess(tiny_images, torch.float32)
    mean = torch.tensor(tiny_cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_cfg.std).view(1, 3, 1, 1)
    expected = (tiny_images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)


def test_half_model_takes_uint8_and_returns_float32_units(tiny_cfg, tiny_images):
    torch.manual_seed(0)
    model = JLML(tiny_cfg, 3).eval()
    ref = model(tiny_images)
    half = model.half()
    emb = half(tiny_images)
    assert half.branches["global"].feature.weight.dtype == torch.float16
    assert emb.dtype == torch.float32 and half.preprocess.scale.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.nn.functional.cosine_similarity(emb, ref).min() > 0.99


@pytest.mark.parametrize("changes", [dict(height=30), dict(stripes=3), dict(widths=(4,)),
                                     dict(branches="both2"), dict(loss="triplet"), dict(dropout=1.0)])
def test_invalid_config_raises_input_error(changes):
    with pytest.raises(InputError, match="invalid JLMLConfig"):
        JLMLConfig(**{**dict(height=32, width=16, widths=(4, 8), blocks=(1, 1)), **changes})


def test_config_dict_round_trip_and_unknown_keys(tiny_cfg):
    assert JLMLConfig.from_dict(tiny_cfg.to_dict()) == tiny_cfg
    with pytest.raises(InputError, match=r"unknown JLMLConfig fields \['colour'\]"):
        JLMLConfig.from_dict({**tiny_cfg.to_dict(), "colour": 1})
    assert tiny_cfg.diff(tiny_cfg.replace(stripes=2)) == {"stripes": (4, 2)}
