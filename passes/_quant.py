"""Shared machinery of the quantization passes: layer roles, block quantization, lazy results.

Roles: a ``MatMul`` with a constant weight is named by what it computes, read from the
exporter's module scope (``pkg.torch.onnx.name_scopes``, e.g.
``model.language_model.layers.0.self_attn.q_proj``), else from the weight's or the node's name:
``q``, ``k``, ``v``, ``o`` (``o_proj``/``out_proj``), ``gate``, ``up``, ``down``, ``lm_head``;
everything under ``audio_tower``/``audio_encoder``/``encoder``/``multi_modal_projector`` is
``encoder`` (a decoder's cross-attention, Whisper's ``encoder_attn``, is not: its projections
are ``q``/``k``/``v``/``o``); anything else is ``other``. A MatMul that packs several (q/k/v
side by side) may list their scopes in its ``qgraph.module_scopes`` metadata (comma-separated);
its role is then theirs joined by ``+`` (``q+k+v``) and it is selected when each of them is.
Without it, a MatMul with no recognisable name is ``encoder`` in a graph whose exporter scopes
(subgraphs included) are the encoder's (``graph_role``) and ``other`` elsewhere. Exclusion
patterns (``fnmatch``) match the node name, the weight name or a module scope (``*.layers.0.*``,
``lm_head*``).

Calibration (``calibration_outputs``) runs components in ONNX Runtime with chosen intermediate
values added as graph outputs: on generated inputs (``qgraph.instruments.verify.sample_inputs``,
several seeds) or, given a folder of audio files, through the reference runtime (encoder,
decoder_init prefill, greedy decoder_step steps) on a temporary copy of the bundle.

Block quantization mirrors ONNX Runtime's ``DefaultWeightOnlyQuantizer.qbits_block_quant``
(the same C++ kernel, the same padding and array shapes, a slice of columns at a time), so the
packed bytes, scales and zero points are ORT's. ``LazyParts`` produces those results as
``ir.LazyTensor`` objects that compute on first read (when the bundle is hashed or saved) with
about one weight's results resident at a time, and ``release`` unmaps each source's pages after
the read, so a quantized decoder never sits in memory; a source that already sits in memory is
quantized at once instead (``SourceCache``), so that it can be let go.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fnmatch
import logging
import mmap
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

MS = "com.microsoft"
ROLES = ("q", "k", "v", "o", "gate", "up", "down", "lm_head", "encoder", "other")
DECODER_ROLES = ("q", "k", "v", "o", "gate", "up", "down", "lm_head", "other")

_B = r"(?<![A-Za-z0-9]){}(?![A-Za-z0-9])"
_ENCODER = re.compile(
    _B.format("(audio_tower|audio_encoder|encoder(?!_attn)|multi_modal_projector)")
)
_ROLE_RES = [
    (role, re.compile(_B.format(pattern)))
    for role, pattern in (
        ("q", "q_proj"),
        ("k", "k_proj"),
        ("v", "v_proj"),
        ("o", "(o_proj|out_proj)"),
        ("gate", "gate_proj"),
        ("up", "up_proj"),
        ("down", "down_proj"),
        ("lm_head", "lm_head"),
    )
]


SCOPES_KEY = "qgraph.module_scopes"


def module_scopes(node: ir.Node) -> list[str]:
    """The module scopes of ``node``: the packed ones it lists, else the exporter's."""
    packed = node.metadata_props.get(SCOPES_KEY)
    if packed:
        return [s for s in packed.split(",") if s]
    scope = module_scope(node)
    return [scope] if scope else []


def module_scope(node: ir.Node) -> str:
    """The innermost module path the exporter recorded for ``node`` ('' if none)."""
    raw = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if not raw:
        return ""
    try:
        scopes = [s for s in ast.literal_eval(raw) if isinstance(s, str) and s]
    except (ValueError, SyntaxError):
        return ""
    return scopes[-2] if len(scopes) >= 2 else ""


def _role(names: list[str], fallback: str) -> str:
    if any(_ENCODER.search(n.lower()) for n in names):
        return "encoder"
    for name in names:
        for role, regex in _ROLE_RES:
            if regex.search(name):
                return role
    return fallback


def graph_role(graph: ir.Graph) -> str:
    """``encoder`` if the exporter's scopes put the graph's nodes in an encoder, else ``other``:
    the role of its MatMuls that have no recognisable name of their own (nodes of subgraphs, e.g.
    If branches, count)."""
    scoped = (module_scope(n) for n in graph.all_nodes())
    return "encoder" if any(_ENCODER.search(s.lower()) for s in scoped if s) else "other"


