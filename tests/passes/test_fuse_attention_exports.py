"""Attention as other exporters write it: tiny random BERT and Llama from ``transformers``,
exported once per session by TorchScript (opset 17) and dynamo (opset 18, optimize off/on),
eager and SDPA attention, with a 2-D ``attention_mask`` (one row right-padded).

TorchScript graphs carry no shapes: until the shared shape-inference step runs before the
fusions, each model is prepared here with ONNX Runtime's symbolic shape inference and
``fold-constants`` (what that step provides: symbolic dims that survive, static head counts).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qgraph.passes.fold_constants import FoldConstants
from qgraph.passes.fuse_gqa import FuseGroupQueryAttention
from qgraph.passes.fuse_mha import FuseMultiHeadAttention
from qgraph.testing import check_pass, op_types

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CASES = {
    "bert-eager-ts": ("bert", "eager", "ts"),
    "bert-sdpa-ts": ("bert", "sdpa", "ts"),
    "bert-sdpa-dynamo-opt": ("bert", "sdpa", "dynopt"),
    "llama-eager-ts": ("llama", "eager", "ts"),
    "llama-sdpa-ts": ("llama", "sdpa", "ts"),
    "llama-sdpa-dynamo": ("llama", "sdpa", "dyn"),
}
BATCH, SEQ = 2, 7


class _Wrap(torch.nn.Module):
    def __init__(self, model, logits: bool) -> None:
        super().__init__()
        self.model, self.logits = model, logits

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.logits if self.logits else out.last_hidden_state


def _export(arch: str, impl: str, exporter: str, path: Path) -> None:
    torch.manual_seed(0)
    common = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=100, max_position_embeddings=64, attn_implementation=impl,
    )  # fmt: skip
    if arch == "llama":
        config = transformers.LlamaConfig(num_key_value_heads=2, use_cache=False, **common)
        module = _Wrap(transformers.LlamaForCausalLM(config).eval(), logits=True)
    else:
        module = _Wrap(transformers.BertModel(transformers.BertConfig(**common)).eval(), False)
    ids, mask = (
        torch.zeros(BATCH, SEQ, dtype=torch.int64),
        torch.ones(BATCH, SEQ, dtype=torch.int64),
    )
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "ts":
            axes = {n: {0: "batch", 1: "seq"} for n in names}
            torch.onnx.export(
                module, (ids, mask), str(path), dynamo=False, opset_version=17,
                input_names=names, output_names=["out"], dynamic_axes=axes,
            )  # fmt: skip
        else:
            dims = {n: {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for n in names}
            torch.onnx.export(
                module, (ids, mask), str(path), dynamo=True, opset_version=18,
                input_names=names, output_names=["out"], dynamic_shapes=dims,
                optimize=exporter == "dynopt", external_data=False,
            )  # fmt: skip


def _prepared(path: Path) -> ir.Model:
    """Symbolic shapes (ORT's inference; Constant value_* attributes spelled as ``value`` first,
    which it requires) and folded constants."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name != "value":
            value = onnx.helper.get_attribute_value(node.attribute[0])
            dtype = np.float32 if "float" in node.attribute[0].name else np.int64
            del node.attribute[:]
            tensor = onnx.numpy_helper.from_array(np.asarray(value, dtype))
            node.attribute.append(onnx.helper.make_attribute("value", tensor))
    model = ir.from_proto(SymbolicShapeInference.infer_shapes(proto, auto_merge=True))
    FoldConstants()(model)
    return model


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("attention_exports")
    paths = {}
    for name, (arch, impl, exporter) in CASES.items():
        paths[name] = folder / f"{name}.onnx"
        _export(arch, impl, exporter, paths[name])
    return paths


def _feeds() -> dict[str, np.ndarray]:
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, 5:] = 0  # right padding
    ids = np.random.default_rng(0).integers(0, 100, (BATCH, SEQ))
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("case", list(CASES))
def test_key_padding_attention_fuses_to_mha(exports, case):
    check = check_pass(FuseMultiHeadAttention(), _prepared(exports[case]), feeds=_feeds())
    assert check.stats == {"fused": 2}
    ops = op_types(check.after)
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops


@pytest.mark.parametrize("case", ["llama-eager-ts", "llama-sdpa-dynamo"])
def test_gqa_refuses_value_dependent_padding_masks(exports, case):
    model = _prepared(exports[case])
    check = check_pass(FuseGroupQueryAttention(), model, feeds=_feeds(), expect_modified=False)
    assert check.stats == {"skipped:mask depends on input values": 2}
