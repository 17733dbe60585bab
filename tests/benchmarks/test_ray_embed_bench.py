"""benchmarks.ray_embed refuses worker counts its local cluster cannot hold (Ray would wait forever)."""
from __future__ import annotations

import pytest

pytest.importorskip("ray")

from benchmarks.ray_embed import main  # noqa: E402


@pytest.mark.parametrize(("flags", "message"), [
    (["--workers", "1", "4", "--cluster-cpus", "2"],
     "--workers 4 x --cpus-per-worker 1 need 4 CPUs, but --cluster-cpus is 2: the workers that do not fit would "
     "wait for CPUs forever"),
    (["--cpus-per-worker", "64"], "need 128 CPUs, but --cluster-cpus is 2"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker 0.0: expected a number of CPUs above 0"),
    (["--cpus-per-worker", "nan"], "--cpus-per-worker nan: expected a number of CPUs above 0"),
])
def test_workers_that_cannot_fit_the_cluster_exit_2_before_ray_starts(flags, message, tmp_path, capsys) -> None:
    import ray

    assert main(["--artifact", str(tmp_path / "none"), "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()
