"""qgraph's fusions on the fusion corpus (``tests/corpus``, issue #14): sites fused and numerics.

Every case runs through ``hygiene,fusions`` (the graph part of ``qgraph compile --passes fp32``;
``tests/corpus/tools.py``), then:

- ``test_sites[case::kind]``: the fused count of each expected site kind equals the expected
  count (``tests/corpus/score.py`` says which nodes count);
- ``test_no_unexpected_sites[case]``: no fused node of a kind the case does not hold;
- ``test_numeric[case]``: ONNX Runtime outputs of the fused graph within the case's tolerance
  of the unfused graph's (every feed set).

``XFAIL`` below lists the (case, kind) pairs qgraph does not fuse fully yet, with the measured
count and the class of miss from the issue; they are strict: when a fusion lands and the pair
passes, the XPASS fails the suite until its line is removed here.

Exports are cached per test session (or across sessions in ``$QGRAPH_CORPUS_CACHE``: a file that
exists is reused, so clear that folder when the corpus changes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from tests.corpus import Case, case_kinds, hand_cases, hf_cases
from tests.corpus.ours import qwen3_asr_cases, whisper_cases
from tests.corpus.score import count_model, fused_sites, max_abs_diff
from tests.corpus.tools import run_qgraph
from tests.export.whisper_bundles import tiny_whisper

XFAIL: dict[tuple[str, str], str] = {
    # (case, kind): why it is not fused yet -- the measured count (fused/expected) in the comment
}


def _params() -> list:
    out = []
    for name, kinds in case_kinds().items():
        for kind in kinds:
            marks = []
            if (name, kind) in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[name, kind]))
            out.append(pytest.param(name, kind, id=f"{name}::{kind}", marks=marks))
    return out


CASE_NAMES = list(case_kinds())


@dataclass
class Fused:
    case: Case
    path: Path
    counts: dict[str, int]


@pytest.fixture(scope="session")
def corpus_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("QGRAPH_CORPUS_CACHE")
    return Path(cache) if cache else tmp_path_factory.getbasetemp() / "fusion-corpus"


@pytest.fixture(scope="session")
def _memo() -> dict:
    return {}


@pytest.fixture
def fused(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    corpus_folder: Path,
    _memo: dict,
) -> Callable[[str], Fused]:
    """``fused(name)``: the case built (once per session) and run through qgraph's fusions."""

    def get(name: str) -> Fused:
        if name in _memo:
            return _memo[name]
        if name.startswith("qwen3-asr/"):
            cases = qwen3_asr_cases(request.getfixturevalue("tiny_raw"))
        elif name.startswith("whisper/"):
            cases = whisper_cases(tiny_whisper(tmp_path_factory))
        elif name.startswith("hand/"):
            cases = hand_cases(corpus_folder)
        else:
            cases = hf_cases(corpus_folder, (name.split("/")[0],))
        case = {c.name: c for c in cases}[name]
        out = run_qgraph(case, corpus_folder / "qgraph" / (name.replace("/", "__") + ".onnx"))
        _memo[name] = Fused(case, out, dict(count_model(out, case.expected)))
        return _memo[name]

    return get


@pytest.mark.parametrize(("name", "kind"), _params())
def test_sites(fused, name: str, kind: str):
    f = fused(name)
    assert f.counts.get(kind, 0) == f.case.expected[kind], f"{name}: {f.counts}"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_no_unexpected_sites(fused, name: str):
    f = fused(name)
    extra = {k: n for k, n in f.counts.items() if n and k not in f.case.expected}
    assert not extra, f"{name}: fused nodes of kinds the case does not hold: {extra}"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_numeric(fused, name: str):
    f = fused(name)
    diff = max_abs_diff(f.case.path, f.path, f.case.feeds())
    assert diff <= f.case.tolerance, f"{name}: max abs diff {diff:.3g} > {f.case.tolerance}"


# -- the scoring itself -----------------------------------------------------------------------
def _scored(nodes: list[onnx.NodeProto], inputs: list[str]) -> dict[str, int]:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])],
    )
    return dict(fused_sites(helper.make_model(graph), "attention-decoder"))


def test_score_classifies_attention():
    from onnx import helper

    ms = "com.microsoft"
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"]),
        helper.make_node("MatMul", ["x", "w"], ["k"]),
        helper.make_node("Concat", ["past", "k"], ["kc"], axis=2),
        # self: keys from the same hidden state (with a past)
        helper.make_node("MultiHeadAttention", ["q", "kc", "kc"], ["a"], domain=ms, num_heads=1),
        # cross: keys from the encoder states only (reshaped to a size read off the queries)
        helper.make_node("MatMul", ["enc", "w"], ["ek0"]),
        helper.make_node("Shape", ["a"], ["xs"]),
        helper.make_node("Reshape", ["ek0", "xs"], ["ek"]),
        helper.make_node("MultiHeadAttention", ["a", "ek", "ek"], ["c"], domain=ms, num_heads=1),
        # packed weights (ORT's Attention): self; GQA with its own rotary: 2 rotary sites
        helper.make_node("Attention", ["c", "w"], ["p"], domain=ms, num_heads=1),
        helper.make_node(
            "GroupQueryAttention", ["p", "", ""], ["g"], domain=ms, num_heads=1, do_rotary=1
        ),
        helper.make_node("SkipSimplifiedLayerNormalization", ["g", "x", "w"], ["n"], domain=ms),
        helper.make_node("Gelu", ["n"], ["t"], approximate="tanh"),
        helper.make_node("BiasGelu", ["t", "w"], ["y"], domain=ms),
    ]
    counts = _scored(nodes, ["x", "past", "enc"])
    assert counts == {
        "attention-decoder": 3,
        "attention-cross": 1,
        "rotary": 2,
        "rms-norm": 1,
        "skip-rms-norm": 1,
        "fast-gelu": 1,
        "gelu": 1,
    }


def test_score_reads_branches_with_outer_weights():
    """Attention inside an ``If`` branch whose projections use the parent's weights: self."""
    from onnx import TensorProto, helper

    ms = "com.microsoft"
    branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["q"]),
            helper.make_node("MatMul", ["x", "w2"], ["k"]),
            helper.make_node("MultiHeadAttention", ["q", "k", "k"], ["a"], domain=ms, num_heads=1),
            helper.make_node("MatMul", ["enc", "w2"], ["ek"]),
            helper.make_node(
                "MultiHeadAttention", ["a", "ek", "ek"], ["y"], domain=ms, num_heads=1
            ),
        ],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info(n, t, None)
            for n, t in (("x", TensorProto.FLOAT), ("enc", TensorProto.FLOAT), ("cond", 9))
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [helper.make_tensor(n, TensorProto.FLOAT, [1], [1.0]) for n in ("w", "w2")],
    )
    counts = fused_sites(helper.make_model(graph), "attention-decoder")
    assert dict(counts) == {"attention-decoder": 2, "attention-cross": 2}
