"""Every shell command in README.md, docs/ and benchmarks/README.md is one the project's CLIs accept as written.

Each unlabelled fenced block (```text blocks are not commands) is split into commands (line
continuations joined, ``for ...; do CMD; done`` loops unrolled once, ``taskset``/``VAR=value``
prefixes and comments dropped), and each is checked by what it is:

* ``python -m MODULE ARGS`` and ``torchrun ... -m MODULE ARGS``: the module's own ``main`` parses ARGS
  (its argparse stops the command right after parsing, so nothing runs): a wrong flag, a missing
  required one or a bad value fails here as it would for a reader (``benchmarks.latency artifacts/int8``
  without ``--artifact`` did).
* ``make TARGET``: the Makefile has the target (``make -n``).
* ``pip install -e ".[EXTRAS]"``: every extra exists in pyproject.toml; other pip lines and ``python -m
  venv`` need the network or make a new environment and are skipped, saying so.
* ``bash benchmarks/gpu_run.sh``: needs an NVIDIA GPU (skipped with that reason); the script must exist.
* ``docker run ... tritonserver --model-repository PATH``: needs a container runtime (skipped); PATH is an
  artefact's ``triton/``.

Commands are parsed by their CLIs, not run to the end (the benchmarks' documented sizes take hours):
what they do is tested by each CLI's own tests. The python blocks run for real elsewhere:
tests/benchmarks/test_readme.py (Library use) and tests/serve/test_readme_client.py (the Python client).
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/GUIDE.md", "docs/REFERENCE.md", "benchmarks/README.md")
SKIPPED = {"venv": "creates a new virtual environment", "pip": "needs the network (a package index)"}


class Parsed(BaseException):
    """Raised right after a CLI's argparse accepted the arguments: the command stops there."""


def shell_blocks(text: str) -> list[str]:
    """The bodies of fenced blocks with no language (or sh/bash/shell)."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
            if m.group(1) in ("", "sh", "bash", "shell")]


def commands(block: str) -> list[list[str]]:
    """Each command of a block as argv, prefixes and comments dropped, loops unrolled once."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"^for (\w+) in (\S+)[^;]*; do (.*); done$", lambda m: m.group(3).replace(
            f"${m.group(1)}", m.group(2)), line)
        for part in re.split(r"\s*&&\s*", line):
            argv = shlex.split(part)
            while argv and (re.fullmatch(r"\w+=\S*", argv[0]) or argv[0] == "taskset"):
                argv = argv[3:] if argv[0] == "taskset" else argv[1:]  # taskset -c CPUS
            out.append(argv)
    return out


def documented() -> list[tuple[str, list[str]]]:
    found = [(doc, argv) for doc in DOCS for block in shell_blocks((ROOT / doc).read_text())
             for argv in commands(block)]
    assert len(found) > 20, "the documents' command blocks were not found"
    return found


def _module_args(argv: list[str]) -> tuple[str, list[str]]:
    """(module, its arguments) of ``python -m MODULE ARGS`` or ``torchrun [opts] -m MODULE ARGS``."""
    i = argv.index("-m")
    return argv[i + 1], argv[i + 2:]


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
        module, args = _module_args(argv)
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
    elif tool == "docker":
        assert argv[argv.index("--model-repository") + 1].endswith("/triton"), "serve the artefact's triton/"
        pytest.skip("needs a container runtime; the repository it serves is checked in tests/serve")
    elif tool == ".":
        pytest.skip(f"`{' '.join(argv)}` activates a virtual environment")
    else:
        pytest.fail(f"{doc}: `{' '.join(argv)}` is a command this test does not know; teach it or mark the "
                    "block ```text if it is not a command")
