"""One way for tests to start a local Ray cluster, patient with a loaded machine.

``ray.init`` gives a new node a fixed 30 s to register (ray/_private/node.py); on a 2-core CI machine
under load it can miss that ("The current node timed out during startup") although nothing is wrong.
``start_local_ray`` shuts the half-started node down and tries again, so such a test fails only when Ray
really cannot start.
"""
from __future__ import annotations

from pathlib import Path

STARTUP_TIMEOUT = "timed out during startup"


def start_local_ray(num_cpus: int, *pythonpath: Path | str, attempts: int = 3) -> str:
    """Start a local ``num_cpus`` cluster whose workers import ``pythonpath``; return its GCS address."""
    import ray

    env = {"env_vars": {"PYTHONPATH": ":".join(map(str, pythonpath))}} if pythonpath else None
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", runtime_env=env)
            return ray.get_runtime_context().gcs_address
        except Exception as e:  # ray raises a bare Exception for this one
            ray.shutdown()
            if STARTUP_TIMEOUT not in str(e) or attempt == attempts:
                raise
    raise AssertionError("unreachable")
