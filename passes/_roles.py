"""Which MatMuls a quantization pass touches: layer roles, module scopes, exclusions.

A ``MatMul`` with a constant weight is named by what it computes, read from the exporter's module
scope (``pkg.torch.onnx.name_scopes``, e.g. ``model.language_model.layers.0.self_attn.q_proj``),
else from the weight's or the node's name: ``q``, ``k``, ``v``, ``o`` (``o_proj``/``out_proj``),
``gate``, ``up``, ``down``, ``lm_head``; everything under
``audio_tower``/``audio_encoder``/``encoder``/``multi_modal_projector`` is ``encoder`` (a decoder's
cross-attention, Whisper's ``encoder_attn``, is not: its projections are ``q``/``k``/``v``/``o``);
anything else is ``other``. A MatMul that packs several (q/k/v side by side,
``fuse-sibling-matmuls``) lists their scopes in its ``qgraph.module_scopes`` metadata
(comma-separated); its role is then theirs joined by ``+`` (``q+k+v``) and it is selected when each
of them is. Without it, a MatMul with no recognisable name is ``encoder`` in a graph whose exporter
scopes (subgraphs included) are the encoder's (``graph_role``) and ``other`` elsewhere. In a
component whose role (``qgraph.families``) is ``encoder`` or ``frontend`` every MatMul is
``encoder``, whatever its names say (a single-file encoder from another exporter). Exclusion
patterns (``fnmatch``) match the node name, the weight name or a module scope (``*.layers.0.*``,
``lm_head*``).
"""

from __future__ import annotations

import ast
import fnmatch
import re

import onnx_ir as ir

from qgraph import families

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
ENCODER_COMPONENTS = (families.ENCODER, families.FRONTEND)


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


def role_of(
    node: ir.Node, weight: ir.Value, fallback: str = "other", component_role: str = ""
) -> str:
    """The layer role of a MatMul (see the module docstring), ``a+b`` for a packed one;
    ``component_role`` is the role of the component it is in ('' if unknown)."""
    if component_role in ENCODER_COMPONENTS:
        return "encoder"
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
    component_role: str = "",
) -> str:
    """Why the MatMul ``node`` with weight input ``weight`` is not quantized ('' if it is);
    ``fallback`` is the role of an unnamed MatMul (``graph_role``), ``component_role`` that of
    its component."""
    t = weight.const_value if weight is not None else None
    if t is None or not weight.is_initializer() or weight.is_graph_input():
        return "weight is not a constant"
    if t.dtype not in dtypes or len(t.shape) != 2:
        return "weight is not a 2-D float"
    role = role_of(node, weight, fallback, component_role)
    if not selected(role, roles):
        return f"role {role} not selected"
    if exclude and excluded(exclude, node, weight):
        return "excluded"
    return ""


def excluded(patterns: tuple[str, ...], node: ir.Node, weight: ir.Value) -> bool:
    """True if a pattern matches the node name, the weight name or a module scope."""
    names = [n for n in (node.name, weight.name, *module_scopes(node)) if n]
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)
