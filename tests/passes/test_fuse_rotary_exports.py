"""The rotary fusion on graphs other exporters write (``rotary_exports``): every site fuses,
numerically equal, idempotent; fuse-gqa sees the same attention sites after it as before."""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir
import pytest

from qgraph.passes.fuse_gqa import FuseGroupQueryAttention
from qgraph.passes.fuse_rotary_embedding import FuseRotaryEmbedding
from qgraph.testing import check_pass, copy_model, op_types
from tests.passes.rotary_exports import EXPORTERS, export

DIMS = {"batch": 2, "seq": 5}


def rotary_only(model: ir.Model) -> bool:
    """q and k are read by their RotaryEmbedding (and Shape) only: no Slice/Split left."""
    q, k = model.graph.inputs[:2]
    readers = {(u.node.op_type, u.idx) for v in (q, k) for u in v.uses()}
    return readers - {("Shape", 0)} == {("RotaryEmbedding", 0)}


@pytest.fixture(scope="session")
def exported() -> Callable[[str, str], ir.Model]:
    """``exported(model, exporter)``: a fresh copy of the model, each exported once a session."""
    cache: dict[str, dict[str, ir.Model]] = {}

    def get(name: str, exporter: str) -> ir.Model:
        if name not in cache:
            cache[name] = export(name)
        return copy_model(cache[name][exporter])

    return get


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_hf_decoders(exported, name, exporter):
    """q and k of both layers; one cos/sin table pair for all of them."""
    model = exported(name, exporter)
    check = check_pass(FuseRotaryEmbedding(), model, dims=DIMS)
    assert check.stats == {"fused": 4}
    ops = op_types(check.after)
    assert ops.count("RotaryEmbedding") == 4 and ops.count("Cos") == 1 and "Neg" not in ops


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_gqa_after_rotary(exported, name, exporter):
    """The rotary fusion changes nothing fuse-gqa reports about the attention sites."""
    model = exported(name, exporter)
    alone = FuseGroupQueryAttention()
    alone(copy_model(model))
    FuseRotaryEmbedding()(model)
    after = FuseGroupQueryAttention()
    after(model)
    assert dict(after.stats) == dict(alone.stats)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cached_tables(exported, exporter):
    """transformers 4.3x's cos_cached[:seq_len][position_ids]: the half table, real positions."""
    check = check_pass(FuseRotaryEmbedding(), exported("cached", exporter), dims=DIMS)
    assert check.stats == {"fused": 2}
    ropes = [n for n in check.after.graph if n.op_type == "RotaryEmbedding"]
    assert {n.inputs[1].name for n in ropes} == {"position_ids"}
    assert ropes[0].inputs[2].const_value.shape == (32, 8)
    assert not {"Gather", "Neg", "Cos"} & set(op_types(check.after))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_rotate_half_by_chunk(exported, exporter):
    check = check_pass(FuseRotaryEmbedding(), exported("chunk", exporter), dims=DIMS)
    assert check.stats == {"fused": 2}
    assert rotary_only(check.after)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_partial_rotation(exported, exporter):
    check = check_pass(FuseRotaryEmbedding(), exported("partial", exporter), dims=DIMS)
    assert check.stats == {"fused": 2}
    ropes = [n for n in check.after.graph if n.op_type == "RotaryEmbedding"]
    assert [n.attributes["rotary_embedding_dim"].value for n in ropes] == [8, 8]
    assert [n.attributes["num_heads"].value for n in ropes] == [4, 2]
    assert rotary_only(check.after) and "Neg" not in op_types(check.after)
