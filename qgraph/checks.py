"""Model validity checks that run on load, on the parsed proto, before anything reads weights.

``check_model`` refuses a model that parses but that ONNX Runtime could not load, with one line
naming the node or tensor and what is wrong:

- ``ir_version`` missing or below 3 (the first version with ``opset_import``);
- a node whose domain ``opset_import`` does not declare, or an op that does not exist at the
  declared opset. An op exists if ONNX has a schema for it, or ONNX Runtime registers one (its
  contrib ops in ``com.microsoft`` and the few it adds to the default domain, such as
  ``SimplifiedLayerNormalization``); ops of other domains are custom ops and are not checked.
  ONNX ops also get ``onnx.checker.check_node`` (attribute types, input and output counts);
- a node input, or a graph output, that no node, graph input or initializer produces (names of
  enclosing graphs are visible in ``If``/``Loop``/``Scan`` bodies), or a name produced twice;
- a negative dim in an input/output/value_info type or a tensor; a tensor of an unknown dtype,
  of an impossible size, or whose stored bytes do not match its dims and dtype (``raw_data`` or
  typed fields; external data is checked against ``expected_nbytes`` by the loader, from the
  ``length`` field and the file size, without reading the bytes).

``onnx.checker.check_model`` is not used whole: it rejects ONNX Runtime's default-domain ops and
would read external data. All checks are linear in the node count and read no weight bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import onnx
from onnx import TensorProto

from qgraph.errors import BundleError

MIN_IR_VERSION = 3
MAX_ELEMENTS = 2**62
"""A tensor with more elements than this cannot exist (its byte size would overflow int64)."""

ONNX_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}
"""Domains whose ops must have an ONNX (or ONNX Runtime) schema, mapped to their canonical name."""
CHECKED_DOMAINS = {**ONNX_DOMAINS, "com.microsoft": "com.microsoft"}

_FOUR_BIT = {
    TensorProto.INT4,
    TensorProto.UINT4,
    *(getattr(TensorProto, n) for n in ("FLOAT4E2M1",) if hasattr(TensorProto, n)),
}
_COMPLEX = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}
_TYPED_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def expected_nbytes(tensor: TensorProto) -> int | None:
    """Bytes the tensor's dims and dtype need in ``raw_data`` / external data (None: strings)."""
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    bits = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * 8
    if tensor.data_type in _FOUR_BIT:
        bits = 4
    return (_numel(tensor) * bits + 7) // 8


def check_model(proto: onnx.ModelProto) -> None:
    """Raise BundleError (one line, no file name) for the first invalid thing in ``proto``."""
    if proto.ir_version < MIN_IR_VERSION:
        raise BundleError(
            f"ir_version {proto.ir_version} is not valid (missing or too old; ONNX models use "
            f"{MIN_IR_VERSION} or more); re-export the model"
        )
    opsets: dict[str, int] = {}
    for entry in proto.opset_import:
        opsets[CHECKED_DOMAINS.get(entry.domain, entry.domain)] = entry.version
    functions = {(f.domain, f.name) for f in proto.functions}
    checker = _Checker(proto.ir_version, opsets, functions)
    checker.graph(proto.graph, frozenset())
    for f in proto.functions:
        f_opsets = {CHECKED_DOMAINS.get(e.domain, e.domain): e.version for e in f.opset_import}
        _Checker(proto.ir_version, f_opsets or opsets, functions).nodes(
            f.node, set(f.input) | set(f.attribute), f"function '{f.name}'"
        )


class _Checker:
    def __init__(self, ir_version: int, opsets: dict[str, int], functions: set) -> None:
        self.opsets, self.functions = opsets, functions
        self.ctx = onnx.checker.C.CheckerContext()
        self.ctx.ir_version = ir_version
        self.ctx.opset_imports = {d or "": v for d, v in opsets.items()}

    def graph(self, graph: onnx.GraphProto, outer: frozenset[str]) -> None:
        where = f"graph '{graph.name}'" if outer else "graph"
        for kind, values in (
            ("input", graph.input),
            ("output", graph.output),
            ("value_info", graph.value_info),
        ):
            for v in values:
                _check_type_dims(v, f"{kind} '{v.name}'")
        for t in graph.initializer:
            check_tensor(t, f"initializer '{t.name}'")
        names = set(outer) | {v.name for v in graph.input} | {t.name for t in graph.initializer}
        names |= {t.values.name for t in graph.sparse_initializer}
        produced = self.nodes(graph.node, names, where, outer)
        for v in graph.output:
            if v.name not in produced:
                raise BundleError(
                    f"{where} output '{v.name}' is not produced by any node, input or initializer"
                )

    def nodes(
        self,
        nodes: Iterable[onnx.NodeProto],
        names: set[str],
        where: str,
        outer: frozenset[str] = frozenset(),
    ) -> set[str]:
        """Check ``nodes`` of one graph; returns every name visible in it (outputs included).

        ``names``: the graph's inputs and initializers plus ``outer``, the enclosing graphs'
        names (a node may reuse an outer name: that shadows it, which ONNX Runtime accepts).
        """
        scope, own = set(names), set(names) - outer
        for node in nodes:
            for out in node.output:
                if out and out in own:
                    raise BundleError(f"{_name(node)}: output '{out}' is produced twice")
                own.add(out)
                scope.add(out)
        for node in nodes:
            self.node(node, scope)
            for inp in node.input:
                if inp and inp not in scope:
                    raise BundleError(
                        f"{_name(node)}: input '{inp}' is not produced by any node, graph input "
                        f"or initializer of the {where}"
                    )
        return scope

    def node(self, node: onnx.NodeProto, scope: set[str]) -> None:
        domain = CHECKED_DOMAINS.get(node.domain, node.domain)
        has_graph = False
        for attr in node.attribute:
            for t in _attr_tensors(attr):
                check_tensor(t, f"{_name(node)} attribute '{attr.name}'")
            for g in _attr_graphs(attr):
                has_graph = True
                self.graph(g, frozenset(scope))
        if (node.domain, node.op_type) in self.functions:
            return
        if domain not in self.opsets:
            shown = node.domain or "'' (the default ONNX domain)"
            raise BundleError(
                f"{_name(node)}: domain {shown} is not declared in opset_import; add it"
            )
        if domain not in CHECKED_DOMAINS.values():
            return  # a custom op: nothing to check it against
        version = self.opsets[domain]
        onnx_schema = domain in ONNX_DOMAINS.values() and _has_onnx_schema(
            node.op_type, version, domain
        )
        if not onnx_schema and not _has_ort_schema(node.op_type, version, domain):
            shown = f"domain '{domain}'" if domain else "the default domain"
            raise BundleError(
                f"{_name(node)}: op '{node.op_type}' does not exist in {shown} at opset {version} "
                "(neither ONNX nor ONNX Runtime defines it)"
            )
        if onnx_schema and not has_graph:
            try:
                onnx.checker.check_node(node, self.ctx)
            except onnx.checker.ValidationError as err:
                raise BundleError(f"{_name(node)}: {_first_line(err)}") from None


