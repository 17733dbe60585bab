"""Request cost and load test of the Triton server: ``python -m benchmarks.serve --artifact DIR --out DIR``.

Starts ``python -m serve ARTIFACT_DIR`` on free loopback ports (serve.process; nothing listens
beyond 127.0.0.1), then for each transport (gRPC, HTTP, and with ``grpc+shm``/``http+shm`` the same
with inputs in Triton's system shared memory), each batch size and each client count N runs N
concurrent clients (threads, one TritonClient each) that send embed requests until each has sent
``--requests`` or ``--max-seconds`` passed. Every answer is compared with the in-process Embedder's
embeddings of the same pixels (same artefact, backend and device, computed before the load), so the
report proves nothing was lost: requests sent = answered, no errors, largest difference. Per cell:
requests/s, images/s, p50/p90/p99 latency, and at one client the cost the server adds per request
over calling the Embedder in-process at the same batch (paired calls, interleaved in this process, so
both see the same load: the median of the differences, and the ratio of the p50s). Clients and server
share this machine's cores. The machine's load average is recorded before and after.
Writes serve.json, serve.md and serve.png into ``--out``.
Exit codes: 0 ok (and nothing lost), 1 a request lost or wrong, 2 usage or input errors.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Panel,
    environment,
    markdown_table,
    plot_loglog_panels,
    summarize,
    time_calls,
    write_json,
)
from engine import Embedder, InputError, JLMLError, ModelSpec, cli
from engine.atomic import write_text
from engine.client import EMBED_MODEL, SEARCH_MODEL, TritonClient
from engine.search import Gallery
from engine.search.file import model_fingerprint
from serve.process import ServerProcess

COLUMNS = ["protocol", "request", "batch", "clients", "sent", "answered", "errors", "max_abs_diff", "requests_per_s",
           "images_per_s", "p50_ms", "p99_ms", "in_process_p50_ms", "paired_server_p50_ms", "overhead_ms", "ratio",
           "triton_ms", "infer_ms"]
TRANSPORTS = ("grpc", "http", "grpc+shm", "http+shm")  # +shm: inputs through system shared memory
DISTINCT_BATCHES = 8  # different pixels per request, so a cached or mixed-up answer shows as a mismatch
SETTLE_S = 0.02  # pause before each paired call (see paired_overhead)
TOLERANCE = 1e-5  # ORT CPU rows may differ in the last bits when the dynamic batcher merges requests


@dataclass
class ClientLog:
    latencies: list[float] = field(default_factory=list)
    max_diff: float = 0.0
    errors: list[str] = field(default_factory=list)
    sent: int = 0


@dataclass(frozen=True)
class Transport:
    url: str
    shared_memory: bool

    def client(self) -> TritonClient:
        return TritonClient(self.url, shared_memory=self.shared_memory)


def _client(transport: Transport, batches: list[np.ndarray], expected: list[np.ndarray], offset: int,
            requests: int, deadline: float, log: ClientLog) -> None:
    with transport.client() as client:
        for i in range(requests):
            if time.monotonic() > deadline:
                return
            j = (offset + i) % len(batches)
            log.sent += 1
            start = time.perf_counter()
            try:
                got = client.embed(batches[j])
            except JLMLError as exc:
                log.errors.append(str(exc))
                continue
            log.latencies.append(time.perf_counter() - start)
            log.max_diff = max(log.max_diff, float(np.abs(got - expected[j]).max()))


def load_cell(transport: Transport, clients: int, batches: list[np.ndarray], expected: list[np.ndarray], *,
              requests: int, max_seconds: float) -> dict[str, Any]:
    """N concurrent clients until each sent ``requests`` or ``max_seconds`` passed; one result row."""
    logs = [ClientLog() for _ in range(clients)]
    deadline = time.monotonic() + max_seconds
    threads = [threading.Thread(target=_client, args=(transport, batches, expected, n * 3, requests, deadline, log))
               for n, log in enumerate(logs)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = [x for log in logs for x in log.latencies]
    batch = len(batches[0])
    row: dict[str, Any] = {"clients": clients, "batch": batch, "sent": sum(log.sent for log in logs),
                           "answered": len(latencies), "errors": sum(len(log.errors) for log in logs),
                           "max_abs_diff": max(log.max_diff for log in logs), "wall_s": wall,
                           "first_error": next((e for log in logs for e in log.errors), None)}
    if latencies:
        stats = summarize(latencies, batch)
        row.update(p50_ms=stats["p50_ms"], p90_ms=stats["p90_ms"], p99_ms=stats["p99_ms"],
                   requests_per_s=len(latencies) / wall, images_per_s=len(latencies) * batch / wall)
    return row


def _per_request(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Mean ms per request inside Triton between two statistics snapshots: ``triton_ms`` from receipt
    to response, ``queue_ms``, and ``infer_ms`` (the Python backend's round trip to the model process,
    the Embedder included)."""
    def mean_ms(name: str) -> float:
        count, ns = (a - b for a, b in zip(after[name], before[name], strict=True))
        return ns / count / 1e6 if count else float("nan")

    return {"triton_ms": mean_ms("success"), "queue_ms": mean_ms("queue"), "infer_ms": mean_ms("compute_infer")}


