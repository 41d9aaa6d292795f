"""Readable names for the dynamic dims of exported graphs (torch.export prints raw SymPy).

``name_dims`` gives graph inputs and outputs the dims of the public layout (``time``,
``audio_tokens``, ``batch``, ``seq``, ``past``, ``total``) and renames the same symbols inside
intermediate shapes; ``name_derived_dims`` names intermediate expressions of one symbol
(``Mod(...)//104`` -> ``windows``) by evaluating them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import onnx_ir as ir

from qgraph.errors import ExportError

DimSpec = Sequence[int | str]
"""A shape in the public layout: static sizes and dim names."""


def name_derived_dims(
    model: ir.Model, symbol: str, names: Mapping[str, Callable[[int], int]]
) -> None:
    """Rename intermediate dims that are expressions of ``symbol`` to the matching name.

    torch.export prints derived sizes as SymPy text (``Mod``, ``Min``, ``//``), which is also
    valid Python: each is evaluated at sample values of ``symbol`` and renamed when it equals
    exactly one of ``names`` at all of them. Expressions that match none are left as they are.
    """
    samples = (1, 7, 50, 99, 100, 101, 537, 799, 800, 801, 1234, 3001, 10007)
    env = {"Mod": lambda a, b: a % b, "Min": min, "Max": max}
    cache: dict[str, str | None] = {}

    def match(text: str) -> str | None:
        if text not in cache:
            try:
                got = [eval(text, {"__builtins__": {}}, {**env, symbol: t}) for t in samples]
            except Exception:  # not an expression of ``symbol`` alone
                got = None
            hits = [n for n, fn in names.items() if got == [fn(t) for t in samples]]
            cache[text] = hits[0] if len(hits) == 1 else None
        return cache[text]

    for node in model.graph.all_nodes():
        for value in node.outputs:
            if value.shape is None or value in model.graph.outputs:
                continue
            dims = []
            for d in value.shape:
                text = None if isinstance(d, int) or d.value is None else str(d.value)
                name = match(text) if text and text != symbol else None
                dims.append(ir.SymbolicDim(name) if name else d)
            value.shape = ir.Shape(dims)


def name_dims(model: ir.Model, io: Mapping[str, DimSpec]) -> None:
    """Give graph inputs/outputs the dims in ``io`` and rename their symbols everywhere.

    A symbolic dim that is a plain symbol (``s12``) is renamed inside every expression of the
    graph; a dim that is an expression (``past + 1``, ``Min(13*(time//100) ...)``) is replaced
    wherever that exact expression occurs. Static dims must already match ``io``.
    """
    graph = model.graph
    exact: dict[str, str] = {}
    for value in [*graph.inputs, *graph.outputs]:
        spec = io.get(value.name)
        if spec is None:
            raise ExportError(f"exported graph has an unexpected I/O {value.name!r}")
        shape = value.shape
        if shape is None or len(shape) != len(spec):
            raise ExportError(f"{value.name}: exported rank {shape} does not match {list(spec)}")
        for dim, want in zip(shape, spec, strict=True):
            if isinstance(want, int):
                if dim != want:
                    raise ExportError(f"{value.name}: exported shape {shape} is not {list(spec)}")
            elif not isinstance(dim, int) and dim.value is not None:
                exact.setdefault(str(dim.value), want)
    symbols = {k: v for k, v in exact.items() if re.fullmatch(r"[A-Za-z_]\w*", k)}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, symbols)) + r")\b") if symbols else None

    def rename(text: str) -> str:
        if text in exact:
            return exact[text]
        return pattern.sub(lambda m: symbols[m.group(1)], text) if pattern else text

    values = [*graph.inputs, *graph.outputs]
    for node in graph.all_nodes():
        values.extend(node.outputs)
    for value in values:
        shape = value.shape
        if shape is None:
            continue
        dims = [
            d if isinstance(d, int) or d.value is None else ir.SymbolicDim(rename(str(d.value)))
            for d in shape
        ]
        value.shape = ir.Shape(dims)
    for value in [*graph.inputs, *graph.outputs]:
        value.shape = ir.Shape(
            [want if isinstance(want, int) else ir.SymbolicDim(want) for want in io[value.name]]
        )
