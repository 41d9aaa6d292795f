"""Quantized weights that never sit in memory all at once.

``LazyParts`` produces a weight's quantized parts as ``ir.LazyTensor`` objects that compute on
first read (when the bundle is hashed or saved) with about one weight's results resident at a
time, and ``release`` unmaps each source's pages after the read, so a quantized decoder never
sits in memory; a source that already sits in memory is quantized at once instead
(``SourceCache``), so that it can be let go.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)


def add_initializer(graph: ir.Graph, tensor: ir.TensorProtocol) -> ir.Value:
    """The graph's initializer holding ``tensor`` (registered under a free name if new)."""
    existing = graph.initializers.get(tensor.name)
    if existing is not None and existing.const_value is tensor:
        return existing
    name = tensor.name or "quantized"
    while name in graph.initializers:
        name += "_"
    value = ir.Value(
        name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor
    )
    graph.register_initializer(value)
    return value


def release(t: ir.TensorProtocol) -> None:
    """Let a memory-mapped source's pages leave the resident set once it has been read: unmap an
    ``ExternalTensor`` (re-mapped on the next read), or ``madvise(DONTNEED)`` the file mapping
    under a view (a transposed weight); other tensors are left alone."""
    if isinstance(t, ir.ExternalTensor):
        try:
            t.release()
        except BufferError:
            logger.debug("%s is still in use; not unmapped", t.name)
        return
    base = t.raw if isinstance(t, ir.Tensor) else None
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def in_memory(t: ir.TensorProtocol) -> bool:
    """True if ``t``'s values sit in process memory that it owns (not a view of a memory-mapped
    file, not computed on demand): quantizing it now and dropping it saves memory."""
    raw = t.raw if isinstance(t, ir.Tensor) else None
    return isinstance(raw, np.ndarray) and raw.base is None


class LazyParts:
    """Several arrays computed together, as tensors: lazily, or at once for in-memory sources.

    ``tensor(part, ...)`` returns a tensor for one result of ``compute`` (a dict of arrays).
    Lazy (default): an ``ir.LazyTensor``; reading any part computes them all, and the arrays are
    dropped once every requested part has been read; when another ``LazyParts`` computes, this
    one keeps only its small unread arrays (under 1 MiB), so about one weight's results are
    resident whatever order the parts are read in (a later read computes them again).
    ``eager=True`` computes now and keeps the results, for a source that already sits in memory
    (its result is smaller than the source it lets go).
    """

    _resident: LazyParts | None = None

    def __init__(self, compute: Callable[[], dict[str, np.ndarray]], eager: bool = False) -> None:
        self._compute = compute
        self._wanted: set[str] = set()
        self._unread: set[str] = set()
        self._kept = compute() if eager else None
        if eager:
            self._compute = None  # lets the source go
        self._arrays: dict[str, np.ndarray] | None = None

    def tensor(self, part: str, dtype: ir.DataType, shape: tuple[int, ...], name: str):
        if self._kept is not None:
            return ir.tensor(self._kept[part], name=name)
        self._wanted.add(part)
        return ir.LazyTensor(
            lambda: self._read(part, name), dtype=dtype, shape=ir.Shape(shape), name=name
        )

    def _read(self, part: str, name: str) -> ir.Tensor:
        if self._arrays is None or part not in self._arrays:
            other = LazyParts._resident
            if other is not None and other is not self:
                other._evict()
            self._arrays = self._compute()
            self._unread = set(self._wanted)
            LazyParts._resident = self
        array = self._arrays[part]
        self._unread.discard(part)
        if not self._unread:
            self._arrays = None
            LazyParts._resident = None
        return ir.tensor(array, name=name)

    def _evict(self) -> None:
        """Drop the large arrays; small unread ones (inline scales) wait for their reader."""
        kept = {
            k: a
            for k, a in (self._arrays or {}).items()
            if k in self._unread and a.nbytes < 1 << 20
        }
        self._arrays = kept or None


class SourceCache:
    """Quantized results per source tensor, shared by the components one pass instance sees.

    Memory-mapped and lazy sources are keyed by ``weights.tensor_key`` (the entry holds the
    source, so the key stays unique) and their results are lazy. A source that sits in memory
    (``in_memory``) is quantized at once and forgotten at ``end_component``, so its FP32 array
    is freed as soon as the graph drops it.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[ir.TensorProtocol, bool, object]] = {}

    def get(self, t: ir.TensorProtocol, make: Callable[[bool], object]):
        from qgraph.weights import tensor_key

        key = tensor_key(t)
        if key not in self._entries:
            eager = in_memory(t)
            self._entries[key] = (t, eager, make(eager))
        return self._entries[key][2]

    def end_component(self) -> None:
        self._entries = {k: e for k, e in self._entries.items() if not e[1]}
