import numpy as np

from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.testing import check_bundle_pass, check_pass, copy_model, op_types
from tests.passes.bundles import HIDDEN, VOCAB, decoder_bundle, merged_decoder_bundle


def test_unties_lm_head_and_stores_the_table_once():
    bundle = decoder_bundle()
    check = check_bundle_pass(InlineLmHead(), bundle)
    assert check.stats == {"untied": 2, "embedding reads lm_head": 2}
    for model in bundle.components.values():
        # Gather(E, ids) became Transpose(Gather(E^T, ids, axis=1)); the lm_head reads E^T
        assert op_types(model) == ["Gather", "Transpose", "MatMul", "Tanh", "MatMul"]
        weight = model.graph.initializers["lm_head.weight"].const_value
        assert list(weight.shape) == [HIDDEN, VOCAB]
        assert "E" not in model.graph.initializers


def test_embedding_can_keep_its_own_table():
    bundle = decoder_bundle()
    check_bundle_pass(InlineLmHead(embed_from_lm_head=False), bundle)
    for model in bundle.components.values():
        assert op_types(model) == ["Gather", "MatMul", "Tanh", "MatMul"]
        assert {"E", "lm_head.weight"} <= set(model.graph.initializers)


def test_keep_tied_and_nothing_to_untie():
    bundle = decoder_bundle()
    check_bundle_pass(InlineLmHead(keep_tied=True), bundle, expect_modified=False)
    InlineLmHead()(bundle)
    check = check_bundle_pass(InlineLmHead(), bundle, expect_modified=False)
    assert check.stats == {"skipped:no transposed-weight lm_head": 2}


def test_unties_the_lm_head_both_if_branches_read_once():
    bundle = merged_decoder_bundle()
    p = InlineLmHead(on=("decoder_model_merged",))
    check = check_bundle_pass(p, bundle)
    assert check.stats == {"untied": 1, "embedding reads lm_head": 2}
    model = bundle.components["decoder_model_merged"]
    assert sorted(model.graph.initializers) == ["W", "lm_head.weight"]
    assert [n.op_type for n in model.graph] == ["If"]
    head = model.graph.initializers["lm_head.weight"]
    assert list(head.const_value.shape) == [HIDDEN, VOCAB]
    (if_node,) = model.graph
    for branch in ("then_branch", "else_branch"):
        graph = if_node.attributes[branch].as_graph()
        assert [n.op_type for n in graph][:2] == ["Gather", "Transpose"]
        assert graph[0].inputs[0] is head and list(graph)[-1].inputs[1] is head

    # then quantize-int4: both branches' MatMuls and embedding Gathers read one packed table
    for use_cache in (True, False):
        model = copy_model(bundle.components["decoder_model_merged"])
        feeds = {
            "use_cache_branch": np.array([use_cache]),
            "input_ids": np.random.default_rng(1).integers(0, VOCAB, (2, 5)),
        }
        check = check_pass(QuantizeMatMulNBits(block_size=16), model, feeds=feeds)
        assert check.stats == {"quantized": 4, "embedding gather quantized": 2}
    (if_node,) = model.graph
    packed = model.graph.initializers["lm_head.weight_Q4"]
    for branch in ("then_branch", "else_branch"):
        graph = if_node.attributes[branch].as_graph()
        ops = [n.op_type for n in graph]
        assert ops.count("MatMulNBits") == 2 and "GatherBlockQuantized" in ops
        assert all(packed in n.inputs for n in graph if n.op_type == "GatherBlockQuantized")
    assert "lm_head.weight" not in model.graph.initializers
