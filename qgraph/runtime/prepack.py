"""A cache of ONNX Runtime sessions' pre-packed weights on disk, mapped instead of packed.

ONNX Runtime re-packs every MatMul / MatMulNBits weight into a private heap buffer at each
load. With ``prepack_dir``, the runtime writes, on the first load of a component, its
optimized graph with the pre-packed weights in an external data file
(``session.save_external_prepacked_constant_initializers``) under ``prepack_dir/<key>/``, and
later loads open that graph instead: the pre-packed blobs are memory-mapped (clean file pages
the OS can drop and share between processes) rather than packed into private memory
(``benchmarks/prepacked.py``). The packed layout depends on the CPU (MLAS picks kernels by
instruction set) and on ONNX Runtime's version, so the cache is a per-machine folder, never
part of a bundle; the key hashes the graph, the sizes and times of its data files, ONNX
Runtime's version and the CPU's flags.

The first load costs what a plain load costs plus writing the files; if anything fails, the
plain session is used and the cache left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_key", "prepacked_session"]

logger = logging.getLogger(__name__)

GRAPH, DATA = "model.onnx", "model.data"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_key(graph: bytes, data_folder: Path) -> str:
    """Hash of the graph bytes, the data files beside it, ORT's version and the CPU."""
    import onnxruntime as ort

    h = hashlib.sha256(graph)
    for path in sorted(data_folder.iterdir()):
        if path.is_file() and not path.name.endswith(".onnx"):
            stat = path.stat()
            h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    h.update(f"{ort.__version__}|{platform.machine()}|{_cpu_flags()}".encode())
    return h.hexdigest()[:24]


def prepacked_session(
    graph: bytes, data_folder: Path, options: Any, providers: list[str], prepack_dir: Path
) -> Any:
    """An ``InferenceSession`` for ``graph`` (external data in ``data_folder``) through the
    cache in ``prepack_dir``: the cached pre-packed graph when present, else a plain session
    that writes it (atomically: a temporary folder renamed into place)."""
    import onnxruntime as ort

    folder = Path(prepack_dir) / cache_key(graph, data_folder)
    if (folder / GRAPH).is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        logger.info("loading pre-packed weights from %s", folder)
        return ort.InferenceSession(str(folder / GRAPH), options, providers)
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(data_folder)
    )
    tmp = None
    try:
        Path(prepack_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=prepack_dir))
        options.optimized_model_filepath = str(tmp / GRAPH)
        for key, value in (
            ("session.optimized_model_external_initializers_file_name", DATA),
            ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
            ("session.save_external_prepacked_constant_initializers", "1"),
        ):
            options.add_session_config_entry(key, value)
    except OSError as err:
        logger.warning("cannot write the pre-pack cache in %s (%s)", prepack_dir, err)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp = None
    session = ort.InferenceSession(graph, options, providers)
    if tmp is not None:
        try:
            os.replace(tmp, folder)
            logger.info("wrote pre-packed weights to %s", folder)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    return session
