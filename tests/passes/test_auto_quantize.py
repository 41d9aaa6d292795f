"""``auto-quantize``: the budgeted 4/8-bit search on the tiny Qwen3-ASR (built-in speech), and the
weight groups it searches over (``_groups``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from qgraph.bundle import Bundle
from qgraph.manager import run_pipeline
from qgraph.passes._groups import decoder_groups, group_of, overrides
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.testing import op_types

FAST = "max_files=1,max_tokens=4"


@pytest.fixture(scope="module")
def tiny_fp32(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = Bundle.load(tiny_raw)
    run_pipeline(bundle, expand("fp32", default_registry()))
    return bundle.save(tmp_path_factory.mktemp("auto") / "fp32")


def _bits(bundle: Bundle) -> set[int]:
    return {
        n.attributes["bits"].as_int()
        for m in bundle.components.values()
        for n in m.graph.all_nodes()
        if n.op_type == "MatMulNBits"
    }


def test_groups_follow_layers_and_roles(tiny_fp32: Path) -> None:
    groups = decoder_groups(Bundle.load(tiny_fp32))
    assert list(groups) == ["L0 mlp", "L0 self-attn", "L1 mlp", "L1 self-attn", "lm_head"]
    assert all(".layers.0.mlp." in p for p in groups["L0 mlp"])
    assert overrides(groups, {"lm_head": (8, 32)}) == ("lm_head:8/32",)
    cross = [f"m.layers.{i}.encoder_attn.k_proj" for i in range(2)]
    assert group_of(cross, "") == "cross-attn k/v (all layers)"
    assert (
        group_of(cross[:1], "") == "L0 cross-attn" and group_of([], "lm_head.weight") == "lm_head"
    )


def test_a_loose_budget_takes_the_smallest_plan(tiny_fp32: Path) -> None:
    bundle = Bundle.load(tiny_fp32)
    (p,) = expand(f"auto-quantize{{budget=100,{FAST}}}", default_registry())
    assert p(bundle).modified
    assert p.stats["trials"] == 1 and p.stats["groups at 8 bits"] == 0
    assert _bits(bundle) == {4} and "MatMul" not in op_types(bundle.components["decoder_step"])


def test_an_impossible_budget_keeps_the_best_measured_plan(tiny_fp32: Path, caplog) -> None:
    bundle = Bundle.load(tiny_fp32)
    (p,) = expand(f"auto-quantize{{budget=-1000,max_trials=3,{FAST}}}", default_registry())
    with caplog.at_level(logging.WARNING):
        assert p(bundle).modified
    assert p.stats["trials"] == 3 and "no plan within the budget" in caplog.text
    assert p.stats["groups at 8 bits"] + p.stats["groups at 4 bits"] == 5
    assert (4 in _bits(bundle)) == (p.stats["groups at 4 bits"] > 0)