def check_tensor(t: TensorProto, what: str) -> None:
    """dtype, dims and stored size of one tensor; external data only as far as the proto says."""
    if t.data_type == TensorProto.UNDEFINED or t.data_type not in TensorProto.DataType.values():
        raise BundleError(f"{what}: unknown data type {t.data_type}")
    if any(d < 0 for d in t.dims):
        raise BundleError(f"{what}: negative dim in shape {list(t.dims)}")
    if _numel(t) > MAX_ELEMENTS:
        raise BundleError(f"{what}: impossible shape {list(t.dims)} (too many elements)")
    if t.data_location == TensorProto.EXTERNAL:
        return
    numel, expected = _numel(t), expected_nbytes(t)
    if t.HasField("raw_data"):
        if expected is not None and len(t.raw_data) != expected:
            raise BundleError(
                f"{what}: raw data has {len(t.raw_data)} bytes but shape {list(t.dims)} of "
                f"{_dtype(t)} needs {expected}"
            )
        return
    fields = [f for f in _TYPED_FIELDS if len(getattr(t, f))]
    if not fields:
        if numel:
            raise BundleError(f"{what}: no data for shape {list(t.dims)}")
        return
    count = len(getattr(t, fields[0]))
    want = 2 * numel if t.data_type in _COMPLEX else numel
    if t.data_type in _FOUR_BIT:
        want = (numel + 1) // 2
    if len(fields) > 1 or count != want:
        raise BundleError(
            f"{what}: stores {count} values but shape {list(t.dims)} of {_dtype(t)} needs {want}"
        )


def _check_type_dims(v: onnx.ValueInfoProto, what: str) -> None:
    t = v.type
    while t.HasField("sequence_type") or t.HasField("optional_type"):
        t = t.sequence_type.elem_type if t.HasField("sequence_type") else t.optional_type.elem_type
    if t.HasField("tensor_type") and t.tensor_type.HasField("shape"):
        dims = t.tensor_type.shape.dim
        if any(d.HasField("dim_value") and d.dim_value < 0 for d in dims):
            shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
            raise BundleError(f"{what}: negative dim in shape {shown}")


def _attr_tensors(attr: onnx.AttributeProto) -> Iterator[TensorProto]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors


def _attr_graphs(attr: onnx.AttributeProto) -> Iterator[onnx.GraphProto]:
    if attr.HasField("g"):
        yield attr.g
    yield from attr.graphs


@functools.cache
def _has_onnx_schema(op: str, version: int, domain: str) -> bool:
    try:
        onnx.defs.get_schema(op, version, domain)
    except onnx.defs.SchemaError:
        return False
    return True


@functools.cache
def _ort_schemas() -> dict[tuple[str, str], int] | None:
    """``(domain, op) -> oldest since_version`` of every schema ONNX Runtime registers."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

        schemas = ort_c.get_all_operator_schema()
    except (ImportError, AttributeError):  # a minimal ONNX Runtime build: do not guess
        return None
    table: dict[tuple[str, str], int] = {}
    for s in schemas:
        key = (ONNX_DOMAINS.get(s.domain, s.domain), s.name)
        table[key] = min(table.get(key, s.since_version), s.since_version)
    return table


def _has_ort_schema(op: str, version: int, domain: str) -> bool:
    table = _ort_schemas()
    if table is None:
        return True
    since = table.get((domain, op))
    return since is not None and since <= version


def _numel(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def _dtype(t: TensorProto) -> str:
    return TensorProto.DataType.Name(t.data_type)


def _name(node: onnx.NodeProto) -> str:
    return f"node '{node.name}' ({node.op_type})" if node.name else f"{node.op_type} node"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]
