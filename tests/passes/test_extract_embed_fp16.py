import numpy as np

from qgraph.passes.extract_embed_fp16 import ExtractEmbedFp16
from qgraph.testing import check_bundle_pass, op_types
from tests.passes.bundles import HIDDEN, VOCAB, decoder_bundle


def test_extracts_the_step_lookup():
    bundle = decoder_bundle()
    table = bundle.components["decoder_step"].graph.initializers["E"].const_value.numpy()
    check_bundle_pass(ExtractEmbedFp16(), bundle)
    step = bundle.components["decoder_step"]
    assert [v.name for v in step.graph.inputs] == ["input_embeds"]
    assert list(step.graph.inputs[0].shape) == ["batch", 1, HIDDEN]
    assert "Gather" not in op_types(step)
    assert "E" in step.graph.initializers  # still used by the tied lm_head
    saved = bundle.side_files["embed_tokens.bin"]
    assert saved.dtype == np.float16 and saved.shape == (VOCAB, HIDDEN)
    np.testing.assert_array_equal(saved, table.astype(np.float16))
    config = bundle.read_json("config.json")
    assert config["embed_tokens_dtype"] == "float16"
    assert config["embed_tokens_shape"] == [VOCAB, HIDDEN]
    assert "Gather" in op_types(bundle.components["decoder_init"])  # init keeps its lookup


def test_float32_is_exact():
    bundle = decoder_bundle()
    check_bundle_pass(ExtractEmbedFp16(dtype="float32"), bundle)
    assert bundle.side_files["embed_tokens.bin"].dtype == np.float32


def test_does_not_fire_without_plain_lookup():
    bundle = decoder_bundle()
    p = ExtractEmbedFp16(on=("decoder_step",), input="nope")
    check = check_bundle_pass(p, bundle, expect_modified=False)
    assert check.stats == {"skipped:no input nope": 1}
