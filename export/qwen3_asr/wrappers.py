"""Export wrappers: the native Qwen3-ASR modules, re-run without data-dependent control flow.

The wrappers hold the HF model's own submodules (no weight copies) and reproduce its eager
forward exactly, in a form ``torch.export`` traces with symbolic shapes:

- ``EncoderWrapper``: mel ``[1,128,T]`` -> ``[1,N,output_dim]``. It pads T to whole 100-frame
  chunks, runs the conv stem on every chunk, keeps the ``N = (T//100)*13 + ceil((T%100)/8)`` valid
  tokens, and replaces the native ``cu_seqlens`` loop by a batch of 104-token windows whose padded
  keys are masked. Hidden states stay 3-D so every Linear exports as MatMul(+Add), never Gemm.
- ``DecoderInitWrapper``: prompt ids + audio features -> logits for every position and the
  stacked KV cache ``[layers,batch,kv_heads,seq,head_dim]``. The audio rows are scattered into
  the embedded prompt at ``audio_offset`` (one contiguous ``<|audio_pad|>`` block per row).
- ``DecoderStepWrapper``: one token per row + the stacked past -> logits and the past grown by one.

Attention is written out (MatMul/Softmax, GQA by repeat), RMSNorm is the plain FP32 formula and
RoPE is 1-D (the checkpoint's interleaved MRoPE reduces to it for audio-only input). Additive
masks are built with ``torch.where`` so no ``0 * finfo.min`` product can turn into NaN later.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qgraph.export.tracing import neg_mask

CONV_STRIDE_TOTAL = 8
"""Time downsampling of the three stride-2 convolutions."""


def post_cnn_tokens(frames: int) -> int:
    """Tokens the conv stem makes from ``frames`` mel frames of one chunk (0 stays 0)."""
    return (frames + CONV_STRIDE_TOTAL - 1) // CONV_STRIDE_TOTAL


def audio_token_count(frames: int, n_window: int = 50) -> int:
    """Encoder output length N for a mel of ``frames`` frames (equals HF's formula)."""
    chunk = 2 * n_window
    return (frames // chunk) * post_cnn_tokens(chunk) + post_cnn_tokens(frames % chunk)


def rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Qwen3RMSNorm, written out: FP32 mean of squares, rsqrt, then the weight."""
    dtype = x.dtype
    x32 = x.to(torch.float32)
    variance = x32.pow(2).mean(-1, keepdim=True)
    x32 = x32 * torch.rsqrt(variance + module.variance_epsilon)
    return module.weight * x32.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """GQA: ``[B,KV,S,D] -> [B,KV*groups,S,D]``, each KV head repeated ``groups`` times."""
    if groups == 1:
        return x
    batch, kv_heads, seq, dim = x.shape
    x = x[:, :, None, :, :].expand(batch, kv_heads, groups, seq, dim)
    return x.reshape(batch, kv_heads * groups, seq, dim)


def conv_stem(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[chunks, 1, n_mels, chunk]`` mel chunks -> ``[chunks, steps, d_model]``: the three
    GELU convolutions, ``conv_out`` and the per-chunk positional embedding."""
    x = F.gelu(tower.conv2d1(x))
    x = F.gelu(tower.conv2d2(x))
    x = F.gelu(tower.conv2d3(x))
    chunks, channels, freq, steps = x.shape
    x = tower.conv_out(x.permute(0, 3, 1, 2).reshape(chunks, steps, channels * freq))
    return x + tower.positional_embedding.positional_embedding[:steps].to(x.dtype)


class EncoderWrapper(nn.Module):
    """``mel [1,128,T] -> audio_features [1,N,output_dim]``: audio tower + projector, batch 1."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # Held under the checkpoint's own attribute path so initializer names match its keys.
        self.model = nn.Module()
        self.model.audio_tower = model.model.audio_tower
        self.model.multi_modal_projector = model.model.multi_modal_projector
        cfg = self.model.audio_tower.config
        self.chunk = 2 * cfg.n_window
        self.chunk_tokens = post_cnn_tokens(self.chunk)
        self.window = self.chunk_tokens * (cfg.n_window_infer // self.chunk)
        self.num_heads = cfg.encoder_attention_heads
        self.head_dim = cfg.d_model // cfg.encoder_attention_heads

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n_mels, frames = mel.shape[1], mel.shape[2]
        tower = self.model.audio_tower
        x = F.pad(mel, (0, (self.chunk - frames % self.chunk) % self.chunk))
        chunks = x.shape[2] // self.chunk
        x = x.reshape(n_mels, chunks, self.chunk).permute(1, 0, 2).unsqueeze(1)
        x = conv_stem(tower, x)
        steps = x.shape[1]

        d_model = x.shape[-1]
        n_valid = (frames // self.chunk) * self.chunk_tokens + (
            frames % self.chunk + CONV_STRIDE_TOTAL - 1
        ) // CONV_STRIDE_TOTAL
        x = x.reshape(1, chunks * steps, d_model)[:, :n_valid]
        x = F.pad(x, (0, 0, 0, (self.window - n_valid % self.window) % self.window))
        windows = x.shape[1] // self.window
        x = x.reshape(windows, self.window, d_model)
        keep = torch.arange(windows * self.window, device=x.device) < n_valid
        mask = neg_mask(keep.reshape(windows, 1, 1, self.window), x.dtype)
        for layer in tower.layers:
            x = self._layer(layer, x, mask)
        x = x.reshape(1, windows * self.window, d_model)[:, :n_valid]
        x = tower.ln_post(x)
        return self.model.multi_modal_projector(x)

    def _layer(self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        windows, width, d_model = x.shape
        h = layer.self_attn_layer_norm(x)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(windows, width, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(attn.q_proj(h)), heads(attn.k_proj(h)), heads(attn.v_proj(h))
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(windows, width, d_model)
        x = x + attn.out_proj(out)
        h = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        return x + h


class TextDecoder(nn.Module):
    """Shared pieces of the two decoder wrappers (the HF text model's own modules)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        text = model.model.language_model
        cfg = text.config
        # Held under the checkpoint's own attribute paths so initializer names match its keys.
        self.model = nn.Module()
        self.model.language_model = nn.Module()
        self.model.language_model.embed_tokens = text.embed_tokens
        self.model.language_model.layers = text.layers
        self.model.language_model.norm = text.norm
        self.lm_head = model.lm_head
        self.head_dim = cfg.head_dim
        self.groups = cfg.num_attention_heads // cfg.num_key_value_heads
        self.register_buffer("inv_freq", text.rotary_emb.inv_freq.clone(), persistent=False)
        self.rope_scaling = float(text.rotary_emb.attention_scaling)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """1-D RoPE tables ``[B,1,S,head_dim]`` for ``position_ids [B,S]``."""
        freqs = position_ids[..., None].to(torch.float32) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scaling).to(dtype).unsqueeze(1)
        sin = (emb.sin() * self.rope_scaling).to(dtype).unsqueeze(1)
        return cos, sin

    def layer(
        self,
        layer: nn.Module,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, ...],
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        new_kv: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Qwen3 decoder layer; returns the new hidden states and the layer's K/V: past and
        new (the present cache), or only the new rows with ``new_kv`` (sherpa's deltas)."""
        attn = layer.self_attn
        cos, sin = rope
        batch, seq, _ = h.shape
        x = rms_norm(layer.input_layernorm, h)
        shape = (batch, seq, -1, self.head_dim)
        q = rms_norm(attn.q_norm, attn.q_proj(x).view(shape)).transpose(1, 2)
        k = rms_norm(attn.k_norm, attn.k_proj(x).view(shape)).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        new_k, new_v = k, v
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        k_all, v_all = repeat_kv(k, self.groups), repeat_kv(v, self.groups)
        scores = torch.matmul(q, k_all.transpose(2, 3)) * attn.scaling
        if mask is not None:
            scores = scores + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v_all).transpose(1, 2).reshape(batch, seq, -1)
        h = h + attn.o_proj(out)
        h = h + layer.mlp(rms_norm(layer.post_attention_layernorm, h))
        return (h, new_k, new_v) if new_kv else (h, k, v)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(rms_norm(self.model.language_model.norm, h))


class DecoderInitWrapper(TextDecoder):
    """Prefill: ``(input_ids, position_ids, audio_features, audio_offset)`` ->
    ``(logits [B,S,V], present_keys, present_values [L,B,KV,S,D])``."""

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        audio_features: torch.Tensor,
        audio_offset: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.model.language_model.embed_tokens(input_ids)
        batch, seq, hidden = h.shape
        n_audio = audio_features.shape[1]
        rows = torch.arange(n_audio, device=h.device) + audio_offset
        index = rows.reshape(1, n_audio, 1).expand(batch, n_audio, hidden)
        h = h.scatter(1, index, audio_features.to(h.dtype))

        pos = torch.arange(seq, device=h.device)
        mask = neg_mask(pos[None, :] <= pos[:, None], h.dtype).reshape(1, 1, seq, seq)
        rope = self.rope(position_ids, h.dtype)
        keys, values = [], []
        for layer in self.model.language_model.layers:
            h, k, v = self.layer(layer, h, rope, mask, None)
            keys.append(k)
            values.append(v)
        return self.head(h), torch.stack(keys), torch.stack(values)


class DecoderStepWrapper(TextDecoder):
    """Decode: ``(input_ids [B,1], position_ids [B,1], past_keys, past_values)`` ->
    ``(logits [B,1,V], present_keys, present_values [L,B,KV,P+1,D])``."""

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.model.language_model.embed_tokens(input_ids)
        rope = self.rope(position_ids, h.dtype)
        keys, values = [], []
        for i, layer in enumerate(self.model.language_model.layers):
            h, k, v = self.layer(layer, h, rope, None, (past_keys[i], past_values[i]))
            keys.append(k)
            values.append(v)
        return self.head(h), torch.stack(keys), torch.stack(values)
