"""Tiny random-weight Hugging Face models exported by other exporters, for the norm and GELU
fusion tests: what TorchScript (``torch.onnx.export(dynamo=False)``, opset 17) and the dynamo
exporter (opset 18, ``optimize=False``) write for Qwen3 (LlamaRMSNorm + q/k norms), BERT
(post-LN, tanh GELU ``gelu_new``) and the Whisper encoder (pre-LN, ``gelu_pytorch_tanh``).

Each export runs once per test session (``functools.cache``; a few seconds to half a minute);
``exported(name, exporter)`` returns a fresh copy after the ``hygiene`` passes (the fusions
infer the shapes they match on themselves: ``qgraph.shapes``), and ``feeds(model)`` inputs.
No downloads: the models are built from configs.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import onnx
import onnx_ir as ir

from qgraph.passes import (
    CommonSubexpressionElimination,
    FoldConstants,
    RemoveUnused,
    StripReshapeAllowzero,
    TopologicalSort,
)

SEQ = 8
FRAMES = 32  # Whisper: 2 x max_source_positions


def _module(name: str):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if name == "qwen3":
        config = tf.Qwen3Config(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=64,
        )
        model = tf.Qwen3ForCausalLM(config)
        forward = lambda ids, mask: model(input_ids=ids, attention_mask=mask, use_cache=False)  # noqa: E731
        output = "logits"
    elif name == "bert":
        config = tf.BertConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            hidden_act="gelu_new",
        )
        model = tf.BertModel(config)
        forward = lambda ids, mask: model(input_ids=ids, attention_mask=mask)  # noqa: E731
        output = "last_hidden_state"
    else:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = tf.WhisperConfig(
            d_model=64,
            encoder_layers=2,
            encoder_attention_heads=4,
            encoder_ffn_dim=128,
            num_mel_bins=80,
            max_source_positions=FRAMES // 2,
            activation_function="gelu_pytorch_tanh",
        )
        model = WhisperEncoder(config)
        forward = model
        output = "last_hidden_state"
    model.eval()

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):  # the names the dynamo exporter keeps
            return getattr(forward(input_ids, attention_mask), output)

    class Features(Tokens):
        def forward(self, input_features):
            return getattr(forward(input_features), output)

    return Features() if name == "whisper" else Tokens()


@functools.cache
def _export(name: str, exporter: str) -> bytes:
    import torch

    module = _module(name)
    if name == "whisper":
        args = (torch.randn(1, 80, FRAMES),)
        names, axes = ["input_features"], {"input_features": {0: "batch"}}
        shapes: tuple = ({0: torch.export.Dim("batch")},)
    else:
        args = (torch.randint(0, 128, (1, SEQ)), torch.ones(1, SEQ, dtype=torch.int64))
        names = ["input_ids", "attention_mask"]
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        shapes = (dims, dims)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=names,
                output_names=["y"],
                dynamic_axes=axes,
            )
            return buffer.getvalue()
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=18, optimize=False, dynamic_shapes=shapes
        )
        return program.model_proto.SerializeToString()


def exported(name: str, exporter: str) -> ir.Model:
    """A fresh copy of ``name`` (qwen3, bert, whisper) exported by ``exporter`` (torchscript or
    dynamo), after ``hygiene``."""
    model = ir.from_proto(onnx.load_from_string(_export(name, exporter)))
    for p in (
        FoldConstants(),
        StripReshapeAllowzero(),
        CommonSubexpressionElimination(),
        RemoveUnused(),
        TopologicalSort(),
    ):
        p(model)
    return model


def feeds(model: ir.Model) -> dict[str, np.ndarray]:
    """Inputs for an exported model: token ids under the vocabulary, an all-ones mask, or
    random features."""
    rng = np.random.default_rng(0)
    names = [v.name for v in model.graph.inputs]
    if names == ["input_features"]:
        return {"input_features": rng.standard_normal((2, 80, FRAMES)).astype(np.float32)}
    return {
        "input_ids": rng.integers(0, 128, (2, SEQ)).astype(np.int64),
        "attention_mask": np.ones((2, SEQ), np.int64),
    }
