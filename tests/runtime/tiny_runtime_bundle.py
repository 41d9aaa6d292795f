"""A tiny hand-made qwen3-asr bundle that obeys the runtime's I/O contract.

The "model" is integer logic, so the expected transcript is known exactly:

- ``encoder`` returns ``mel[:, :H, :N]`` transposed, with ``N`` from the encoder length formula.
- ``decoder_init`` checks the prompt (positions ``arange(S)``, ``N`` contiguous audio pads at
  ``audio_offset`` between audio_start/audio_end, non-zero audio features) and then emits
  ``SUCC[last prompt token]``; the KV cache stores token ids (keys) and positions (values).
- ``decoder_step`` checks that the position equals the past length and that the cache holds the
  previous step's token and position, then emits ``SUCC[token]``.

Any broken check emits ``BAD`` (id 0, ``SUCC[BAD] = BAD``), so a runtime that feeds a wrong
token, position, cache or offset produces ``BAD`` until ``max_tokens``. ``SUCC`` chains the
tokens of ``SCRIPT`` and ends in ``<|im_end|>``. In the full-logits form of ``decoder_init``
every position but the last predicts ``BAD``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qgraph.examples import example_tokenizer

V = 151936
H = 8
LAYERS = 2
KV_HEADS = 2
HEAD_DIM = 4
BAD = 0
EOS = 151645
AUDIO_PAD, AUDIO_START, AUDIO_END, ASR_TEXT = 151676, 151669, 151670, 151704
LANGUAGE_PART = "language English"
TEXT_PART = "Hello world."

MakeBundle = Callable[..., Path]
"""``make_bundle(name, **write_bundle options)`` -> bundle folder (the conftest fixture)."""


def script_ids() -> tuple[list[int], list[int], int]:
    """(language-prefix ids, transcript ids, id of the prompt's final newline)."""
    tok = example_tokenizer()
    lang = tok.encode(LANGUAGE_PART, add_special_tokens=False).ids
    text = tok.encode(TEXT_PART, add_special_tokens=False).ids
    newline = tok.encode("assistant\n", add_special_tokens=False).ids[-1]
    return lang, text, newline


def _succ_table() -> np.ndarray:
    lang, text, newline = script_ids()
    chain = [newline, *lang, ASR_TEXT, *text, EOS]
    assert len(set(chain)) == len(chain), "script tokens must be unique"
    succ = np.full(V, BAD, dtype=np.int64)
    for a, b in zip(chain[:-1], chain[1:], strict=True):
        succ[a] = b
    return succ


def _const(name: str, value: np.ndarray | int | float | list[int]) -> onnx.NodeProto:
    arr = np.asarray(value)
    if arr.dtype == np.int32 or arr.dtype == np.int64 or arr.dtype.kind == "i":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name))


def _encoder() -> onnx.ModelProto:
    n = [
        _const("c100", [100]),
        _const("c13", [13]),
        _const("c7", [7]),
        _const("c8", [8]),
        _const("cH", [H]),
        _const("zeros2", [0, 0]),
        _const("axes12", [1, 2]),
        helper.make_node("Shape", ["mel"], ["T"], start=2, end=3),
        helper.make_node("Div", ["T", "c100"], ["chunks"]),
        helper.make_node("Mul", ["chunks", "c13"], ["full"]),
        helper.make_node("Mod", ["T", "c100"], ["rest"]),
        helper.make_node("Add", ["rest", "c7"], ["rest7"]),
        helper.make_node("Div", ["rest7", "c8"], ["part"]),
        helper.make_node("Add", ["full", "part"], ["N"]),
        helper.make_node("Concat", ["cH", "N"], ["ends"], axis=0),
        helper.make_node("Slice", ["mel", "zeros2", "ends", "axes12"], ["sliced"]),
        helper.make_node("Transpose", ["sliced"], ["audio_features"], perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        n,
        "tiny_encoder",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 128, "T"])],
        [helper.make_tensor_value_info("audio_features", TensorProto.FLOAT, [1, "N", H])],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _flag(nodes: list[onnx.NodeProto], cond: str, out: str) -> None:
    nodes.append(helper.make_node("Cast", [cond], [out], to=TensorProto.INT64))


