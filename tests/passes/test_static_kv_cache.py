import numpy as np
import pytest

from qgraph.instruments import verify
from qgraph.passes.fuse_gqa import FuseGroupQueryAttention
from qgraph.passes.fuse_rms_norm import FuseRmsNorm
from qgraph.passes.fuse_rotary_embedding import FuseRotaryEmbedding
from qgraph.passes.fuse_skip_rms_norm import FuseSkipRmsNorm
from qgraph.passes.static_kv_cache import StaticKvCache, static_feeds
from qgraph.testing import check_pass, copy_model, op_types

MAX_LEN = 16


def fused(tiny_component, component: str):
    return tiny_component(
        component,
        FuseRmsNorm(),
        FuseSkipRmsNorm(),
        FuseRotaryEmbedding(),
        FuseGroupQueryAttention(),
    )


def io_names(model) -> tuple[list[str], list[str]]:
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]


def feeds_for_both(model, dims: dict[str, int], position: int | None) -> dict:
    """Inputs of the stacked layout and, under their own names, of the static one: positions
    continue the past, the buffers hold the past and zeros up to MAX_LEN."""
    feeds = verify.sample_inputs(model, dims)
    if position is not None:
        feeds["position_ids"] = np.full_like(feeds["position_ids"], position)
    after = copy_model(model)
    StaticKvCache(max_len=MAX_LEN)(after)
    return {**feeds, **static_feeds(after, feeds, MAX_LEN)}


def test_step_gets_per_layer_shared_buffers(tiny_component):
    model = fused(tiny_component, "decoder_step")
    feeds = feeds_for_both(model, {"past": 7}, position=7)
    check = check_pass(StaticKvCache(max_len=MAX_LEN), model, feeds=feeds)
    inputs, outputs = io_names(check.after)
    assert inputs == [
        "input_ids",
        "position_ids",
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    assert outputs == [
        "logits",
        "present.0.key",
        "present.0.value",
        "present.1.key",
        "present.1.value",
    ]
    assert list(check.after.graph.inputs[2].shape) == ["batch", 2, MAX_LEN, 32]
    kinds = op_types(check.after)
    assert kinds.count("GroupQueryAttention") == 2 and kinds.count("ReduceMax") == 2
    assert "Concat" not in op_types(check.after)[-4:]  # no stacking of the presents
    assert check.stats == {"layers": 2}
    # the new key and value land at the position, the past stays, the rest is untouched
    present = check.outputs_after["present.1.value"]
    np.testing.assert_array_equal(present[:, :, :7], feeds["past_values"][1])
    assert np.any(present[:, :, 7] != 0) and not np.any(present[:, :, 8:])


def test_prefill_writes_the_prompt_into_the_buffers(tiny_component):
    model = fused(tiny_component, "decoder_init")
    feeds = feeds_for_both(model, {"seq": 5, "audio_tokens": 3}, position=None)
    check = check_pass(StaticKvCache(max_len=MAX_LEN), model, feeds=feeds)
    inputs, outputs = io_names(check.after)
    assert inputs[-4:] == [f"past_key_values.{i}.{k}" for i in (0, 1) for k in ("key", "value")]
    assert outputs[1:] == [f"present.{i}.{k}" for i in (0, 1) for k in ("key", "value")]
    assert not np.any(check.outputs_after["present.0.key"][:, :, 5:])


def test_symbolic_length_by_default(tiny_component):
    model = fused(tiny_component, "decoder_step")
    StaticKvCache()(model)
    assert [str(d) for d in model.graph.inputs[2].shape] == ["batch", "2", "max_len", "32"]
    assert str(StaticKvCache(max_len=8)) == "static-kv-cache{max_len=8}"


def test_does_not_fire_without_group_query_attention(tiny_component):
    check = check_pass(StaticKvCache(), tiny_component("decoder_step"), expect_modified=False)
    assert check.stats == {"skipped:no GroupQueryAttention": 1}


@pytest.mark.parametrize("component", ["encoder"])
def test_does_not_fire_on_the_encoder(tiny_component, component):
    model = tiny_component(component)
    check = check_pass(StaticKvCache(), model, expect_modified=False)
    assert check.stats == {"skipped:no GroupQueryAttention": 1}


def test_does_not_fire_on_unstacked_presents(typed):
    from tests.passes.test_fuse_gqa import DECODE

    model = typed(DECODE)
    FuseGroupQueryAttention()(model)
    check = check_pass(StaticKvCache(), model, expect_modified=False, dims={"past": 3})
    assert check.stats == {"skipped:no position_ids input of rank 2": 1}
