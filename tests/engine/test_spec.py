import json

import numpy as np
import pytest

from engine import ArtifactError, InputError, ModelSpec, SpecMismatchError


def test_round_trip_through_json(tmp_path):
    spec = ModelSpec(height=128, width=48, max_batch=64, onnx_sha256="ab" * 32)
    spec.save(tmp_path / "spec.json")
    assert ModelSpec.load(tmp_path) == spec


def test_check_images_accepts_single_and_batch():
    spec = ModelSpec(height=8, width=4)
    one = np.zeros((8, 4, 3), np.uint8)
    assert spec.check_images(one).shape == (1, 8, 4, 3)
    batch = np.zeros((5, 8, 4, 3), np.uint8)[:, ::1]
    assert spec.check_images(batch).flags.c_contiguous


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 4, 3), np.float32), np.zeros((2, 3, 8, 4), np.uint8),
                                 [[0]]])
def test_check_images_rejects_with_got_and_expected(bad):
    spec = ModelSpec(height=8, width=4)
    with pytest.raises(InputError, match=r"expected .*\(N, 8, 4, 3\)"):
        spec.check_images(bad)


def test_invalid_batch_range_is_rejected():
    with pytest.raises(InputError, match="batch range"):
        ModelSpec(min_batch=8, opt_batch=4, max_batch=16)


def test_incompatible_spec_names_the_difference():
    with pytest.raises(SpecMismatchError, match="height: 128 != 160"):
        ModelSpec().check_compatible(ModelSpec(height=128))


def test_unknown_fields_and_missing_file_are_clear(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({**ModelSpec().to_dict(), "future": 1}))
    with pytest.raises(SpecMismatchError, match="unknown fields"):
        ModelSpec.load(tmp_path / "spec.json")
    with pytest.raises(ArtifactError, match="no spec"):
        ModelSpec.load(tmp_path / "missing.json")
