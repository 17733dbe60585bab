"""Every command of the documents runs to the end, in document order, on a tiny artefact (issue 23, point 4).

The commands come from tests/_docs.py and run as subprocesses in one scratch folder, as a reader would
type them, with only these changes (all of them here, in REWRITES, SHRINK and TINY):

* what `make demo` writes (``artifacts/demo/train/last.pt``, ``artifacts/demo/artifact``) is a tiny model
  exported by the real ``export.build_engine``; the placeholders ``crops/`` and ``q.jpg`` are images
  made here, ``ART``/``TINY_ART`` that artefact, ``OUT``/``DIR`` folders; ``../shared/data`` is the data
  beside this checkout, and a command that reads a real data set is skipped, saying so, where it is absent;
* sizes are shrunk (one epoch, 2,000 gallery rows, a few repeats and clients) and the torch.compile
  backends dropped (they compile for minutes): what is timed changes, the code path does not;
* ``python -m serve`` runs in the background until its "ready:" line, for the commands after it (a later
  ``serve`` replaces it: both take the default ports); ``ray start``/``ray stop`` run the venv's ``ray``
  (a cluster left by a failed command is stopped at the end).

Skipped, as in test_docs_commands: pip/venv (network), gpu_run.sh (GPU), docker (container runtime),
``make demo``/``make test`` (the demo runs in tests/benchmarks/test_demo.py; the tests are this suite).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _docs import ROOT, documented, module_args

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

DATA = ROOT.parent / "shared" / "data"
SHRINK = {"--epochs": ["1"], "--repeats": ["1"], "--rounds": ["1"], "--sizes": ["2000"], "--dims": ["64"],
          "--batches": ["1", "8"], "--queries": ["16"], "--requests": ["3"], "--max-seconds": ["2"],
          "--pairs": ["3"], "--clients": ["1", "2"]}
TINY = {"train": {"--epochs": ["1"]},
        "benchmarks.latency": {"--batches": ["1", "8"], "--repeats": ["1"], "--min-seconds": ["0"], "--no-compile": []},
        "benchmarks.e2e": {"--batches": ["1", "8"], "--repeats": ["1"], "--gallery-size": ["64"]}}
REWRITES = {"ART": "artifacts/demo/artifact", "TINY_ART": "artifacts/demo/artifact"}
SKIP = {"make": "the demo runs in tests/benchmarks/test_demo.py and `make test` is this suite",
        "pip": "needs the network (a package index)", "venv": "creates a new virtual environment",
        ".": "activates a virtual environment", "docker": "needs a container runtime",
        "bash": "needs an NVIDIA GPU (TensorRT, CUDA)"}
READY_SECONDS = 240
UNMADE: set[str] = set()  # --out folders of commands skipped for want of data: later readers skip too


def shrunk(module: str, args: list[str]) -> list[str]:
    """ARGS with each SHRINK flag's values replaced, compile backends dropped and TINY flags added if absent."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, i = args[i], i + 1
        values = []
        while flag.startswith("--") and i < len(args) and not args[i].startswith("--"):
            values, i = values + [args[i]], i + 1
        if flag == "--backends":
            values = [v for v in values if "compile" not in v]
        out += [flag, *(SHRINK.get(flag, values))]
    for flag, values in TINY.get(module, {}).items():
        out += [flag, *values] if flag not in out else []
    return out


def localised(args: list[str], work: Path) -> list[str]:
    """Placeholders and the shared data path made real in WORK; shell globs expanded there."""
    out = []
    for a in args:
        a = REWRITES.get(a, a)
        if a.split("/")[0] in ("OUT", "DIR"):
            a = str(work / a)
        if a.startswith("../shared/data"):
            a = str(DATA) + a[len("../shared/data"):]
        out += sorted(str(p.relative_to(work)) for p in work.glob(a)) if "*" in a else [a]
    return out


def needs_data(argv: list[str]) -> bool:
    return any(a in ("viper", "prid2011") or a.startswith("../shared/data") for a in argv)


def _write_images(work: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (work / "crops").mkdir()
    for n in range(6):
        pixels = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(work / "crops" / f"{n // 2 + 1:04d}_c{n % 2 + 1}s1_{n:06d}_00.jpg")
    Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(work / "q.jpg")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory):
    """The scratch folder the commands run in, holding what `make demo` would have written (tiny)."""
    from export.build_engine import main as build_engine
    from train.checkpoint import save_checkpoint
    from train.config import JLMLConfig
    from train.model import JLML

    work = tmp_path_factory.mktemp("docs")
    _write_images(work)
    torch.manual_seed(0)
    model = JLML(JLMLConfig(height=64, width=32, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16,
                            dropout=0.0), num_classes=5).eval()
    demo = work / "artifacts" / "demo"
    checkpoint = save_checkpoint(demo / "train" / "last.pt", model, model.cfg, epoch=1, num_classes=5)
    assert build_engine([str(checkpoint), "--out", str(demo / "artifact"), "--no-simplify"]) == 0
    servers: list[subprocess.Popen] = []
    yield work, servers
    _stop(servers)
    subprocess.run([_ray(), "stop", "--force"], env=_environment(), capture_output=True, timeout=120)


def _stop(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        server.terminate()
        server.wait(timeout=60)
    servers.clear()


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "JLML_DATA": str(DATA), "RAY_USAGE_STATS_ENABLED": "0"}


def _serve(argv: list[str], work: Path, servers: list[subprocess.Popen]) -> None:
    """Start the documented server and return once it prints "ready:" (it runs until the module ends)."""
    _stop(servers)
    log = work / f"serve-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        server = subprocess.Popen(argv, cwd=work, env=_environment(), stdout=out, stderr=subprocess.STDOUT)
    servers.append(server)
    deadline = time.monotonic() + READY_SECONDS
    while "ready:" not in log.read_text():
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"`{' '.join(argv)}` did not get ready (exit {server.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


CASES = documented()


@pytest.mark.parametrize("doc,argv", CASES, ids=[f"{d}: {' '.join(a)[:70]}" for d, a in CASES])
def test_documented_command_runs(doc, argv, work):
    folder, servers = work
    tool = argv[0] if argv[0] == "." else Path(argv[0]).name
    if tool in SKIP or (tool.startswith("python") and module_args(argv)[0] in ("venv", "pip")):
        pytest.skip(f"`{' '.join(argv)}`: {SKIP.get(tool) or SKIP[module_args(argv)[0]]}")
    missing = [a for a in argv if any(a == out or a.startswith(out + "/") for out in UNMADE)]
    if missing:
        pytest.skip(f"`{' '.join(argv)}` reads {missing[0]}, the output of a command skipped above")
    if needs_data(argv) and not DATA.is_dir():
        if "--out" in argv:
            UNMADE.add(argv[argv.index("--out") + 1])
        pytest.skip(f"`{' '.join(argv)}` reads a real data set and {DATA} is absent")
    if tool == "ray":
        command = [_ray(), *argv[1:]]
        done = subprocess.run(command, cwd=folder, env=_environment(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{doc}: `{' '.join(argv)}` exit {done.returncode}:\n{done.stderr[-4000:]}"
        return None
    module, args = module_args(argv)
    launcher = [sys.executable, "-m", "torch.distributed.run", *argv[1:argv.index("-m")]] \
        if tool == "torchrun" else [sys.executable]
    command = [*launcher, "-m", module, *localised(shrunk(module, args), folder)]
    if module == "serve":
        return _serve(command, folder, servers)
    done = subprocess.run(command, cwd=folder, env=_environment(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{doc}: `{' '.join(command)}` exit {done.returncode}:\n{done.stderr[-4000:]}"
