"""clipsim: how close is CLIP's training data to its benchmarks? Exact neighbour search, pruning, retraining."""
from clipsim.workspace import Workspace

__all__ = ["Workspace"]
__version__ = "0.1.0"
