"""CTranslate2 Whisper checkpoints (faster-whisper format) -> transformers Whisper models.

A CTranslate2 folder holds ``model.bin`` (the weights), ``config.json`` (generation settings:
``suppress_ids``, ``suppress_ids_begin``, ``alignment_heads``, ``lang_ids``) and
``tokenizer.json``. ``model.bin`` is little-endian::

    u32 version | str spec_name | u32 spec_revision | u32 n_vars
    n_vars x (str name | u8 ndim | ndim x u32 dims | u8 dtype | u32 nbytes | raw bytes)
    u32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is a u16 length (NUL included), the UTF-8 bytes and a NUL, and dtype is 0 f32,
1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. Scalars carry the architecture (``encoder/num_heads``,
``decoder/activation``, ``decoder/pre_norm`` ...).

Name mapping (no scaling is folded into CTranslate2's weights, so values map one to one):
``*/self_attention/linear_0`` is the fused q/k/v projection ``[3d, d]`` (the k slice of its bias
must be zero: Whisper's k_proj has none), ``linear_1`` the output projection; the decoder's
cross-attention ``attention/linear_0`` is q, ``linear_1`` the fused k/v ``[2d, d]``, ``linear_2``
the output; ``ffn/linear_0|1`` are fc1|fc2; ``*/layer_norm/{gamma,beta}`` the LayerNorm before the
block; ``position_encodings/encodings`` the positional tables; ``decoder/embeddings/weight`` the
token embedding, tied to ``proj_out``. Weights are converted to FP32.

Int8-quantized checkpoints (``weight_scale`` variables) are refused with a one-line ExportError.
"""

from __future__ import annotations

import logging
import mmap
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from qgraph.errors import ExportError

logger = logging.getLogger(__name__)

MODEL_BIN = "model.bin"
SUPPORTED_VERSION = 6
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bf16"}
_GELU = 3
"""CTranslate2's ActivationType for exact (erf) GELU, Whisper's activation."""


def is_ctranslate2_folder(path: Path) -> bool:
    """True for a folder with a CTranslate2 ``model.bin``."""
    return path.is_dir() and (path / MODEL_BIN).is_file()


class _Reader:
    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ExportError(f"{self.path}: truncated CTranslate2 model (ends at byte {self.pos})")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def string(self) -> str:
        (n,) = self.take("<H")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        if len(raw) != n or not raw.endswith(b"\0"):
            raise ExportError(f"{self.path}: malformed string in the CTranslate2 model")
        return raw[:-1].decode("utf-8")


