"""Mixed precision in ``quantize-int4``: per-pattern bits and block sizes (``overrides``), honoured
by MatMulNBits and by the tied embedding's GatherBlockQuantized."""

import numpy as np
import pytest

from qgraph.errors import PipelineError
from qgraph.passes._blockquant import fake_quantize
from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.pipeline import expand, to_text
from qgraph.registry import default_registry
from qgraph.testing import check_pass
from tests.passes.bundles import decoder_bundle


@pytest.mark.parametrize("sym", [False, True])
def test_lm_head_and_tied_embedding_at_8_bits(sym):
    bundle = decoder_bundle()
    InlineLmHead()(bundle)
    model = bundle.components["decoder_init"]
    table = model.graph.initializers["lm_head.weight"].const_value.numpy().copy()
    w = model.graph.initializers["W"].const_value.numpy().copy()
    feeds = {"input_ids": np.array([[3, 17, 99, 0]], np.int64)}
    p = QuantizeMatMulNBits(
        block_size=32,
        symmetric=sym,
        accuracy_level=0,
        roles=("other", "lm_head"),
        overrides=("lm_head:8/16",),
    )
    check = check_pass(p, model, feeds=feeds)
    assert check.stats == {
        "quantized": 2,
        "quantized:4bit/b32": 1,
        "quantized:8bit/b16": 1,
        "embedding gather quantized": 1,
    }
    (gather,) = [n for n in model.graph if n.op_type == "GatherBlockQuantized"]
    assert (gather.attributes["bits"].as_int(), gather.attributes["block_size"].as_int()) == (8, 16)
    bits = sorted(
        (n.attributes["bits"].as_int(), n.attributes["block_size"].as_int())
        for n in model.graph
        if n.op_type == "MatMulNBits"
    )
    assert bits == [(4, 32), (8, 16)]
    deq_table, deq_w = fake_quantize(table, 8, 16, sym), fake_quantize(w, 4, 32, sym)
    expected = np.tanh(deq_table.T[feeds["input_ids"]] @ deq_w) @ deq_table
    np.testing.assert_allclose(check.outputs_after["logits"], expected, rtol=1e-4, atol=1e-4)


def test_overrides_parse_print_and_refuse_bad_specs():
    steps = expand("quantize-int4{block_size=32,overrides=[lm_head:8,*.layers.0.*:8/64]}",
                   default_registry())  # fmt: skip
    (p,) = steps
    assert p.precisions() == [("lm_head", 8, 32), ("*.layers.0.*", 8, 64)]
    assert "overrides=[lm_head:8,*.layers.0.*:8/64]" in to_text(steps)
    assert p.tolerance.min_top1 is None  # a 4-bit rest keeps the 4-bit budget
    assert QuantizeMatMulNBits(bits=8, overrides=("q:8/32",)).tolerance.min_top1 == 0.9
    for bad in ("lm_head:3", "lm_head", ":8", "q:8/48", "q:x"):
        with pytest.raises(PipelineError, match="PATTERN:BITS"):
            QuantizeMatMulNBits.from_options({"overrides": [bad]})
