"""What every family's validator reports: ONNX vs PyTorch per clip, one verdict.

The exporters' ``validate`` entry points (``qgraph.families``; they need torch) compare a
bundle with the PyTorch model it came from and return a ``ValidationReport`` of ``ClipResult``
rows; ``qgraph validate`` prints it. ``max_diff`` and ``first_mismatch`` are the two comparisons
they make. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qgraph.errors import VerificationError

__all__ = [
    "DEFAULT_TOLERANCE",
    "ClipResult",
    "ValidationReport",
    "first_mismatch",
    "max_diff",
]

DEFAULT_TOLERANCE = 1e-3
"""Allowed max abs diff, relative to ``max(1, max|reference|)``, for features and logits."""


@dataclass
class ClipResult:
    """Numbers for one clip; ``ok`` is the verdict."""

    name: str
    seconds: float
    frames: int
    audio_tokens: int
    encoder_max_abs: float
    logits_max_abs: float
    onnx_tokens: list[int]
    torch_tokens: list[int]
    first_mismatch: int | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ValidationReport:
    """All clips of one ``validate_bundle`` run."""

    bundle: str
    reference: str
    tolerance: float
    clips: list[ClipResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.clips)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "reference": self.reference,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "clips": [{**asdict(c), "ok": c.ok} for c in self.clips],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A fixed-width table, one row per clip, then the verdict."""
        head = ("clip", "sec", "frames", "audio", "encoder diff", "logits diff", "tokens", "ok")
        rows = [head]
        for c in self.clips:
            same = len(c.onnx_tokens) if c.first_mismatch is None else c.first_mismatch
            rows.append(
                (
                    c.name,
                    f"{c.seconds:.2f}",
                    str(c.frames),
                    str(c.audio_tokens),
                    f"{c.encoder_max_abs:.2e}",
                    f"{c.logits_max_abs:.2e}",
                    f"{same}/{max(len(c.onnx_tokens), len(c.torch_tokens))}",
                    "yes" if c.ok else "NO",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for c in self.clips:
            lines.extend(f"{c.name}: {p}" for p in c.problems)
        passed = sum(c.ok for c in self.clips)
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"{verdict}: {passed}/{len(self.clips)} clips match {self.reference}")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise VerificationError naming the first failing clip, if any failed."""
        bad = [c for c in self.clips if not c.ok]
        if bad:
            raise VerificationError(
                f"{len(bad)} of {len(self.clips)} clips differ from {self.reference}: "
                f"{bad[0].name}: {bad[0].problems[0]}"
            )


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
