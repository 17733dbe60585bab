"""The sharded gallery's manifest: one JSON file naming every shard file, written atomically, last.

The manifest is the commit point of the whole gallery. A shard file is never overwritten: an add
writes each touched shard's rows to a new file (``STEM.shard-III.vVVVVVV.npz``) and only then
replaces the manifest, which names the new files; the files it no longer names are removed after.
So the files the manifest names are always one consistent set, whatever was killed when: a shard
file newer than the manifest is simply not named by it, and is ignored (and cleaned by the next add).

Every entry records the shard's row count, byte size and sha256, and the manifest a uuid, so a shard
file from another gallery, an older version or a partial copy is refused at load with what differs.
Like a one-file gallery's header, the manifest records the fingerprint of the model that embedded the
rows (``model_fingerprint``, engine.search.file; None when not known), which the server checks.
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..atomic import read_json_object, write_text
from ..errors import ArtifactError
from ..search.file import is_fingerprint
from ..spec import file_sha256

FORMAT_NAME, FORMAT_VERSION = "jlml-sharded-gallery", 1
SUFFIX = ".json"


@dataclass(frozen=True)
class ShardEntry:
    """One shard file as the manifest names it (``file`` relative to the manifest's folder)."""

    file: str
    rows: int
    bytes: int
    sha256: str

    @classmethod
    def of(cls, folder: Path, name: str, rows: int) -> ShardEntry:
        path = folder / name
        return cls(name, int(rows), path.stat().st_size, file_sha256(path))


EMPTY = ShardEntry("", 0, 0, "")  # a shard no row was routed to yet (no file: a Gallery file is never empty)


@dataclass(frozen=True)
class Manifest:
    """dim, storage and method of every shard, the add count (``version``), the shards in order, the
    folder of the rows' images and the model that embedded the rows."""

    uuid: str
    dim: int
    method: str
    storage: str
    version: int
    shards: tuple[ShardEntry, ...]
    images_root: str | None = None
    model_fingerprint: str | None = None

    @classmethod
    def new(cls, dim: int, method: str, storage: str, shards: int, model_fingerprint: str | None = None) -> Manifest:
        return cls(uuid.uuid4().hex, int(dim), method, storage, 0, (EMPTY,) * shards,
                   model_fingerprint=model_fingerprint)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def with_shards(self, entries: dict[int, ShardEntry], images_root: str | None,
                    model_fingerprint: str | None) -> Manifest:
        """The next version: ``entries`` replace those shards, the others are kept."""
        shards = tuple(entries.get(i, s) for i, s in enumerate(self.shards))
        return dataclasses.replace(self, version=self.version + 1, shards=shards, images_root=images_root,
                                   model_fingerprint=model_fingerprint)

    def write(self, path: str | os.PathLike[str]) -> None:
        body = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}
        write_text(path, json.dumps(body, indent=1) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Manifest:
        fix = "pass the .json manifest a ShardedGallery wrote (python -m engine.embed --ray --shards N writes one)"
        data = read_json_object(path, "sharded gallery manifest", fix)
        if data.get("format") != FORMAT_NAME or data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path} is not a version-{FORMAT_VERSION} sharded gallery manifest (format "
                                f"{data.get('format')!r} version {data.get('format_version')!r}); {fix}")
        try:
            shards = tuple(ShardEntry(**s) for s in data["shards"])
            manifest = cls(str(data["uuid"]), int(data["dim"]), str(data["method"]), str(data["storage"]),
                           int(data["version"]), shards, data.get("images_root"), data.get("model_fingerprint"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"sharded gallery manifest {path} is incomplete ({exc!r}); {fix}") from exc
        if manifest.model_fingerprint is not None and not is_fingerprint(manifest.model_fingerprint):
            raise ArtifactError(f"sharded gallery manifest {path} records model_fingerprint "
                                f"{manifest.model_fingerprint!r}, expected 64 hex digits or null; {fix}")
        return manifest


def shard_name(manifest_path: Path, index: int, version: int) -> str:
    """The file a shard's rows go to at ``version`` (beside the manifest, named after it)."""
    return f"{manifest_path.stem}.shard-{index:03d}.v{version:06d}.npz"


def check_shard_file(folder: Path, entry: ShardEntry, manifest_path: Path, index: int) -> Path:
    """The shard file's path; ArtifactError if it is missing or not the one the manifest names."""
    path = folder / entry.file
    fix = (f"restore it from the same copy as {manifest_path}, or rebuild the gallery; a shard file "
           "cannot move between galleries")
    if not path.is_file():
        raise ArtifactError(f"shard {index} of {manifest_path}: file {path} is missing; {fix}")
    size = path.stat().st_size
    if size != entry.bytes:
        raise ArtifactError(f"shard {index} of {manifest_path}: {path} has {size} bytes, the manifest "
                            f"recorded {entry.bytes} (a file of another gallery or version); {fix}")
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise ArtifactError(f"shard {index} of {manifest_path}: {path} has sha256 {digest[:12]}..., the "
                            f"manifest recorded {entry.sha256[:12]}... (another gallery's file); {fix}")
    return path


def stale_files(manifest_path: Path, manifest: Manifest) -> list[Path]:
    """This gallery's shard files the manifest does not name (left by aborted or superseded adds)."""
    named = {s.file for s in manifest.shards}
    return [p for p in manifest_path.parent.glob(f"{manifest_path.stem}.shard-*.v*.npz") if p.name not in named]

