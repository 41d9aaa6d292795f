from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.testing import check_bundle_pass, op_types
from tests.passes.bundles import HIDDEN, VOCAB, decoder_bundle


def test_unties_lm_head():
    bundle = decoder_bundle()
    p = InlineLmHead()
    check_bundle_pass(p, bundle)
    for model in bundle.components.values():
        assert "Transpose" not in op_types(model)
        weight = model.graph.initializers["lm_head.weight"].const_value
        assert list(weight.shape) == [HIDDEN, VOCAB]
        assert "E" in model.graph.initializers  # the Gather still reads the table


def test_keep_tied_and_nothing_to_untie():
    bundle = decoder_bundle()
    check_bundle_pass(InlineLmHead(keep_tied=True), bundle, expect_modified=False)
    p = InlineLmHead()
    p(bundle)
    check_bundle_pass(InlineLmHead(), bundle, expect_modified=False)
