"""The shell commands of the project's documents, as argv lists (read by test_docs_commands and test_docs_run).

Each unlabelled fenced block (```text blocks are not commands) is split into commands: line
continuations joined, ``for ...; do CMD; done`` loops unrolled once, ``taskset``/``VAR=value``
prefixes and comments dropped.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/GUIDE.md", "docs/REFERENCE.md", "benchmarks/README.md")
SKIPPED = {"venv": "creates a new virtual environment", "pip": "needs the network (a package index)"}


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


def module_args(argv: list[str]) -> tuple[str, list[str]]:
    """(module, its arguments) of ``python -m MODULE ARGS`` or ``torchrun [opts] -m MODULE ARGS``."""
    i = argv.index("-m")
    return argv[i + 1], argv[i + 2:]