def role_of(node: ir.Node, weight: ir.Value, fallback: str = "other") -> str:
    """The layer role of a MatMul (see the module docstring), ``a+b`` for a packed one."""
    scopes = module_scopes(node)
    if len(scopes) > 1:
        return "+".join(dict.fromkeys(_role([s], fallback) for s in scopes))
    return _role([*scopes, weight.name or "", node.name or ""], fallback)


def selected(role: str, roles: tuple[str, ...]) -> bool:
    return all(r in roles for r in role.split("+"))


def refusal(
    node: ir.Node,
    weight: ir.Value | None,
    roles: tuple[str, ...],
    exclude: tuple[str, ...],
    dtypes: tuple[ir.DataType, ...] = (ir.DataType.FLOAT,),
    fallback: str = "other",
) -> str:
    """Why the MatMul ``node`` with weight input ``weight`` is not quantized ('' if it is);
    ``fallback`` is the role of an unnamed MatMul (``graph_role``)."""
    t = weight.const_value if weight is not None else None
    if t is None or not weight.is_initializer() or weight.is_graph_input():
        return "weight is not a constant"
    if t.dtype not in dtypes or len(t.shape) != 2:
        return "weight is not a 2-D float"
    role = role_of(node, weight, fallback)
    if not selected(role, roles):
        return f"role {role} not selected"
    if exclude and excluded(exclude, node, weight):
        return "excluded"
    return ""


def excluded(patterns: tuple[str, ...], node: ir.Node, weight: ir.Value) -> bool:
    """True if a pattern matches the node name, the weight name or a module scope."""
    names = [n for n in (node.name, weight.name, *module_scopes(node)) if n]
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


# -- block quantization (ONNX Runtime's layout) ---------------------------------------------------
CHUNK_BYTES = 64 << 20
"""Columns are quantized in slices of about this many input bytes (the kernel's results are per
column, so the bytes do not depend on it): a transposed or huge weight (the lm_head) is never
copied whole."""


