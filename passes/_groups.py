"""Weight groups for sensitivity analysis and mixed precision: which decoder MatMuls belong
together (per layer and role), named so that people can read them and patterns can select them.

``decoder_groups(bundle)`` maps a group name to patterns for its MatMuls (in every decoder
component and ``If`` branch) that ``quantize-int4`` would quantize by default: ``L<i> self-attn``
(q/k/v/o), ``L<i> cross-attn`` (a decoder's attention over the encoder: Whisper's
``encoder_attn`` q/o), ``L<i> mlp`` (fc1/fc2, gate/up/down), ``cross-attn k/v (all layers)`` (the
k/v projections that ``fuse-sibling-matmuls`` packs across layers into one MatMul), ``other``
(no layer in the scope) and ``lm_head`` (the role, so the tied embedding follows it). The layer
comes from the exporter's module scopes (``_roles.module_scopes``: ``...layers.<i>.<block>``).
The patterns are the MatMuls' exact module scopes (the same in every component, unlike node
names), a node's name where it has none, and the role ``lm_head``; ``overrides(groups, plan)``
turns a ``{group: (bits, block)}`` plan into ``quantize-int4`` overrides.
"""

from __future__ import annotations

import re
from typing import Any

from qgraph.families import ENCODER, FRONTEND
from qgraph.passes._roles import DECODER_ROLES, graph_role, module_scopes, refusal

_LAYER = re.compile(r"layers\.(\d+)\.(\w+)")


def group_of(scopes: list[str], weight: str) -> str:
    """The group of one MatMul from its module scopes and weight name."""
    if "lm_head" in weight or any(s.endswith(("lm_head", "proj_out")) for s in scopes):
        return "lm_head"
    found = {m.groups() for m in map(_LAYER.search, scopes) if m}
    if not found:
        return "other"
    layers = {int(i) for i, _ in found}
    kinds = {k for _, k in found}
    if kinds == {"encoder_attn"}:
        return "cross-attn k/v (all layers)" if len(layers) > 1 else f"L{min(layers)} cross-attn"
    return f"L{min(layers)} {'self-attn' if kinds <= {'self_attn'} else 'mlp'}"


def _order(name: str) -> tuple:
    m = re.match(r"L(\d+) (.*)", name)
    return (0, int(m.group(1)), m.group(2)) if m else (1, 0, name)


def decoder_groups(bundle: Any) -> dict[str, list[str]]:
    """``group -> override patterns`` of the decoder components' quantizable MatMuls (see above)."""
    import onnx_ir as ir

    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
    out: dict[str, list[str]] = {}
    for name, model in bundle.components.items():
        if bundle.roles().get(name, "") in (ENCODER, FRONTEND):
            continue
        fallback = graph_role(model.graph)
        for node in model.graph.all_nodes():
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or not node.name:
                continue
            weight = node.inputs[1]
            if refusal(node, weight, DECODER_ROLES, (), floats, fallback):
                continue
            scopes = module_scopes(node)
            patterns = out.setdefault(group_of(scopes, weight.name or ""), [])
            patterns += [p for p in scopes or [node.name] if p not in patterns]
    lm_head = out.pop("lm_head", None)
    groups = dict(sorted(out.items(), key=lambda kv: _order(kv[0])))
    if lm_head:
        groups["lm_head"] = ["lm_head"]
    return groups


def overrides(groups: dict[str, list[str]], plan: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    """``quantize-int4`` overrides giving each group of ``plan`` its ``(bits, block)``."""
    return tuple(
        f"{pattern}:{bits}/{block}"
        for group, (bits, block) in plan.items()
        for pattern in groups[group]
    )
