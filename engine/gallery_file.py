"""The gallery file's historical home: its public names, re-exported from engine.search.file and
engine.search.checks (where they live)."""
from .search.checks import STORAGES, check_labels, check_vectors
from .search.file import FORMAT_NAME, FORMAT_VERSION, RowPaths, legacy_paths_file, read, save

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "STORAGES", "RowPaths", "check_labels", "check_vectors",
           "legacy_paths_file", "read", "save"]