def block_quantize(
    w: np.ndarray, bits: int, block_size: int, symmetric: bool, chunk_bytes: int = CHUNK_BYTES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W[K, N]`` -> (packed ``[N, k_blocks, blob]`` uint8, scales ``[N, k_blocks]``, zero
    points uint8 ``[N, ceil(k_blocks * bits / 8)]``), exactly as ORT's quantizer packs them."""
    from onnxruntime.capi import _pybind_state as ort_c

    rows, cols = w.shape
    k_blocks = (rows + block_size - 1) // block_size
    pack = 8 // bits
    packed = np.zeros((cols, k_blocks, (block_size + pack - 1) // pack), dtype=np.uint8)
    zero_points = np.zeros((cols, (k_blocks + pack - 1) // pack), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=w.dtype)
    kernel = ort_c.quantize_matmul_4bits if bits == 4 else ort_c.quantize_matmul_8bits
    step = max(1, chunk_bytes // max(1, k_blocks * block_size * w.dtype.itemsize))
    for start in range(0, cols, step):
        end = min(cols, start + step)
        # row-major and padded to whole blocks, as ORT's quantizer hands the kernel its weight
        part = np.zeros((k_blocks * block_size, end - start), dtype=w.dtype)
        part[:rows] = w[:, start:end]
        kernel(
            packed[start:end],
            part,
            scales[start:end],
            zero_points[start:end],
            block_size,
            end - start,
            rows,
            symmetric,
        )
    return packed, scales, zero_points


def unpacked_zero_points(zero_points: np.ndarray, k_blocks: int, bits: int) -> np.ndarray:
    """Packed zero points ``[N, ceil(k_blocks * bits / 8)]`` -> one uint8 per block."""
    if bits == 8:
        return zero_points[:, :k_blocks]
    nibbles = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1)
    return nibbles.reshape(zero_points.shape[0], -1)[:, :k_blocks]


def dequantize(
    packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, rows: int, bits: int
) -> np.ndarray:
    """Inverse of ``block_quantize``: the ``W[K, N]`` that MatMulNBits multiplies with."""
    cols, k_blocks, _ = packed.shape
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(cols, k_blocks, -1)
    else:
        q = packed
    if zero_points is None:
        zp = np.full((cols, k_blocks), 1 << (bits - 1), dtype=np.float32)
    else:
        zp = unpacked_zero_points(zero_points, k_blocks, bits).astype(np.float32)
    w = (q.astype(np.float32) - zp[..., None]) * scales.astype(np.float32)[..., None]
    return w.reshape(cols, -1)[:, :rows].T


def fake_quantize(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """``W`` after a block-quantization round trip (what the quantized MatMul computes with)."""
    packed, scales, zp = block_quantize(w.astype(np.float32), bits, block_size, symmetric)
    return dequantize(packed, scales, None if symmetric else zp, w.shape[0], bits)


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


# -- lazily computed results ----------------------------------------------------------------------
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


# -- calibration ----------------------------------------------------------------------------------
AUDIO_SUFFIXES = (".wav", ".flac")


@contextlib.contextmanager
def _extra_outputs(models: dict[str, ir.Model], wanted: dict[str, list[ir.Value]]):
    """Temporarily add ``wanted`` values as graph outputs."""
    added = {c: [v for v in wanted.get(c, []) if not v.is_graph_output()] for c in models}
    for c, values in added.items():
        models[c].graph.outputs.extend(values)
    try:
        yield
    finally:
        for c, values in added.items():
            for v in values:
                models[c].graph.outputs.remove(v)


def calibration_outputs(
    bundle,
    wanted: dict[str, list[ir.Value]],
    *,
    audio: str = "",
    max_files: int = 32,
    max_tokens: int = 32,
    samples: int = 4,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield ``(component, {value name: array})`` for the ``wanted`` values of each run."""
    comps = {c: bundle.components[c] for c in wanted}
    with (
        tempfile.TemporaryDirectory(prefix="qgraph-calibrate-") as tmp,
        _extra_outputs(comps, wanted),
    ):
        if audio:
            yield from _audio_runs(bundle, wanted, Path(tmp), audio, max_files, max_tokens)
        else:
            yield from _generated_runs(comps, wanted, Path(tmp), samples)


def _session(model: ir.Model, path: Path):
    import onnxruntime as ort

    ir.save(model, path, external_data=path.name + ".data")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _generated_runs(comps, wanted, tmp: Path, samples: int):
    from qgraph.instruments.verify import sample_inputs

    for c, model in comps.items():
        names = [v.name for v in wanted[c]]
        feeds = [sample_inputs(model, seed=seed) for seed in range(samples)]
        sess = _session(model, tmp / f"{c.replace('/', '_')}.onnx")
        for feed in feeds:
            yield c, dict(zip(names, sess.run(names, feed), strict=True))
        del sess


def audio_files(folder: str, limit: int) -> list[Path]:
    """The calibration audio files of ``folder`` (sorted, at most ``limit``)."""
    from qgraph.errors import BundleError

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise BundleError(f"{folder}: no calibration audio ({', '.join(AUDIO_SUFFIXES)}) found")
    return files[:limit]


def _audio_runs(bundle, wanted, tmp: Path, folder: str, max_files: int, max_tokens: int):
    from qgraph.runtime import AsrSession

    files = audio_files(folder, max_files)
    dataclasses.replace(bundle, manifest={}, history=[]).save(tmp / "bundle")
    session = AsrSession(tmp / "bundle", optimization="basic")
    names = {c: [v.name for v in values] for c, values in wanted.items()}

    def pick(c: str, out: dict[str, np.ndarray]):
        return (c, {n: out[n] for n in names[c]}) if c in names else None

    for path in files:
        mel = session.features(session.read_audio(path))
        enc = session.encoder.run({next(iter(session.encoder.input_types)): mel})
        features = enc[session.encoder.output_names[0]]
        prompt, offset = session.prompt(int(features.shape[1]))
        out = session.decoder_init.run(
            {
                "input_ids": np.asarray([prompt], np.int64),
                "position_ids": np.arange(len(prompt), dtype=np.int64)[None],
                "audio_features": features,
                "audio_offset": np.asarray([offset], np.int64),
            }
        )
        runs = [pick("encoder", enc), pick("decoder_init", out)]
        position = len(prompt)
        for _ in range(max_tokens):
            token = int(np.argmax(out["logits"][0, -1]))
            if token in session.eos_ids:
                break
            feeds = {
                "position_ids": np.asarray([[position]], np.int64),
                "past_keys": out["present_keys"],
                "past_values": out["present_values"],
            }
            if session.embed_table is not None:
                feeds["input_embeds"] = session.embed_table.lookup(np.asarray([[token]]))
            else:
                feeds["input_ids"] = np.asarray([[token]], np.int64)
            out = session.decoder_step.run(feeds)
            runs.append(pick("decoder_step", out))
            position += 1
        yield from (r for r in runs if r is not None)
        logger.debug("calibrated on %s (%d decode steps)", path.name, position - len(prompt))
