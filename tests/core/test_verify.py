"""``qgraph.instruments.verify.compare``: the tolerance a pass declares, applied to outputs."""

import numpy as np

from qgraph.instruments.verify import compare
from qgraph.pass_api import Tolerance

TOL = Tolerance(atol=1e-5, rtol=1e-4)


def logits(seed: int = 0) -> np.ndarray:
    return (10 * np.random.default_rng(seed).standard_normal((2, 50))).astype(np.float32)


def test_rounding_near_zero_is_judged_against_the_output_scale():
    """A fusion's rounding (here 3e-5 on logits of magnitude ~30) passes even on an element
    that is itself near zero, where an elementwise rtol would call it a 100 % error."""
    before = logits()
    before[0, 0] = 1e-6
    after = before.copy()
    after[0, 0] += 3e-5
    assert compare({"logits": before}, {"logits": after}, TOL) == []


def test_a_real_change_fails():
    before = logits()
    after = before.copy()
    after[1, 7] += 0.01 * np.abs(before).max()
    (problem,) = compare({"logits": before}, {"logits": after}, TOL)
    assert "exceeds atol=1e-05 + rtol=0.0001" in problem


def test_lossy_budgets_and_exactness():
    before = logits()
    noisy = before + np.random.default_rng(1).standard_normal(before.shape).astype(np.float32)
    lossy = Tolerance(atol=None, rtol=None, min_cosine=0.999, min_top1=0.99)
    problems = compare({"y": before}, {"y": noisy}, lossy)
    assert any("cosine" in p for p in problems)
    assert compare({"y": before}, {"y": before + 0}, Tolerance(exact=True)) == []
    assert compare({"y": before}, {"y": before * 1.001}, Tolerance(exact=True))
