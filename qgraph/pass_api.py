"""The pass API: graph passes and bundle passes on top of ``onnx_ir.passes``.

A pass is a class with a ``name``, a one-line docstring summary and typed options::

    class MyPass(GraphPass):
        '''Mul(x, 1) -> x.'''

        name = "drop-mul-one"
        category = "hygiene"
        min_size: int = option(0, "ignore tensors smaller than this")

        def call(self, model: ir.Model) -> ir.passes.PassResult:
            ...
            self.count("removed")          # statistics shown by --stats
            return ir.passes.PassResult(model, modified=...)

Subclasses become keyword-only dataclasses automatically, so ``MyPass(min_size=4)`` works and
``str(MyPass(min_size=4))`` prints ``drop-mul-one{min_size=4}``. A ``GraphPass`` runs on each
selected component (``on=[encoder,decoder_step]``; every component by default); a
``BundlePass`` receives the whole ``Bundle``. ``modified`` must be exact: ``False`` means the
component is byte-for-byte what it was.

``GraphSurgeonPass`` (``qgraph.graphsurgeon``) is a ``GraphPass``
written with onnx-graphsurgeon's API: ``surgery(graph: gs.Graph) -> bool`` instead of ``call``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import onnx_ir as ir

from qgraph import shapes
from qgraph.errors import PipelineError


@dataclass(frozen=True)
class Tolerance:
    """How close a pass's output must stay to its input, as checked by ``--verify-each``.

    ``atol``/``rtol`` bound the error of every output relative to its scale: max |after -
    before| <= atol + rtol * max |before| (``None`` switches it off). Rounding in a rewritten
    computation grows with the magnitude of the values it combines, not with each output
    element, so an elementwise rtol would fail a correct fusion on logits near zero. Lossy
    passes may also declare a minimum cosine similarity and a minimum top-1 agreement over the
    last axis (for logits).
    """

    atol: float | None = 1e-4
    rtol: float | None = 1e-3
    min_cosine: float | None = None
    min_top1: float | None = None
    exact: bool = False


LOSSLESS = Tolerance()

MAX_SITES = 5
"""Sites kept per statistic (``QPass.sites``)."""

ON_HELP = (
    "components to run on, by name or role (encoder, frontend, prefill, step, decoder, "
    "merged-decoder); default: the pass's own roles, else all"
)

CATEGORY_ORDER: tuple[tuple[str, str], ...] = (
    (
        "compression",
        "low-rank factorises the plain FP32 MatMuls that a fusion or quantization would hide",
    ),
    ("fusion", "fusions match the FP32 MatMuls, norms and attention that quantization replaces"),
    ("quantization", ""),
)
"""The pipeline order of categories, declared once: a pass of one of these categories runs after
every pass of the categories listed before its own. Each entry is ``(category, why it runs before
the later ones)``, the reason an ordering error quotes. A pass may override a category's reason
in its own ``must_follow``."""


def option(default: Any, help: str, *, choices: tuple | None = None) -> Any:
    """Declare a pass option: a typed dataclass field with help text for ``qgraph passes``."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for list-valued option defaults")
    return dataclasses.field(default=default, metadata=meta)


