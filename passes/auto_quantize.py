"""Decoder MatMuls -> the smallest 4/8-bit mix whose loss, measured on calibration audio, fits a
budget (``quantize-int4`` with per-group ``overrides``).

Every *trial* quantizes a copy of the bundle as it is when this pass runs (the reference) and
measures it against that reference with ``qgraph.accuracy.compare`` on the calibration audio
(``audio``; default: the built-in speech; at most ``max_files`` clips and ``max_tokens`` greedy
tokens each). A trial's **loss** is that of ``--check-accuracy``: the WER delta in percentage
points when every clip has a transcript, else the token disagreement; a repetition loop on any
clip fails it. Groups are ``_groups.decoder_groups`` (per layer: self-attention, cross-attention,
MLP; the lm_head with the tied embedding; ...). The search:

1. **smallest**: every group at 4 bits, block ``block_size``; within ``budget``: done;
2. **sensitivity**: one trial per group, that group at 4 bits and every other at 8 bits, ranked
   by teacher-forced KL(reference || trial) (ties: token agreement);
3. **upgrade**: the ``k`` most sensitive groups at 8 bits and the rest at 4 bits, ``k = 1, 2,
   ...`` until a trial is within budget (at most ``max_trials`` trials in all). When none is,
   the plan of the trial with the lowest loss (sensitivity trials included) is used and a
   warning says the budget was not met.

The chosen plan is applied in place (the same ``quantize-int4`` the trials ran, so the result is
the measured bundle byte for byte). Statistics: ``trials``, ``groups at 8 bits``, ``groups at 4
bits``, ``loss in 0.01 pp`` (the chosen trial's; negative: better than the reference) and one
``8-bit:<group>`` per upgraded group; every trial's size and loss are logged (``qgraph -v``), the
size-vs-loss table of the search.

Does not fire: no decoder MatMul to quantize (``skipped:no groups``). Lossy within its own
measured budget; the declared ``tolerance`` is the 4-bit one of ``quantize-int4``.
Cost: up to ``1 + 2 * groups`` trials (tiny.en: 14 groups), each a quantize, a save and a
comparison on the calibration clips.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import onnx_ir as ir

from qgraph.pass_api import BundlePass, Tolerance, option
from qgraph.passes._groups import decoder_groups, overrides
from qgraph.passes.quantize_int4 import INT4_BUDGET, QuantizeMatMulNBits

logger = logging.getLogger(__name__)

Plan = dict[str, tuple[int, int]]


class AutoQuantize(BundlePass):
    """Decoder MatMuls -> the smallest int4/int8 mix within a loss budget measured on audio."""

    name = "auto-quantize"
    category = "quantization"
    must_follow = QuantizeMatMulNBits.must_follow
    tolerance: ClassVar[Tolerance] = INT4_BUDGET
    budget: float = option(0.5, "largest loss in percentage points (WER delta, else disagreement)")
    audio: str = option("", "folder of calibration audio (default: the built-in speech)")
    block_size: int = option(64, "block size of every group", choices=(16, 32, 64, 128, 256))
    max_files: int = option(8, "calibration clips used at most")
    max_tokens: int = option(96, "greedy tokens per clip at most")
    max_trials: int = option(40, "trials at most (the search stops at the best plan so far)")

    def call(self, bundle: Any) -> ir.passes.PassResult:
        groups = decoder_groups(bundle)
        if not groups:
            self.count("skipped:no groups")
            return ir.passes.PassResult(bundle, False)
        with tempfile.TemporaryDirectory(prefix="qgraph-auto-quantize-") as tmp:
            reference = dataclasses.replace(bundle, manifest={}, history=[]).save(
                Path(tmp) / "reference"
            )
            plan, report = self._search(groups, reference, Path(tmp))
        upgraded = [g for g, (bits, _) in plan.items() if bits == 8]
        self.count("groups at 8 bits", len(upgraded))
        self.count("groups at 4 bits", len(plan) - len(upgraded))
        self.count("loss in 0.01 pp", round(100 * report.loss))
        for group in upgraded:
            self.count(f"8-bit:{group}")
        return ir.passes.PassResult(bundle, self._quantize(bundle, groups, plan))

    # -- the search -------------------------------------------------------------------------------
    def _search(self, groups: dict[str, list[str]], reference: Path, tmp: Path) -> tuple[Plan, Any]:
        cache: dict[str, Any] = {}
        low = {g: (4, self.block_size) for g in groups}

        def trial(plan: Plan, what: str) -> Any:
            self.count("trials")
            loaded = type(self)._load(reference)
            self._quantize(loaded, groups, plan)
            out = loaded.save(tmp / "trial")
            from qgraph.accuracy import compare

            report = compare(
                reference,
                out,
                self.audio or None,
                budget=self.budget,
                max_files=self.max_files,
                max_tokens=self.max_tokens,
                cache=cache,
            )
            size = sum(f["bytes"] for f in loaded.manifest["files"].values())
            shutil.rmtree(out)
            logger.info(
                "auto-quantize %s: %.2f MB, loss %+.2f pp (%s), KL %.4f, agreement %.3f%s",
                what,
                size / 1e6,
                report.loss,
                report.metric,
                report.kl,
                report.agreement,
                f", loops {report.loops}" if report.loops else "",
            )
            return report

        tried: list[tuple[Plan, Any]] = []

        def measured(plan: Plan, what: str) -> Any:
            tried.append((plan, trial(plan, what)))
            return tried[-1][1]

        if measured(low, "all 4-bit").within_budget:
            return tried[-1]
        ranked = []
        for group in groups:
            if self.stats["trials"] >= self.max_trials:
                break
            plan = {g: (4, self.block_size) if g == group else (8, self.block_size) for g in groups}
            r = measured(plan, f"sensitivity of {group}")
            ranked.append((-r.kl, r.agreement, group))
        order = [g for _, _, g in sorted(ranked)] + [g for g in groups if g not in ranked]
        plan = dict(low)
        for k, group in enumerate(order, start=1):
            if self.stats["trials"] >= self.max_trials:
                break
            plan = {**plan, group: (8, self.block_size)}
            if measured(plan, f"{k} group(s) at 8 bits (+{group})").within_budget:
                return tried[-1]
        plan, report = min(tried, key=lambda t: (bool(t[1].loops), t[1].loss))
        logger.warning(
            "auto-quantize: no plan within the budget of %g pp in %d trials; using the best "
            "measured one (%d groups at 8 bits, loss %+.2f pp)",
            self.budget,
            len(tried),
            sum(bits == 8 for bits, _ in plan.values()),
            report.loss,
        )
        return plan, report

    @staticmethod
    def _load(path: Path) -> Any:
        from qgraph.bundle import Bundle

        return Bundle.load(path)

    def _quantize(self, bundle: Any, groups: dict[str, list[str]], plan: Plan) -> bool:
        """``quantize-int4`` with ``plan`` as overrides on every component (in place)."""
        q = QuantizeMatMulNBits(block_size=self.block_size, overrides=overrides(groups, plan))
        roles = bundle.roles()
        modified = False
        for comp in q.targets(roles):
            if q.run_on(bundle.components[comp], comp, roles[comp]).modified:
                self.touch(comp)
                modified = True
        return modified
