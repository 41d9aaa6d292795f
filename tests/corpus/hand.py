"""Hand-written spellings (ONNX text) of the fusible patterns that issue #14 lists.

Each function returns ``(family, model, expected sites)``; weights are graph inputs in the text
(``w*``/``b*``/``*_cache``) turned into random initializers (seed per case). Shapes are symbolic
(``batch``, ``seq``, ``past``, ``total``, ``enc``) and no ``value_info`` is given, as a user's
hand-built graph would be.

- norms: RMSNorm with ``Pow(mean, -0.5)``; with the weight multiplied in first
  (``x * w / sqrt(...)``); skip-RMSNorm with the residual Add in either operand order and with
  the sum also a graph output; the same three for LayerNormalization (with a bias Add before);
- GELU: tanh GELU as ``0.5 x (1 + tanh(c (x + 0.044715 Pow(x, 3))))``, with ``x*x*x`` and
  ``x * 0.5`` first, HF's ``gelu_fast`` (``tanh(x c (1 + 0.044715 x x))``), and with a bias Add
  in front; erf GELU with ``Mul(x, 1/sqrt 2)`` and with ``Div`` plus a bias;
- rotary (on q and k ``[B, H, S, hd]``): cos/sin caches gathered by ``position_ids``;
  ``rotate_half`` with the half size computed from ``Shape``; rotate spelled with ``Split``;
  partial rotary (the first ``rotary_dim = hd / 2`` channels, the rest passed through);
- attention: keys transposed by one ``Transpose(perm=[0,2,3,1])`` before the head split; the
  dynamo SDPA lowering (``sqrt(scale)`` on q and k, keys transposed through
  ``Reshape -> Transpose([0,2,1]) -> Reshape``); a decoder self-attention with a KV cache and a
  2-D ``attention_mask`` (key padding and causal mask as one additive bias); a cross-attention.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qgraph.testing import model_from_text

D, H, HD = 64, 4, 16
OPSET = '<ir_version: 10, opset_import: ["" : 17]>'

RMS = """
    sq{i} = Mul ({x}, {x})
    ms{i} = ReduceMean <axes = [-1], keepdims = 1> (sq{i})
    ve{i} = Add (ms{i}, eps)
    sd{i} = Sqrt (ve{i})
    inv{i} = Reciprocal (sd{i})
    nx{i} = Mul ({x}, inv{i})
    {y} = Mul (nx{i}, {w})
"""


def _weights(model: ir.Model, seed: int) -> ir.Model:
    """Graph inputs named ``w*``, ``b*``, ``*_cache`` become random initializers."""
    rng = np.random.default_rng(seed)
    for value in list(model.graph.inputs):
        name = value.name or ""
        if not (name.startswith(("w", "b")) or name.endswith("_cache")):
            continue
        shape = tuple(int(d) for d in value.shape)
        if name.endswith("_cache"):
            positions = np.arange(shape[0], dtype=np.float32)[:, None]
            inv = 1.0 / (10000.0 ** (np.arange(0, shape[1], 2, dtype=np.float32) / shape[1]))
            freqs = positions * inv[None]
            emb = np.concatenate([freqs, freqs], axis=-1)
            array = (np.cos(emb) if name.startswith("cos") else np.sin(emb)).astype(np.float32)
        elif name.startswith("w") and len(shape) == 2:
            array = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        else:
            array = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            if name.startswith("b"):
                array -= 1.0
        model.graph.inputs.remove(value)
        value.const_value = ir.tensor(array, name=name)
        model.graph.register_initializer(value)
    return model


def _model(text: str, seed: int) -> ir.Model:
    return _weights(model_from_text(f"{OPSET}\n{text}"), seed)


# -- norms ------------------------------------------------------------------------------------
def rms_pow() -> ir.Model:
    return _model(
        """
