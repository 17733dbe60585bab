"""Re-id data sets, held in memory as uint8 pixels, and batch augmentation for training.

``load_reid_set(name, root)`` returns a ``ReidSet`` (train / query / gallery parts plus the protocol
the evaluator applies); ``Augment`` perturbs uint8 NHWC torch batches. Image decoding itself lives in
``engine.images`` so training and serving resize pixels the same way.
"""
from .augment import Augment
from .datasets import DATASETS, load_reid_set
from .reidset import ReidSet

__all__ = ["DATASETS", "Augment", "ReidSet", "load_reid_set"]
