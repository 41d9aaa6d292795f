"""Comparisons the exporters' ``validate`` functions report (ONNX vs PyTorch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference (float64); ``inf`` when the shapes differ."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def first_mismatch(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (the shorter length when one is a prefix); None if
    equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
