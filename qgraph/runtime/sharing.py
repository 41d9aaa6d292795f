"""One copy of the decoder weights in memory for several ONNX Runtime sessions.

Two sessions over one external-data file do not share memory by themselves: each session
reads every initializer into its own buffer. Here every external initializer that lives in a
data file used by more than one component is memory-mapped once (read-only, from the page
cache) and handed to each session with ``SessionOptions.add_initializer``, so decoder_init and
decoder_step run on the same pages. ``benchmarks/shared_memory.py`` measures the effect.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

logger = logging.getLogger(__name__)


def _external(proto: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            yield t, info["location"], int(info.get("offset", 0)), int(info["length"])


def shared_initializers(paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``{component: {initializer name: OrtValue}}`` for tensors in data files used twice.

    Components whose data files are their own get an empty mapping (ORT loads them as usual).
    """
    import onnxruntime as ort

    protos = {}
    for c, p in paths.items():
        try:
            protos[c] = onnx.load(str(p), load_external_data=False)
        except Exception:  # unreadable: ONNX Runtime reports it when it loads the component
            logger.debug("cannot parse %s; not sharing its weights", p)
    users: Counter = Counter()
    for c, proto in protos.items():
        files = {os.path.realpath(paths[c].parent / loc) for _, loc, _, _ in _external(proto)}
        users.update(files)
    maps: dict[str, np.memmap] = {}
    values: dict[tuple, Any] = {}
    out: dict[str, dict[str, Any]] = {c: {} for c in paths}
    for c, proto in protos.items():
        for t, loc, offset, length in _external(proto):
            file = os.path.realpath(paths[c].parent / loc)
            if users[file] < 2:
                continue
            if file not in maps:
                maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
            key = (file, offset, length, t.data_type, tuple(t.dims))
            if key not in values:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
                array = maps[file][offset : offset + length].view(dtype).reshape(tuple(t.dims))
                values[key] = ort.OrtValue.ortvalue_from_numpy(array)
            out[c][t.name] = values[key]
    if values:
        logger.info("sharing %d initializers between %s", len(values), ", ".join(paths))
    return out
