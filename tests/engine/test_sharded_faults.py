"""ShardedGallery faults on a local Ray cluster: a shard SIGKILLed mid-search or mid-add.

A search in flight is answered as without the fault; an add in flight is applied on every shard or on
none, and the caller is told which (tests/engine/_sharded_faults.py stalls a shard so it can be killed
mid-call).
"""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the sharded gallery tests need ray (pip install 'jlml-engine[ray]')")

from _sharded_data import DIM, OPTIONS, SHARDS, assert_same, in_process, load_copy, local_ray, rows  # noqa: E402
from _sharded_faults import StallOnce  # noqa: E402

from engine.sharded import Manifest, ShardedAddError, ShardedGallery  # noqa: E402

pytestmark = pytest.mark.slow
ray_cluster = pytest.fixture(scope="module")(local_ray)


def kill_mid_call(sharded: ShardedGallery, method: str, call: Any) -> Any:
    """Run ``call()`` while the first shard to enter ``method`` stalls; SIGKILL that shard's process, then
    return what ``call`` returned or raised. Checks the shard came back as a new process."""
    folder = sharded.path.parent
    pids = sharded.pids()
    (folder / f"stall-{method}").touch()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        entered = folder / f"entered-{method}"
        deadline = time.monotonic() + 120
        while not entered.exists():
            assert time.monotonic() < deadline and not future.done(), f"no shard entered {method}"
            time.sleep(0.05)
        index = int(entered.read_text())
        os.kill(pids[index], signal.SIGKILL)
        try:
            result: Any = future.result(timeout=300)
        except Exception as exc:  # noqa: BLE001 - the caller checks what was raised
            result = exc
    after = sharded.pids()
    assert after[index] != pids[index], "the killed shard was not restarted: the test proved nothing"
    return result


@pytest.fixture
def sharded(ray_cluster, tmp_path):
    gallery = ShardedGallery.create(tmp_path / "g.json", DIM, SHARDS, options=OPTIONS, actor=StallOnce)
    gallery.add(*rows())
    yield gallery
    gallery.close()


def test_a_shard_killed_mid_search_gives_the_fault_free_answer(sharded):
    emb, ids, cams = rows()
    want = in_process(rows()).search(emb[:40], 10, query_ids=ids[:40], query_cams=cams[:40])
    got = kill_mid_call(sharded, "search", lambda: sharded.search(emb[:40], 10, query_ids=ids[:40],
                                                                  query_cams=cams[:40]))
    assert_same(got, want)


def test_a_shard_killed_while_staging_an_add_leaves_none_applied_and_says_so(sharded):
    emb, _, _ = rows()
    before = Manifest.read(sharded.path)
    extra = rows(90, seed=3)
    error = kill_mid_call(sharded, "prepare", lambda: sharded.add(*extra))
    assert isinstance(error, ShardedAddError) and error.applied is False
    assert "applied on none of the shards" in str(error)
    assert Manifest.read(sharded.path) == before and len(sharded) == 400
    assert sorted(p.name for p in sharded.path.parent.glob("g.shard-*")) == sorted(s.file for s in before.shards)
    want = in_process(rows()).search(emb[:30], 20)
    assert_same(sharded.search(emb[:30], 20), want)  # in memory: every shard back at the committed rows
    reloaded = load_copy(sharded.path, sharded.path.parent / "copy")  # on disk too
    assert_same(reloaded.search(emb[:30], 20), want)
    reloaded.close()
    sharded.add(*extra)  # the caller was told "none": adding again applies it once
    assert_same(sharded.search(emb[:30], 20), in_process(rows(), extra).search(emb[:30], 20))


def test_a_shard_killed_after_the_manifest_is_written_has_the_add_applied(sharded):
    emb, _, _ = rows()
    extra = rows(90, seed=3)
    assert kill_mid_call(sharded, "commit", lambda: sharded.add(*extra)) is None  # returned: applied
    assert len(sharded) == 490 and Manifest.read(sharded.path).version == 2
    want = in_process(rows(), extra).search(emb[:30], 20)
    assert_same(sharded.search(emb[:30], 20), want)  # the restarted shard loaded the new file
    reloaded = load_copy(sharded.path, sharded.path.parent / "copy")
    assert_same(reloaded.search(emb[:30], 20), want)
    reloaded.close()
