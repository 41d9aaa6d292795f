"""MatMul(+Add) -> MatMul -> MatMul (+Add): LiteASR low-rank factorisation of encoder linears
from the principal components of their outputs on calibration speech.

Rewrite, for ``y = x W + b`` with a constant ``W [K, N]`` (or ``Transpose(W^T)``, as exported)
and an optional constant bias Add::

    y = Add(MatMul(x, W), b)
  ->
    y = Add(MatMul(MatMul(x, A), B), b')      A = W V_r [K, r],  B = V_r^T [r, N],
                                              b' = (b - mu) V_r V_r^T + mu

where ``mu`` and ``V_r`` are the mean and the top-``r`` principal directions of ``y`` over the
calibration activations (``Cov(y) = W^T Cov(x) W``, from running sums of ``x`` and ``x x^T``), so
``y`` is replaced by its projection on the ``r``-dimensional affine subspace that holds most of
its variance (the bias is corrected so the mean is kept exactly). The rank ``r`` is the smallest
multiple of 16 whose principal components explain at least ``attention_threshold`` (q/k/v/out
projections) or ``mlp_threshold`` (fc1/fc2, gate/up/down) of the variance, the defaults being
LiteASR's published ``--rank_threshold 0.99:0.999``. A MatMul without a bias Add gets one.

Calibration: the component must take one float input ``[1, n_mels, T]`` (a log-mel); it is fed
the Whisper/Qwen log-mel (``qgraph.runtime.mel``) of the audio files under ``audio``
(default: the built-in example speech), padded or cut to ``T`` frames when ``T`` is static.
Calibration audio must not be the audio a WER is reported on.

Does not fire (``skipped:<reason>``): the weight is not a 2-D FLOAT constant; the layer is
neither attention nor MLP (by module scope or weight name); the rank would not save parameters
(``r (K + N) >= K N``: the dense weight is kept); ``exclude`` matches (``fnmatch`` on the
module scope or the weight name, e.g. ``*.fc2``); the MatMul is a factor this pass made
(``qgraph.low_rank`` node metadata); the component has no log-mel input.
Lossy: the declared budget is a cosine >= 0.95 on every output; generated inputs lie far from
the calibrated subspace, so ``--verify-each`` may flag what speech keeps (what each threshold
costs in WER on Whisper tiny.en: the README's Whisper table).
Order: it must run before fusions and quantization (they hide or replace the MatMuls).
Scope: the ``encoder`` components by default (``encoder``, ``encoder_model``; ``on=`` to choose).
"""

from __future__ import annotations

import ast
import fnmatch
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from qgraph.families import ENCODER
from qgraph.pass_api import GraphPass, Tolerance, option

logger = logging.getLogger(__name__)

MARK = "qgraph.low_rank"
_ATTENTION = re.compile(r"(?<![a-z0-9])(q_proj|k_proj|v_proj|o_proj|out_proj)(?![a-z0-9])")
_MLP = re.compile(r"(?<![a-z0-9])(fc1|fc2|gate_proj|up_proj|down_proj)(?![a-z0-9])")
STEP = 16


@dataclass
class _Site:
    """One candidate linear layer."""

    node: ir.Node
    weight: np.ndarray  # [K, N]
    bias_add: ir.Node | None
    bias: np.ndarray  # [N] (zeros without an Add)
    threshold: float
    name: str


def _scope(node: ir.Node) -> str:
    raw = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    try:
        scopes = [s for s in ast.literal_eval(raw) if isinstance(s, str) and s] if raw else []
    except (ValueError, SyntaxError):
        scopes = []
    return scopes[-2] if len(scopes) >= 2 else ""


def _const(value: ir.Value | None) -> tuple[np.ndarray | None, str]:
    """The constant behind ``value`` (an initializer or Transpose of one) and its name."""
    if value is None:
        return None, ""
    t = ir.convenience.get_const_tensor(value)
    if t is not None:
        return t.numpy(), value.name or ""
    node = value.producer()
    if node is not None and node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
        perm = node.attributes.get_ints("perm", None)
        inner = ir.convenience.get_const_tensor(node.inputs[0])
        if inner is not None and len(inner.shape) == 2 and perm in (None, [1, 0], (1, 0)):
            return inner.numpy().T, node.inputs[0].name or ""
    return None, ""


def _mel_input(model: ir.Model) -> tuple[str, int, int | None] | None:
    """``(name, n_mels, frames or None)`` of the component's single log-mel input."""
    inputs = list(model.graph.inputs)
    if len(inputs) != 1 or inputs[0].dtype != ir.DataType.FLOAT or inputs[0].shape is None:
        return None
    shape = list(inputs[0].shape)
    if len(shape) != 3 or not isinstance(shape[1], int):
        return None
    return inputs[0].name, shape[1], shape[2] if isinstance(shape[2], int) else None