def _paired(client: TritonClient, local_call: Callable[[int], Any], remote_call: Callable[[int], Any],
            pairs: int, model: str) -> dict[str, float]:
    """``pairs`` rounds of ``local_call(i)`` then ``remote_call(i)``, each started SETTLE_S after the
    previous call; the median of the paired differences and Triton's own figures for ``model``."""
    local: list[float] = []
    remote: list[float] = []
    before = client.statistics(model)
    for i in range(pairs):
        time.sleep(SETTLE_S)
        local += time_calls(partial(local_call, i), warmup=0, repeats=1)
        time.sleep(SETTLE_S)
        remote += time_calls(partial(remote_call, i), warmup=0, repeats=1)
    inside = _per_request(before, client.statistics(model))
    diffs = [1e3 * (r - x) for r, x in zip(remote, local, strict=True)]
    local_p50, remote_p50 = summarize(local)["p50_ms"], summarize(remote)["p50_ms"]
    return {"in_process_p50_ms": local_p50, "paired_server_p50_ms": remote_p50, "ratio": remote_p50 / local_p50,
            "overhead_ms": float(np.median(diffs)), "overhead_p90_ms": float(np.percentile(diffs, 90)), **inside}


def paired_overhead(transport: Transport, embedder: Embedder, batches: list[np.ndarray],
                    pairs: int) -> dict[str, float]:
    """Per-request cost of the server over the in-process Embedder at the same batch: ``pairs`` rounds
    of one in-process call then one request, so both see the same machine load; the median of the
    paired differences is the overhead (robust on a shared, drifting machine). Each call starts
    SETTLE_S after the previous one: ONNX Runtime's threads spin-wait after a run, and the reference's
    (or the server's) spinning threads would otherwise take the cores the other side runs on."""
    with transport.client() as client:
        client.embed(batches[0])  # connection (and shared-memory region) set-up is not per request
        return _paired(client, lambda i: embedder(batches[i % len(batches)]),
                       lambda i: client.embed(batches[i % len(batches)]), pairs, EMBED_MODEL)


def paired_search(transport: Transport, gallery: Gallery, queries: list[np.ndarray], k: int,
                  pairs: int) -> dict[str, Any]:
    """The server's ``search`` by embedding against ``gallery.search`` in-process, paired as embed is;
    every answer is compared with the in-process one (ids equal, largest distance difference)."""
    want = [gallery.search(q, k) for q in queries]
    with transport.client() as client:
        got = [client.search(k, embeddings=q) for q in queries]
        row = _paired(client, lambda i: gallery.search(queries[i % len(queries)], k),
                      lambda i: client.search(k, embeddings=queries[i % len(queries)]), pairs, SEARCH_MODEL)
    same = [np.array_equal(g[1], w[1]) for g, w in zip(got, want, strict=True)]
    return {"request": f"search k={k}", "batch": len(queries[0]), "clients": 1, "sent": len(same),
            "answered": len(same), "errors": same.count(False),
            "max_abs_diff": max(float(np.abs(g[0] - w[0]).max()) for g, w in zip(got, want, strict=True)), **row}


