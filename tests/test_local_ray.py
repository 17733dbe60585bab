"""The tests' Ray start-up helper retries only Ray's start-up timeout, and gives up after its attempts."""
from __future__ import annotations

import pytest
from _local_ray import start_local_ray

ray = pytest.importorskip("ray", reason="needs ray (pip install 'jlml-engine[ray]')")


class FlakyInit:
    """ray.init failing ``failures`` times with ``message``, then succeeding; records every call."""

    def __init__(self, failures: int, message: str) -> None:
        self.failures, self.message, self.calls, self.shutdowns = failures, message, [], 0

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)
        if len(self.calls) <= self.failures:
            raise Exception(self.message)

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
def flaky(monkeypatch):
    def make(failures: int, message: str = "The current node timed out during startup. This could ...") -> FlakyInit:
        stand_in = FlakyInit(failures, message)
        monkeypatch.setattr(ray, "init", stand_in.init)
        monkeypatch.setattr(ray, "shutdown", stand_in.shutdown)
        monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"gcs_address": "10.0.0.1:6379"}))
        return stand_in
    return make


def test_a_startup_timeout_is_retried_after_a_shutdown(flaky):
    stand_in = flaky(2)
    assert start_local_ray(2, "/a", "/b") == "10.0.0.1:6379"
    assert len(stand_in.calls) == 3 and stand_in.shutdowns == 2
    assert stand_in.calls[-1]["runtime_env"] == {"env_vars": {"PYTHONPATH": "/a:/b"}}
    assert stand_in.calls[-1]["num_cpus"] == 2


def test_the_last_startup_timeout_and_any_other_error_propagate(flaky):
    stand_in = flaky(3)
    with pytest.raises(Exception, match="timed out during startup"):
        start_local_ray(4, attempts=3)
    assert len(stand_in.calls) == 3 and stand_in.calls[0]["runtime_env"] is None
    other = flaky(1, "address already in use")
    with pytest.raises(Exception, match="address already in use"):
        start_local_ray(4)
    assert len(other.calls) == 1
