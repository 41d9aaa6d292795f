"""What the runtime reads from a bundle folder, without loading any graph into Python.

- ``qgraph.json`` (optional): ``components[name]["file"]`` gives each component's ONNX file;
  without a manifest the file is ``<name>.onnx``.
- ``config.json``: model shapes, mel settings, special tokens, embed table dtype/shape.
- ``tokenizer.json``: a ``tokenizers`` tokenizer.
- ``embed_tokens.bin`` (compiled bundles whose ``decoder_step`` takes ``input_embeds``): raw
  row-major ``[vocab, hidden]`` table, dtype from ``config["embed_tokens_dtype"]`` (default
  float32), memory-mapped; rows are upcast to float32 on lookup.

Every problem is a ``BundleError`` naming the file and what to do.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from qgraph.errors import BundleError

__all__ = [
    "MANIFEST",
    "EmbedTable",
    "component_path",
    "load_tokenizer",
    "read_config",
    "read_manifest",
]

MANIFEST = "qgraph.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
EMBED_TABLE = "embed_tokens.bin"


def _bundle_dir(bundle_dir: str | os.PathLike[str]) -> Path:
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (expected a folder with {MANIFEST})")
    return root


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Parsed ``qgraph.json``, or None when the folder has none.

    Parsed once per file version (path, size and modification time) however many components
    and commands ask; callers must not modify the result.
    """
    path = _bundle_dir(bundle_dir) / MANIFEST
    try:
        stat = path.stat()
    except OSError:
        return None
    return _parse_manifest(str(path.absolute()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _parse_manifest(file: str, size: int, mtime_ns: int) -> dict[str, Any]:
    del size, mtime_ns  # the cache key: a rewritten manifest is parsed again
    path = Path(file)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("components", {}), dict):
        raise BundleError(f"{path}: manifest must be an object with a 'components' object")
    return manifest


def component_path(bundle_dir: str | os.PathLike[str], name: str) -> Path:
    """Path of component ``name``'s ONNX file (from the manifest, else ``<name>.onnx``)."""
    root = _bundle_dir(bundle_dir)
    manifest = read_manifest(root)
    rel = f"{name}.onnx"
    if manifest is not None and name in manifest.get("components", {}):
        entry = manifest["components"][name]
        rel = entry.get("file", rel) if isinstance(entry, dict) else rel
    norm = os.path.normpath(str(rel))
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
        raise BundleError(f"{root / MANIFEST}: component file {rel!r} leaves the bundle folder")
    path = root / norm
    if not path.is_file():
        raise BundleError(f"{root}: component {name!r} is missing (expected {path.name})")
    return path


def read_json(bundle_dir: str | os.PathLike[str], name: str, *, required: bool = True) -> dict:
    """Parsed JSON object ``name`` of the bundle; ``{}`` for a missing optional file."""
    root = _bundle_dir(bundle_dir)
    path = root / name
    if not path.is_file():
        if required:
            raise BundleError(f"{root}: {name} is missing; re-export the bundle")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return data


def read_config(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parsed ``config.json`` (required: it holds the special tokens and model shapes)."""
    return read_json(bundle_dir, CONFIG)


def load_tokenizer(bundle_dir: str | os.PathLike[str]) -> Any:
    """The bundle's ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer

    path = _bundle_dir(bundle_dir) / TOKENIZER
    if not path.is_file():
        raise BundleError(f"{path.parent}: {TOKENIZER} is missing; re-export the bundle")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises plain Exception subclasses from Rust
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BundleError(f"{path}: unreadable tokenizer ({first})") from None


class EmbedTable:
    """Memory-mapped token-embedding table; ``lookup(ids)`` returns float32 rows."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, int]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        expected = shape[0] * shape[1] * self.dtype.itemsize
        try:
            actual = path.stat().st_size
        except OSError:
            raise BundleError(
                f"{path.parent}: {path.name} is missing; re-export the bundle"
            ) from None
        if actual != expected:
            raise BundleError(
                f"{path}: {actual} bytes, expected {expected} for {self.dtype.name} {list(shape)} "
                f"(check embed_tokens_dtype/embed_tokens_shape in {CONFIG})"
            )
        self._rows = np.memmap(path, dtype=self.dtype, mode="r", shape=shape)

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike[str], config: dict[str, Any]) -> EmbedTable:
        """Open ``embed_tokens.bin`` with dtype and shape from ``config``."""
        root = _bundle_dir(bundle_dir)
        dtype_name = str(config.get("embed_tokens_dtype", "float32"))
        try:
            dtype = np.dtype(dtype_name)
        except TypeError:
            raise BundleError(
                f"{root / CONFIG}: unknown embed_tokens_dtype {dtype_name!r}"
            ) from None
        if dtype.kind != "f":
            raise BundleError(f"{root / CONFIG}: embed_tokens_dtype must be a float type")
        shape = config.get("embed_tokens_shape")
        if shape is None:
            decoder = config.get("decoder", {})
            try:
                shape = [int(decoder["vocab_size"]), int(decoder["hidden_size"])]
            except (KeyError, TypeError, ValueError):
                raise BundleError(
                    f"{root / CONFIG}: needs embed_tokens_shape or decoder.vocab_size/hidden_size"
                ) from None
        if len(shape) != 2:
            raise BundleError(f"{root / CONFIG}: embed_tokens_shape must be [vocab, hidden]")
        return cls(root / EMBED_TABLE, dtype, (int(shape[0]), int(shape[1])))

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows for integer ``ids`` of any shape: float32 ``[*ids.shape, hidden]``."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise ValueError(f"token id out of range for the embed table ({self.shape[0]} rows)")
        return np.asarray(self._rows[ids], dtype=np.float32)