def search_gallery(spec: ModelSpec, rows: int, out: Path) -> tuple[Gallery, Path]:
    """A gallery of ``rows`` random unit rows of the artefact's size, saved as ``out/gallery.npz`` with the
    artefact's model fingerprint (the server refuses another model's gallery)."""
    rng = np.random.default_rng(1)
    gallery = Gallery(spec.embedding_dim)
    vectors = rng.standard_normal((rows, spec.embedding_dim)).astype(np.float32)
    gallery.add(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), rng.integers(0, max(rows // 4, 1), rows))
    gallery.model_fingerprint = model_fingerprint(spec)
    gallery.save(out / "gallery.npz")
    return gallery, out / "gallery.npz"


def _cells(args: argparse.Namespace, server: ServerProcess, embedder: Embedder,
           data: dict[int, tuple[list[np.ndarray], list[np.ndarray]]]) -> list[dict[str, Any]]:
    rows = []
    for protocol in args.protocols:
        transport = Transport(getattr(server, protocol.split("+")[0]), protocol.endswith("+shm"))
        for batches, expected in data.values():
            for clients in args.clients:
                row = load_cell(transport, clients, batches, expected, requests=args.requests,
                                max_seconds=args.max_seconds)
                row.update(protocol=protocol, request="embed")
                if clients == 1:
                    row.update(paired_overhead(transport, embedder, batches, args.pairs))
                rows.append(row)
                print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    return rows


def _search_cells(args: argparse.Namespace, server: ServerProcess, gallery: Gallery,
                  expected: list[list[np.ndarray]]) -> list[dict[str, Any]]:
    """Search by embedding (k = 10), one client, at each batch: the in-process embeddings are the queries."""
    rows = []
    for protocol in dict.fromkeys(p.split("+")[0] for p in args.protocols):
        for queries in expected:
            row = paired_search(Transport(getattr(server, protocol), False), gallery, queries, 10, args.pairs)
            rows.append({"protocol": protocol, **row})
            print(markdown_table([rows[-1]], COLUMNS).splitlines()[-1], flush=True)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = ModelSpec.load(args.artifact)
    outside = [b for b in args.batches if not 1 <= b <= spec.max_batch]
    if outside:
        raise JLMLError(f"--batches {outside} outside 1..{spec.max_batch} (the artefact's batch range)")
    rng = np.random.default_rng(0)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with Embedder(args.artifact, backend=args.backend, device=args.device, precision=args.precision) as embedder:
        data = {}
        for batch in args.batches:
            batches = [rng.integers(0, 256, (batch, *spec.image_shape), dtype=np.uint8) for _ in range(DISTINCT_BATCHES)]
            data[batch] = (batches, [embedder(b) for b in batches])
        gallery, gallery_file = search_gallery(spec, args.gallery_rows, args.out) if args.gallery_rows else (None, None)
        server = ServerProcess.start(args.artifact, args.out / "server.log", gallery=gallery_file,
                                     extra=("--backend", args.backend, "--device", args.device,
                                            "--precision", embedder.precision))
        try:
            rows = _cells(args, server, embedder, data)
            if gallery is not None:
                rows += _search_cells(args, server, gallery, [d[1] for d in data.values()])
        finally:
            rc = server.stop()
    return {"environment": {**environment(args.device if args.device != "auto" else "cpu"),
                            "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "server_exit_code": rc, "results": rows}


def write_report(report: dict[str, Any], out: Path) -> None:
    write_json(out / "serve.json", report)
    env = report["environment"]
    head = (f"{env['cpu']}, load average {env['loadavg_before'][0]:.1f} before, {env['loadavg_after'][0]:.1f} after; "
            f"overhead_ms: median of {report['settings']['pairs']} paired (server - in-process Embedder) "
            "differences; ratio: server p50 / in-process p50 of those pairs.\n\n")
    write_text(out / "serve.md", head + markdown_table(report["results"], COLUMNS))
    panels: list[Panel] = []
    for key, label in (("requests_per_s", "requests/s"), ("p99_ms", "p99 latency (ms)")):
        rows = [r for r in report["results"] if key in r]
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = {
            f"{p}, batch {b}": ([r["clients"] for r in rows if (r["protocol"], r["batch"]) == (p, b)],
                                [r[key] for r in rows if (r["protocol"], r["batch"]) == (p, b)])
            for p in report["settings"]["protocols"] for b in report["settings"]["batches"]}
        panels.append((series, "concurrent clients", label, f"{label} vs clients"))
    plot_loglog_panels(out / "serve.png", panels)


def nothing_lost(report: dict[str, Any]) -> bool:
    return all(r["answered"] == r["sent"] and r["errors"] == 0 and r["max_abs_diff"] <= TOLERANCE
               for r in report["results"])


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.serve", __doc__)
    cli.add_artifact(p)
    cli.add_out(p, None, help="folder for serve.json, serve.md, serve.png and server.log")
    p.add_argument("--protocols", nargs="+", choices=TRANSPORTS, default=["grpc", "http"],
                   help="transports; +shm sends inputs through system shared memory (same machine only)")
    p.add_argument("--clients", type=cli.positive_int, nargs="+", default=[1, 4, 16],
                   help="concurrent client counts, one cell each")
    p.add_argument("--batches", "--batch", type=int, nargs="+", default=[1, 8, 32],
                   help="images per request, one cell each (within the artefact's batch range)")
    p.add_argument("--requests", type=cli.positive_int, default=50, help="requests per client")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long per cell")
    p.add_argument("--pairs", type=cli.positive_int, default=30,
                   help="in-process/server call pairs for the overhead")
    p.add_argument("--backend", default="ort", help="engine backend of the server and the in-process reference")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--gallery-rows", type=cli.non_negative_int, default=0,
                   help="also serve a gallery of this many random rows and time search by embedding (k=10)")
    cli.add_precision(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.max_seconds <= 0:
            raise InputError(f"--max-seconds {args.max_seconds}: expected a positive number of seconds")
        cli.check_out_dir(args.out)
        report = run(args)
        write_report(report, args.out)
        print(f"wrote serve.json, serve.md, serve.png and server.log to {args.out}")
        return 0 if nothing_lost(report) and report["server_exit_code"] == 0 else 1

    return cli.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
