"""Writing and reading weights: external data files, aligned for memory mapping, streamed.

``save_models`` writes several models into one external-data file. Each distinct tensor is
written once: tensors are keyed by their source (the same ``ExternalTensor`` region, or the same
in-memory object), so components that share a weight share its bytes on disk. Tensors are
streamed one at a time from their memory-mapped source; no model is ever materialised whole.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

logger = logging.getLogger(__name__)

INLINE_LIMIT = 1024
"""Tensors smaller than this many bytes stay inside the .onnx file."""
ALIGNMENT = 64 * 1024
"""Large tensors start on a 64 KiB boundary so that ONNX Runtime can memory-map them."""
SMALL_ALIGNMENT = 64


def external_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a ModelProto whose data lives in an external file."""
    from onnx.external_data_helper import _get_all_tensors

    for t in _get_all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


def external_locations(model: ir.Model, root: Path) -> set[str]:
    """Relative paths (to ``root``) of the external-data files a model reads."""
    out = set()
    for graph in model.graphs():
        for v in graph.initializers.values():
            t = v.const_value
            if isinstance(t, ir.ExternalTensor):
                full = Path(os.path.normpath(Path(t.base_dir, t.location).absolute()))
                try:
                    out.add(full.relative_to(root.absolute()).as_posix())
                except ValueError:
                    continue
    return out


def tensor_key(t: ir.TensorProtocol) -> tuple:
    """Identity of a tensor's bytes: its file region if external, else the object itself."""
    if isinstance(t, ir.ExternalTensor):
        return ("ext", os.path.realpath(t.path), t.offset or 0, t.length, t.dtype, tuple(t.shape))
    return ("obj", id(t))


def write_tensor(f, t: ir.TensorProtocol) -> int:
    """Stream ``t``'s bytes to ``f``; returns the number of bytes written."""
    if t.dtype.bitwidth < 8 or t.dtype == ir.DataType.STRING:
        data = t.tobytes()
        f.write(data)
        return len(data)
    arr = t.numpy()
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    buf = arr.reshape(-1).view(np.uint8)
    step = 64 * 1024 * 1024
    for start in range(0, buf.size, step):
        f.write(memoryview(buf[start : start + step]))
    return int(buf.size)


def aligned(pos: int, nbytes: int) -> int:
    """Offset at which a tensor of ``nbytes`` starts when the file is at ``pos``."""
    return pos + (-pos) % (ALIGNMENT if nbytes >= ALIGNMENT else SMALL_ALIGNMENT)


def shard_name(base: str, index: int) -> str:
    """Transformers.js names: ``X.onnx_data``, ``X.onnx_data_1``, ``X.onnx_data_2``, ..."""
    return base if index == 0 else f"{base}_{index}"


def external_tensor_sizes(model: ir.Model) -> list[int]:
    """Sizes of the distinct tensors ``save_models`` writes for ``model``, in write order."""
    seen, sizes = set(), []
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if t is not None and t.nbytes >= INLINE_LIMIT and tensor_key(t) not in seen:
                seen.add(tensor_key(t))
                sizes.append(t.nbytes)
    return sizes


def shard_count(sizes: list[int], limit: int) -> int:
    """How many shards of at most ``limit`` bytes ``save_models`` writes for these tensors."""
    count, pos = (1 if sizes else 0), 0
    for n in sizes:
        if pos and aligned(pos, n) + n > limit:
            count, pos = count + 1, 0
        pos = aligned(pos, n) + n
    return count


class _DataFile:
    """An external-data file being written: position, alignment padding, sha256."""

    def __init__(self, path: Path, rel: str) -> None:
        self.path, self.rel = path, rel
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.pos, self.sha = 0, hashlib.sha256()

    def write(self, data) -> None:
        try:
            self.f.write(data)
        except OSError as err:  # name the file: a full disk reports no file name
            err.filename = err.filename or str(self.path)
            raise
        self.sha.update(data)
        self.pos += len(data)

    def append(self, t: ir.TensorProtocol) -> tuple[int, int]:
        """Write ``t`` at the next aligned offset; returns (offset, length)."""
        offset = aligned(self.pos, t.nbytes)
        if offset > self.pos:
            self.write(b"\0" * (offset - self.pos))
        return offset, write_tensor(self, t)

    def close(self) -> dict[str, Any] | None:
        self.f.close()
        if self.pos == 0:
            self.path.unlink()
            return None
        return {"sha256": self.sha.hexdigest(), "bytes": self.pos}


