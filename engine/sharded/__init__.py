"""A gallery larger than one process: shards on Ray actors behind Gallery's own contract.

``ShardedGallery.create(path, dim, shards)`` / ``ShardedGallery.load(path)``; see engine.sharded.gallery
for the guarantees and engine.sharded.manifest for the files. ``ray`` is imported only when a
ShardedGallery is made, never by ``import engine``.
"""
from .gallery import ShardedAddError, ShardedGallery, ShardOptions, ShardUnavailableError, merge_topk
from .manifest import Manifest

__all__ = ["Manifest", "ShardOptions", "ShardUnavailableError", "ShardedAddError", "ShardedGallery", "merge_topk"]
