"""Int4 Whisper end to end: the merged decoder's If branches quantized, run by WhisperSession."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from qgraph.bundle import Bundle  # noqa: E402
from qgraph.cli import main  # noqa: E402
from qgraph.examples import example_audio  # noqa: E402
from qgraph.runtime.audio import load_audio  # noqa: E402
from qgraph.runtime.whisper import WhisperSession  # noqa: E402
from tests.export.whisper_bundles import tiny_whisper  # noqa: E402

log = logging.getLogger(__name__)
POSITIONS = "model.decoder.embed_positions.weight"

INT4 = "fp32,quantize-int4{roles=[q,k,v,o,other,lm_head,encoder]}"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    raw = tiny_whisper(tmp_path_factory)
    out = tmp_path_factory.mktemp("whisper-int4")
    for name, spec in (("fp32", "fp32"), ("int4", INT4)):
        assert main(["compile", str(raw), "-o", str(out / name), "--passes", spec]) == 0
    return out / "fp32", out / "int4"


def test_merged_decoder_is_int4_in_both_branches(bundles) -> None:
    fp32, int4 = bundles
    model = Bundle.load(int4).components["decoder_model_merged"]
    (if_node,) = [n for n in model.graph if n.op_type == "If"]
    for branch in ("then_branch", "else_branch"):
        graph = if_node.attributes[branch].as_graph()
        const_matmuls = [
            n for n in graph if n.op_type == "MatMul" and n.inputs[1].const_value is not None
        ]
        assert not const_matmuls, branch
        ops = [n.op_type for n in graph]
        # 2 layers x 8 projections + lm_head, q/k/v (and cross k/v) packed by fuse-sibling-matmuls
        assert ops.count("MatMulNBits") >= 13 and "GatherBlockQuantized" in ops, branch
    packed = {n: v for n, v in model.graph.initializers.items() if n.endswith("_Q4")}
    assert "lm_head.weight_Q4" in packed
    fp32_mats = {
        n
        for n, v in model.graph.initializers.items()
        if v.const_value.dtype.itemsize == 4 and len(v.shape) == 2 and not n.endswith("_scales")
    }
    assert fp32_mats == {POSITIONS}  # a Gather table; every MatMul weight is packed
    before = Bundle.load(fp32).components["decoder_model_merged"]
    weights = sum(
        v.const_value.nbytes
        for n, v in before.graph.initializers.items()
        if len(v.shape) == 2 and n != POSITIONS
    )
    stored = sum(v.const_value.nbytes for v in packed.values())
    assert stored == pytest.approx(weights / 8, rel=0.05)  # 4 bits per weight, once each


def test_int4_bundle_decodes_like_fp32(bundles) -> None:
    speech = load_audio(example_audio())
    sessions = [WhisperSession(b) for b in bundles]
    hidden = [s.encode(s.features(speech)) for s in sessions]
    prompt = sessions[0].prompt()
    runs = [
        s.generate(h, prompt, 12, stop_on_eos=False)[0]
        for s, h in zip(sessions, hidden, strict=True)
    ]
    agree = sum(a == b for a, b in zip(*runs, strict=True))
    log.info("tiny random Whisper, 12 greedy tokens: fp32 %s, int4 %s", *runs)
    # the with-past branch (cached steps) and the no-past branch agree on the int4 weights
    int4 = sessions[1]
    _, past = int4.decode(prompt, hidden[1], None)
    cached, _ = int4.decode(runs[1][:1], hidden[1], past)
    full, _ = int4.decode([*prompt, runs[1][0]], hidden[1], None)
    np.testing.assert_allclose(cached, full, atol=1e-3)
    # random tiny weights: near-flat logits, so only the first tokens are expected to agree
    assert runs[1][0] == runs[0][0] and agree >= 3, runs