def save_models(
    models: dict[str, ir.Model], root: Path, data_name: str, shard_bytes: int | None = None
) -> dict[str, dict[str, Any]]:
    """Save ``{relative .onnx path: model}`` under ``root``, sharing ``root/data_name``.

    The first model's tensors go to ``data_name``; a later model reuses every tensor already
    written (same source region or same object) and writes the ones only it has to its own
    ``<path>.data``. With ``shard_bytes``, a file that would grow past it continues in
    ``<name>_1``, ``<name>_2``, ... (a single larger tensor gets a shard of its own).
    Returns ``{relative path: {"sha256", "bytes"}}`` for every file written.
    The models are left unchanged (initializers are swapped for external references only while
    serialising).
    """
    written: dict[tuple, tuple[str, int, int]] = {}
    hashes: dict[str, dict[str, Any]] = {}
    files: dict[str, _DataFile] = {}
    shard_index: dict[str, int] = {}

    def target(base: str, nbytes: int) -> _DataFile:
        index = shard_index.setdefault(base, 0)
        current = files.get(shard_name(base, index))
        full = current is not None and aligned(current.pos, nbytes) + nbytes > (shard_bytes or 0)
        if shard_bytes and current is not None and current.pos and full:
            index = shard_index[base] = index + 1
        name = shard_name(base, index)
        if name not in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            files[name] = _DataFile(root / name, name)
        return files[name]

    try:
        for i, (rel, model) in enumerate(models.items()):
            data_rel = data_name if i == 0 else f"{rel}.data"
            onnx_path = root / rel
            onnx_path.parent.mkdir(parents=True, exist_ok=True)
            swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
            attrs = _inline_external_attributes(model)
            try:
                for graph in model.graphs():
                    for value in graph.initializers.values():
                        t = value.const_value
                        if t is None:
                            continue
                        if t.nbytes < INLINE_LIMIT:
                            if isinstance(t, ir.ExternalTensor):  # inline: never the input's file
                                swapped.append((value, t))
                                value.const_value = _in_memory(t, t.name or value.name)
                            continue
                        key = tensor_key(t)
                        if key not in written:
                            df = target(data_rel, t.nbytes)
                            written[key] = (df.rel, *df.append(t))
                        where, offset, length = written[key]
                        swapped.append((value, t))
                        value.const_value = ir.ExternalTensor(
                            os.path.relpath(root / where, onnx_path.parent),
                            offset,
                            length,
                            t.dtype,
                            shape=t.shape,
                            name=t.name or value.name,
                            base_dir=onnx_path.parent,
                        )
                proto = ir.serde.serialize_model(model)
            finally:
                for value, t in swapped:
                    value.const_value = t
                for attributes, name, attr in attrs:
                    attributes[name] = attr
            data = proto.SerializeToString()
            onnx_path.write_bytes(data)
            hashes[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            del proto
    finally:
        for data_rel, df in files.items():
            info = df.close()
            if info is not None and data_rel:
                hashes[data_rel] = info
    return hashes


def _in_memory(t: ir.TensorProtocol, name: str | None) -> ir.TensorProtocol:
    """A copy of ``t`` held in memory, so that it is serialised inline."""
    if t.dtype == ir.DataType.STRING:
        return ir.StringTensor(t.numpy(), shape=t.shape, name=name)
    return ir.Tensor(t.numpy(), dtype=t.dtype, shape=t.shape, name=name)


def _inline_external_attributes(model: ir.Model) -> list[tuple[Any, str, ir.Attr]]:
    """Replace every tensor attribute read from external data (a ``Constant``'s ``value``, say)
    with an in-memory copy; returns ``(attributes, name, original)`` to restore afterwards.

    Attribute tensors are constants, small as a rule; they are written inline in the .onnx.
    """
    functions = (f.all_nodes() for f in model.functions.values())
    replaced = []
    for node in itertools.chain(model.graph.all_nodes(), *functions):
        for name, attr in list(node.attributes.items()):
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                new = ir.AttrTensor(name, _in_memory(attr.value, attr.value.name))
            elif attr.type == ir.AttributeType.TENSORS and any(
                isinstance(t, ir.ExternalTensor) for t in attr.value
            ):
                tensors = [
                    _in_memory(t, t.name) if isinstance(t, ir.ExternalTensor) else t
                    for t in attr.value
                ]
                new = ir.AttrTensors(name, tensors)
            else:
                continue
            replaced.append((node.attributes, name, attr))
            node.attributes[name] = new
    return replaced


def file_digest(path: Path) -> dict[str, Any]:
    """sha256 and size of a file, read in chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 1024 * 1024), b""):
            sha.update(chunk)
    return {"sha256": sha.hexdigest(), "bytes": path.stat().st_size}
