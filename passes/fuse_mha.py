"""Bidirectional attention (no cache) -> ``com.microsoft:MultiHeadAttention``.

Rewrite (per Softmax; q, k, v in [B,H,S,D] / [B,H,L,D])::

    p = Softmax(scale * (q @ Transpose(k, [0,1,3,2])) [+ mask], axis=-1)
    o = Reshape(Transpose(p @ v, [0,2,1,3]), [B,S,H*D])
  ->
    o = MultiHeadAttention(q', k', v', attention_bias=mask', num_heads=H, scale)

``q'``/``k'``/``v'`` are the [B,S,H*D] tensors the head-split Reshape/Transpose came from (the
projections' outputs), so the fused op reads them without a copy. The additive mask becomes
``attention_bias``: used as is when it is already [B|1, H|1, S, L], else expanded once per
mask tensor to that shape (a key-padding mask [B,1,1,L] becomes [B,1,S,L]), so masking is
bit-for-bit the same additive bias as before, whatever the mask's values: BERT's extended mask
``(1 - mask) * min``, SDPA's ``Where(keep, 0, -inf)``, the Hugging Face decoder's 4-D
causal + padding mask built from a 2-D ``attention_mask`` (left or right padding alike). This is
the encoder's windowed self-attention, and the padded decoder attention ``fuse-gqa`` refuses.

Grouped heads (repeat_kv, no cache): the keys/values attention reads, repeat_kv's [B,H,L,D]
outputs, go in as they are (MultiHeadAttention's BNSH key/value), q as [B,S,H*D]. So do
keys/values that are stored [B,H,L,D] tensors rather than head splits of a projection (a
cross-attention cache read from a graph input: Whisper's cached branch reads
``past_key_values.{i}.encoder.*`` at every step, and a [B,L,H*D] view of it would be a
transposed copy of the whole cache per call).

A past cache (``Concat(past, new, axis=2)`` [-> repeat_kv]) that ``fuse-gqa`` leaves (a
padding mask from a 2-D ``attention_mask``; a causal mask with several queries and batch > 1):
the keys/values attention reads -- the concatenated (and repeated) [B,H,P+S,D] tensors -- go
in as BNSH key/value with no past inputs, and the graph's own Concat keeps feeding the present
outputs; exact, as the op computes the same softmax over the same keys with the same bias.
The keys'/values' batch and total length may be proven from
the Concat inputs (Concat keeps the other axes equal), as TorchScript leaves them unnamed.
The other spellings of q @ k^T and the SDPA guards are ``_attention``'s.

Does not fire (``skipped:<reason>``): a past cache or grouped KV heads whose keys/values as
read are not [B,H,L,D] with the query's heads and head size;
a mask that is not rank 4 or whose head axis is neither 1 nor H (an unknown head axis
is taken when H > 1: broadcasting against the [B,H,S,L] scores makes it 1 or H); the
general matcher's reasons (heads or head size not static, internals used elsewhere,
softmax not on the last axis, keys not provably transposed). Causal decoder attention is
left to ``fuse-gqa`` when both run (it runs first).
Scope: the main graph and its subgraphs (If branches).
"""

from __future__ import annotations

import onnx_ir as ir

from qgraph.pass_api import GraphPass, Tolerance
from qgraph.passes._attention import Attention, find_sites, finish, fuse_site, to_bsd
from qgraph.passes._rewrite import MS, Builder, rank, same_dim, static_dim, static_dims


def _bnsh(site: Attention) -> bool:
    """True when the keys/values attention reads (repeat_kv's outputs) are [B,H,L,D] with the
    query's head count and size, so MultiHeadAttention can take them as they are (BNSH)."""
    k, v = site.k_bnsh, site.v_bnsh
    return (
        k is not None
        and v is not None
        and all(
            static_dim(t, 1) == site.heads and static_dim(t, 3) == site.head_dim for t in (k, v)
        )
        and (same_dim(k, 2, v, 2) or _concat_dims(site, 2))
        and (same_dim(k, 0, site.q, 0) and same_dim(v, 0, site.q, 0) or _concat_dims(site, 0))
    )


def _concat_dims(site: Attention, axis: int) -> bool:
    """Keys and values read as the caches' Concat outputs (no repeat_kv), and their ``axis``
    proven equal from the Concat inputs (Concat keeps the other axes, and sums axis 2): the
    batch equal to the query's (axis 0), or the total lengths of keys and values (axis 2)."""
    if site.past_k is None or site.k_bnsh is not site.k_total or site.v_bnsh is not site.v_total:
        return False
    if axis == 0:
        return same_dim(site.k_new, 0, site.q, 0) and same_dim(site.v_new, 0, site.q, 0)
    return same_dim(site.past_k, 2, site.past_v, 2) and same_dim(site.k_new, 2, site.v_new, 2)


