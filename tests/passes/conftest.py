"""Fixtures for the fusion tests: the tiny Qwen3-ASR, exported once per session and cleaned.

``tiny_clean`` is the raw export after the ``hygiene`` pipeline (the graphs the fusions see in
``fp32``); ``tiny_component(name, *passes)`` loads one of its components (weights in memory)
and applies passes in order, so each fusion is tested on the graph its predecessors leave.
``typed(text)`` builds a model from ONNX text with inferred shapes, as ``hygiene`` leaves them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir
import pytest
from onnx_ir.passes.common import ShapeInferencePass

from qgraph.bundle import Bundle
from qgraph.pass_api import GraphPass
from qgraph.testing import model_from_text

LoadComponent = Callable[..., ir.Model]


@pytest.fixture(scope="session")
def tiny_clean(tiny_raw: Path) -> Path:
    from qgraph.cli import main

    out = tiny_raw.parent / "hygiene"
    assert main(["compile", str(tiny_raw), "-o", str(out), "--passes", "hygiene"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_component(tiny_clean: Path) -> LoadComponent:
    def load(name: str, *passes: GraphPass) -> ir.Model:
        model = Bundle.load(tiny_clean / f"{name}.onnx").components[name]
        ir.external_data.load_to_model(model)  # in memory: check_pass copies the model
        for p in passes:
            p(model)
        return model

    return load


def _typed(text: str) -> ir.Model:
    model = model_from_text(text)
    ShapeInferencePass()(model)
    return model


@pytest.fixture(scope="session")
def typed() -> Callable[[str], ir.Model]:
    """Model from ONNX text with inferred types and shapes, as ``hygiene`` leaves graphs."""
    return _typed
