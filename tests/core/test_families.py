"""qgraph.families: detection, roles, selection by role, plugins, roles deciding quantization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from qgraph import families
from qgraph.bundle import Bundle
from qgraph.errors import PipelineError
from qgraph.families import Family, family_of, guess_role, register_family
from qgraph.manager import run_pipeline
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.testing import model_from_text, op_types
from tests.passes.bundles import as_initializers

# A single-file encoder as another exporter writes it: projections named q_proj/fc1 but nothing
# in any name says "encoder".
ENCODER = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[1,80,64] input_features, float[64,64] q_proj, float[64,64] fc1)
    => (float[1,80,64] last_hidden_state) {
    q = MatMul (input_features, q_proj)
    last_hidden_state = MatMul (q, fc1)
}
"""

STEP = """
<ir_version: 10, opset_import: ["" : 18]>
g (int64[1,1] input_ids, float[1,2,4,8] past_keys) => (float[1,1,4] logits) {
    logits = Cast <to = 1> (input_ids)
}
"""


def _encoder() -> ir.Model:
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal((64, 64)).astype(np.float32) for n in ("q_proj", "fc1")}
    return as_initializers(model_from_text(ENCODER), arrays)


def test_guess_role_from_inputs() -> None:
    assert guess_role(_encoder()) == families.ENCODER
    assert guess_role(model_from_text(STEP)) == families.STEP


def test_builtin_roles_and_detection(tmp_path: Path) -> None:
    qwen = families.get_family("qwen3-asr")
    assert qwen.role("decoder_init") == families.PREFILL
    assert qwen.role("decoder_step") == families.STEP
    assert families.get_family("qwen3-asr-sherpa").role("conv_frontend") == families.FRONTEND
    folder = tmp_path / "sherpa"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"layout": {"name": "sherpa-onnx"}}))
    assert family_of(folder).name == "qwen3-asr-sherpa"
    (folder / "qgraph.json").write_text(json.dumps({"family": "whisper", "components": {}}))
    assert family_of(folder).name == "whisper"  # the manifest is the source of truth
    assert family_of(tmp_path / "missing.onnx").name == families.GENERIC
    assert families.get_family("from-a-newer-qgraph").name == families.GENERIC


def test_single_file_encoder_is_not_quantized_as_a_decoder(tmp_path: Path) -> None:
    ir.save(_encoder(), tmp_path / "model.onnx")
    bundle = Bundle.load(tmp_path / "model.onnx")
    assert bundle.family == families.GENERIC
    assert bundle.roles() == {"model": families.ENCODER}
    p = expand("quantize-int4", default_registry())[0]
    run_pipeline(bundle, [p])
    assert op_types(bundle.components["model"]).count("MatMul") == 2
    assert p.stats == {"skipped:role encoder not selected": 2}
    p = expand("quantize-int4{roles=[encoder]}", default_registry())[0]
    run_pipeline(bundle, [p])
    assert op_types(bundle.components["model"]).count("MatMulNBits") == 2


def test_passes_select_components_by_name_or_role() -> None:
    registry = default_registry()
    roles = {"encoder": "encoder", "decoder_init": "prefill", "decoder_step": "step"}
    cse = expand("cse", registry)[0]
    assert cse.targets(roles) == list(roles)
    assert expand("cse{on=[step]}", registry)[0].targets(roles) == ["decoder_step"]
    assert expand("cse{on=[encoder,prefill]}", registry)[0].targets(roles) == [
        "encoder",
        "decoder_init",
    ]
    assert expand("slice-init-logits", registry)[0].targets(roles) == ["decoder_init"]
    whisper = {"encoder_model": "encoder", "decoder_model_merged": "merged-decoder"}
    assert expand("low-rank", registry)[0].targets(whisper) == ["encoder_model"]
    assert expand("inline-lm-head", registry)[0].targets(whisper) == ["decoder_model_merged"]
    with pytest.raises(PipelineError, match=r"no component or role bogus .*encoder \(encoder\)"):
        expand("cse{on=[bogus]}", registry)[0].targets(roles)


def test_a_plugin_family_is_detected_and_gives_roles(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(families, "_FAMILIES", None)  # a fresh registry for this test
    toy = register_family(
        Family(
            "toy-asr",
            "a toy layout",
            {"frontend": families.FRONTEND, "model": families.DECODER},
            markers={"config.json:architectures.0": "unused"},
        )
    )
    ir.save(_encoder(), tmp_path / "frontend.onnx")
    ir.save(model_from_text(STEP), tmp_path / "model.onnx")
    assert family_of(tmp_path) is toy  # by its component names
    bundle = Bundle.load(tmp_path)
    assert bundle.family == "toy-asr"
    assert bundle.roles() == {"frontend": "frontend", "model": "decoder"}
    with pytest.raises(Exception, match="taken"):
        register_family(Family("toy-asr", "another"))


def test_whisper_gets_its_own_default(capsys) -> None:
    from qgraph.cli import main
    from qgraph.families import WHISPER_DEFAULT, get_family
    from qgraph.pipeline import expand, to_text
    from qgraph.registry import default_registry

    reg = default_registry()
    assert get_family("whisper").pipelines["default"] == WHISPER_DEFAULT
    whisper = to_text(expand("default", reg, family="whisper"))
    assert whisper == to_text(expand(WHISPER_DEFAULT, reg))
    assert "quantize-int4{bits=8,block_size=32}" in whisper
    assert "extract-embed-fp16" not in whisper and "share-weights" not in whisper
    # nested uses follow, other families keep the registry's text
    assert to_text(expand("small", reg, family="whisper")).startswith(whisper)
    assert to_text(expand("default", reg, family="qwen3-asr")) == to_text(expand("default", reg))
    assert main(["pipeline", "show", "default"]) == 0
    assert f"for family whisper (its own recipe): {WHISPER_DEFAULT}" in capsys.readouterr().out
