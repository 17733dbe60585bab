"""Median tables from repeated benchmark runs: ``python -m benchmarks.report RUN.json [RUN.json ...]``.

On a shared or noisy machine one run is not a figure: this reads several latency.json, e2e.json or
gallery.json files of the same benchmark, takes the median of every numeric field per row (rows
matched by backend/method, size and batch) and prints one markdown table, the one benchmarks/README.md
quotes. Runs are merged only when they measured the same thing: their settings (sizes, dims, model,
batches, quick vs full, ...; timing effort such as repeats aside) and their device must be equal,
else it exits 2 naming the first difference instead of taking medians across different runs.
Exit codes: 0 ok, 2 unreadable, mixed or differently-set inputs.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table
from engine import cli
from engine.atomic import write_text

KEYS = ("backend", "method", "device", "data", "dim", "size", "batch")
# what makes two machines (or one machine run as another: ATEN_CPU_CAPABILITY, FAISS_SIMD_LEVEL,
# JLML_NATIVE_BF16) different; a key absent from both runs (older reports) matches
MACHINE = ("device", "device_name", "torch_cpu_capability", "faiss_simd", "native_bf16")
EFFORT = frozenset({"repeats", "rounds", "warmup", "min_seconds", "seed"})  # may differ between merged runs
COLUMNS = {
    "latency": ["backend", "device", "batch", "p50_ms", "p99_ms", "images_per_s", "vs_torch_fp32", "min_cosine"],
    "e2e": ["backend", "batch", "p50_ms", "p99_ms", "queries_per_s", "vs_torch_fp32", "gallery_images_per_s"],
    "gallery": ["size", "batch", "method", "p50_ms", "p99_ms", "queries_per_s", "vs_faiss"],
}


def _kind(path: Path) -> str:
    kind = path.stem
    if kind not in COLUMNS:
        raise ValueError(f"{path}: expected one of {[k + '.json' for k in COLUMNS]}")
    return kind


def read_run(path: Path) -> dict[str, Any]:
    """One run's report; ValueError naming ``path`` when it is no JSON, or no report of a benchmark."""
    try:
        report = json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a JSON text file ({exc.reason}); pass a {path.stem}.json a benchmark "
                         "wrote") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); pass a {path.stem}.json a benchmark wrote") from exc
    need = {"environment": dict, "results": list}
    wrong = [key for key, kind in need.items() if not isinstance(report, dict) or not isinstance(report.get(key), kind)]
    if isinstance(report, dict) and not isinstance(report.get("settings", {}), dict):
        wrong.append("settings (an object)")
    if wrong or not all(isinstance(row, dict) and "batch" in row for row in report["results"]):
        lacks = f"lacks {', '.join(wrong)}" if wrong else "has results rows without a batch"
        raise ValueError(f"{path} {lacks}: expected a report written by python -m benchmarks.{path.stem} "
                         f"(keys {', '.join(need)}); pass the runs' {path.stem}.json files")
    return report


def distinct_runs(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats of one file (by its real path): a run given twice is one run."""
    seen: dict[Path, Path] = {}
    for path in paths:
        seen.setdefault(path.resolve(), path)
    return list(seen.values())


def check_same_settings(paths: list[Path], reports: list[dict[str, Any]]) -> None:
    """ValueError naming the first setting (or device) on which a run differs from the first run."""
    def key(report: dict[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in report.get("settings", {}).items() if k not in EFFORT}
        env = report.get("environment", {})
        return {**settings, **{name: env.get(name) for name in MACHINE}}

    first = key(reports[0])
    for path, report in zip(paths[1:], reports[1:], strict=True):
        other = key(report)
        for name in sorted(set(first) | set(other)):
            if first.get(name) != other.get(name):
                raise ValueError(f"{path} was run with {name}={other.get(name)!r}, {paths[0]} with "
                                 f"{first.get(name)!r}; merge only repeated runs of one setting")


def median_rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per key with the median of each float field over the runs (ratios too: each run's
    ratio was measured in one process, so the median ratio is the figure, not a ratio of medians)."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for report in reports:
        for row in report["results"]:
            grouped.setdefault(tuple(row.get(k) for k in KEYS), []).append(row)
    merged = []
    for rows in grouped.values():
        out = dict(rows[0], runs=len(rows))
        for field, value in rows[0].items():
            values = [r[field] for r in rows if isinstance(r.get(field), (int, float))]
            if isinstance(value, float) and values:
                out[field] = float(statistics.median(values))
        merged.append(out)
    order = {name: i for i, name in enumerate(dict.fromkeys(r.get("backend", r.get("method")) for r in merged))}
    return sorted(merged, key=lambda r: (order[r.get("backend", r.get("method"))], r.get("size") or 0, r["batch"]))


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(lambda: _main(argv))  # the shared CLI tail (engine.cli)


def _main(argv: list[str] | None) -> int:
    p = cli.parser("python -m benchmarks.report", __doc__)
    p.add_argument("runs", type=Path, nargs="+", help="latency.json, e2e.json or gallery.json of repeated runs")
    p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    runs = distinct_runs(args.runs)
    if len(runs) < len(args.runs):
        print(f"note: {len(args.runs) - len(runs)} file(s) given more than once, each counted once",
              file=sys.stderr)
    try:
        kinds = {_kind(path) for path in runs}
        if len(kinds) != 1:
            raise ValueError(f"mixed benchmarks {sorted(kinds)}; pass runs of one benchmark")
        reports = [read_run(path) for path in runs]
        check_same_settings(runs, reports)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = reports[0]["environment"]
    table = (f"Median of {len(reports)} run(s), {env.get('device_name', 'unknown device')} "
             f"({env.get('device', '?')}), torch {env.get('torch', '?')}:\n\n"
             + markdown_table(median_rows(reports), [*COLUMNS[kinds.pop()], "runs"]))
    print(table, end="")
    if args.out:
        write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
