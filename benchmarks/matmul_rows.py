"""ONNX Runtime's quantized MatMul kernels vs the number of rows M (the decode batch), on CPU.

Two questions behind batched decoding (``qgraph.runtime.batch``):

1. **Time vs M.** A chain of ``--layers`` projections 1024 -> 6144 -> 1024 ... with distinct
   random weights (about the 0.6B decoder's MLP shapes, so the weights stream from memory as in
   a step), once as int4 ``MatMulNBits`` (block 64, zero points, ``accuracy_level`` 4 and 0) and
   once as ``DynamicQuantizeMatMul`` (int8 per-channel weights, u8s8 QGEMM). Medians of
   ``--repeat`` calls per M, M and kernels alternating in each of ``--rounds`` rounds.
2. **Bitwise row independence.** For one 1024 x 4096 MatMulNBits per accuracy level and thread
   count: how many output columns of row 0 differ between a call with M=1 and calls with
   M=2/4/8 (same row 0), and whether the M>1 calls agree with each other.

    python benchmarks/matmul_rows.py [--layers 28] [--rounds 3] [--repeat 5] [--threads 2]

Writes ``benchmarks/results/<out>.{json,md}`` (default ``matmul_rows``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).parent / "results"
HIDDEN, FFN, BLOCK = 1024, 6144, 64
ROWS = [1, 2, 4, 8]

Maker = Callable[[np.random.Generator, int, str, str, int, int], tuple]


def nbits(accuracy: int) -> Maker:
    def make(rng, i, x, y, k, n):
        blocks = k // BLOCK
        q = rng.integers(0, 256, (n, blocks, BLOCK // 2), dtype=np.uint8)
        scales = (rng.random(n * blocks, dtype=np.float32) * 1e-3).astype(np.float32)
        zero = rng.integers(0, 256, (n, (blocks + 1) // 2), dtype=np.uint8)
        names = [f"b{i}", f"s{i}", f"z{i}"]
        node = helper.make_node(
            "MatMulNBits",
            [x, *names],
            [y],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=BLOCK,
            accuracy_level=accuracy,
        )
        arrays = [q, scales, zero]
        return node, [numpy_helper.from_array(a, m) for a, m in zip(arrays, names, strict=True)]

    return make


def int8(rng, i, x, y, k, n):
    w = rng.integers(-64, 64, (k, n), dtype=np.int8)
    scale = np.full(n, 1e-3 / np.sqrt(k), np.float32)
    node = helper.make_node(
        "DynamicQuantizeMatMul", [x, f"w{i}", f"ws{i}", "", ""], [y], domain="com.microsoft"
    )
    return node, [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(scale, f"ws{i}")]


def session(make: Maker, shapes: list[tuple[int, int]], threads: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "a"
    for i, (k, n) in enumerate(shapes):
        node, tensors = make(rng, i, x, f"h{i}", k, n)
        nodes.append(node)
        inits += tensors
        x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", shapes[0][0]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def timing(layers: int, rounds: int, repeat: int, threads: int) -> dict[str, dict[int, float]]:
    shapes = [(HIDDEN, FFN) if i % 2 == 0 else (FFN, HIDDEN) for i in range(layers)]
    kernels = {
        "MatMulNBits int4 acc4": session(nbits(4), shapes, threads),
        "MatMulNBits int4 acc0": session(nbits(0), shapes, threads),
        "DynamicQuantizeMatMul int8": session(int8, shapes, threads),
    }
    rng = np.random.default_rng(1)
    samples: dict[str, dict[int, list[float]]] = {k: {m: [] for m in ROWS} for k in kernels}
    for _ in range(rounds):
        for m in ROWS:
            a = rng.standard_normal((m, HIDDEN)).astype(np.float32)
            for name, s in kernels.items():
                s.run(None, {"a": a})
                for _ in range(repeat):
                    start = time.perf_counter()
                    s.run(None, {"a": a})
                    samples[name][m].append(1000.0 * (time.perf_counter() - start))
    return {k: {m: statistics.median(v[m]) for m in ROWS} for k, v in samples.items()}


def exactness(threads: int) -> list[dict]:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, HIDDEN)).astype(np.float32)
    out = []
    for accuracy in (4, 0):
        for t in sorted({1, threads}):
            s = session(nbits(accuracy), [(HIDDEN, 4096)], t, seed=3)
            one = s.run(None, {"a": x[:1]})[0][0]
            batched = {m: s.run(None, {"a": x[:m]})[0][0] for m in ROWS[1:]}
            first = batched[ROWS[1]]
            out.append(
                {
                    "accuracy_level": accuracy,
                    "threads": t,
                    "columns": int(one.size),
                    "differ_from_m1": {m: int((v != one).sum()) for m, v in batched.items()},
                    "max_abs_diff": float(max(np.abs(v - one).max() for v in batched.values())),
                    "m_gt_1_identical": all(np.array_equal(v, first) for v in batched.values()),
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="matmul_rows")
    args = ap.parse_args()
    load_before = os.getloadavg()
    times = timing(args.layers, args.rounds, args.repeat, args.threads)
    exact = exactness(args.threads)
    load_after = os.getloadavg()
    out = RESULTS / args.out
    data = {
        "args": vars(args),
        "onnxruntime": ort.__version__,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "ms": times,
        "exactness": exact,
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Quantized MatMul kernels vs rows M (ONNX Runtime CPU)",
        "",
        f"`python benchmarks/matmul_rows.py --layers {args.layers} --rounds {args.rounds} "
        f"--repeat {args.repeat} --threads {args.threads}` (onnxruntime {ort.__version__}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, "
        f"{os.cpu_count()} CPUs, shared machine)",
        "",
        f"{args.layers} chained projections {HIDDEN}<->{FFN} with distinct weights; median ms "
        "per call, in brackets the time over M=1 and the tokens/s gain (M / that).",
        "",
        "| kernel | " + " | ".join(f"M={m}" for m in ROWS) + " |",
        "|---|" + "---|" * len(ROWS),
    ]
    for name, row in times.items():
        cells = [f"{row[m]:.2f} ({row[m] / row[1]:.2f}x; {m * row[1] / row[m]:.2f}x)" for m in ROWS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Row 0 of one {HIDDEN}x4096 MatMulNBits: output columns that differ from the M=1 call.",
        "",
        "| accuracy_level | threads | "
        + " | ".join(f"M={m}" for m in ROWS[1:])
        + " | max abs diff | M>1 calls identical |",
        "|---|---|" + "---|" * len(ROWS[1:]) + "---|---|",
    ]
    for e in exact:
        cells = [f"{e['differ_from_m1'][m]}/{e['columns']}" for m in ROWS[1:]]
        lines.append(
            f"| {e['accuracy_level']} | {e['threads']} | "
            + " | ".join(cells)
            + f" | {e['max_abs_diff']:.1e} | {e['m_gt_1_identical']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