def _stored_bnsh(site: Attention) -> bool:
    """Keys and values read as stored [B,H,L,D] tensors (a cross-attention cache fed as a graph
    input, e.g. Whisper's ``past_key_values.{i}.encoder.*``), not head splits of [B,L,H*D]
    projections: as [B,L,H*D] they would be transposed -- copied -- at every call, so they go
    in as BNSH key/value (MultiHeadAttention's cross-attention format) as they are."""
    if site.past_k is not None or site.k_bshd is not None or not _bnsh(site):
        return False
    for v in (site.k_new, site.v_new):
        node = v.producer()
        kind = (node.domain, node.op_type) if node is not None else None
        if kind in (("", "Transpose"), (MS, "RotaryEmbedding")):
            return False  # a head split (to_bsd reads its [B,S,H*D] source without a copy)
    return True


def _head_axis_ok(mask: ir.Value, heads: int) -> bool:
    """The mask's head axis is 1 or H: static, or unknown with H > 1 (the mask broadcasts
    against the [B,H,S,L] scores, which the graph can only do when that axis is 1 or H)."""
    d = static_dim(mask, 1)
    return d in (1, heads) or (d is None and heads > 1)


def _refusal(site: Attention) -> str | None:
    if site.past_k is not None and not _bnsh(site):
        return "past key/value cache not read as [B,H,L,D]"
    if site.kv_heads != site.heads and not _bnsh(site):
        return "grouped KV heads (fuse-gqa's case)"
    mask = site.mask
    if mask is not None and (rank(mask) != 4 or not _head_axis_ok(mask, site.heads)):
        return "mask is not [B|1, H|1, S|1, L]"
    return None


def _seq_view(v: ir.Value) -> ir.Value:
    """Shape-only value whose dim 1 is the sequence dim (dim 2) of a [B,H,S,D] value."""
    return ir.Value(shape=ir.Shape([None, v.shape[2]]) if rank(v) == 4 else None)


def _bias(b: Builder, site: Attention, cache: dict, q: ir.Value, k: ir.Value) -> ir.Value | None:
    """The mask as [B|1, H|1, S, L] (q: [B,S,H*D]; k: [B,L,H*D] or [B,H,L,D])."""
    mask = site.mask
    if mask is None:
        return None
    if same_dim(mask, 2, site.q, 2) and same_dim(mask, 3, site.k_total, 2):
        return mask
    if mask not in cache:
        lead, s, t = static_dims(mask, 0, 2), static_dim(site.q, 2), static_dim(site.k_total, 2)
        if lead is not None and s is not None and t is not None:
            shape = b.ints([*lead, s, t])
        else:
            parts = [
                b.shape(mask, 0, 2),
                b.shape(q, 1, 2, known=_seq_view(site.q)),
                b.shape(k, 2, 3)
                if rank(k) == 4
                else b.shape(k, 1, 2, known=_seq_view(site.k_total)),
            ]
            shape = b.one("Concat", parts, axis=0)
        cache[mask] = b.one("Expand", [mask, shape])
    return cache[mask]


class FuseMultiHeadAttention(GraphPass):
    """Bidirectional attention (optional additive mask) -> MultiHeadAttention."""

    name = "fuse-mha"
    category = "fusion"
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    must_follow = {"fuse-gqa": "causal decoder attention belongs to fuse-gqa"}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        sites = []
        for site in find_sites(self, model):
            reason = _refusal(site)
            if reason is not None:
                self.count(f"skipped:{reason}", where=site.out.producer())
                continue
            sites.append(site)
        caches: dict[ir.Graph, dict] = {}  # a value computed once serves one graph only
        for site in sites:
            b = Builder()
            if site.kv_heads != site.heads or site.past_k is not None or _stored_bnsh(site):
                q, k, v = to_bsd(b, site.q, site.heads), site.k_bnsh, site.v_bnsh
            else:
                q, k, v = site.bsd_inputs(b)
            bias = _bias(b, site, caches.setdefault(site.graph, {}), q, k)
            out = b.one(
                "MultiHeadAttention",
                [q, k, v, None, None, bias] if bias is not None else [q, k, v],
                domain=MS,
                num_heads=site.heads,
                scale=float(site.scale),
            )
            fuse_site(site.graph, b, site, out)
            self.count("fused")
        if sites:
            finish(model)
        return ir.passes.PassResult(model, bool(sites))
