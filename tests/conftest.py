"""Shared fixtures: a small model with something for every hygiene pass to do."""

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qgraph.bundle import Bundle
from qgraph.testing import model_from_text

SMALL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[batch,64] x, float[64,64] w) => (float[batch,64] y) {
    shape = Constant <value = int64[2] {-1, 64}> ()
    r = Reshape <allowzero = 1> (x, shape)
    wt = Transpose <perm = [1, 0]> (w)
    a = MatMul (r, wt)
    b = MatMul (r, wt)
    dead = Relu (a)
    y = Add (a, b)
}
"""


def small_model() -> ir.Model:
    model = model_from_text(SMALL)
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    value = model.graph.inputs.pop()  # the weight becomes an initializer
    value.const_value = ir.tensor(w, name="w")
    model.graph.register_initializer(value)
    return model


@pytest.fixture
def small_onnx(tmp_path: Path) -> Path:
    """A bundle folder with one component ``small`` (weights in external data) and a side file."""
    bundle = Bundle(family="test")
    bundle.add_component("small", small_model())
    bundle.side_files["config.json"] = b'{"hello": 1}\n'
    return bundle.save(tmp_path / "small")


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Qwen3-ASR exported once per test session (about 15 s)."""
    from qgraph.export.qwen3_asr.exporter import export_qwen3_asr

    return export_qwen3_asr("tiny", tmp_path_factory.mktemp("tiny") / "raw")