def _decoder_init(full_logits: bool) -> onnx.ModelProto:
    succ = numpy_helper.from_array(_succ_table(), "SUCC")
    n: list[onnx.NodeProto] = [
        _const("zero", 0),
        _const("one", 1),
        _const("axis0", [0]),
        _const("depth", [V]),
        _const("onoff", np.array([0.0, 1.0], dtype=np.float32)),
        _const("bad", BAD),
        _const("pad", AUDIO_PAD),
        _const("astart", AUDIO_START),
        _const("aend", AUDIO_END),
        _const("fzero", np.float32(0.0)),
        _const("shape_1_1_V", [1, 1, V]),
        _const("shape_kv", [1, 1, 1, -1, 1]),
        _const("dims_l", [LAYERS]),
        _const("dims_1kv", [1, KV_HEADS]),
        _const("dims_hd", [HEAD_DIM]),
        _const("dims_1", [1]),
        _const("dims_V", [V]),
        _const("scalar", np.zeros(0, dtype=np.int64)),
        helper.make_node("Squeeze", ["input_ids", "axis0"], ["ids"]),
        helper.make_node("Squeeze", ["position_ids", "axis0"], ["pos"]),
        helper.make_node("Shape", ["input_ids"], ["S1"], start=1, end=2),
        helper.make_node("Reshape", ["S1", "scalar"], ["S"]),
        helper.make_node("Shape", ["audio_features"], ["N1"], start=1, end=2),
        helper.make_node("Reshape", ["N1", "scalar"], ["N"]),
        helper.make_node("Reshape", ["audio_offset", "scalar"], ["off"]),
        # positions == arange(S)
        helper.make_node("Range", ["zero", "S", "one"], ["ar"]),
        helper.make_node("Equal", ["pos", "ar"], ["pos_eq"]),
        helper.make_node("Cast", ["pos_eq"], ["pos_eq_i"], to=TensorProto.INT64),
        helper.make_node("ReduceMin", ["pos_eq_i"], ["ok_pos"], keepdims=0),
        # N pads at audio_offset, and exactly N pads in all
        helper.make_node("Range", ["zero", "N", "one"], ["arn"]),
        helper.make_node("Add", ["arn", "off"], ["pad_idx"]),
        helper.make_node("Gather", ["ids", "pad_idx"], ["pads"]),
        helper.make_node("Equal", ["pads", "pad"], ["pads_eq"]),
        helper.make_node("Cast", ["pads_eq"], ["pads_eq_i"], to=TensorProto.INT64),
        helper.make_node("ReduceMin", ["pads_eq_i"], ["ok_pads"], keepdims=0),
        helper.make_node("Equal", ["ids", "pad"], ["all_pads"]),
        helper.make_node("Cast", ["all_pads"], ["all_pads_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["all_pads_i"], ["n_pads"], keepdims=0),
        helper.make_node("Equal", ["n_pads", "N"], ["count_eq"]),
        helper.make_node("Sub", ["off", "one"], ["before"]),
        helper.make_node("Add", ["off", "N"], ["after"]),
        helper.make_node("Gather", ["ids", "before"], ["tok_before"]),
        helper.make_node("Gather", ["ids", "after"], ["tok_after"]),
        helper.make_node("Equal", ["tok_before", "astart"], ["start_eq"]),
        helper.make_node("Equal", ["tok_after", "aend"], ["end_eq"]),
        # the audio features arrived
        helper.make_node("Abs", ["audio_features"], ["af_abs"]),
        helper.make_node("ReduceSum", ["af_abs"], ["af_sum"], keepdims=0),
        helper.make_node("Greater", ["af_sum", "fzero"], ["audio_nonzero"]),
    ]
    for cond in ("count_eq", "start_eq", "end_eq", "audio_nonzero"):
        _flag(n, cond, f"ok_{cond}")
    n += [
        helper.make_node("Mul", ["ok_pos", "ok_pads"], ["ok1"]),
        helper.make_node("Mul", ["ok1", "ok_count_eq"], ["ok2"]),
        helper.make_node("Mul", ["ok2", "ok_start_eq"], ["ok3"]),
        helper.make_node("Mul", ["ok3", "ok_end_eq"], ["ok4"]),
        helper.make_node("Mul", ["ok4", "ok_audio_nonzero"], ["ok5"]),
        helper.make_node("Equal", ["ok5", "one"], ["ok"]),
        helper.make_node("Sub", ["S", "one"], ["last_i"]),
        helper.make_node("Gather", ["ids", "last_i"], ["last"]),
        helper.make_node("Gather", ["SUCC", "last"], ["good"]),
        helper.make_node("Where", ["ok", "good", "bad"], ["next"]),
        helper.make_node("Reshape", ["next", "dims_1"], ["next1"]),
        helper.make_node("OneHot", ["next1", "depth", "onoff"], ["hot"], axis=-1),
        helper.make_node("Reshape", ["hot", "shape_1_1_V"], ["last_logits"]),
        # KV cache: keys hold token ids, values hold positions
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["pos"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["ids_f", "shape_kv"], ["k5"]),
        helper.make_node("Reshape", ["pos_f", "shape_kv"], ["v5"]),
        helper.make_node("Concat", ["dims_l", "dims_1kv", "S1", "dims_hd"], ["kv_shape"], axis=0),
        helper.make_node("Expand", ["k5", "kv_shape"], ["present_keys"]),
        helper.make_node("Expand", ["v5", "kv_shape"], ["present_values"]),
    ]
    if full_logits:
        n += [
            helper.make_node("Reshape", ["bad", "dims_1"], ["bad1"]),
            helper.make_node("OneHot", ["bad1", "depth", "onoff"], ["bad_hot"], axis=-1),
            helper.make_node("Sub", ["S1", "dims_1"], ["S_minus_1"]),
            helper.make_node("Concat", ["dims_1", "S_minus_1", "dims_V"], ["bad_shape"], axis=0),
            helper.make_node("Expand", ["bad_hot", "bad_shape"], ["bad_rows"]),
            helper.make_node("Concat", ["bad_rows", "last_logits"], ["logits"], axis=1),
        ]
        logits_shape: list[int | str] = [1, "S", V]
    else:
        n.append(helper.make_node("Identity", ["last_logits"], ["logits"]))
        logits_shape = [1, 1, V]
    kv_dims: list[int | str] = [LAYERS, 1, KV_HEADS, "S", HEAD_DIM]
    graph = helper.make_graph(
        n,
        "tiny_decoder_init",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "S"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "S"]),
            helper.make_tensor_value_info("audio_features", TensorProto.FLOAT, [1, "N", H]),
            helper.make_tensor_value_info("audio_offset", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_shape),
            helper.make_tensor_value_info("present_keys", TensorProto.FLOAT, kv_dims),
            helper.make_tensor_value_info("present_values", TensorProto.FLOAT, kv_dims),
        ],
        initializer=[succ],
    )
    return _model(graph)


