"""Model families and runtime layouts: how a bundle is recognised and what each component does.

A ``Family`` is a registered record per model family and layout (``qwen3-asr``,
``qwen3-asr-sherpa``, ``whisper``, ...): the **role** of each component, how a bundle without a
manifest is recognised, the runtime session class, and the exporter and validate entry points.
Passes select components by role (``on=[step]`` or a pass's ``default_roles``), commands open a
session with ``open_session`` and ask ``family_of`` instead of sniffing file names; nothing else
knows a family's component names.

Roles: ``encoder`` (audio features -> hidden states), ``frontend`` (a convolution stem run
before the encoder), ``prefill`` (the decoder on the whole prompt), ``step`` (the decoder on one
token with a cache), ``decoder`` (one graph for prefill and steps, e.g. sherpa-onnx's static
cache) and ``merged-decoder`` (prefill and step as the branches of one ``If``, the optimum /
Transformers.js layout). A component of an unknown family gets the role a registered family
gives its name, else one guessed from its inputs (``guess_role``).

Sources, in order: ``BUILTIN_FAMILIES`` below, the entry-point group ``qgraph.families`` (each
entry point names a ``Family``), and ``register_family()`` calls. Entries name code as
``"module:attribute"`` strings, imported only when used, so this module stays cheap and the core
never imports the exporter.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import onnx_ir as ir

from qgraph.errors import BundleError

__all__ = [
    "DECODER",
    "DECODER_ROLES",
    "ENCODER",
    "FRONTEND",
    "GENERIC",
    "MERGED_DECODER",
    "PREFILL",
    "ROLES",
    "STEP",
    "Family",
    "families",
    "family_of",
    "get_family",
    "guess_role",
    "open_session",
    "register_family",
]

logger = logging.getLogger(__name__)

ENCODER, FRONTEND = "encoder", "frontend"
PREFILL, STEP, DECODER, MERGED_DECODER = "prefill", "step", "decoder", "merged-decoder"
ROLES = (FRONTEND, ENCODER, PREFILL, STEP, DECODER, MERGED_DECODER)
DECODER_ROLES = (PREFILL, STEP, DECODER, MERGED_DECODER)
"""Every role that produces logits (the graphs an lm_head lives in)."""

ENTRY_POINT_GROUP = "qgraph.families"
GENERIC = "generic"


@dataclass(frozen=True)
class Family:
    """One model family in one runtime layout.

    ``components`` maps each component name to its role. ``markers`` recognise a bundle folder
    that has no manifest family: ``{"config.json:model_type": "whisper"}`` (a JSON file, a
    dotted key, the value it must hold). A folder that holds every component of ``components``
    matches too. ``session``, ``exporter`` and ``validate`` are ``"module:attribute"`` strings;
    ``export_as`` is ``(name, layout)`` on ``qgraph export NAME --layout LAYOUT``;
    ``pipelines`` replaces named pipelines for this family (``qgraph pipeline show NAME`` lists
    them).
    """

    name: str
    summary: str
    components: Mapping[str, str] = field(default_factory=dict)
    markers: Mapping[str, str] = field(default_factory=dict)
    session: str = ""
    exporter: str = ""
    validate: str = ""
    export_as: tuple[str, str] | None = None
    pipelines: Mapping[str, str] = field(default_factory=dict)
    """Named pipelines this family replaces (``name -> pipeline text``): ``qgraph compile``
    expands e.g. ``default`` to the family's recipe, validated on its real weights."""

    def role(self, component: str, model: ir.Model | None = None) -> str:
        """The role of ``component``: its declared one, else the one a registered family gives
        a component of that name (``decoder_init`` is a prefill wherever it appears), else
        guessed from ``model``'s inputs (``guess_role``)."""
        role = self.components.get(component)
        if role is None:
            role = next(
                (
                    f.components[component]
                    for f in _registered().values()
                    if component in f.components
                ),
                None,
            )
        if role is None and model is not None:
            role = guess_role(model)
        return role or ""

    def session_class(self) -> type:
        if not self.session:
            raise BundleError(f"family '{self.name}' has no runtime session")
        return _resolve(self.session)

    def entry(self, which: str) -> Any:
        """The exporter's or validate's entry point (``which``: ``exporter`` or ``validate``)."""
        target = getattr(self, which)
        if not target:
            raise BundleError(f"family '{self.name}' has no {which}")
        return _resolve(target)

    def matches(self, root: Path, manifest: Mapping[str, Any] | None) -> bool:
        """True when the folder ``root`` (without a family in its manifest) is this family."""
        for key, wanted in self.markers.items():
            file, _, path = key.partition(":")
            value: Any = _read_json(root / file)
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value == wanted:
                return True
        if not self.components:
            return False
        names = set((manifest or {}).get("components", {})) or {
            p.stem for p in root.rglob("*.onnx") if not p.name.startswith(".")
        }
        return set(self.components) <= names