def calibration_mels(folder: str, n_mels: int, frames: int | None, limit: int) -> list[np.ndarray]:
    """Log-mels ``[1, n_mels, T]`` of the calibration audio (``frames`` fixes ``T``)."""
    from qgraph.runtime.audio import find_audio, load_audio
    from qgraph.runtime.mel import log_mel

    if folder:
        files = find_audio(folder, "calibration audio")
    else:
        from qgraph.examples import example_audio, example_long_audio

        files = [example_audio(), example_long_audio()]
    mels = []
    for path in files[:limit]:
        x = load_audio(path)
        if frames is not None:
            x = np.pad(x[: frames * 160], (0, max(0, frames * 160 - x.size)))
        mel = log_mel(x, n_mels, min_samples=frames * 160 if frames else 8000)
        mels.append(mel[None, :, : frames or mel.shape[1]])
    return mels


class _Stats:
    """Running sums of the rows of one activation: count, sum x, sum x x^T (float64)."""

    def __init__(self, k: int) -> None:
        self.n, self.s1, self.s2 = 0, np.zeros(k), np.zeros((k, k))

    def add(self, x: np.ndarray) -> None:
        rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
        self.n += rows.shape[0]
        self.s1 += rows.sum(0)
        self.s2 += rows.T @ rows

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s1 / self.n
        return mean, self.s2 / self.n - np.outer(mean, mean)


def _collect(model: ir.Model, values: dict[str, tuple[ir.Value, int]], feeds: list[dict]) -> dict:
    """Statistics of ``values`` (name -> (value, width)) over ONNX Runtime runs on ``feeds``."""
    from qgraph.instruments.verify import model_session

    stats = {name: _Stats(width) for name, (_, width) in values.items()}
    extra = [v for v, _ in values.values() if not v.is_graph_output() and not v.is_graph_input()]
    types = [(v, v.type) for v in extra]
    for v in extra:
        v.type = v.type or ir.TensorType(ir.DataType.FLOAT)
    model.graph.outputs.extend(extra)
    try:
        with tempfile.TemporaryDirectory(prefix="qgraph-low-rank-") as tmp:
            sess = model_session(model, Path(tmp) / "model.onnx")
            names = [v.name for v in extra]
            for feed in feeds:
                out = dict(zip(names, sess.run(names, feed), strict=True)) | feed
                for name, s in stats.items():
                    s.add(out[name])
    finally:
        for _ in extra:
            model.graph.outputs.pop()
        for v, t in types:
            v.type = t
    return stats


