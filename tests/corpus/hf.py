"""Tiny random-weight ``transformers`` models exported by torch's two ONNX exporters.

Each architecture is built from a config (seed 0, no download) and exported three ways:

- ``torchscript17``: ``torch.onnx.export(dynamo=False, opset_version=17)`` with
  ``attn_implementation="eager"`` (the explicit ``MatMul -> Softmax -> MatMul`` attention; the
  TorchScript exporter writes almost no ``value_info``);
- ``dynamo18``: ``torch.onnx.export(dynamo=True, opset_version=18, optimize=False)`` with
  ``attn_implementation="sdpa"`` (torch's SDPA lowering: ``sqrt(scale)`` on q and k, keys
  transposed through ``Reshape -> Transpose([0,2,1]) -> Reshape``);
- ``dynamo18-opt``: the same export with the exporter's default optimizer. ``optimize=True``
  runs exactly ``ONNXProgram.optimize()`` on the converted model before renaming I/O, so the
  corpus exports once and saves the program before and after ``optimize()`` (one trace, not two).

Graphs (all with dynamic batch and sequence dims):

- ``llama`` / ``qwen3`` decoders with a KV cache: ``input_ids [B,S]``, ``attention_mask [B,P+S]``
  (2-D key padding, the Hugging Face decoder input), ``position_ids [B,S]``, per layer
  ``past_key_values.i.key/value [B,kv,P,hd]`` -> ``logits`` and the grown cache. The wrapper
  fills a ``DynamicCache`` from the flat past tensors (transformers 5.23 traces this with both
  exporters).
- ``bert`` encoder: ``input_ids``, ``attention_mask [B,S]`` (key padding), ``token_type_ids``
  -> ``last_hidden_state``; ``bert_tanh`` is the same with ``hidden_act="gelu_new"`` (tanh GELU
  as ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``).
- ``whisper_encoder``: ``input_features [B, mels, 2*max_source_positions]`` ->
  ``last_hidden_state``.
- ``whisper_decoder`` with a self-attention cache: ``input_ids [B,S]``,
  ``encoder_hidden_states [B,E,d]``, per layer ``past_key_values.i.key/value [B,H,P,hd]`` ->
  ``logits`` and the grown self cache. The cross-attention K/V are projected from
  ``encoder_hidden_states`` in the graph (an ``EncoderDecoderCache`` with an empty cross cache);
  the cached cross K/V spelling comes from our own Whisper exporter (``tests/corpus/ours.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

LAYERS = 2
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
VOCAB = 128
FFN = 128
MELS = 8
SOURCE_POSITIONS = 16  # whisper encoder length; input frames are twice that

TORCHSCRIPT, DYNAMO, DYNAMO_OPT = "torchscript17", "dynamo18", "dynamo18-opt"
SOURCES = (TORCHSCRIPT, DYNAMO, DYNAMO_OPT)


@dataclass
class Export:
    """One module to export: example args, I/O names and dynamic dims (name per axis)."""

    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    inputs: list[str]
    outputs: list[str]
    dims: dict[str, dict[int, str]]
    """Input name -> {axis: dim name}; inputs in ``varargs`` are one tuple for dynamo."""
    varargs: int = 0
    """How many trailing inputs are the module's ``*past`` (one tuple in ``dynamic_shapes``)."""
    sources: tuple[str, ...] = SOURCES
    meta: dict = field(default_factory=dict)


# -- models -----------------------------------------------------------------------------------
def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build().eval()


def _flat_cache(cache) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


class DecoderWithCache(torch.nn.Module):
    """``(input_ids, attention_mask, position_ids, *past) -> (logits, *present)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return (out.logits, *_flat_cache(out.past_key_values))


def decoder(arch: str, attention: str) -> Export:
    """A Llama or Qwen3 causal LM with its KV cache."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        attn_implementation=attention,
    )
    if arch == "llama":
        model = _seeded(lambda: LlamaForCausalLM(LlamaConfig(**common)))
    else:
        model = _seeded(lambda: Qwen3ForCausalLM(Qwen3Config(**common)))
    batch, seq, past = 2, 3, 5
    past_names = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    args = (
        torch.randint(0, VOCAB, (batch, seq)),
        torch.ones(batch, past + seq, dtype=torch.int64),
        torch.arange(past, past + seq)[None].expand(batch, seq).contiguous(),
        *(torch.randn(batch, KV_HEADS, past, HEAD_DIM) for _ in past_names),
    )
    dims = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
    } | {n: {0: "batch", 2: "past"} for n in past_names}
    outputs = ["logits"] + [n.replace("past_key_values", "present") for n in past_names]
    names = ["input_ids", "attention_mask", "position_ids", *past_names]
    return Export(DecoderWithCache(model), args, names, outputs, dims, varargs=len(past_names))


class BertEncoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def bert(attention: str, act: str = "gelu") -> Export:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act=act,
        attn_implementation=attention,
    )
    model = _seeded(lambda: BertModel(config, add_pooling_layer=False))
    batch, seq = 2, 6
    args = (
        torch.randint(0, VOCAB, (batch, seq)),
        torch.ones(batch, seq, dtype=torch.int64),
        torch.zeros(batch, seq, dtype=torch.int64),
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dims = {n: {0: "batch", 1: "seq"} for n in names}
    return Export(BertEncoder(model), args, names, ["last_hidden_state"], dims)


def _whisper(attention: str) -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=MELS,
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_source_positions=SOURCE_POSITIONS,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        attn_implementation=attention,
    )
    return _seeded(lambda: WhisperForConditionalGeneration(config))


class WhisperEncoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, input_features):
        return self.encoder(input_features).last_hidden_state


def whisper_encoder(attention: str) -> Export:
    model = _whisper(attention)
    args = (torch.randn(2, MELS, 2 * SOURCE_POSITIONS),)
    dims = {"input_features": {0: "batch"}}
    return Export(WhisperEncoder(model), args, ["input_features"], ["last_hidden_state"], dims)


class WhisperDecoderWithCache(torch.nn.Module):
    """``(input_ids, encoder_hidden_states, *self_past) -> (logits, *self_present)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out

    def forward(self, input_ids, encoder_hidden_states, *past):
        from transformers import DynamicCache, EncoderDecoderCache

        self_cache = DynamicCache()
        for i in range(len(past) // 2):
            self_cache.update(past[2 * i], past[2 * i + 1], i)
        cache = EncoderDecoderCache(self_cache, DynamicCache())
        out = self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=encoder_hidden_states,
            past_key_values=cache,
            use_cache=True,
        )
        present = _flat_cache(out.past_key_values.self_attention_cache)
        return (self.proj_out(out.last_hidden_state), *present)


def whisper_decoder(attention: str) -> Export:
    model = _whisper(attention)
    batch, seq, past = 2, 3, 5
    past_names = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    args = (
        torch.randint(0, VOCAB, (batch, seq)),
        torch.randn(batch, SOURCE_POSITIONS, HIDDEN),
        *(torch.randn(batch, HEADS, past, HEAD_DIM) for _ in past_names),
    )
    dims = {
        "input_ids": {0: "batch", 1: "seq"},
        "encoder_hidden_states": {0: "batch", 1: "encoder_seq"},
    } | {n: {0: "batch", 2: "past"} for n in past_names}
    outputs = ["logits"] + [n.replace("past_key_values", "present") for n in past_names]
    names = ["input_ids", "encoder_hidden_states", *past_names]
    module = WhisperDecoderWithCache(model)
    return Export(module, args, names, outputs, dims, varargs=len(past_names))


ARCHITECTURES: dict[str, Callable[[str], Export]] = {
    "llama": lambda attention: decoder("llama", attention),
    "qwen3": lambda attention: decoder("qwen3", attention),
    "bert": bert,
    "bert_tanh": lambda attention: bert(attention, act="gelu_new"),
    "whisper_encoder": whisper_encoder,
    "whisper_decoder": whisper_decoder,
}
ONLY_TORCHSCRIPT: set[str] = set()
"""Architectures exported by TorchScript only (none at present)."""


# -- exporters --------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings(), torch.no_grad(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.ERROR)
        devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
        stack.enter_context(contextlib.redirect_stdout(devnull))
        yield


def export_torchscript(spec: Export, path: Path) -> Path:
    with _quiet():
        torch.onnx.export(
            spec.module,
            spec.args,
            str(path),
            input_names=spec.inputs,
            output_names=spec.outputs,
            dynamic_axes=spec.dims,
            opset_version=17,
            dynamo=False,
        )
    return path


def export_dynamo(spec: Export, plain: Path, optimized: Path) -> tuple[Path, Path]:
    """One trace; saved as is (``optimize=False``) and after ``ONNXProgram.optimize()``."""
    from torch.export import Dim

    made: dict[str, Dim] = {}

    def dim(name: str) -> Dim:
        return made.setdefault(name, Dim(name, min=1 if name != "total" else 2, max=1024))

    shapes: list = [{a: dim(n) for a, n in spec.dims.get(name, {}).items()} for name in spec.inputs]
    if spec.varargs:
        shapes = [*shapes[: -spec.varargs], tuple(shapes[-spec.varargs :])]
    with _quiet():
        program = torch.onnx.export(
            spec.module,
            spec.args,
            input_names=spec.inputs,
            output_names=spec.outputs,
            dynamic_shapes=tuple(shapes),
            opset_version=18,
            dynamo=True,
            optimize=False,
        )
        program.save(str(plain))
        program.optimize()
        program.save(str(optimized))
    return plain, optimized


def export_all(arch: str, folder: Path) -> dict[str, Path]:
    """Export ``arch`` with every source it has; ``{source: model path}`` (cached on disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {s: folder / f"{arch}.{s}.onnx" for s in SOURCES}
    wanted = (TORCHSCRIPT,) if arch in ONLY_TORCHSCRIPT else SOURCES
    if not paths[TORCHSCRIPT].is_file():
        export_torchscript(ARCHITECTURES[arch]("eager"), paths[TORCHSCRIPT])
    if DYNAMO in wanted and not paths[DYNAMO_OPT].is_file():
        export_dynamo(ARCHITECTURES[arch]("sdpa"), paths[DYNAMO], paths[DYNAMO_OPT])
    return {s: p for s, p in paths.items() if s in wanted}
