"""The memory-bandwidth floor of a decode step: bytes a step must read / the machine's read rate.

A decode step of a large decoder on a CPU is bound by reading its weights once per token (plus
the KV cache it attends over). ``read_bandwidth`` measures how fast this machine reads memory
with ``threads`` threads (the best of a numpy reduction split over threads, each releasing the
GIL, and ONNX Runtime's own ``ReduceSum`` with that many intra-op threads, over a buffer far
larger than the caches); ``step_bytes`` counts what a bundle's step reads: every initializer of
the step graph except tables only gathered from (an embedding lookup reads one row), and the
past cache at ``past_tokens`` positions. ``floor_ms`` is their quotient: no implementation of
that step on this machine can be faster.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

__all__ = ["StepBytes", "floor_ms", "read_bandwidth", "step_bytes"]

logger = logging.getLogger(__name__)

_GATHERS = ("Gather", "GatherBlockQuantized")


def _numpy_rate(data: np.ndarray, threads: int, repeat: int) -> float:
    chunks = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            start = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def _ort_rate(data: np.ndarray, threads: int, repeat: int) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        "read",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [data.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, {"x": data})
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def read_bandwidth(threads: int = 1, mib: int = 512, repeat: int = 5) -> dict[str, float]:
    """Read rate in bytes/s with ``threads`` threads: ``{"numpy": .., "onnxruntime": ..,
    "best": ..}`` (best of ``repeat`` passes over ``mib`` MiB each)."""
    data = np.ones(mib * 2**20 // 4, np.float32)  # written once, so every page is resident
    rates = {
        "numpy": _numpy_rate(data, threads, repeat),
        "onnxruntime": _ort_rate(data, threads, repeat),
    }
    rates["best"] = max(rates.values())
    logger.debug("read bandwidth with %d threads: %s", threads, rates)
    return rates


@dataclass
class StepBytes:
    weights: int
    """Bytes of the step graph's initializers that every step reads."""
    cache: int
    """Bytes of the past cache at the given number of past tokens."""

    @property
    def total(self) -> int:
        return self.weights + self.cache


def _nbytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if t.dims else 1
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _uses(graph: onnx.GraphProto, uses: dict[str, set[str]]) -> None:
    for node in graph.node:
        for name in node.input:
            uses.setdefault(name, set()).add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _uses(sub, uses)


def step_bytes(path: str | os.PathLike[str], past_tokens: int) -> StepBytes:
    """What one decode step of the graph at ``path`` reads (see the module docstring). For a
    merged decoder (both branches in one graph) the weights of both branches count, which are
    the same tensors once ``share-weights`` deduplicated them."""
    model = onnx.load(str(Path(path)), load_external_data=False)
    uses: dict[str, set[str]] = {}
    _uses(model.graph, uses)
    weights = sum(
        _nbytes(t)
        for t in model.graph.initializer
        if uses.get(t.name) and not uses[t.name] <= set(_GATHERS)
    )
    cache = 0
    for value in model.graph.input:
        name = value.name
        kind = value.type.tensor_type
        if not name.startswith(("past", "cache")) or len(kind.shape.dim) not in (4, 5):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
        if "encoder" not in name:  # self-attention: the length axis is the past
            dims[-2] = past_tokens
        size = int(np.prod([d if d is not None else 1 for d in dims]))
        cache += size * onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize
    return StepBytes(weights, cache)


def floor_ms(read: StepBytes, bandwidth: float) -> float:
    """Milliseconds to read ``read.total`` bytes at ``bandwidth`` bytes/s."""
    return 1000.0 * read.total / bandwidth
