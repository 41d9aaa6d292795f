"""One session for decoder_init and decoder_step (``qgraph.runtime.merged``): the same numbers
as two sessions, each shared weight once at top level, and a fallback when merging cannot work."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from qgraph.examples import example_audio
from qgraph.runtime import AsrSession
from qgraph.runtime.merged import USE_CACHE, merge_decoders


@pytest.fixture(scope="module")
def compiled(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qgraph.cli import main

    out = tmp_path_factory.mktemp("merged") / "default"
    assert main(["compile", str(tiny_raw), "-o", str(out), "--passes", "default", "-q"]) == 0
    return out


def protos(bundle: Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    return tuple(
        onnx.load(str(bundle / f"{c}.onnx"), load_external_data=False)
        for c in ("decoder_init", "decoder_step")
    )


def external_places(graph: onnx.GraphProto) -> set[tuple]:
    return {
        tuple((e.key, e.value) for e in t.external_data)
        for t in graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }


def test_shared_weights_are_lifted_once(compiled: Path):
    init, step = protos(compiled)
    merged = merge_decoders(init, step)
    (node,) = merged.graph.node
    assert node.op_type == "If" and merged.graph.input[-1].name == USE_CACHE
    places = external_places(merged.graph)
    assert places == external_places(init.graph) | external_places(step.graph)
    assert len(places) == len([t for t in merged.graph.initializer if t.external_data])
    shared = external_places(init.graph) & external_places(step.graph)
    assert len(shared) > 10  # every layer's packed weights: one top-level initializer each


@pytest.mark.parametrize("bundle", ["raw", "default"])
def test_one_session_decodes_like_two(tiny_raw: Path, compiled: Path, bundle: str):
    path = tiny_raw if bundle == "raw" else compiled
    one = AsrSession(path, threads=1)
    two = AsrSession(path, threads=1, share_weights=False)
    assert one.merged_decoders and not two.merged_decoders
    mel = one.features(one.read_audio(example_audio()))
    features = one.encode(mel)
    prompt, offset = one.prompt(features.shape[1])
    a, b = one.prefill(prompt, features, offset), two.prefill(prompt, features, offset)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    step_a = one.step(prompt[-1], len(prompt), a[1], a[2])
    step_b = two.step(prompt[-1], len(prompt), b[1], b[2])
    for x, y in zip(step_a, step_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert one.transcribe(example_audio()).token_ids == two.transcribe(example_audio()).token_ids


def test_graphs_with_other_outputs_are_not_merged(compiled: Path):
    init, step = protos(compiled)
    step.graph.output[0].name = "renamed_logits"
    assert merge_decoders(init, step) is None