def _decoder_step(embeds: bool) -> onnx.ModelProto:
    succ = numpy_helper.from_array(_succ_table(), "SUCC")
    n: list[onnx.NodeProto] = [
        _const("one", 1),
        _const("zero", 0),
        _const("depth", [V]),
        _const("onoff", np.array([0.0, 1.0], dtype=np.float32)),
        _const("bad", BAD),
        _const("shape_1_1_V", [1, 1, V]),
        _const("shape_5", [1, 1, 1, 1, 1]),
        _const("new_kv_shape", [LAYERS, 1, KV_HEADS, 1, HEAD_DIM]),
        _const("scalar", np.zeros(0, dtype=np.int64)),
        _const("shape_H", [H]),
        _const("dims_1", [1]),
        _const("idx1", 1),
        _const("idx2", 2),
        _const("f256", np.float32(256.0)),
        _const("f65536", np.float32(65536.0)),
    ]
    if embeds:
        n += [
            helper.make_node("Reshape", ["input_embeds", "shape_H"], ["e"]),
            helper.make_node("Gather", ["e", "zero"], ["e0"]),
            helper.make_node("Gather", ["e", "idx1"], ["e1"]),
            helper.make_node("Gather", ["e", "idx2"], ["e2"]),
            helper.make_node("Mul", ["e1", "f256"], ["e1s"]),
            helper.make_node("Mul", ["e2", "f65536"], ["e2s"]),
            helper.make_node("Add", ["e0", "e1s"], ["e01"]),
            helper.make_node("Add", ["e01", "e2s"], ["e012"]),
            helper.make_node("Round", ["e012"], ["e_round"]),
            helper.make_node("Cast", ["e_round"], ["tok"], to=TensorProto.INT64),
        ]
        token_input = helper.make_tensor_value_info("input_embeds", TensorProto.FLOAT, [1, 1, H])
    else:
        n.append(helper.make_node("Reshape", ["input_ids", "scalar"], ["tok"]))
        token_input = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1])

    def last_entry(cache: str, out: str) -> None:
        n.extend(
            [
                helper.make_node("Gather", [cache, "zero"], [f"{out}_a"]),
                helper.make_node("Gather", [f"{out}_a", "zero"], [f"{out}_b"]),
                helper.make_node("Gather", [f"{out}_b", "zero"], [f"{out}_c"]),
                helper.make_node("Gather", [f"{out}_c", "P_last"], [f"{out}_d"]),
                helper.make_node("Gather", [f"{out}_d", "zero"], [f"{out}_e"]),
                helper.make_node("Round", [f"{out}_e"], [f"{out}_r"]),
                helper.make_node("Cast", [f"{out}_r"], [out], to=TensorProto.INT64),
            ]
        )

    n += [
        helper.make_node("Reshape", ["position_ids", "scalar"], ["pos"]),
        helper.make_node("Shape", ["past_keys"], ["P1"], start=3, end=4),
        helper.make_node("Reshape", ["P1", "scalar"], ["P"]),
        helper.make_node("Sub", ["P", "one"], ["P_last"]),
    ]
    last_entry("past_keys", "prev_tok")
    last_entry("past_values", "prev_pos")
    n += [
        helper.make_node("Equal", ["pos", "P"], ["pos_ok"]),
        helper.make_node("Gather", ["SUCC", "prev_tok"], ["expected_tok"]),
        helper.make_node("Equal", ["expected_tok", "tok"], ["tok_ok"]),
        helper.make_node("Equal", ["prev_pos", "P_last"], ["cache_pos_ok"]),
        helper.make_node("And", ["pos_ok", "tok_ok"], ["ok1"]),
        helper.make_node("And", ["ok1", "cache_pos_ok"], ["ok"]),
        helper.make_node("Gather", ["SUCC", "tok"], ["good"]),
        helper.make_node("Where", ["ok", "good", "bad"], ["next"]),
        helper.make_node("Reshape", ["next", "dims_1"], ["next1"]),
        helper.make_node("OneHot", ["next1", "depth", "onoff"], ["hot"], axis=-1),
        helper.make_node("Reshape", ["hot", "shape_1_1_V"], ["logits"]),
        helper.make_node("Cast", ["tok"], ["tok_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["pos"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["tok_f", "shape_5"], ["k1"]),
        helper.make_node("Reshape", ["pos_f", "shape_5"], ["v1"]),
        helper.make_node("Expand", ["k1", "new_kv_shape"], ["k_new"]),
        helper.make_node("Expand", ["v1", "new_kv_shape"], ["v_new"]),
        helper.make_node("Concat", ["past_keys", "k_new"], ["present_keys"], axis=3),
        helper.make_node("Concat", ["past_values", "v_new"], ["present_values"], axis=3),
    ]
    past: list[int | str] = [LAYERS, 1, KV_HEADS, "P", HEAD_DIM]
    total: list[int | str] = [LAYERS, 1, KV_HEADS, "P1", HEAD_DIM]
    graph = helper.make_graph(
        n,
        "tiny_decoder_step",
        [
            token_input,
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, 1]),
            helper.make_tensor_value_info("past_keys", TensorProto.FLOAT, past),
            helper.make_tensor_value_info("past_values", TensorProto.FLOAT, past),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, V]),
            helper.make_tensor_value_info("present_keys", TensorProto.FLOAT, total),
            helper.make_tensor_value_info("present_values", TensorProto.FLOAT, total),
        ],
        initializer=[succ],
    )
    return _model(graph)


