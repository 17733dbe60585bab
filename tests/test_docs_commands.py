"""Every shell command in README.md, docs/ and benchmarks/README.md is one the project's CLIs accept as written.

The commands come from tests/_docs.py; each is checked by what it is:

* ``python -m MODULE ARGS`` and ``torchrun ... -m MODULE ARGS``: the module's own ``main`` parses ARGS
  (its argparse stops the command right after parsing, so nothing runs): a wrong flag, a missing
  required one or a bad value fails here as it would for a reader (``benchmarks.latency artifacts/int8``
  without ``--artifact`` did).
* ``make TARGET``: the Makefile has the target (``make -n``).
* ``pip install -e ".[EXTRAS]"``: every extra exists in pyproject.toml; other pip lines and ``python -m
  venv`` need the network or make a new environment and are skipped, saying so.
* ``bash benchmarks/gpu_run.sh``: needs an NVIDIA GPU (skipped with that reason); the script must exist.
* ``ray start``/``ray stop``: run for real by tests/test_docs_run.py.
* ``docker run ... tritonserver --model-repository PATH``: needs a container runtime (skipped); PATH is an
  artefact's ``triton/``.

Here commands are parsed as written; tests/test_docs_run.py runs them to the end, in order, on a tiny
artefact with the benchmarks' sizes shrunk. The python blocks run for real elsewhere:
tests/benchmarks/test_readme.py (Library use) and tests/serve/test_readme_client.py (the Python client).
"""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
from pathlib import Path

import pytest
from _docs import ROOT, SKIPPED, documented, module_args


class Parsed(BaseException):
    """Raised right after a CLI's argparse accepted the arguments: the command stops there."""


def parse_as_the_cli(module: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    target = importlib.import_module(module)
    main = getattr(target, "main", None) or importlib.import_module(f"{module}.__main__").main
    with pytest.raises(Parsed) as parsed:
        main(args)
    return parsed.value.args[0]


CASES = documented()


@pytest.mark.parametrize("doc,argv", CASES, ids=[f"{d}: {' '.join(a)[:70]}" for d, a in CASES])
def test_documented_command_is_accepted(doc, argv, monkeypatch, capsys):
    tool = argv[0] if argv[0] == "." else Path(argv[0]).name
    if tool in ("python", "python3", "torchrun"):
        module, args = module_args(argv)
        if module in SKIPPED:
            pytest.skip(f"`{' '.join(argv)}` {SKIPPED[module]}")
        try:
            parse_as_the_cli(module, args, monkeypatch)
        except SystemExit as exc:
            pytest.fail(f"{doc}: `{' '.join(argv)}` is refused (exit {exc.code}): {capsys.readouterr().err}")
    elif tool == "make":
        done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{doc}: `{' '.join(argv)}`: {done.stderr}"
    elif tool == "pip":
        extras = re.fullmatch(r'\.\[([\w,-]+)\]', argv[-1])
        if extras is None:
            pytest.skip(f"`{' '.join(argv)}` {SKIPPED['pip']}")
        section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1]
        known = re.findall(r"^([\w-]+)\s*=", section.split("\n[", 1)[0], flags=re.M)  # tomllib: 3.11+
        assert known and set(extras.group(1).split(",")) <= set(known), f"{doc}: `{' '.join(argv)}` names unknown extras"
    elif tool == "bash" and argv[1] == "benchmarks/gpu_run.sh":
        assert (ROOT / argv[1]).is_file()
        pytest.skip("benchmarks/gpu_run.sh needs an NVIDIA GPU (TensorRT, CUDA); run it on a GPU machine")
    elif tool == "ray":
        assert argv[1] in ("start", "stop"), f"{doc}: `{' '.join(argv)}`: only ray start/stop are documented"
        pytest.skip("a Ray cluster command: tests/test_docs_run.py runs it")
    elif tool == "docker":
        assert argv[argv.index("--model-repository") + 1].endswith("/triton"), "serve the artefact's triton/"
        pytest.skip("needs a container runtime; the repository it serves is checked in tests/serve")
    elif tool == ".":
        pytest.skip(f"`{' '.join(argv)}` activates a virtual environment")
    else:
        pytest.fail(f"{doc}: `{' '.join(argv)}` is a command this test does not know; teach it or mark the "
                    "block ```text if it is not a command")
