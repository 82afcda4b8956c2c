"""Plain helpers shared by test modules (fixtures live in conftest.py)."""
from __future__ import annotations

import numpy as np


def unit16(a: np.ndarray) -> np.ndarray:
    """Rows L2-normalised in float64, stored as float16."""
    a = np.asarray(a, np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float16)
