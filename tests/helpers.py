"""Plain helpers shared by test modules (fixtures live in conftest.py)."""
from __future__ import annotations

import base64
import json

import numpy as np


def unit16(a: np.ndarray) -> np.ndarray:
    """Rows L2-normalised in float64, stored as float16."""
    a = np.asarray(a, np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float16)


def chart_spec(chart) -> dict:
    """A Streamlit AppTest plotly chart's JSON, with plotly's base64 typed arrays decoded into lists."""
    def decode(value):
        if isinstance(value, dict) and "bdata" in value and "dtype" in value:
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        return [decode(v) for v in value] if isinstance(value, list) else value

    return decode(json.loads(chart.proto.spec))
