"""Tiny rotary models exported by other tools: TorchScript (opset 17) and dynamo (opset 18,
``optimize=False`` and optimized), for the rotary fusion's tests on graphs it did not write.

Models (random weights, no downloads):

- ``llama``, ``qwen3``: transformers' LlamaForCausalLM / Qwen3ForCausalLM, 2 layers, hidden 64,
  4 heads, 2 KV heads (inv_freq @ position_ids -> Cos/Sin(Concat(freqs, freqs)) * scaling).
- ``cached``: Hugging Face's cached rotary of transformers 4.3x: cos/sin tables [max_pos, D] as
  buffers, ``cos_cached[:seq_len][position_ids].unsqueeze(1)``, rotate_half by ``x.shape[-1] // 2``.
- ``chunk``: transformers 5's angle computation with rotate_half spelled ``x.chunk(2, dim=-1)``.
- ``partial``: GPT-NeoX/Phi partial rotation, the rotary on the first half of the channels.
"""

from __future__ import annotations

import io
import warnings

import onnx
import onnx_ir as ir
import torch
from onnx_ir.passes.common import ShapeInferencePass

from qgraph.testing import copy_model

EXPORTERS = ("torchscript", "dynamo", "dynamo-optimized")
HEAD_DIM, HEADS, KV_HEADS, MAX_POS = 16, 4, 2, 32


def _inv_freq(dim: int) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def _rotate_half(x: torch.Tensor, chunk: bool) -> torch.Tensor:
    if chunk:
        x1, x2 = x.chunk(2, dim=-1)
    else:
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class Rotary(torch.nn.Module):
    """q [B,H,S,D] and k [B,Hkv,S,D] rotated at position_ids [B,S]."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.rotary_dim = HEAD_DIM // 2 if kind == "partial" else HEAD_DIM
        self.register_buffer("inv_freq", _inv_freq(self.rotary_dim), persistent=False)
        freqs = torch.outer(torch.arange(MAX_POS, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def cos_sin(self, x: torch.Tensor, position_ids: torch.Tensor):
        if self.kind == "cached":
            seq_len = x.shape[2]
            cos = self.cos_cached[:seq_len].to(x.dtype)[position_ids]
            sin = self.sin_cached[:seq_len].to(x.dtype)[position_ids]
            return cos.unsqueeze(1), sin.unsqueeze(1)
        inv = self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1)
        freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        chunk = self.kind == "chunk"
        if self.kind != "partial":
            return x * cos + _rotate_half(x, chunk) * sin
        x_rot, x_pass = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat((x_rot * cos + _rotate_half(x_rot, chunk) * sin, x_pass), dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor):
        cos, sin = self.cos_sin(q, position_ids)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)


def _module(name: str) -> tuple[torch.nn.Module, tuple, dict[str, dict[int, str]], list[str]]:
    torch.manual_seed(0)
    batch, seq = 2, 7
    position_ids = torch.arange(seq).expand(batch, seq)
    if name in ("llama", "qwen3"):
        from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

        kw = dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            intermediate_size=128,
            vocab_size=100,
            max_position_embeddings=MAX_POS,
        )
        config = LlamaConfig(**kw) if name == "llama" else Qwen3Config(head_dim=HEAD_DIM, **kw)
        config._attn_implementation = "eager"
        lm = AutoModelForCausalLM.from_config(config).eval()

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lm = lm

            def forward(self, input_ids, position_ids):
                return self.lm(
                    input_ids=input_ids, position_ids=position_ids, use_cache=False
                ).logits

        ids = torch.randint(0, 100, (batch, seq))
        dims = {"input_ids": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"}}
        return Logits(), (ids, position_ids), dims, ["logits"]
    q = torch.randn(batch, HEADS, seq, HEAD_DIM)
    k = torch.randn(batch, KV_HEADS, seq, HEAD_DIM)
    dims = {"q": {0: "batch", 2: "seq"}, "k": {0: "batch", 2: "seq"}}
    dims["position_ids"] = {0: "batch", 1: "seq"}
    return Rotary(name).eval(), (q, k, position_ids), dims, ["qr", "kr"]


def _unpacked(position_ids: torch.Tensor) -> None:
    """What transformers runs for unpacked positions (its packed-sequence check is data-dependent
    and uses aten::diff, which TorchScript cannot export)."""
    return None


def export(name: str) -> dict[str, ir.Model]:
    """``{exporter: model}`` for one model; TorchScript graphs get ONNX shape inference."""
    import transformers.masking_utils as masking

    module, args, dims, outputs = _module(name)
    inputs = list(dims)
    models = {}
    patched, masking.find_packed_sequence_indices = masking.find_packed_sequence_indices, _unpacked
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                args,
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dims,
            )
            models["torchscript"] = ir.from_proto(onnx.load_from_string(buffer.getvalue()))
            ShapeInferencePass()(models["torchscript"])
            shapes = {
                n: {axis: torch.export.Dim(d) for axis, d in axes.items()}
                for n, axes in dims.items()
            }
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                optimize=False,
                opset_version=18,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=shapes,
                verbose=False,
            )
            models["dynamo"] = copy_model(program.model)
            program.optimize()
            models["dynamo-optimized"] = copy_model(program.model)
    finally:
        masking.find_packed_sequence_indices = patched
    return models
