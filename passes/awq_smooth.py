"""Norm -> {MatMul} groups: per-input-channel activation scales folded into the graph (AWQ-style
smoothing before weight quantization; no re-export).

Rewrite, for a norm whose output feeds only MatMuls with constant weights (q/k/v after the
input norm, gate/up after the post-attention norm)::

    y = Norm(x, g[, b]);  z_i = MatMul(y, W_i)
  ->
    y' = Norm(x, g/s[, b/s]);  z_i = MatMul(y', s[:, None] * W_i)       (same z_i)

Norm is ``SimplifiedLayerNormalization``, ``RMSNormalization``, ``LayerNormalization``,
``Skip(Simplified)LayerNormalization`` (output 0) or an unfused ``Mul(g, normalized)`` with a
1-D constant ``g``. ``s = mean|y|^alpha`` per channel (normalised by ``sqrt(max*min)``), from
calibration: the activations' mean magnitude over every calibration token (prefill positions
and decode steps count alike, not per call). Large-activation channels get their weights scaled
up, so 4-bit rounding costs them less. ``search=true`` picks ``alpha`` per group from
0, 0.1, ..., 1 by the error of the group's quantized output (``bits``, ``block_size``,
``symmetric`` simulate ``quantize-int4`` with ORT's kernel) on up to 512 kept calibration rows.
In a pipeline they are those of the first ``quantize-int4`` after this pass: an option left at
its default takes that pass's value, one set to a different value is a pipeline error.
Groups are matched across components by the norm weight's name, and one scale is used for all
of them, so decoder_init and decoder_step stay identical (and shared); a group that cannot be
smoothed in one component is smoothed in none. New weights are lazy (computed at save) unless
their source already sits in memory.

Calibration: ``audio=DIR`` runs the bundle on those files (encoder, prefill, up to
``max_tokens`` greedy steps each, at most ``max_files`` files) through the reference runtime;
empty (default) uses generated inputs (``samples`` seeds per component; for tests).
Calibration data must never come from evaluation data: use a training split (e.g. LibriSpeech
train-clean-100), never the clips a WER or accuracy number is reported on (the public tool's
GPTQ calibrated on its own test set).

Does not fire: no norm whose output only feeds MatMuls of the selected ``roles`` (default q, k,
v, gate, up and other, which covers q/k/v and gate/up packed by ``fuse-sibling-matmuls``; the
lm_head is left alone, since scaling it widens its range and its weight is also decoder_init's
embedding table); groups already smoothed (``qgraph.awq_smooth`` node metadata); search chose
``alpha=0`` (``skipped:search kept the weights``). o_proj and down_proj are not smoothed: their
inputs come from attention and the gated MLP, not from a norm.
Numerics: exact up to FP32 rounding before quantization (tolerance atol 1e-3, rtol 1e-3).
Scope: the components with a prefill, step or (sherpa) decoder role by default, smoothed with
one set of scales (``on=`` to choose).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qgraph.bundle import Bundle
from qgraph.errors import PipelineError
from qgraph.families import DECODER, PREFILL, STEP
from qgraph.pass_api import BundlePass, QPass, Tolerance, format_value, option
from qgraph.passes._blockquant import fake_quantize
from qgraph.passes._calibration import calibration_outputs
from qgraph.passes._lazy import in_memory, release
from qgraph.passes._roles import ROLES, graph_role, role_of, selected
from qgraph.weights import tensor_key

logger = logging.getLogger(__name__)

MARK = "qgraph.awq_smooth"
KEEP_ROWS = 512
GRID = tuple(i / 10 for i in range(11))
# norm op -> indices of the inputs that scale its output (weight, bias)
NORMS = {
    "SimplifiedLayerNormalization": (1,),
    "RMSNormalization": (1,),
    "LayerNormalization": (1, 2),
    "SkipSimplifiedLayerNormalization": (2,),
    "SkipLayerNormalization": (2, 3),
}


@dataclass
class _Group:
    node: ir.Node
    output: ir.Value
    scaled: list[ir.Value]
    """Norm weight (and bias): divided by s."""
    weights: list[ir.Value]
    """MatMul weights ``[K, N]``: rows multiplied by s."""


class _Stats:
    """Running mean |x| per channel and a reservoir of rows, for one group."""

    def __init__(self, channels: int, keep: int, seed: int) -> None:
        self.total = np.zeros(channels)
        self.count = 0
        self.rows = np.zeros((0, channels), np.float32)
        self.keep, self.rng = keep, np.random.default_rng(seed)

    def add(self, x: np.ndarray) -> None:
        x = x.reshape(-1, x.shape[-1]).astype(np.float32)
        self.total += np.abs(x).sum(axis=0, dtype=np.float64)
        seen = self.count + np.arange(len(x))
        self.count += len(x)
        if not self.keep:
            return
        fill = seen < self.keep
        self.rows = np.concatenate([self.rows, x[fill]])
        slots = self.rng.integers(0, seen[~fill] + 1) if (~fill).any() else seen[:0]
        hit = slots < self.keep
        self.rows[slots[hit]] = x[~fill][hit]

    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)


def _scales(mean: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(np.maximum(mean, 1e-8), alpha)
    s = s / np.sqrt(s.max() * s.min())
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


class AwqSmooth(BundlePass):
    """Norm -> MatMul groups: AWQ activation scales folded into norm and MatMul weights."""

    name = "awq-smooth"
    category = "quantization"
    must_follow = {
        "fusion": "statistics are taken on the FP32 graph that is quantized, and the marker "
        "that stops a second run sits on the norm node a later fusion would replace",
        "compression": "statistics are taken on the FP32 graph that is quantized, after low-rank "
        "compression",
    }
    tolerance = Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.99999)
    default_roles = (PREFILL, STEP, DECODER)
    roles: tuple[str, ...] = option(
        ("q", "k", "v", "gate", "up", "other"),
        "roles of the MatMuls a group may feed",
        choices=ROLES,
    )
    alpha: float = option(0.5, "scale exponent: s = mean(abs(x))^alpha (0: no change)")
    search: bool = option(False, "choose alpha per group by the quantized output error")
    bits: int = option(4, "bits the search simulates", choices=(4, 8))
    block_size: int = option(64, "block size the search simulates", choices=(16, 32, 64, 128, 256))
    symmetric: bool = option(False, "symmetric blocks in the search")
    audio: str = option("", "folder of calibration audio; empty: generated inputs")
    max_files: int = option(32, "calibration files used at most")
    max_tokens: int = option(32, "greedy decode steps per calibration file")
    samples: int = option(4, "generated input sets per component (without audio)")

    def check_followers(self, later: Sequence[QPass]) -> None:
        """Simulate the ``quantize-int4`` that follows: take its ``bits``/``block_size``/
        ``symmetric`` where this pass leaves them at their defaults; a value set here that
        differs from it is an error naming both."""
        quant = next((p for p in later if p.name == "quantize-int4"), None)
        if quant is None:
            return
        defaults = {f.name: f.default for f in self.options()}
        taken = {}
        for key in ("bits", "block_size", "symmetric"):
            mine, theirs = getattr(self, key), getattr(quant, key)
            if mine == theirs:
                continue
            if mine != defaults[key]:
                raise PipelineError(
                    f"awq-smooth simulates {key}={format_value(mine)} but the quantize-int4 "
                    f"after it uses {key}={format_value(theirs)}; give both the same {key}, or "
                    f"leave it out of awq-smooth, which then takes quantize-int4's"
                )
            taken[key] = theirs
        for key, value in taken.items():
            setattr(self, key, value)

    def call(self, bundle: Bundle) -> ir.passes.PassResult:
        groups = self._groups(bundle)
        if not groups:
            return ir.passes.PassResult(bundle, False)
        stats = self._calibrate(bundle, groups)
        scaled_cache: dict[tuple, ir.TensorProtocol] = {}
        modified = False
        for key, members in groups.items():
            s = self._choose(key, members, stats[key])
            if s is None:
                continue
            for comp, group in members.items():
                self._fold(group, s, scaled_cache)
                self.touch(comp)
            self.count("groups smoothed")
            modified = True
        return ir.passes.PassResult(bundle, modified)

    # -- groups -----------------------------------------------------------------------------------
    def _groups(self, bundle: Bundle) -> dict[str, dict[str, _Group]]:
        """Smoothable groups by norm-weight name, kept only where every component agrees."""
        found: dict[str, dict[str, _Group]] = {}
        refused: dict[str, str] = {}
        for comp in self.targets(bundle.roles()):
            model = bundle.components[comp]
            fallback = graph_role(model.graph)
            for node in model.graph:
                key, group = self._group(node, fallback)
                if isinstance(group, _Group):
                    found.setdefault(key, {})[comp] = group
                elif group:
                    refused.setdefault(key, group)
        for key, reason in refused.items():
            if key in found:
                del found[key]
                reason = "not smoothable in every component"
            self.count(f"skipped:{reason}")
        return found

    def _group(self, node: ir.Node, fallback: str) -> tuple[str, _Group | str | None]:
        """(norm-weight name, group or the reason it cannot be smoothed); None: not a norm
        feeding a MatMul."""
        if node.op_type in NORMS:
            scaled = [node.inputs[i] for i in NORMS[node.op_type] if i < len(node.inputs)]
        elif node.op_type == "Mul" and node.domain in ("", "ai.onnx"):
            scaled = [v for v in node.inputs if v is not None and v.const_value is not None]
            if len(scaled) != 1 or len(scaled[0].shape or ()) != 1:
                return "", None
        else:
            return "", None
        scaled = [v for v in scaled if v is not None]
        out = node.outputs[0]
        uses = list(out.uses())
        key = scaled[0].name if scaled else ""
        if not key or MARK in node.metadata_props or all(u.node.op_type != "MatMul" for u in uses):
            return "", None
        if out.is_graph_output() or any(u.idx != 0 or u.node.op_type != "MatMul" for u in uses):
            return key, "norm output feeds other ops"
        channels = scaled[0].const_value.size if scaled[0].const_value is not None else -1
        for v in scaled:
            t = v.const_value
            if t is None or not v.is_initializer() or len(v.uses()) != 1 or t.size != channels:
                return key, "norm weight is not a constant of its own"
        for u in uses:
            w = u.node.inputs[1]
            t = w.const_value
            if t is None or not w.is_initializer() or len(w.uses()) != 1 or len(t.shape) != 2:
                return key, "MatMul weight is not a constant of its own"
            if t.dtype != ir.DataType.FLOAT or int(t.shape[0]) != channels:
                return key, "MatMul weight is not FLOAT [channels, N]"
            role = role_of(u.node, w, fallback)
            if not selected(role, self.roles):
                return key, f"role {role} not selected"
        return key, _Group(node, out, scaled, [u.node.inputs[1] for u in uses])

    # -- statistics -------------------------------------------------------------------------------
    def _calibrate(self, bundle: Bundle, groups: dict[str, dict[str, _Group]]) -> dict:
        by_output: dict[str, dict[str, str]] = {}
        wanted: dict[str, list[ir.Value]] = {}
        for key, members in groups.items():
            for comp, g in members.items():
                wanted.setdefault(comp, []).append(g.output)
                by_output.setdefault(comp, {})[g.output.name] = key
        keep = KEEP_ROWS if self.search else 0
        stats = {
            key: _Stats(self._channels(m), keep, seed)
            for seed, (key, m) in enumerate(groups.items())
        }
        runs = calibration_outputs(
            bundle,
            wanted,
            audio=self.audio,
            max_files=self.max_files,
            max_tokens=self.max_tokens,
            samples=self.samples,
        )
        for comp, outputs in runs:
            for name, array in outputs.items():
                stats[by_output[comp][name]].add(array)
        return stats

    @staticmethod
    def _channels(members: dict[str, _Group]) -> int:
        return int(next(iter(members.values())).scaled[0].const_value.size)

    def _choose(self, key: str, members: dict[str, _Group], st: _Stats) -> np.ndarray | None:
        mean = st.mean()
        alpha = self._search(members, mean, st.rows) if self.search else self.alpha
        if alpha == 0:
            self.count("skipped:search kept the weights" if self.search else "skipped:alpha 0")
            return None
        logger.debug("%s: alpha %.2f", key, alpha)
        return _scales(mean, alpha)

    def _search(self, members: dict[str, _Group], mean: np.ndarray, x: np.ndarray) -> float:
        """The grid alpha with the least error of the group's quantized outputs on ``x``."""
        group = next(iter(members.values()))
        weights = [w.const_value.numpy().astype(np.float32) for w in group.weights]
        best, best_err = 0.0, np.inf
        for alpha in GRID:
            s = _scales(mean, alpha) if alpha else np.ones_like(mean, np.float32)
            err = 0.0
            for w in weights:
                q = fake_quantize(w * s[:, None], self.bits, self.block_size, self.symmetric)
                err += float(np.square(x @ (q / s[:, None]) - x @ w).sum())
            if err < best_err:
                best, best_err = alpha, err
        return best

    # -- folding ----------------------------------------------------------------------------------
    def _fold(self, group: _Group, s: np.ndarray, cache: dict) -> None:
        for v in group.scaled:
            v.const_value = _lazy(v.const_value, s, "divide", cache)
        for w in group.weights:
            w.const_value = _lazy(w.const_value, s, "rows", cache)
        group.node.metadata_props[MARK] = "1"


def _lazy(t: ir.TensorProtocol, s: np.ndarray, how: str, cache: dict) -> ir.TensorProtocol:
    """``t / s`` (norm weights) or ``s[:, None] * t`` (MatMul rows): lazily from a mapped or
    lazy source, at once from one already in memory (which is then let go); one per source."""
    key = (tensor_key(t), how)
    if key in cache:
        return cache[key][1]

    def compute() -> ir.Tensor:
        w = t.numpy()
        out = w / s.reshape(w.shape) if how == "divide" else w * s[:, None]
        del w
        release(t)
        return ir.tensor(out.astype(np.float32), name=t.name)

    if in_memory(t):
        scaled = compute()
    else:
        scaled = ir.LazyTensor(compute, dtype=t.dtype, shape=t.shape, name=t.name)
    cache[key] = (t, scaled)
    return scaled