WHISPER_DEFAULT = (
    "hygiene,fusions,inline-lm-head,quantize-int4{bits=8,block_size=32},remove-unused,"
    "topological-sort"
)
"""Whisper's ``default``: every decoder MatMul and the tied embedding (GatherBlockQuantized) at 8
bits (MatMulNBits, block 32), FP32 encoder. Measured on tiny.en (real weights, 30 eval sentences,
245 words, ``benchmarks/results/quant_candidates.md``): WER +0.00 pp against fp32, no loops,
decoder 39.3 MB = 33 % of fp32's (the tied embedding is most of the decoder, so 8 bits still
leave it small); block 64 measures +0.41 pp at 30 %. The Qwen3-ASR recipe (int4 block 64
everywhere) costs +10.6 pp there, and the best int4 mix (block 32, lm_head and cross-attention at
8 bits: -0.8 pp on those sentences but +5.3 pp on the six test clips) saves 3 MB more but flips
words on this uncertain, synthetic speech. The Qwen3 layout passes (embedding extraction,
last-position prefill logits, shared decoder data) have nothing to do in Whisper's merged
decoder and are left out."""


# -- the table of built-in families -------------------------------------------------------------
BUILTIN_FAMILIES = (
    Family(
        "qwen3-asr",
        "Qwen3-ASR, the public three-graph layout (encoder, decoder_init, decoder_step)",
        {"encoder": ENCODER, "decoder_init": PREFILL, "decoder_step": STEP},
        session="qgraph.runtime.qwen3:AsrSession",
        exporter="qgraph.export.qwen3_asr:export",
        validate="qgraph.export.qwen3_asr.validate:validate_bundle",
        export_as=("qwen3-asr", "default"),
    ),
    Family(
        "qwen3-asr-sherpa",
        "Qwen3-ASR in sherpa-onnx's layout (conv frontend, encoder, one static-cache decoder)",
        {"conv_frontend": FRONTEND, "encoder": ENCODER, "decoder": DECODER},
        markers={"config.json:layout.name": "sherpa-onnx"},
        session="qgraph.runtime.sherpa:SherpaSession",
        exporter="qgraph.export.qwen3_asr.sherpa:export_sherpa",
        validate="qgraph.export.qwen3_asr.validate:validate_bundle",
        export_as=("qwen3-asr", "sherpa"),
    ),
    Family(
        "whisper",
        "Whisper in the optimum / Transformers.js layout (encoder_model, decoder_model_merged)",
        {"encoder_model": ENCODER, "decoder_model_merged": MERGED_DECODER},
        markers={"config.json:model_type": "whisper"},
        session="qgraph.runtime.whisper:WhisperSession",
        exporter="qgraph.export.whisper:export",
        validate="qgraph.export.whisper.validate:validate_whisper",
        export_as=("whisper", "default"),
        pipelines={"default": WHISPER_DEFAULT},
    ),
)
GENERIC_FAMILY = Family(GENERIC, "any ONNX model; component roles are guessed from their inputs")

_FAMILIES: dict[str, Family] | None = None


def families() -> dict[str, Family]:
    """Every registered family by name (built-ins, then plugins), ``generic`` last."""
    return {**_registered(), GENERIC: GENERIC_FAMILY}


def _registered() -> dict[str, Family]:
    global _FAMILIES
    if _FAMILIES is None:
        _FAMILIES = {family.name: family for family in BUILTIN_FAMILIES}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                register_family(ep.load())
            except Exception as err:
                logger.warning("family plugin %s could not be loaded: %s", ep.name, err)
    return _FAMILIES


def register_family(family: Family) -> Family:
    """Register a family (a plugin's); a name can be taken once."""
    if not isinstance(family, Family) or not family.name:
        raise BundleError(f"{family!r} is not a qgraph.families.Family")
    known = families().get(family.name)
    if known is not None and known != family:
        raise BundleError(f"family name '{family.name}' is taken")
    _registered()[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The family registered as ``name``; an unknown one (e.g. from a newer qgraph or a missing
    plugin) is treated as ``generic``."""
    found = families().get(name)
    if found is None:
        logger.info("unknown family '%s' (a plugin not installed?); treated as generic", name)
        return GENERIC_FAMILY
    return found


def family_of(bundle_dir: str | os.PathLike[str]) -> Family:
    """The family of a bundle folder: its manifest's, else the first family whose markers or
    component names match, else ``generic``. A single ``.onnx`` file is ``generic``."""
    root = Path(bundle_dir)
    if not root.is_dir():
        return GENERIC_FAMILY
    from qgraph.runtime.files import read_manifest

    manifest = read_manifest(root)
    name = (manifest or {}).get("family")
    if name and name != GENERIC:
        return get_family(name)
    for family in _registered().values():
        if family.matches(root, manifest):
            return family
    return GENERIC_FAMILY


def open_session(bundle_dir: str | os.PathLike[str], **options: Any) -> Any:
    """The runtime session of the bundle's family (``qgraph.runtime.session.Session``);
    ``options`` (threads, optimization, share_weights, ...) go to its constructor."""
    return family_of(bundle_dir).session_class()(bundle_dir, **options)


def guess_role(model: ir.Model) -> str:
    """The role of a component of an unknown family, from its graph inputs: a ``use_cache_branch``
    input is a merged decoder; token ids or embeddings with a cache a step, without one a
    decoder; a float tensor of rank 3 (features) alone an encoder; anything else ''."""
    names = {v.name or "" for v in model.graph.inputs}
    tokens = names & {"input_ids", "inputs_embeds", "input_embeds", "decoder_input_ids"}
    cached = any(n.startswith(("past", "cache")) for n in names)
    if "use_cache_branch" in names:
        return MERGED_DECODER
    if tokens:
        return STEP if cached else DECODER
    floats = [
        v
        for v in model.graph.inputs
        if v.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16) and v.shape is not None
    ]
    if floats and all(len(v.shape) == 3 for v in floats):
        return ENCODER
    return ""


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