def read_model_bin(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """``(spec_name, {name: array})`` of a CTranslate2 ``model.bin``; aliases resolved.

    Arrays are FP32 copies for floating-point variables and native integers otherwise.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            r = _Reader(buf, path)
            (version,) = r.take("<I")
            if version != SUPPORTED_VERSION:
                raise ExportError(
                    f"{path}: CTranslate2 model version {version} is not supported "
                    f"(expected {SUPPORTED_VERSION}); re-convert it with a current ctranslate2"
                )
            spec = r.string()
            r.take("<I")  # spec revision
            (count,) = r.take("<I")
            variables: dict[str, np.ndarray] = {}
            for _ in range(count):
                name = r.string()
                (ndim,) = r.take("<B")
                dims = r.take("<" + "I" * ndim)
                code, nbytes = r.take("<BI")
                if code not in _DTYPES:
                    raise ExportError(f"{path}: variable {name} has unknown dtype code {code}")
                if r.pos + nbytes > len(buf):
                    raise ExportError(f"{path}: truncated CTranslate2 model (in {name})")
                raw = buf[r.pos : r.pos + nbytes]
                r.pos += nbytes
                variables[name] = _decode(raw, code, dims)
            (n_alias,) = r.take("<I")
            for _ in range(n_alias):
                alias, target = r.string(), r.string()
                if target not in variables:
                    raise ExportError(f"{path}: alias {alias} points at missing {target}")
                variables[alias] = variables[target]
    except OSError as err:
        raise ExportError(f"{path}: cannot read ({err.strerror or err})") from None
    return spec, variables


def _decode(raw: bytes, code: int, dims: tuple[int, ...]) -> np.ndarray:
    if _DTYPES[code] == "bf16":
        bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(dims)
    arr = np.frombuffer(raw, _DTYPES[code]).reshape(dims)
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr.copy()


def _scalar(variables: dict[str, np.ndarray], name: str, path: Path) -> int:
    if name not in variables:
        raise ExportError(f"{path}: {name} is missing; this is not a CTranslate2 Whisper model")
    return int(variables[name].reshape(-1)[0])


def whisper_config(variables: dict[str, np.ndarray], path: Path, **special: Any) -> WhisperConfig:
    """The ``WhisperConfig`` implied by the variable shapes and scalars (eager attention)."""
    if _scalar(variables, "decoder/pre_norm", path) != 1:
        raise ExportError(f"{path}: the decoder is not pre-norm; not a Whisper model")
    if _scalar(variables, "decoder/activation", path) != _GELU:
        raise ExportError(f"{path}: decoder activation is not GELU; not a Whisper model")
    if _scalar(variables, "decoder/scale_embeddings", path) != 0:
        raise ExportError(f"{path}: scaled embeddings are not supported for Whisper")

    def layers(prefix: str) -> int:
        found = {
            int(m.group(1)) for k in variables if (m := re.match(rf"{prefix}/layer_(\d+)/", k))
        }
        return len(found)

    vocab, d_model = variables["decoder/embeddings/weight"].shape
    config = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=layers("encoder"),
        decoder_layers=layers("decoder"),
        encoder_attention_heads=_scalar(variables, "encoder/num_heads", path),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads", path),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        **special,
    )
    config._attn_implementation = "eager"
    return config


def state_dict(variables: dict[str, np.ndarray], config: WhisperConfig, path: Path) -> dict:
    """The transformers state dict (``model.encoder.*``, ``model.decoder.*``) as torch tensors."""
    d = config.d_model
    out: dict[str, np.ndarray] = {}

    def take(src: str, dst: str, *, bias: bool = True) -> None:
        out[f"{dst}.weight"] = variables[f"{src}/weight"]
        if bias:
            out[f"{dst}.bias"] = variables[f"{src}/bias"]

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = variables[f"{src}/gamma"]
        out[f"{dst}.bias"] = variables[f"{src}/beta"]

    def split(src: str, dsts: list[str]) -> None:
        w, b = variables[f"{src}/weight"], variables[f"{src}/bias"]
        for i, dst in enumerate(dsts):
            rows = slice(i * d, (i + 1) * d)
            out[f"{dst}.weight"] = w[rows]
            if dst.endswith("k_proj"):
                if np.any(b[rows] != 0):
                    raise ExportError(
                        f"{path}: {src} has a non-zero k bias; Whisper's k_proj has none"
                    )
            else:
                out[f"{dst}.bias"] = b[rows]

    for side, n in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        hf = f"model.{side}"
        out[f"{hf}.embed_positions.weight"] = variables[f"{side}/position_encodings/encodings"]
        norm(f"{side}/layer_norm", f"{hf}.layer_norm")
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            split(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
            take(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            take(f"{src}/ffn/linear_0", f"{dst}.fc1")
            take(f"{src}/ffn/linear_1", f"{dst}.fc2")
            if side == "decoder":
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
                take(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                split(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}_proj" for p in "kv"])
                take(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
    for conv in ("conv1", "conv2"):
        take(f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def _check_real_projection(variables: dict[str, np.ndarray], path: Path) -> None:
    if any(k.endswith("weight_scale") for k in variables):
        raise ExportError(
            f"{path}: int8-quantized CTranslate2 models are not supported; convert the "
            "checkpoint with --quantization float16 or float32"
        )
    proj = variables.get("decoder/projection/weight")
    emb = variables["decoder/embeddings/weight"]
    if proj is not None and proj is not emb and not np.array_equal(proj, emb):
        raise ExportError(f"{path}: the output projection is not tied to the embedding")


def load_ctranslate2(folder: Path, **special: Any) -> WhisperForConditionalGeneration:
    """An FP32, eval-mode HF Whisper model built in memory from a CTranslate2 folder.

    ``special`` sets token ids on the config (``decoder_start_token_id``, ``eos_token_id`` ...).
    """
    path = folder / MODEL_BIN
    spec, variables = read_model_bin(path)
    if spec != "WhisperSpec":
        raise ExportError(f"{path}: CTranslate2 spec is {spec!r}, expected 'WhisperSpec'")
    try:
        _check_real_projection(variables, path)
        config = whisper_config(variables, path, **special)
        weights = state_dict(variables, config, path)
    except KeyError as err:
        raise ExportError(
            f"{path}: variable {err.args[0]} is missing; the model is incomplete"
        ) from None
    del variables
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        which = (missing or unexpected)[0]
        raise ExportError(
            f"{path}: weight mapping mismatch at {which}; unsupported Whisper variant"
        )
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ExportError(f"{path}: no weights for {on_meta[0]}; unsupported Whisper variant")
    logger.info(
        "CTranslate2 %s: %d encoder + %d decoder layers, d_model %d, vocab %d",
        folder.name,
        config.encoder_layers,
        config.decoder_layers,
        config.d_model,
        config.vocab_size,
    )
    return model.float().eval()
