"""Export wrappers: transformers' Whisper modules, re-run in a form ``torch.export`` traces cleanly.

The wrappers hold the HF model's own submodules (no weight copies, initializer names equal the
checkpoint keys) and reproduce its eager forward (``eager_attention_forward``: q scaled after the
projection, softmax in the compute dtype):

- ``EncoderWrapper``: ``input_features [B, n_mels, 3000] -> last_hidden_state [B, 1500, d]``;
- ``DecoderWrapper`` (no cache): ``input_ids [B, S]``, ``encoder_hidden_states [B, E, d]`` ->
  ``logits [B, S, V]`` and, per layer, the self-attention K/V ``[B, H, S, hd]`` and the
  cross-attention K/V ``[B, H, E, hd]``;
- ``DecoderWithPastWrapper``: ``input_ids [B, S]`` and the past per layer (self K/V
  ``[B, H, P, hd]``, cross K/V ``[B, H, E, hd]``) -> ``logits``, self K/V grown to ``P + S`` and
  *empty* cross K/V ``[0, H, E, hd]``: the cross cache never changes, and a batch-0 present tells
  clients (onnx-asr, Transformers.js, ``qgraph.runtime.whisper``) to keep the one they have.

Outputs come flat in the optimum order: ``logits``, then per layer decoder key, decoder value,
encoder key, encoder value. Positions are ``P + arange(S)`` and the causal mask is built with
``torch.where`` from positions (no traced length is baked into a constant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qgraph.export.tracing import neg_mask


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, seq, width = x.shape
    return x.reshape(batch, seq, num_heads, width // num_heads).transpose(1, 2)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``softmax(q k^T + mask) v`` for pre-scaled ``q [B,H,S,hd]``; returns ``[B,S,H*hd]``."""
    scores = torch.matmul(q, k.transpose(2, 3))
    if mask is not None:
        scores = scores + mask
    out = torch.matmul(F.softmax(scores, dim=-1), v).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _query(attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return _heads(attn.q_proj(h) * attn.scaling, attn.num_heads)


def _ffn(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return h + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))


class EncoderWrapper(nn.Module):
    """``input_features [B, n_mels, 2*max_source_positions] -> last_hidden_state [B, N, d]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = nn.Module()  # the checkpoint's attribute path, so names match its keys
        self.model.encoder = model.model.encoder

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        enc = self.model.encoder
        x = F.gelu(enc.conv1(input_features))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            k, v = _heads(attn.k_proj(h), attn.num_heads), _heads(attn.v_proj(h), attn.num_heads)
            x = x + attn.out_proj(_attend(_query(attn, h), k, v, None))
            x = _ffn(layer, x)
        return enc.layer_norm(x)


class _Decoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.decoder = model.model.decoder
        self.proj_out = model.proj_out

    def run(
        self,
        input_ids: torch.Tensor,
        past: list[torch.Tensor] | None,
        cross: list[tuple[torch.Tensor, torch.Tensor]] | torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and, per layer, self K/V and cross K/V (computed from ``cross`` if a tensor)."""
        dec = self.model.decoder
        seq = input_ids.shape[1]
        past_len = 0 if past is None else past[0].shape[2]
        positions = torch.arange(seq, device=input_ids.device) + past_len
        h = dec.embed_tokens(input_ids) + F.embedding(positions, dec.embed_positions.weight)
        keys = torch.arange(past_len + seq, device=input_ids.device)
        mask = neg_mask(keys[None, :] <= positions[:, None], h.dtype)[None, None]
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(dec.layers):
            attn = layer.self_attn
            x = layer.self_attn_layer_norm(h)
            k, v = _heads(attn.k_proj(x), attn.num_heads), _heads(attn.v_proj(x), attn.num_heads)
            if past is not None:
                k = torch.cat((past[2 * i], k), dim=2)
                v = torch.cat((past[2 * i + 1], v), dim=2)
            h = h + attn.out_proj(_attend(_query(attn, x), k, v, mask))

            xattn = layer.encoder_attn
            if isinstance(cross, torch.Tensor):
                ck = _heads(xattn.k_proj(cross), xattn.num_heads)
                cv = _heads(xattn.v_proj(cross), xattn.num_heads)
            else:
                ck, cv = cross[i]
            x = layer.encoder_attn_layer_norm(h)
            h = h + xattn.out_proj(_attend(_query(xattn, x), ck, cv, None))
            h = _ffn(layer, h)
            presents += [k, v, ck, cv]
        return self.proj_out(dec.layer_norm(h)), presents


class DecoderWrapper(_Decoder):
    """First call: ``(input_ids, encoder_hidden_states) -> (logits, *presents)``."""

    def forward(
        self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        logits, presents = self.run(input_ids, None, encoder_hidden_states)
        return (logits, *presents)


class DecoderWithPastWrapper(_Decoder):
    """Later calls: ``(input_ids, *past) -> (logits, *presents)``, cross presents empty."""

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layers = len(past) // 4
        self_past = [t for i in range(layers) for t in past[4 * i : 4 * i + 2]]
        cross = [(past[4 * i + 2], past[4 * i + 3]) for i in range(layers)]
        logits, presents = self.run(input_ids, self_past, cross)
        out = [logits]
        for i in range(layers):
            k, v, ck, cv = presents[4 * i : 4 * i + 4]
            out += [k, v, ck[:0], cv[:0]]
        return tuple(out)
