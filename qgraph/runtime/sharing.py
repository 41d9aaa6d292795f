"""One copy of the decoder weights in memory for decoder_init and decoder_step.

ONNX Runtime memory-maps 64 KiB-aligned external data on CPU, but by default it then
*pre-packs* every MatMul weight into a private buffer per session, so two sessions over one
``decoder_weights.data`` still hold two copies (the seed's 5.5 GB at 0.6B). A session with
pre-packing off reads the weights straight from the mapped file (page-cache pages that any
other mapping of the file shares). The runtime turns it off for the prefill and keeps it for
the per-token step, where pre-packed weights are about 25 % faster: one private copy instead
of two. ``benchmarks/shared_memory.py`` measures resident memory and latency.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import onnx

logger = logging.getLogger(__name__)


def data_files(path: Path) -> set[str]:
    """Real paths of the external-data files one ``.onnx`` file reads (empty if unreadable).

    A graph with ``MatMulNBits`` counts as reading none: without pre-packing that kernel
    ignores ``accuracy_level`` and takes a slow path (int4 prefill 3.4x slower at 0.6B), and
    int4 weights are small enough that a second copy costs little.
    """
    from onnx.external_data_helper import _get_all_tensors

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: ONNX Runtime reports it when it loads the component
        return set()
    if any(node.op_type == "MatMulNBits" for node in proto.graph.node):
        return set()
    out = set()
    for t in _get_all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next(e.value for e in t.external_data if e.key == "location")
            out.add(os.path.realpath(path.parent / loc))
    return out


def sharing_components(paths: dict[str, Path]) -> set[str]:
    """Components that read an external-data file another component reads too."""
    files = {c: data_files(p) for c, p in paths.items()}
    users = Counter(f for fs in files.values() for f in fs)
    shared = {c for c, fs in files.items() if any(users[f] > 1 for f in fs)}
    if shared:
        logger.info("%s share a data file: weights stay memory-mapped", ", ".join(sorted(shared)))
    return shared
