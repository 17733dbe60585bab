"""Synthetic set, ReidSet and Augment."""
import numpy as np
import pytest
import torch

from engine.errors import DataError, InputError
from train.data import DATASETS, Augment, ReidSet, load_reid_set

TINY = {"height": 32, "width": 16, "num_ids": 12, "num_test": 4, "cams": 3, "images_per_cam": 2}


@pytest.fixture(scope="module")
def tiny():
    return load_reid_set("synthetic", **TINY)


def test_exports_and_names():
    assert set(DATASETS) == {"synthetic", "viper", "prid2011", "market1501", "dukemtmc"}


def test_synthetic_is_deterministic_and_seeded(tiny):
    again = load_reid_set("synthetic", **TINY)
    np.testing.assert_array_equal(again.train_images, tiny.train_images)
    np.testing.assert_array_equal(again.gallery_pids, tiny.gallery_pids)
    other = load_reid_set("synthetic", **{**TINY, "seed": 1})
    assert not np.array_equal(other.train_images, tiny.train_images)


def test_split_seed_changes_which_people_are_tested_not_the_pictures(tiny):
    resplit = load_reid_set("synthetic", split_seed=3, **TINY)
    assert set(resplit.query_pids) != set(tiny.query_pids)
    everything = np.concatenate([tiny.train_images, tiny.query_images, tiny.gallery_images])
    again = np.concatenate([resplit.train_images, resplit.query_images, resplit.gallery_images])
    assert sorted(map(bytes, everything)) == sorted(map(bytes, again))


def test_synthetic_protocol_sizes_and_disjoint_ids(tiny):
    assert tiny.protocol == "single_shot" and tiny.train_images.shape[1:] == (32, 16, 3)
    assert tiny.num_classes == 8 and len(tiny.train_images) == 8 * 3 * 2
    assert len(tiny.query_images) == 4 * 2 and len(tiny.gallery_images) == 4 * 2 * 2
    assert np.all(tiny.query_cams == 0) and np.all(tiny.gallery_cams > 0)
    assert set(tiny.query_pids) == set(tiny.gallery_pids)
    # the rendered people of the train ids never show up among the test pictures
    train_bytes = set(map(bytes, tiny.train_images))
    assert not train_bytes & set(map(bytes, np.concatenate([tiny.query_images, tiny.gallery_images])))


def test_synthetic_images_vary_within_an_identity_and_between_cameras(tiny):
    first = tiny.gallery_pids[0]
    same = tiny.gallery_images[tiny.gallery_pids == first]
    assert not np.array_equal(same[0], same[1])
    cam_means = [tiny.train_images[tiny.train_cams == c].mean(axis=(0, 1, 2)) for c in range(3)]
    assert np.abs(cam_means[0] - cam_means[1]).max() > 5  # a visible colour cast per camera


def test_synthetic_bad_options(tiny):
    with pytest.raises(DataError, match="too few people"):
        load_reid_set("synthetic", **{**TINY, "num_test": 12})
    with pytest.raises(InputError, match="cams >= 2"):
        load_reid_set("synthetic", **{**TINY, "cams": 1})


def test_reidset_remaps_and_describes(tiny):
    assert np.array_equal(np.unique(tiny.train_pids), np.arange(tiny.num_classes))
    assert tiny.train_pids.dtype == np.int64 and tiny.gallery_cams.dtype == np.int64
    text = tiny.describe()
    assert "train 8 ids / 48 imgs" in text and "query 4 ids / 8 imgs" in text and "\n" not in text


def test_reidset_rejects_mismatched_labels(tiny):
    with pytest.raises(DataError, match="one label per image"):
        ReidSet(**{**tiny.__dict__, "query_pids": tiny.query_pids[:-1]})
    with pytest.raises(DataError, match="protocol"):
        ReidSet(**{**tiny.__dict__, "protocol": "multi_shot"})


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown data set 'cuhk03'.*viper"):
        load_reid_set("cuhk03")


# ---- Augment -------------------------------------------------------------------------------------
@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (16, 24, 12, 3), generator=gen, dtype=torch.uint8)


def test_augment_keeps_dtype_shape_and_input(batch):
    before = batch.clone()
    out = Augment(seed=0)(batch)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    assert torch.equal(batch, before)


def test_augment_is_reproducible_with_a_seed(batch):
    assert torch.equal(Augment(seed=5)(batch), Augment(seed=5)(batch))
    assert not torch.equal(Augment(seed=5)(batch), Augment(seed=6)(batch))


def test_flip_mirrors_some_images_and_leaves_the_rest(batch):
    out = Augment(flip=True, pad=0, erase_prob=0.0, seed=0)(batch)
    flipped = [torch.equal(o, b.flip(1)) for o, b in zip(out, batch, strict=True)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(batch)


def test_pad_shifts_with_zero_fill(batch):
    out = Augment(flip=False, pad=3, erase_prob=0.0, seed=0)(batch)
    padded = torch.nn.functional.pad(batch, (0, 0, 3, 3, 3, 3))
    for o, p in zip(out, padded, strict=True):
        offsets = [(dy, dx) for dy in range(7) for dx in range(7) if torch.equal(o, p[dy:dy + 24, dx:dx + 12])]
        assert len(offsets) == 1
    assert (out == 0).any()  # the input has no zeros: some image really moved


def test_erase_replaces_one_rectangle_per_image(batch):
    out = Augment(flip=False, pad=0, erase_prob=1.0, seed=0)(batch)
    for o, b in zip(out, batch, strict=True):
        changed = (o != b).any(-1)
        assert changed.any()
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        # every changed pixel lies inside the bounding box of the changes (one rectangle)
        assert changed.sum() <= (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(Augment(flip=False, pad=0, erase_prob=0.0)(batch), batch)


def test_augment_rejects_bad_input_and_settings(batch):
    with pytest.raises(InputError, match="uint8"):
        Augment()(batch.float())
    with pytest.raises(InputError, match="uint8"):
        Augment()(batch.numpy())
    with pytest.raises(InputError, match="erase_prob"):
        Augment(erase_prob=1.5)