def _principal(w: np.ndarray, x_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and eigenvectors ``[N, m]`` of ``Cov(y) = W^T Cov(x) W``.

    With ``K < N`` (fc1) the ``N x N`` matrix has rank ``<= K``: it is ``M M^T`` with
    ``M = W^T U sqrt(S)`` (``Cov(x) = U S U^T``), so an SVD of ``M`` gives the same pairs at
    ``O(N K^2)`` instead of ``O(N^3)``.
    """
    k, n = w.shape
    if n <= k:
        values, vectors = np.linalg.eigh(w.T @ x_cov @ w)
        return np.clip(values[::-1], 0, None), vectors[:, ::-1]
    s, u = np.linalg.eigh(x_cov)
    left, sigma, _ = np.linalg.svd(w.T @ (u * np.sqrt(np.clip(s, 0, None))), full_matrices=False)
    return sigma**2, left


def low_rank_factors(
    weight: np.ndarray, bias: np.ndarray, x_mean: np.ndarray, x_cov: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(A [K, r], B [r, N], b' [N])`` for ``x W + b``, or None when dense is smaller."""
    k, n = weight.shape
    w = weight.astype(np.float64)
    mu = x_mean @ w + bias
    values, vectors = _principal(w, x_cov)
    total = values.sum()
    explained = np.cumsum(values) / total if total > 0 else np.ones(n)
    needed = int(np.searchsorted(explained, threshold - 1e-12)) + 1
    rank = min(n, -(-needed // STEP) * STEP)
    if rank * (k + n) >= k * n:
        return None
    v = vectors[:, :rank]
    new_bias = (bias - mu) @ v @ v.T + mu
    return (w @ v).astype(np.float32), v.T.astype(np.float32), new_bias.astype(np.float32)


def _drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove a weight (and the Transpose that fed it) nobody reads any more."""
    if value is None or value.uses() or value.is_graph_output():
        return
    producer = value.producer()
    if producer is not None and producer.op_type in ("Transpose", "Constant"):
        inner = producer.inputs[0] if producer.inputs else None
        graph.remove(producer, safe=True)
        _drop_if_unused(graph, inner)
    elif value.is_initializer() and not value.is_graph_input():
        graph.initializers.pop(value.name)


class LowRank(GraphPass):
    """Encoder MatMul(+Add) -> two thin MatMuls (+Add): LiteASR PCA of calibration activations."""

    name = "low-rank"
    category = "compression"
    tolerance = Tolerance(atol=None, rtol=None, min_cosine=0.95)
    default_roles = (ENCODER,)
    attention_threshold: float = option(0.99, "explained variance kept in q/k/v/out projections")
    mlp_threshold: float = option(0.999, "explained variance kept in fc1/fc2 (MLP) layers")
    exclude: tuple[str, ...] = option((), "fnmatch patterns on module scope / weight name to skip")
    audio: str = option("", "folder of calibration audio (default: the built-in speech)")
    max_files: int = option(16, "calibration files used at most")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        mel = _mel_input(model)
        sites = self._sites(model)
        if not sites:
            return ir.passes.PassResult(model, False)
        if mel is None:
            self.count("skipped:no log-mel input", len(sites))
            return ir.passes.PassResult(model, False)
        mels = calibration_mels(self.audio, mel[1], mel[2], self.max_files)
        inputs = {s.node.inputs[0].name: (s.node.inputs[0], s.weight.shape[0]) for s in sites}
        stats = _collect(model, inputs, [{mel[0]: m} for m in mels])
        modified = False
        for site in sites:
            mean, cov = stats[site.node.inputs[0].name].moments()
            factors = low_rank_factors(site.weight, site.bias, mean, cov, site.threshold)
            if factors is None:
                self.count("skipped:rank would not save parameters")
                continue
            self._rewrite(model.graph, site, *factors)
            modified = True
        return ir.passes.PassResult(model, modified)

    def _sites(self, model: ir.Model) -> list[_Site]:
        sites = []
        for node in list(model.graph):
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
                continue
            if MARK in node.metadata_props:
                self.count("skipped:already low-rank", where=node)
                continue
            weight, wname = _const(node.inputs[1])
            if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
                self.count("skipped:weight is not a 2-D float constant", where=node)
                continue
            name = _scope(node) or wname or node.name or "matmul"
            if any(fnmatch.fnmatchcase(n, p) for p in self.exclude for n in (name, wname) if n):
                self.count("skipped:excluded", where=node)
                continue
            which = (name + " " + wname).lower()
            if _ATTENTION.search(which):
                threshold = self.attention_threshold
            elif _MLP.search(which):
                threshold = self.mlp_threshold
            else:
                self.count("skipped:neither attention nor MLP", where=node)
                continue
            add, bias = self._bias(node, weight.shape[1])
            sites.append(_Site(node, weight, add, bias, threshold, name))
        return sites

    @staticmethod
    def _bias(node: ir.Node, n: int) -> tuple[ir.Node | None, np.ndarray]:
        out = node.outputs[0]
        users = list(out.uses())
        if len(users) == 1 and not out.is_graph_output():
            add = users[0].node
            if add.op_type == "Add" and add.domain in ("", "ai.onnx"):
                other = add.inputs[1 - users[0].idx]
                t = ir.convenience.get_const_tensor(other) if other is not None else None
                if t is not None and t.shape == (n,) and t.dtype == ir.DataType.FLOAT:
                    return add, t.numpy().astype(np.float64)
        return None, np.zeros(n)

    def _rewrite(self, graph: ir.Graph, site: _Site, a: np.ndarray, b: np.ndarray, bias) -> None:
        node = site.node
        consts = {}
        for suffix, array in (("A", a), ("B", b), ("bias", bias)):
            name = f"{site.name}.low_rank.{suffix}"
            while name in graph.initializers:
                name += "_"
            consts[suffix] = ir.Value(
                name=name,
                type=ir.TensorType(ir.DataType.FLOAT),
                shape=ir.Shape(array.shape),
                const_value=ir.tensor(array, name=name),
            )
            graph.register_initializer(consts[suffix])
        meta = dict(node.metadata_props)
        first = ir.node("MatMul", [node.inputs[0], consts["A"]], name=f"{node.name}/low_rank_a")
        second = ir.node("MatMul", [first.outputs[0], consts["B"]], name=f"{node.name}/low_rank_b")
        new = [first, second]
        result = second.outputs[0]
        if site.bias_add is None:
            add = ir.node("Add", [result, consts["bias"]], name=f"{node.name}/low_rank_bias")
            new.append(add)
            result = add.outputs[0]
        for n, part in zip(new, ("a", "b", "bias"), strict=False):
            n.metadata_props.update(meta)
            n.metadata_props[MARK] = part
        graph.insert_after(node, new)
        old = node.outputs[0]
        result.shape, result.type = old.shape, old.type
        ir.convenience.replace_all_uses_with(old, result)
        if old.is_graph_output():
            index = list(graph.outputs).index(old)
            graph.outputs[index] = result
            result.name, old.name = old.name, f"{old.name}_dense"
        dense = node.inputs[1]
        graph.remove(node, safe=True)
        _drop_if_unused(graph, dense)
        if site.bias_add is not None:
            index = 1 if site.bias_add.inputs[0] is result else 0
            old_bias = site.bias_add.inputs[index]
            site.bias_add.replace_input_with(index, consts["bias"])
            _drop_if_unused(graph, old_bias)
        k, n = site.weight.shape
        self.count("factorized")
        self.count("parameters saved", k * n - a.size - b.size)
        logger.debug("%s: rank %d of %d", site.name, a.shape[1], min(k, n))