class QPass:
    """Common part of graph and bundle passes: name, options, ordering, statistics."""

    name: ClassVar[str] = ""
    category: ClassVar[str] = "misc"
    """One of hygiene, fusion, bundle, quantization, precision, compression, misc."""
    tolerance: ClassVar[Tolerance] = LOSSLESS
    must_follow: ClassVar[Mapping[str, str]] = {}
    """``{pass name or category: reason}``: what must run before this pass when both are in
    one pipeline, and why (the reason the ordering error quotes). The category order
    (``CATEGORY_ORDER``) applies on top; see ``ordering``."""
    default_roles: ClassVar[tuple[str, ...]] = ()
    """Roles (``qgraph.families``) of the components to run on when ``on`` is not given (empty:
    every component)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.must_follow, Mapping):
            raise TypeError(
                f"{cls.__qualname__}.must_follow must be a mapping {{pass-or-category: reason}}"
            )
        dataclass(kw_only=True, repr=False)(cls)

    # -- ordering -------------------------------------------------------------------------------
    @classmethod
    def ordering(cls) -> dict[str, str]:
        """Every pass name or category that must run before this pass, with the reason: the
        categories before this pass's own in ``CATEGORY_ORDER``, then ``must_follow`` (which
        wins for a category it names too)."""
        names = [category for category, _ in CATEGORY_ORDER]
        before = CATEGORY_ORDER[: names.index(cls.category)] if cls.category in names else ()
        return {**dict(before), **cls.must_follow}

    def check_followers(self, later: Sequence[QPass]) -> None:
        """Pipeline-level check against the passes that run after this one (``later``, in
        order); raise PipelineError on a conflict. The default checks nothing."""

    # -- options --------------------------------------------------------------------------------
    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "help" in f.metadata]

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in cls.options()}

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def from_options(cls, raw: dict[str, str]) -> QPass:
        """Build the pass from textual option values (``{"block_size": "64"}``)."""
        types = cls.option_types()
        kwargs = {}
        for key, text in raw.items():
            if key not in types:
                known = ", ".join(types) or "none"
                raise PipelineError(f"pass '{cls.name}' has no option '{key}' (options: {known})")
            kwargs[key] = parse_value(cls.name, key, types[key], text)
        inst = cls(**kwargs)
        inst.validate()
        return inst

    def option_values(self, *, non_default: bool = False) -> dict[str, Any]:
        out = {}
        for f in self.options():
            value = getattr(self, f.name)
            if non_default and value == f.default:
                continue
            out[f.name] = value
        return out

    def validate(self) -> None:
        """Check option values; raise PipelineError with the allowed values."""
        for f in self.options():
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if choices and any(v not in choices for v in values):
                allowed = ", ".join(map(str, choices))
                raise PipelineError(
                    f"pass '{self.name}': {f.name}={format_value(value)} is not allowed "
                    f"(choose from {allowed})"
                )

    def __str__(self) -> str:
        opts = self.option_values(non_default=True)
        if not opts:
            return self.name
        return self.name + "{" + ",".join(f"{k}={format_value(v)}" for k, v in opts.items()) + "}"

    __repr__ = __str__

    # -- component selection -------------------------------------------------------------------
    def targets(self, roles: Mapping[str, str]) -> list[str]:
        """The components to run on, given every component's role (in bundle order): those
        named by ``on`` (component names or roles), else those whose role is in
        ``default_roles``, else all."""
        wanted = getattr(self, "on", ()) or ()
        if not wanted:
            if not self.default_roles:
                return list(roles)
            return [c for c, role in roles.items() if role in self.default_roles]
        missing = [w for w in wanted if w not in roles and w not in roles.values()]
        if missing:
            listed = ", ".join(f"{c} ({r})" if r else c for c, r in roles.items())
            raise PipelineError(
                f"pass '{self.name}': no component or role {', '.join(missing)} in this bundle "
                f"(components: {listed})"
            )
        return [c for c, role in roles.items() if c in wanted or role in wanted]

    # -- verification hooks (used by --verify-each) ----------------------------------------------
    def adapt_feeds(self, component: str, feeds: dict, bundle: Any) -> dict:
        """Inputs for the component *after* this pass, given the inputs used before it.

        Passes that change a component's inputs (e.g. ids -> embeddings) override this so that
        ``--verify-each`` can still compare; the default keeps the feeds unchanged.
        """
        return feeds

    def adapt_reference(self, component: str, outputs: dict) -> dict:
        """The pre-pass outputs, reshaped to what the component returns after this pass."""
        return outputs

    # -- statistics -----------------------------------------------------------------------------
    @property
    def stats(self) -> Counter:
        if "_stats" not in self.__dict__:
            self.__dict__["_stats"] = Counter()
        return self.__dict__["_stats"]

    @property
    def sites(self) -> dict[str, list[str]]:
        """Where each statistic happened: ``{key: [node, ...]}`` (the first ``MAX_SITES``)."""
        return self.__dict__.setdefault("_stat_sites", {})

    def count(self, key: str, n: int = 1, where: ir.Node | None = None) -> None:
        """Add to a statistic; keys starting with ``skipped:`` are near-misses with a reason.
        ``where`` is the node that anchors the site (kept for ``--stats``, the report and the
        manifest: component and node name)."""
        self.stats[key] += n
        if where is not None:
            names = self.sites.setdefault(key, [])
            if len(names) < MAX_SITES:
                node = where.name or f"<unnamed {where.op_type}>"
                component = getattr(self, "component", "")
                names.append(f"{component}: {node}" if component else node)

    def reset_stats(self) -> None:
        self.stats.clear()
        self.sites.clear()


class GraphPass(QPass, ir.passes.InPlacePass):
    """A pass that rewrites one component's ``ir.Model`` in place.

    While it runs on a bundle's component, ``component`` and ``component_role`` hold its name and
    role (``''`` when the pass is called on a bare model, e.g. in a test).
    """

    on: tuple[str, ...] = option((), ON_HELP)
    component: ClassVar[str] = ""
    component_role: ClassVar[str] = ""

    def __call__(self, model: ir.Model, /) -> ir.passes.PassResult:
        """Run the pass; a fusion matches on inferred shapes (``qgraph.shapes``), kept only
        when it rewrote something."""
        if self.category != "fusion":
            return super().__call__(model)
        with shapes.inferred(model) as prepared:
            result = super().__call__(model)
            if not result.modified:
                prepared.restore()
        return result

    def run_on(self, model: ir.Model, component: str, role: str) -> ir.passes.PassResult:
        """Run on ``model``, the bundle's ``component``, whose role (``qgraph.families``) is
        ``role``."""
        self.component, self.component_role = component, role
        try:
            return self(model)
        finally:
            del self.component, self.component_role


class BundlePass(QPass, ir.passes.InPlacePass):
    """A pass that sees the whole bundle (``call(bundle)``): weight sharing, extraction, ...

    ``call`` marks the components it changed with ``self.touch(name)`` (if it reports
    ``modified`` without touching any, every component counts as changed).
    """

    on: tuple[str, ...] = option((), ON_HELP)

    @property
    def touched(self) -> set[str]:
        return self.__dict__.setdefault("_touched", set())

    def touch(self, component: str) -> None:
        self.touched.add(component)

    def __call__(self, bundle: Any, /) -> ir.passes.PassResult:
        self.touched.clear()  # ``touched`` describes the latest run only
        return super().__call__(bundle)


# -- option values --------------------------------------------------------------------------------
def parse_value(pass_name: str, key: str, typ: Any, text: str | list) -> Any:
    """Convert option text to the option's declared type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    try:
        if origin is tuple:
            items = text if isinstance(text, list) else [text]
            return tuple(parse_value(pass_name, key, args[0], str(t)) for t in items)
        if isinstance(text, list):
            raise ValueError("a list is not allowed here")
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            inner = [a for a in args if a is not type(None)]
            if text.lower() in ("none", "null"):
                return None
            return parse_value(pass_name, key, inner[0], text)
        if origin is Literal:
            if text not in [str(a) for a in args]:
                raise ValueError(f"choose from {', '.join(map(str, args))}")
            return next(a for a in args if str(a) == text)
        if typ is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        if typ is str:
            return text
    except ValueError as err:
        raise PipelineError(
            f"pass '{pass_name}': bad value {text!r} for option '{key}' ({err})"
        ) from None
    raise PipelineError(f"pass '{pass_name}': option '{key}' has unsupported type {typ}")


def format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
