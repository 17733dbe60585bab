"""``python -m serve ARTIFACT_DIR [--gallery gallery.npz | --gallery MANIFEST.json --ray ADDRESS]``:
Triton Inference Server on the artefact's own model repository (ARTIFACT/triton, written by export;
the tritonserver inside the PyTriton wheel).

Models: ``embed`` (uint8 N,H,W,3 -> unit embeddings, dynamic batching up to the artefact's max
batch), and with --gallery also ``search`` (images or embeddings + k -> squared-L2 distances and ids)
and ``gallery_add`` (images + ids [+ cams], saved to the gallery file atomically; the file is created
by the first add if it does not exist, and records the artefact's model). A gallery embedded by another
model than the artefact's is refused (exit 2, both fingerprints named) unless --allow-other-model; one
that records no model is served with a warning. A .json gallery is a sharded gallery's manifest
(engine.sharded): its shards run as actors on the Ray cluster --ray names, and gallery_add is
all-or-none. Clients: engine.client.TritonClient, `python -m engine.embed
--url`, `python -m engine.query --url`, or any Triton client. The "ready:" line comes once every model
answers; probes: GET /v2/health/ready (per model /v2/models/NAME/ready). Stop with Ctrl+C or SIGTERM.
Exit codes: 0 stopped by a signal, 1 the server died, 2 bad input (checked before tritonserver starts: a
missing artefact, a port in use or outside 1..65535, an --address that is not this machine's, a gallery
of another model, a sharded gallery without --ray).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine import InputError, cli
from engine.backends import BACKEND_NAMES

from .models import check_ray_address
from .server import ServerOptions, serve

DEFAULTS = ServerOptions()


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m serve", __doc__)
    p.add_argument("artifact", type=Path, help="artefact folder written by `python -m export.build_engine`")
    p.add_argument("--gallery", type=Path, help="gallery .npz (from `python -m engine.embed`) to search "
                   "and add to; without it only `embed` is served")
    p.add_argument("--address", default=DEFAULTS.address,
                   help="interface to listen on (default: %(default)s, loopback; 0.0.0.0 for every one)")
    p.add_argument("--http-port", type=int, default=DEFAULTS.http_port, help="KServe v2 HTTP")
    p.add_argument("--grpc-port", type=int, default=DEFAULTS.grpc_port, help="KServe v2 gRPC")
    p.add_argument("--metrics-port", type=int, default=DEFAULTS.metrics_port, help="Prometheus metrics")
    p.add_argument("--backend", choices=[b for b in BACKEND_NAMES if b != "torch"], default=DEFAULTS.backend,
                   help="engine backend")
    p.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N")
    cli.add_precision(p)
    p.add_argument("--gallery-device", default=DEFAULTS.gallery_device,
                   help="where the gallery is searched: cpu or cuda[:N]")
    p.add_argument("--allow-other-model", action="store_true", help="serve a --gallery embedded by another "
                   "model than the artefact's (refused by default: the two models' distances are meaningless "
                   "unless they share one embedding space)")
    p.add_argument("--ray", metavar="ADDRESS", help="with --gallery MANIFEST.json: the Ray cluster the sharded "
                   "gallery's shards run on ('auto' on a node of it, or ray://HOST:10001)")
    p.add_argument("--no-ort-spin", dest="ort_spin", action="store_false", help="let ONNX Runtime's threads "
                   "sleep after each batch instead of spin-waiting for the next: for a host whose cores are busy "
                   "with other work (on a quiet one spinning is faster: benchmarks/README.md)")
    p.add_argument("--verbose", action="store_true", help="log tritonserver's progress (info lines) too")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    opts = ServerOptions(address=args.address, http_port=args.http_port, grpc_port=args.grpc_port,
                         metrics_port=args.metrics_port, backend=args.backend, device=args.device,
                         precision=args.precision, gallery_device=args.gallery_device,
                         allow_other_model=args.allow_other_model, verbose=args.verbose, ray=args.ray,
                         ort_spin=args.ort_spin)

    def body() -> int:
        if args.gallery is None and args.gallery_device != parser.get_default("gallery_device"):
            raise InputError("--gallery-device says where --gallery is searched, and there is no --gallery; "
                             "pass --gallery FILE or drop --gallery-device")
        if args.gallery is None and args.allow_other_model:
            raise InputError("--allow-other-model lets --gallery be another model's, and there is no --gallery; "
                             "pass --gallery FILE or drop --allow-other-model")
        if args.gallery is not None:
            check_ray_address(args.gallery, args.ray)  # before tritonserver starts, not in its model
        if not serve(args.artifact, args.gallery, opts):
            print("error: tritonserver exited (a model failed to load, or it died); see its log above",
                  file=sys.stderr)
            return 1
        return 0

    return cli.run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
