"""Bundles: a folder of ONNX components, side files and a ``qgraph.json`` manifest.

A bundle is what every qgraph command reads and writes::

    out/
      qgraph.json            manifest (format version, family, components, history, hashes, tools)
      encoder.onnx           one file per component (graph only)
      encoder.onnx.data      its weights (external data, aligned for memory mapping)
      config.json ...        side files (tokenizer, configs, embed_tokens.bin)

A single ``.onnx`` file, or a folder of ``.onnx`` files without a manifest, loads as a bundle
too. Components are ``onnx_ir.Model`` objects whose external weights stay memory-mapped until a
pass touches them. ``Bundle.save`` writes into a temporary folder beside the output and renames
it into place at the end; the input is never modified and a failure leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from qgraph import checks, crashguard, weights
from qgraph.errors import BundleError, SelfCheckError
from qgraph.families import family_of, get_family

logger = logging.getLogger(__name__)

MANIFEST = "qgraph.json"
FORMAT_VERSION = 1

SideFile = bytes | Path | np.ndarray
"""New content (bytes or an array written raw, row-major) or an existing file to copy."""


@dataclass
class Bundle:
    """A set of related ONNX components plus side files.

    ``data_files`` maps a component to the external-data file its weights go to on save; by
    default ``<file>.data``. Components mapped to the same file share it, and a tensor object
    used by several of them is written once (see ``qgraph.weights``). ``shard_bytes`` splits a
    component's data file into numbered shards of at most that size.
    """

    family: str = "generic"
    components: dict[str, ir.Model] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    data_files: dict[str, str] = field(default_factory=dict)
    shard_bytes: dict[str, int] = field(default_factory=dict)
    side_files: dict[str, SideFile] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    source: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    # -- building -------------------------------------------------------------------------------
    def add_component(self, name: str, model: ir.Model, file: str | None = None) -> None:
        """Add (or replace) a component; ``file`` defaults to ``<name>.onnx``."""
        self.components[name] = model
        self.files[name] = file or f"{name}.onnx"

    def component_names(self) -> list[str]:
        return list(self.components)

    def roles(self) -> dict[str, str]:
        """Each component's role (``qgraph.families``), in component order."""
        family = get_family(self.family)
        return {name: family.role(name, model) for name, model in self.components.items()}

    def read_json(self, name: str) -> dict[str, Any]:
        """Parse a JSON side file (``{}`` if the bundle has none by that name)."""
        content = self.side_files.get(name)
        if content is None:
            return {}
        raw = content.read_bytes() if isinstance(content, Path) else bytes(content)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as err:
            raise BundleError(f"{name} is not valid JSON: {err}") from None

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        self.side_files[name] = (json.dumps(data, indent=2) + "\n").encode()

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Bundle:
        """Load a bundle folder, a folder of ``.onnx`` files or one ``.onnx`` file."""
        path = Path(path)
        if not path.exists():
            raise BundleError(f"{path}: no such file or folder")
        if path.is_file():
            if path.suffix != ".onnx":
                raise BundleError(f"{path}: not an .onnx file or a bundle folder")
            bundle = cls(source=path)
            bundle.add_component(path.stem, _load_model(path, path.parent), path.name)
            return bundle
        manifest_path = path / MANIFEST
        if manifest_path.exists():
            return cls._load_manifest(path, manifest_path)
        return cls._load_folder(path)

    @classmethod
    def _load_manifest(cls, root: Path, manifest_path: Path) -> Bundle:
        try:
            manifest = json.loads(manifest_path.read_text())
            comps = manifest["components"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BundleError(f"{manifest_path}: unreadable manifest ({err})") from None
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise BundleError(
                f"{manifest_path}: format version {manifest['format_version']} is newer than this "
                f"qgraph understands ({FORMAT_VERSION}); upgrade qgraph"
            )
        bundle = cls(
            family=manifest.get("family") or family_of(root).name,
            history=list(manifest.get("pipeline", [])),
            source=root,
            manifest=manifest,
        )
        for name, entry in comps.items():
            rel = _safe_relpath(root, entry["file"], "component file")
            bundle.add_component(name, _load_model(root / rel, root), rel)
            if entry.get("data_file"):
                bundle.data_files[name] = entry["data_file"]
            if entry.get("shard_bytes"):
                bundle.shard_bytes[name] = int(entry["shard_bytes"])
        for rel in manifest.get("side_files", []):
            rel = _safe_relpath(root, rel, "side file")
            if not (root / rel).is_file():
                raise BundleError(f"{root}: side file {rel} listed in {MANIFEST} is missing")
            bundle.side_files[rel] = root / rel
        return bundle

    @classmethod
    def _load_folder(cls, root: Path) -> Bundle:
        onnx_files = sorted(p for p in root.rglob("*.onnx") if not _hidden(p, root))
        if not onnx_files:
            raise BundleError(f"{root}: no .onnx model in this folder")
        bundle = cls(family=family_of(root).name, source=root)
        data_refs: set[str] = set()
        for p in onnx_files:
            rel = p.relative_to(root).as_posix()
            name = p.stem if sum(q.stem == p.stem for q in onnx_files) == 1 else rel[:-5]
            model = _load_model(p, root)
            bundle.add_component(name, model, rel)
            data_refs |= set(weights.external_locations(model, root))
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if (
                p.is_file()
                and p.suffix != ".onnx"
                and rel not in data_refs
                and not _hidden(p, root)
            ):
                bundle.side_files[rel] = p
        return bundle

    # -- saving ---------------------------------------------------------------------------------
    def save(
        self,
        out: str | os.PathLike,
        *,
        overwrite: bool = False,
        before_commit: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the bundle to ``out`` atomically and return its path.

        ``before_commit(folder)`` runs on the complete, self-checked bundle in its temporary
        folder just before it is renamed into place (e.g. the accuracy check); if it raises,
        nothing is written.

        Raises BundleError if ``out`` exists (unless ``overwrite``), is the source bundle or
        inside it, or cannot be written; nothing is left behind on failure (Ctrl-C included, and
        ``kill -9`` through ``qgraph.crashguard``). Before the temporary folder is renamed into
        place, every written component is loaded back (external data resolved inside it only);
        a failure there is a SelfCheckError and nothing is written.
        """
        out = check_output(out, self.source, overwrite=overwrite)
        crashguard.sweep(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BundleError(f"cannot write to {out.parent}: {_why(err)}") from None
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp = out.parent / f".{out.name}.tmp-{token}"
        old = out.parent / f".{out.name}.old-{token}"
        guard = crashguard.CrashGuard(tmp, out, old)
        try:
            tmp.mkdir(mode=0o700)
            self._write(tmp)
            self._self_check(tmp, out)
            if before_commit is not None:
                before_commit(tmp)
            _replace_dir(tmp, out, old)
        except BaseException as err:
            crashguard.recover(tmp, out, old)
            if isinstance(err, OSError):
                raise BundleError(_save_error(err, out, tmp)) from None
            raise
        finally:
            guard.done()
        logger.info("saved bundle %s", out)
        return out

    def _self_check(self, tmp: Path, out: Path) -> None:
        """Load every written component back from ``tmp``, its external data inside ``tmp``."""
        for name in self.components:
            try:
                _parse_checked(tmp / self.files[name], tmp)
            except BundleError as err:
                detail = str(err).replace(str(tmp), str(out))
                raise SelfCheckError(
                    f"the bundle written for {out} failed its self-check: {detail}; nothing was "
                    "written (this is a qgraph bug: please report it)"
                ) from None

    def _write(self, root: Path) -> None:
        hashes: dict[str, dict[str, Any]] = {}
        groups: dict[str, list[str]] = {}
        for name in self.components:
            groups.setdefault(self.data_file(name), []).append(name)
        for data_name, names in groups.items():
            models = {self.files[n]: self.components[n] for n in names}
            limit = min((self.shard_bytes[n] for n in names if n in self.shard_bytes), default=None)
            hashes.update(weights.save_models(models, root, data_name, limit))
        for rel, content in self.side_files.items():
            dest = root / _safe_relpath(root, rel, "side file")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, dest)
            elif isinstance(content, np.ndarray):
                np.ascontiguousarray(content).tofile(dest)
            else:
                dest.write_bytes(content)
            hashes[rel] = weights.file_digest(dest)
        manifest = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "components": {
                name: {
                    "file": self.files[name],
                    "data_file": self.data_file(name)
                    if _has_data(root, self.data_file(name))
                    else None,
                    "shard_bytes": self.shard_bytes.get(name),
                    **signature(model),
                }
                for name, model in self.components.items()
            },
            "side_files": sorted(self.side_files),
            "pipeline": self.history,
            "files": dict(sorted(hashes.items())),
            "tools": tool_versions(),
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        self.manifest = manifest

    def data_file(self, name: str) -> str:
        return self.data_files.get(name) or f"{self.files[name]}.data"


# -- helpers -------------------------------------------------------------------------------------
def signature(model: ir.Model) -> dict[str, Any]:
    """The component's I/O signature and a few facts, as stored in the manifest."""

    def describe(v: ir.Value) -> dict[str, Any]:
        dtype = v.dtype.name if v.dtype is not None else None
        shape = None if v.shape is None else [d if isinstance(d, int) else str(d) for d in v.shape]
        return {"name": v.name, "dtype": dtype, "shape": shape}

    return {
        "inputs": [describe(v) for v in model.graph.inputs],
        "outputs": [describe(v) for v in model.graph.outputs],
        "nodes": sum(1 for _ in model.graph.all_nodes()),
        "opsets": dict(model.opset_imports),
    }


def tool_versions() -> dict[str, str]:
    import platform

    import onnxruntime
    import onnxscript

    from qgraph import __version__

    return {
        "qgraph": __version__,
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def _load_model(path: Path, root: Path) -> ir.Model:
    """Parse one .onnx file, check it and its external data, and wrap it (weights stay lazy)."""
    proto = _parse_checked(path, root)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as err:  # onnx_ir raises several types on malformed protos
        raise BundleError(f"{path}: malformed ONNX model ({_first_line(err)})") from None
    ir.external_data.set_base_dir(model.graph, path.parent)
    return model


def _parse_checked(path: Path, root: Path) -> onnx.ModelProto:
    """Parse one .onnx file without its weights; BundleError unless it is a valid model whose
    external data lies inside ``root`` and is long enough (sizes only: no byte is read)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise BundleError(f"{path}: not a readable ONNX model ({_first_line(err)})") from None
    if not proto.HasField("graph") or not proto.graph.output:
        raise BundleError(f"{path}: not a readable ONNX model (no graph or no outputs; truncated?)")
    try:
        checks.check_model(proto)
    except BundleError as err:
        raise BundleError(f"{path}: {err}") from None
    for tensor in weights.external_tensors(proto):
        _check_external(tensor, path, root)
    return proto


def _check_external(tensor: onnx.TensorProto, path: Path, root: Path) -> None:
    """One external tensor: a safe location, numeric offset/length, a file long enough."""
    info = {e.key: e.value for e in tensor.external_data}
    what = f"{path}: external data of {tensor.name!r}"
    loc = info.get("location", "")
    if "\0" in loc:
        raise BundleError(f"{what}: location {loc!r} contains a NUL character")
    if "\\" in loc:
        raise BundleError(
            f"{what}: location {loc!r} uses '\\' separators; external-data locations are "
            "relative paths with '/'"
        )
    data = _external_path(root, path.parent, loc, what)
    offset, length = _int_field(info, "offset", what), _int_field(info, "length", what)
    expected = checks.expected_nbytes(tensor)
    if length is not None and expected is not None and length != expected:
        raise BundleError(
            f"{what}: length {length} does not match its shape {list(tensor.dims)} of "
            f"{onnx.TensorProto.DataType.Name(tensor.data_type)} ({expected} bytes)"
        )
    if not data.is_file():
        raise BundleError(f"{path}: external data file {loc} for {tensor.name!r} is missing")
    size = data.stat().st_size
    end = (offset or 0) + (length if length is not None else expected or 0)
    if end > size:
        raise BundleError(
            f"{path}: external data file {loc} is too short for {tensor.name!r} "
            f"(needs {end} bytes, has {size}); the file is truncated or the offset is wrong"
        )


def _int_field(info: dict[str, str], key: str, what: str) -> int | None:
    if key not in info:
        return None
    text = info[key].strip()
    if not text.isdigit():
        raise BundleError(f"{what}: {key} {info[key]!r} is not a non-negative integer")
    return int(text)


def check_output(out: str | os.PathLike, source: Path | None, *, overwrite: bool) -> Path:
    """Refuse an output path that ``save`` could not write, before any work is done.

    The output must not be the input, inside it, or (with ``overwrite``) contain it; must not
    exist unless ``overwrite`` (an empty folder is fine); and its nearest existing parent must
    be a folder in which files can be created (missing parents are created on save).
    """
    out = Path(out).absolute()
    if source is not None:
        src = Path(source).absolute()
        if _same_or_inside(out, src):
            what = "is the input" if out.resolve() == src.resolve() else "is inside the input"
            raise BundleError(
                f"output {out} {what} {src}: the output must not be the input or inside it; "
                "choose another output"
            )
        if overwrite and _same_or_inside(src, out):
            raise BundleError(
                f"output {out} contains the input {src}; --force would delete the input"
            )
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists; choose another output or pass --force")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BundleError(f"cannot write to {out}: {parent} is a file, not a folder")
    probe = parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"  # swept if killed
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise BundleError(
            f"cannot write to {out}: cannot create files in {parent} ({_why(err)})"
        ) from None
    return out


def _why(err: OSError) -> str:
    """A short reason for an OSError, in words a user can act on."""
    reasons = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EFBIG: "the file size limit is reached",
        errno.ENOTDIR: "a parent is a file, not a folder",
    }
    return reasons.get(err.errno, err.strerror or str(err))


def _save_error(err: OSError, out: Path, tmp: Path) -> str:
    where = ""
    if err.filename:
        name = str(err.filename)
        rel = name[len(str(tmp)) + 1 :] if name.startswith(str(tmp) + os.sep) else name
        where = f" while writing {rel}"
    return f"saving {out} failed: {_why(err)}{where}; nothing was written"


def _safe_relpath(root: Path, rel: str, what: str) -> str:
    """``rel`` as a normalised relative path that stays inside ``root``, or BundleError."""
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        raise BundleError(
            f"{what}: absolute path {rel!r} is not allowed; paths must stay inside {root}"
        )
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise BundleError(f"{what}: path {rel!r} escapes the bundle folder {root}")
    return Path(norm).as_posix()


def _external_path(root: Path, base: Path, loc: str, what: str) -> Path:
    """Resolve an external-data ``location`` (relative to the .onnx file) inside ``root``."""
    if not loc:
        raise BundleError(f"{what}: empty location")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise BundleError(f"{what}: absolute path {loc!r} is not allowed; it must stay in {root}")
    full = Path(os.path.normpath((base / loc).absolute()))
    if not _same_or_inside(full, root.absolute()) or full == root.absolute():
        raise BundleError(f"{what}: path {loc!r} escapes the bundle folder {root}")
    return full


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _same_or_inside(a: Path, b: Path) -> bool:
    """True if ``a`` is ``b`` or lies inside it (symlinks resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _has_data(root: Path, rel: str) -> bool:
    return (root / rel).exists()


def _replace_dir(tmp: Path, out: Path, old: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` moves to ``old`` first and is removed only
    after the rename worked (``crashguard.recover`` puts it back if the process dies between)."""
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def iter_initializers(model: ir.Model) -> Iterator[ir.Value]:
    """Every initializer of the model, subgraphs included."""
    for graph in model.graphs():
        yield from graph.initializers.values()
