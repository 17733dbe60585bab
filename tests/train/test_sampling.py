"""The identity sampler behind the triplet term: pairs of one person, across cameras, every person once
an epoch, seeded per epoch, and split over data-parallel processes without breaking a pair."""
import numpy as np
import pytest

from engine import InputError
from train.distributed import ShardedBatches, World
from train.sampling import IdentityBatches

# 11 people: 0-8 with one image in each of cameras 0 and 1 (as VIPeR), 9 and 10 with 3 images in camera 0
PIDS = np.array([p for p in range(9) for _ in range(2)] + [9, 9, 9, 10, 10, 10])
CAMS = np.array([0, 1] * 9 + [0, 0, 0, 0, 0, 0])


def test_every_batch_pairs_two_images_of_each_person_across_cameras_and_visits_everyone_once():
    sampler = IdentityBatches(PIDS, CAMS, batch_size=6, seed=4)
    batches = sampler.batches()
    assert [len(b) for b in batches] == [6, 6, 6, 4] == [len(b) for b in sampler][:4] and len(sampler) == 4
    people = []
    for b in batches:
        first, second = np.split(b, 2)
        assert (PIDS[first] == PIDS[second]).all() and (first != second).all()
        crosses = PIDS[first] < 9
        assert (CAMS[first][crosses] != CAMS[second][crosses]).all()
        people += PIDS[first].tolist()
    assert sorted(people) == list(range(11))


def test_batches_depend_on_the_seed_and_epoch_only():
    a, b = IdentityBatches(PIDS, CAMS, 6, seed=1), IdentityBatches(PIDS, CAMS, 6, seed=1)
    b.set_epoch(2)
    assert not all(np.array_equal(x, y) for x, y in zip(a.batches(), b.batches(), strict=True))
    a.set_epoch(2)
    assert all(np.array_equal(x, y) for x, y in zip(a.batches(), b.batches(), strict=True))


def test_each_process_gets_whole_pairs():
    ranks = [ShardedBatches(IdentityBatches(PIDS, CAMS, 8, seed=0, processes=2), World(r, 2)) for r in (0, 1)]
    shares = [list(r) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == 3  # 4 + 4 + 2 people (the last 1 of 11 is cut)
    for share in shares[0] + shares[1]:
        first, second = np.split(share, 2)
        assert (PIDS[first] == PIDS[second]).all() and len(share) >= 2


@pytest.mark.parametrize("pids,batch,processes,message", [
    (PIDS, 5, 1, "--batch-size 5 with a triplet term: expected a multiple of 2"),
    (PIDS, 6, 2, "--batch-size 6 with a triplet term: expected a multiple of 4"),
    (np.array([0, 0, 1]), 4, 1, "1 training identities have a single image (e.g. 1)"),
])
def test_what_the_sampler_cannot_pair_is_refused(pids, batch, processes, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        IdentityBatches(pids, np.zeros(len(pids)), batch, seed=0, processes=processes)