g (float[batch,seq,64] x, float[64] w) => (float[batch,seq,64] y) {
    eps = Constant <value = float {1e-6}> ()
    two = Constant <value = float {2.0}> ()
    half = Constant <value = float {-0.5}> ()
    sq = Pow (x, two)
    ms = ReduceMean <axes = [-1], keepdims = 1> (sq)
    ve = Add (ms, eps)
    r = Pow (ve, half)
    nx = Mul (x, r)
    y = Mul (w, nx)
}""",
        1,
    )


def rms_weight_first() -> ir.Model:
    return _model(
        """
g (float[batch,seq,64] x, float[64] w) => (float[batch,seq,64] y) {
    eps = Constant <value = float {1e-6}> ()
    two = Constant <value = float {2.0}> ()
    sq = Pow (x, two)
    ms = ReduceMean <axes = [-1], keepdims = 1> (sq)
    ve = Add (ms, eps)
    sd = Sqrt (ve)
    xw = Mul (x, w)
    y = Div (xw, sd)
}""",
        2,
    )


def _skip(norm: str, order: str, sum_output: bool, bias: bool) -> str:
    """``h @ W (+ b)`` added to the residual ``r`` in ``order``, then the norm."""
    outputs = "float[batch,seq,64] y" + (", float[batch,seq,64] s" if sum_output else "")
    proj = "a0 = MatMul (h, w)\n    a = Add (a0, b)" if bias else "a = MatMul (h, w)"
    add = "s = Add (r, a)" if order == "ra" else "s = Add (a, r)"
    if norm == "rms":
        body = RMS.format(i="", x="s", y="y", w="wn")
        params = "float[64] wn"
    else:
        body = "    y = LayerNormalization <axis = -1, epsilon = 1e-5> (s, wn, bln)"
        params = "float[64] wn, float[64] bln"
    inputs = f"float[batch,seq,64] h, float[batch,seq,64] r, float[64,64] w, {params}"
    inputs += ", float[64] b" if bias else ""
    return f"""
g ({inputs}) => ({outputs}) {{
    eps = Constant <value = float {{1e-6}}> ()
    {proj}
    {add}
{body}
}}"""


def skip_rms(order: str, sum_output: bool) -> ir.Model:
    return _model(_skip("rms", order, sum_output, bias=False), 3)


def skip_ln(order: str, sum_output: bool) -> ir.Model:
    # LayerNormalization's bias input is named ``bln`` so ``_weights`` centres it near 0.
    return _model(_skip("ln", order, sum_output, bias=True), 4)


# -- GELU -------------------------------------------------------------------------------------
_GELU_IO = "float[batch,seq,64] x"
_GELU_BIAS_IO = "float[batch,seq,64] h, float[64,128] w, float[128] b"


def _gelu(body: str, bias: bool, seed: int) -> ir.Model:
    inputs = _GELU_BIAS_IO if bias else _GELU_IO
    width = 128 if bias else 64
    pre = "    m = MatMul (h, w)\n    x = Add (m, b)\n" if bias else ""
    text = f"""