def embed_rows(dtype: str) -> np.ndarray:
    """Embed table whose row ``t`` spells ``t`` in base 256 in its first three columns."""
    ids = np.arange(V, dtype=np.int64)
    table = np.zeros((V, H), dtype=np.float32)
    table[:, 0] = ids % 256
    table[:, 1] = (ids // 256) % 256
    table[:, 2] = ids // 65536
    table[:, 3:] = 0.5
    return table.astype(dtype)


def write_bundle(
    root: Path,
    *,
    step_input: str = "input_ids",
    full_logits: bool = True,
    embed_dtype: str = "float16",
    manifest: bool = True,
) -> Path:
    """Write a tiny bundle to ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    embeds = step_input == "input_embeds"
    models = {
        "encoder": _encoder(),
        "decoder_init": _decoder_init(full_logits),
        "decoder_step": _decoder_step(embeds),
    }
    files = {name: (f"tiny_{name}.onnx" if manifest else f"{name}.onnx") for name in models}
    for name, model in models.items():
        onnx.save_model(
            model,
            str(root / files[name]),
            save_as_external_data=manifest,
            location=files[name] + ".data",
            size_threshold=1024,
        )
    config = {
        "model_type": "qwen3_asr",
        "decoder": {
            "num_layers": LAYERS,
            "hidden_size": H,
            "num_attention_heads": 2 * KV_HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "vocab_size": V,
        },
        "mel": {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 128},
        "special_tokens": {
            "eos_token_ids": [151643, EOS],
            "pad_token_id": 151643,
            "im_start": 151644,
            "im_end": EOS,
            "audio_start": AUDIO_START,
            "audio_end": AUDIO_END,
            "audio_pad": AUDIO_PAD,
            "asr_text": ASR_TEXT,
        },
    }
    if embeds:
        config["embed_tokens_dtype"] = embed_dtype
        embed_rows(embed_dtype).tofile(root / "embed_tokens.bin")
    (root / "config.json").write_text(json.dumps(config, indent=2))
    example_tokenizer().save(str(root / "tokenizer.json"))
    if manifest:
        components = {name: {"file": files[name]} for name in models}
        (root / "qgraph.json").write_text(
            json.dumps({"format_version": 1, "family": "qwen3-asr", "components": components})
        )
    return root
