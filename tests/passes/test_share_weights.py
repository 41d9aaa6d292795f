import numpy as np

from qgraph.bundle import Bundle
from qgraph.passes.inline_lm_head import InlineLmHead
from qgraph.passes.share_weights import ShareWeights
from qgraph.testing import check_bundle_pass
from tests.passes.bundles import HIDDEN, VOCAB, decoder, decoder_bundle


def test_shares_equal_tensors_in_one_file(tmp_path):
    bundle = decoder_bundle()
    InlineLmHead()(bundle)
    check = check_bundle_pass(ShareWeights(), bundle)
    assert check.stats["tensors shared"] == 2  # W and lm_head.weight (E^T), E is gone
    out = bundle.save(tmp_path / "out")
    names = sorted(f.name for f in out.iterdir())
    assert names == [
        "config.json",
        "decoder_init.onnx",
        "decoder_step.onnx",
        "decoder_weights.data",
        "qgraph.json",
    ]
    size = (out / "decoder_weights.data").stat().st_size
    assert size < 2 * (VOCAB * HIDDEN + HIDDEN * HIDDEN) * 4  # E^T and W once each
    again = Bundle.load(out)
    check_bundle_pass(ShareWeights(), again, expect_modified=False)


def test_step_only_tensor_goes_to_its_own_file(tmp_path):
    bundle = decoder_bundle()
    bundle.components["decoder_step"] = decoder("1", seed=1)  # different weights
    check_bundle_pass(ShareWeights(), bundle)
    out = bundle.save(tmp_path / "out")
    assert (out / "decoder_step.onnx.data").exists()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "decoder_step.onnx"))
    (logits,) = sess.run(None, {"input_ids": np.zeros((1, 1), np.int64)})
    assert logits.shape == (1, 1, VOCAB)


def test_does_not_fire_with_one_decoder():
    bundle = decoder_bundle()
    del bundle.components["decoder_step"]
    check = check_bundle_pass(ShareWeights(), bundle, expect_modified=False)
    assert check.stats == {"skipped:nothing to share": 1}
