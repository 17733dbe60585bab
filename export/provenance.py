"""spec.json's ``extra.provenance``: which checkpoint an artefact is, how it was trained and scored,
with which code and packages, and when; and the check that a rebuild under the same checkpoint name
does not silently publish another model.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.errors import InputError, JLMLError
from engine.parity import ParityResult
from engine.provenance import code_version, package_versions
from engine.spec import SPEC_FILE, ModelSpec, file_sha256


def checkpoint_record(path: Path, ckpt: Any) -> dict[str, Any]:
    """The checkpoint's identity: resolved path, sha256, epochs trained."""
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "epoch": ckpt.epoch}


def check_unchanged(out: Path, checkpoint: dict[str, Any], force: bool) -> None:
    """Refuse to rebuild ``out`` from a checkpoint that changed under the name it was exported from
    (a resumed run overwrote last.pt, say), unless ``force``: the served model would change silently."""
    spec_path = out / SPEC_FILE
    if force or not spec_path.is_file():
        return
    try:
        before = ModelSpec.load(spec_path).extra.get("provenance", {}).get("checkpoint", {})
    except JLMLError:  # an unreadable or older spec is replaced like any stale artefact
        return
    if before.get("path") == checkpoint["path"] and before.get("sha256") not in (None, checkpoint["sha256"]):
        raise InputError(
            f"--out {out} holds the export of {checkpoint['path']} as it was (sha256 {before['sha256'][:12]}..., "
            f"epoch {before.get('epoch')}); that file has changed since (sha256 {checkpoint['sha256'][:12]}..., "
            f"epoch {checkpoint['epoch']}); pass --force to replace the served model, or export to another --out"
        )


def _metrics(path: Path, sha256: str) -> dict[str, Any]:
    """The metrics ``python -m train`` scored this very checkpoint with (metrics.json beside it, tied
    to it by sha256), or why there are none."""
    from train.checkpoint import METRICS_FILE  # torch comes with it: imported when a build needs it

    report = path.parent / METRICS_FILE
    try:
        saved = json.loads(report.read_text())
    except (OSError, ValueError):
        return {"metrics": None, "metrics_note": f"no readable {METRICS_FILE} beside the checkpoint"}
    if saved.get("checkpoint_sha256") != sha256:
        return {"metrics": None, "metrics_note": f"{report} belongs to another state of the checkpoint "
                "(its sha256 differs); run python -m train.evaluate on this one"}
    return {"metrics": saved.get("metrics"), "metrics_source": str(report)}


def provenance(path: Path, ckpt: Any, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What spec.json records under ``extra.provenance``."""
    extra = ckpt.extra
    history = extra.get("history") or [{}]
    training = {"config": ckpt.config.to_dict(), "options": extra.get("options"), "data": extra.get("data"),
                "data_root": extra.get("data_root"), "init": extra.get("init"), "code": extra.get("code"),
                "last_epoch": {k: history[-1].get(k) for k in ("loss", "acc") if k in history[-1]}}
    return {"checkpoint": checkpoint, "training": training, **_metrics(path, checkpoint["sha256"]),
            "export": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": code_version(),
                       "versions": package_versions()}}


PROTOCOLS = {"market1501": "Market-1501 rules (junk ignored, same id and camera ignored)",
             "dukemtmc": "Market-1501 rules (junk ignored, same id and camera ignored)",
             "viper": "single-shot, one image per person and camera, seeded split of the people",
             "prid2011": "single-shot, one image per person and camera, seeded split of the people",
             "synthetic": "generated people (train/data/synthetic.py), seeded split"}


JLML_NAME = "JLML (Joint Learning of Multi-Loss; Li, Zhu & Gong, IJCAI 2017)"
LOMO_XQDA_NAME = "LOMO + XQDA (Liao, Hu, Zhu & Li, CVPR 2015; the descriptor and its learned metric in the graph)"
GOG_XQDA_NAME = ("GOG + LOMO + XQDA (GOG: Matsukawa, Okabe, Suzuki & Sato, CVPR 2016; LOMO and XQDA: Liao et al., "
                 "CVPR 2015; the descriptors and their learned metric in the graph)")


def _model_name(spec: ModelSpec) -> str:
    """What the artefact serves: JLML, or the hybrid matcher and its parts (``train.hybrid``)."""
    matcher = spec.extra.get("matcher")
    if not matcher:
        return JLML_NAME
    parts = ", ".join(f"{name} {dim}-D" for name, dim in matcher.get("parts", {}).items())
    metric = GOG_XQDA_NAME if matcher.get("descriptor") == "gog+lomo" else LOMO_XQDA_NAME
    if matcher.get("kind") in ("lomo_xqda", "gog_xqda"):
        return f"{metric} ({parts})"
    return f"{JLML_NAME} fused with {metric} ({parts}; weights {matcher.get('weights')})"


def model_card(spec: ModelSpec, parity: Sequence[ParityResult], images: dict[str, Any]) -> str:
    """MODEL_CARD.md of an artefact: what it is, what it was trained and scored on, how the exported
    graphs match it, and its limits; written from spec.json's provenance."""
    prov = spec.extra.get("provenance", {})
    ck, training = prov.get("checkpoint", {}), prov.get("training", {})
    data = training.get("data") or {}
    name = data.get("dataset", "unknown (the checkpoint does not record it)")
    metrics = prov.get("metrics")
    scored = ("; ".join(f"{k} {100 * v:.2f}" if k != "num_query" else f"{k} {v}" for k, v in metrics.items())
              if metrics else f"not recorded ({prov.get('metrics_note', 'no metrics')})")
    code = (prov.get("export") or {}).get("code") or {}
    lines = [
        "# Model card", "",
        f"**Model.** {_model_name(spec)} person re-identification "
        f"embedding: uint8 RGB crops of {spec.height}x{spec.width} in, unit {spec.embedding_dim}-D vectors out, "
        "compared by squared L2 (preprocessing and normalisation inside the graph).", "",
        f"**Checkpoint.** {ck.get('path', '?')} (sha256 {ck.get('sha256', '?')}, {ck.get('epoch', '?')} epochs).", "",
        f"**Data.** {name}, split seed {data.get('split_seed', '?')}, options {data.get('options', {})}, read from "
        f"{training.get('data_root') or 'generated (no folder)'}. Protocol: {PROTOCOLS.get(name, 'unknown')}.", "",
        f"**Metrics** (test people of that split, PyTorch FP32, as `python -m train` scored this checkpoint): "
        f"{scored}.", "",
        f"**Export parity** on {images.get('count')} {images.get('kind')} images ({images.get('from')}):", "",
        *[f"- {r.line()}" for r in parity], "",
        "**Limits.** Figures hold for the data and protocol above only: other cameras, places, resolutions or "
        "crops (detector boxes, occlusion) change them; measure on your data with `python -m train.evaluate`. "
        "It ranks crops by appearance (clothing, colour), it does not identify people, and it inherits the "
        "biases of its training set. Re-identification of people is surveillance: use it only where that "
        "is lawful and the people concerned are informed.", "",
        f"**Provenance.** Exported {(prov.get('export') or {}).get('date', '?')} from git commit "
        f"{code.get('commit', 'unknown')}{' (uncommitted changes)' if code.get('dirty') else ''}; versions in "
        "spec.json (`extra.provenance`).", ""]
    return "\n".join(lines)
