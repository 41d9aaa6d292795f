"""Graph diffs: a unified diff of the canonical text plus a one-line summary of the deltas."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from qgraph.instruments.textform import Facts


@dataclass
class Diff:
    component: str
    summary: str
    text: str = ""


def human_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{sign}{n:.0f}{unit}" if unit == "B" else f"{sign}{n:.1f}{unit}"
        n /= 1000
    return f"{sign}{n:.1f}GB"


def summarize(before: Facts, after: Facts) -> str:
    """``nodes 215 -> 157 (-58), inits 40 -> 38 (-2), weights 79.5MB (+0B); ops: -Pow×9 ...``"""

    def delta(a: int, b: int) -> str:
        return f"{a} -> {b} ({b - a:+d})" if a != b else f"{a}"

    ops = []
    for op in sorted(set(before.ops) | set(after.ops)):
        d = after.ops[op] - before.ops[op]
        if d:
            ops.append(f"{'+' if d > 0 else '-'}{op}×{abs(d)}")
    weights = f"weights {human_bytes(after.bytes)}"
    if after.bytes != before.bytes:
        sign = "+" if after.bytes > before.bytes else ""
        weights += f" ({sign}{human_bytes(after.bytes - before.bytes)})"
    parts = [
        f"nodes {delta(before.nodes, after.nodes)}",
        f"initializers {delta(before.initializers, after.initializers)}",
        weights,
    ]
    text = ", ".join(parts)
    return text + ("; ops " + " ".join(ops) if ops else "")


def unified(a: str, b: str, name_a: str, name_b: str, context: int = 2) -> str:
    return "".join(
        difflib.unified_diff(
            a.splitlines(keepends=True), b.splitlines(keepends=True), name_a, name_b, n=context
        )
    )
