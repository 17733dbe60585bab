"""benchmarks.gallery_big with HNSW built at another efConstruction: ``python THIS.py 100 --size ...``
(the efConstruction, then gallery_big's own flags). Run from the repository root with PYTHONPATH=."""
import sys

from benchmarks.gallery_big import main
from engine.search import approximate

if __name__ == "__main__":
    approximate.HNSW_EF_CONSTRUCTION = int(sys.argv[1])  # read when an index is built, at the first search
    sys.exit(main(sys.argv[2:]))
