"""The step's memory-bandwidth floor: bytes a step reads and the machine's read rate."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qgraph.runtime.floor import StepBytes, floor_ms, read_bandwidth, step_bytes


def test_step_bytes_count_weights_and_cache_not_gathered_tables(tmp_path):
    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")
    weight = numpy_helper.from_array(np.zeros((8, 8), np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["x"]),
            helper.make_node("MatMul", ["x", "weight"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info("past_keys", TensorProto.FLOAT, [2, 1, 2, "past", 4]),
            helper.make_tensor_value_info(
                "past_key_values.0.key", TensorProto.FLOAT, [1, 2, 64, 4]
            ),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [table, weight],
    )
    path = tmp_path / "step.onnx"
    onnx.save(helper.make_model(graph), path)
    read = step_bytes(path, past_tokens=10)
    assert read.weights == 8 * 8 * 4  # the gathered table is not read whole
    assert read.cache == (2 * 2 * 10 * 4 + 2 * 10 * 4) * 4  # the static buffer counts 10 too
    assert floor_ms(StepBytes(10**9, 0), 10**10) == 100.0


def test_read_bandwidth_is_positive():
    rates = read_bandwidth(threads=2, mib=16, repeat=2)
    assert set(rates) == {"numpy", "onnxruntime", "best"}
    assert rates["best"] == max(rates["numpy"], rates["onnxruntime"]) > 1e8