g ({inputs}) => (float[batch,seq,{width}] y) {{
    half = Constant <value = float {{0.5}}> ()
    one = Constant <value = float {{1.0}}> ()
{pre}{body}
}}"""
    return _model(text, seed)


TANH_POW = """
    three = Constant <value = float {3.0}> ()
    k = Constant <value = float {0.044715}> ()
    c = Constant <value = float {0.7978845608028654}> ()
    x3 = Pow (x, three)
    kx3 = Mul (k, x3)
    inner = Add (x, kx3)
    ci = Mul (c, inner)
    t = Tanh (ci)
    t1 = Add (one, t)
    hx = Mul (half, x)
    y = Mul (hx, t1)"""

TANH_CUBE = """
    k = Constant <value = float {0.044715}> ()
    c = Constant <value = float {0.7978845608028654}> ()
    xx = Mul (x, x)
    x3 = Mul (xx, x)
    kx3 = Mul (x3, k)
    inner = Add (kx3, x)
    ci = Mul (inner, c)
    t = Tanh (ci)
    t1 = Add (t, one)
    xh = Mul (x, half)
    y = Mul (xh, t1)"""

TANH_FAST = """
    k = Constant <value = float {0.044715}> ()
    c = Constant <value = float {0.7978845608028654}> ()
    xc = Mul (x, c)
    xx = Mul (x, x)
    kxx = Mul (k, xx)
    p = Add (one, kxx)
    arg = Mul (xc, p)
    t = Tanh (arg)
    t1 = Add (one, t)
    xh = Mul (half, x)
    y = Mul (xh, t1)"""

ERF_MUL = """
    r = Constant <value = float {0.7071067811865476}> ()
    xr = Mul (x, r)
    e = Erf (xr)
    e1 = Add (e, one)
    xh = Mul (x, half)
    y = Mul (xh, e1)"""

ERF_DIV = """
    s2 = Constant <value = float {1.4142135623730951}> ()
    xr = Div (x, s2)
    e = Erf (xr)
    e1 = Add (one, e)
    xe = Mul (x, e1)
    y = Mul (xe, half)"""


# -- rotary -----------------------------------------------------------------------------------
_ROPE_IO = (
    "float[batch,4,seq,16] q, float[batch,4,seq,16] k, int64[batch,seq] position_ids, "
    "float[64,{rd}] cos_cache, float[64,{rd}] sin_cache"
)
_ROPE_OUT = "float[batch,4,seq,16] qr, float[batch,4,seq,16] kr"
_GATHER = """
    one_ax = Constant <value = int64[1] {1}> ()
    cg = Gather (cos_cache, position_ids)
    sg = Gather (sin_cache, position_ids)
    cos = Unsqueeze (cg, one_ax)
    sin = Unsqueeze (sg, one_ax)"""


def _rope_const(x: str, y: str) -> str:
    return f"""
    {x}1 = Slice ({x}, zero, mid, ax)
    {x}2 = Slice ({x}, mid, big, ax)
    {x}n = Neg ({x}2)
    {x}rot = Concat <axis = -1> ({x}n, {x}1)
    {x}c = Mul ({x}, cos)
    {x}s = Mul ({x}rot, sin)
    {y} = Add ({x}c, {x}s)"""


_SLICE_CONSTS = """
    zero = Constant <value = int64[1] {0}> ()
    mid = Constant <value = int64[1] {8}> ()
    big = Constant <value = int64[1] {9223372036854775807}> ()
    ax = Constant <value = int64[1] {3}> ()"""


def rotary_cache_gather() -> ir.Model:
    body = _GATHER + _SLICE_CONSTS + _rope_const("q", "qr") + _rope_const("k", "kr")
    return _model(f"g ({_ROPE_IO.format(rd=16)}) => ({_ROPE_OUT}) {{{body}\n}}", 5)


def _rope_shape(x: str, y: str) -> str:
    return f"""
    {x}sh = Shape ({x})
    {x}d = Gather <axis = 0> ({x}sh, three)
    {x}h = Div ({x}d, two)
    {x}hu = Unsqueeze ({x}h, zero)
    {x}1 = Slice ({x}, zero, {x}hu, ax)
    {x}2 = Slice ({x}, {x}hu, big, ax)
    {x}n = Neg ({x}2)
    {x}rot = Concat <axis = -1> ({x}n, {x}1)
    {x}c = Mul ({x}, cos)
    {x}s = Mul ({x}rot, sin)
    {y} = Add ({x}c, {x}s)"""


def rotary_shape_half() -> ir.Model:
    """cos/sin computed from positions in the graph (``Concat(f, f)``), half size from Shape."""
    body = (
        """
    three = Constant <value = int64 {3}> ()
    two = Constant <value = int64 {2}> ()
    zero = Constant <value = int64[1] {0}> ()
    big = Constant <value = int64[1] {9223372036854775807}> ()
    ax = Constant <value = int64[1] {3}> ()
    last = Constant <value = int64[1] {-1}> ()
    one_ax = Constant <value = int64[1] {1}> ()
    inv = Constant <value = float[8] {1.0, 0.31622776, 0.1, 0.031622776, 0.01, 0.0031622776,
                                      0.001, 0.00031622776}> ()
    pf = Cast <to = 1> (position_ids)
    pu = Unsqueeze (pf, last)
    f = Mul (pu, inv)
    emb = Concat <axis = -1> (f, f)
    c0 = Cos (emb)
    s0 = Sin (emb)
    cos = Unsqueeze (c0, one_ax)
    sin = Unsqueeze (s0, one_ax)"""
        + _rope_shape("q", "qr")
        + _rope_shape("k", "kr")
    )
    io = "float[batch,4,seq,16] q, float[batch,4,seq,16] k, int64[batch,seq] position_ids"
    return _model(f"g ({io}) => ({_ROPE_OUT}) {{{body}\n}}", 6)


def _rope_split(x: str, y: str) -> str:
    return f"""
    {x}1, {x}2 = Split <axis = -1> ({x})
    {x}n = Neg ({x}2)
    {x}rot = Concat <axis = -1> ({x}n, {x}1)
    {x}c = Mul (cos, {x})
    {x}s = Mul (sin, {x}rot)
    {y} = Add ({x}s, {x}c)"""


def rotary_split() -> ir.Model:
    body = _GATHER + _rope_split("q", "qr") + _rope_split("k", "kr")
    return _model(f"g ({_ROPE_IO.format(rd=16)}) => ({_ROPE_OUT}) {{{body}\n}}", 7)


def _rope_partial(x: str, y: str) -> str:
    return f"""
    {x}a = Slice ({x}, zero, rd, ax)
    {x}p = Slice ({x}, rd, big, ax)
    {x}1 = Slice ({x}a, zero, mid, ax)
    {x}2 = Slice ({x}a, mid, big, ax)
    {x}n = Neg ({x}2)
    {x}rot = Concat <axis = -1> ({x}n, {x}1)
    {x}c = Mul ({x}a, cos)
    {x}s = Mul ({x}rot, sin)
    {x}e = Add ({x}c, {x}s)
    {y} = Concat <axis = -1> ({x}e, {x}p)"""


def rotary_partial() -> ir.Model:
    consts = """
    zero = Constant <value = int64[1] {0}> ()
    mid = Constant <value = int64[1] {4}> ()
    rd = Constant <value = int64[1] {8}> ()
    big = Constant <value = int64[1] {9223372036854775807}> ()
    ax = Constant <value = int64[1] {3}> ()"""
    body = _GATHER + consts + _rope_partial("q", "qr") + _rope_partial("k", "kr")
    return _model(f"g ({_ROPE_IO.format(rd=8)}) => ({_ROPE_OUT}) {{{body}\n}}", 8)


# -- attention --------------------------------------------------------------------------------
_PROJ = """
    {n}0 = MatMul ({x}, w{n})
    {n}1 = Add ({n}0, b{n})
    {n}4 = Reshape ({n}1, heads)"""
_ATT_WEIGHTS = (
    "float[64,64] wq, float[64] bq, float[64,64] wk, float[64] bk, float[64,64] wv, float[64] bv, "
    "float[64,64] wo, float[64] bo"
)
_OUT = """
    p = Softmax <axis = -1> (sm)
    o = MatMul (p, vt)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    of = Reshape (ot, flat)
    o1 = MatMul (of, wo)
    y = Add (o1, bo)"""
_HEADS = """
    heads = Constant <value = int64[4] {0, 0, 4, 16}> ()
    flat = Constant <value = int64[3] {0, 0, 64}> ()"""


def attention_k_transpose() -> ir.Model:
    """Encoder self-attention, keys ``[B,S,H,hd] -> Transpose(0,2,3,1) -> [B,H,hd,S]``."""
    body = (
        _HEADS
        + _PROJ.format(n="q", x="x")
        + _PROJ.format(n="k", x="x")
        + _PROJ.format(n="v", x="x")
        + """
    scale = Constant <value = float {4.0}> ()
    qt = Transpose <perm = [0, 2, 1, 3]> (q4)
    kt = Transpose <perm = [0, 2, 3, 1]> (k4)
    vt = Transpose <perm = [0, 2, 1, 3]> (v4)
    s0 = MatMul (qt, kt)
    sm = Div (s0, scale)"""
        + _OUT
    )
    io = f"float[batch,seq,64] x, {_ATT_WEIGHTS}"
    return _model(f"g ({io}) => (float[batch,seq,64] y) {{{body}\n}}", 9)


def attention_sdpa_lowering() -> ir.Model:
    """Encoder self-attention as torch lowers SDPA for the dynamo exporter."""
    body = (
        _HEADS
        + _PROJ.format(n="q", x="x")
        + _PROJ.format(n="k", x="x")
        + _PROJ.format(n="v", x="x")
        + """
    root = Constant <value = float {0.5}> ()
    m1 = Constant <value = int64[1] {-1}> ()
    hd = Constant <value = int64[1] {16}> ()
    qt = Transpose <perm = [0, 2, 1, 3]> (q4)
    kt = Transpose <perm = [0, 2, 1, 3]> (k4)
    vt = Transpose <perm = [0, 2, 1, 3]> (v4)
    ksh = Shape (kt)
    kbh = Shape <start = 0, end = 2> (kt)
    ksd = Shape <start = 2, end = 4> (kt)
    s3 = Concat <axis = 0> (m1, ksd)
    k3 = Reshape (kt, s3)
    k3t = Transpose <perm = [0, 2, 1]> (k3)
    s4 = Concat <axis = 0> (kbh, hd, m1)
    k4t = Reshape (k3t, s4)
    qs = Mul (qt, root)
    ks = Mul (k4t, root)
    sm = MatMul (qs, ks)"""
        + _OUT
    )
    io = f"float[batch,seq,64] x, {_ATT_WEIGHTS}"
    return _model(f"g ({io}) => (float[batch,seq,64] y) {{{body}\n}}", 10)


def attention_decoder_mask() -> ir.Model:
    """Decoder self-attention: KV cache concat, causal mask and 2-D key padding as one bias."""
    body = (
        _HEADS
        + _PROJ.format(n="q", x="x")
        + _PROJ.format(n="k", x="x")
        + _PROJ.format(n="v", x="x")
        + """
    scale = Constant <value = float {0.25}> ()
    neg = Constant <value = float {-3.4028234663852886e38}> ()
    zf = Constant <value = float {0.0}> ()
    ax12 = Constant <value = int64[2] {1, 2}> ()
    qt = Transpose <perm = [0, 2, 1, 3]> (q4)
    kn = Transpose <perm = [0, 2, 1, 3]> (k4)
    vn = Transpose <perm = [0, 2, 1, 3]> (v4)
    present_key = Concat <axis = 2> (past_key, kn)
    present_value = Concat <axis = 2> (past_value, vn)
    vt = Identity (present_value)
    kT = Transpose <perm = [0, 1, 3, 2]> (present_key)
    qs = Mul (qt, scale)
    s0 = MatMul (qs, kT)
    st = Shape <start = 2, end = 4> (s0)
    ones = ConstantOfShape <value = int64[1] {1}> (st)
    sq = Shape <start = 2, end = 3> (s0)
    tt = Shape <start = 3, end = 4> (s0)
    pl = Sub (tt, sq)
    pls = Squeeze (pl)
    causal = Trilu <upper = 0> (ones, pls)
    cb = Cast <to = 9> (causal)
    mb = Cast <to = 9> (attention_mask)
    mu = Unsqueeze (mb, ax12)
    allowed = And (cb, mu)
    bias = Where (allowed, zf, neg)
    sm = Add (s0, bias)"""
        + _OUT
    )
    io = (
        "float[batch,seq,64] x, float[batch,4,past,16] past_key, float[batch,4,past,16] "
        f"past_value, int64[batch,total] attention_mask, {_ATT_WEIGHTS}"
    )
    out = (
        "float[batch,seq,64] y, float[batch,4,total,16] present_key, "
        "float[batch,4,total,16] present_value"
    )
    return _model(f"g ({io}) => ({out}) {{{body}\n}}", 11)


def attention_cross() -> ir.Model:
    """Cross-attention: queries from ``x``, keys and values projected from ``enc``."""
    body = (
        _HEADS
        + _PROJ.format(n="q", x="x")
        + _PROJ.format(n="k", x="enc")
        + _PROJ.format(n="v", x="enc")
        + """
    scale = Constant <value = float {0.25}> ()
    qt = Transpose <perm = [0, 2, 1, 3]> (q4)
    kt = Transpose <perm = [0, 2, 3, 1]> (k4)
    vt = Transpose <perm = [0, 2, 1, 3]> (v4)
    qs = Mul (qt, scale)
    sm = MatMul (qs, kt)"""
        + _OUT
    )
    io = f"float[batch,seq,64] x, float[batch,enc,64] enc, {_ATT_WEIGHTS}"
    return _model(f"g ({io}) => (float[batch,seq,64] y) {{{body}\n}}", 12)


CASES: dict[str, tuple[str, object, dict[str, int]]] = {
    # name: (family, builder, expected sites)
    "rms-pow": ("norms", rms_pow, {"rms-norm": 1}),
    "rms-weight-first": ("norms", rms_weight_first, {"rms-norm": 1}),
    "skip-rms-residual-first": (
        "norms",
        lambda: skip_rms("ra", False),
        {"rms-norm": 1, "skip-rms-norm": 1},
    ),
    "skip-rms-residual-second": (
        "norms",
        lambda: skip_rms("ar", False),
        {"rms-norm": 1, "skip-rms-norm": 1},
    ),
    "skip-rms-sum-output": (
        "norms",
        lambda: skip_rms("ar", True),
        {"rms-norm": 1, "skip-rms-norm": 1},
    ),
    "skip-ln-residual-first": ("norms", lambda: skip_ln("ra", False), {"skip-layer-norm": 1}),
    "skip-ln-residual-second": ("norms", lambda: skip_ln("ar", False), {"skip-layer-norm": 1}),
    "skip-ln-sum-output": ("norms", lambda: skip_ln("ra", True), {"skip-layer-norm": 1}),
    "gelu-tanh-pow": ("gelu", lambda: _gelu(TANH_POW, False, 13), {"fast-gelu": 1}),
    "gelu-tanh-cube": ("gelu", lambda: _gelu(TANH_CUBE, False, 14), {"fast-gelu": 1}),
    "gelu-tanh-fast": ("gelu", lambda: _gelu(TANH_FAST, False, 15), {"fast-gelu": 1}),
    "gelu-tanh-bias": ("gelu", lambda: _gelu(TANH_POW, True, 16), {"fast-gelu": 1}),
    "gelu-erf-mul": ("gelu", lambda: _gelu(ERF_MUL, False, 17), {"gelu": 1}),
    "gelu-erf-div-bias": ("gelu", lambda: _gelu(ERF_DIV, True, 18), {"gelu": 1}),
    "rotary-cache-gather": ("rotary", rotary_cache_gather, {"rotary": 2}),
    "rotary-shape-half": ("rotary", rotary_shape_half, {"rotary": 2}),
    "rotary-split": ("rotary", rotary_split, {"rotary": 2}),
    "rotary-partial": ("rotary", rotary_partial, {"rotary": 2}),
    "attention-k-transpose": ("encoder", attention_k_transpose, {"attention-encoder": 1}),
    "attention-sdpa-lowering": ("encoder", attention_sdpa_lowering, {"attention-encoder": 1}),
    "attention-decoder-mask": ("decoder", attention_decoder_mask, {"attention-decoder": 1}),
    "attention-cross": ("decoder", attention_cross, {"attention-cross": 1}),
}
