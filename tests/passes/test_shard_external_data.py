import json

import numpy as np
import onnxruntime as ort

from qgraph.bundle import Bundle
from qgraph.passes.shard_external_data import ShardExternalData
from qgraph.passes.share_weights import ShareWeights
from qgraph.testing import check_bundle_pass
from tests.passes.bundles import decoder_bundle


def test_shards_with_transformers_js_names(tmp_path):
    bundle = decoder_bundle()  # each decoder: E 128x16 (8 KiB) and W 16x16 (1 KiB)
    p = ShardExternalData(max_bytes=8192)
    check = check_bundle_pass(p, bundle)
    assert check.stats == {"sharded": 2, "shards": 4}
    out = bundle.save(tmp_path / "out")
    names = sorted(f.name for f in out.iterdir())
    assert "decoder_init.onnx_data" in names and "decoder_init.onnx_data_1" in names
    assert "decoder_init.onnx_data_2" not in names
    config = json.loads((out / "config.json").read_text())
    declared = config["transformers.js_config"]["use_external_data_format"]
    assert declared == {"decoder_init.onnx": 2, "decoder_step.onnx": 2}
    sess = ort.InferenceSession(str(out / "decoder_step.onnx"))
    (logits,) = sess.run(None, {"input_ids": np.zeros((1, 1), np.int64)})
    assert logits.shape == (1, 1, 128)
    again = Bundle.load(out)
    check_bundle_pass(ShardExternalData(max_bytes=8192), again, expect_modified=False)


def test_does_not_fire_on_shared_data():
    bundle = decoder_bundle()
    ShareWeights()(bundle)
    check = check_bundle_pass(ShardExternalData(), bundle, expect_modified=False)
    assert check.stats == {"skipped:shared data file": 2}
