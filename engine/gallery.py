"""The Gallery's historical home: its public names, re-exported from engine.search (where it lives)."""
from .search.file import read as read_gallery_file
from .search.gallery import DEFAULT_QUERY_BATCH, METHODS, UNKNOWN_CAM, Gallery

__all__ = ["DEFAULT_QUERY_BATCH", "METHODS", "UNKNOWN_CAM", "Gallery", "read_gallery_file"]
