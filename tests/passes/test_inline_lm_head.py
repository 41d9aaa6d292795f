from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.testing import check_bundle_pass, op_types
from tests.passes.bundles import HIDDEN, VOCAB, decoder_bundle


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
