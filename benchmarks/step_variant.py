"""A speed-experiment copy of a compiled Qwen3-ASR bundle whose decoder step runs other MatMul
kernels: for ``profile_batch.py`` / ``batch.py`` A/B runs, not a release layout.

    python benchmarks/step_variant.py SRC DST --kind int8 [--which lm_head|all]
    python benchmarks/step_variant.py SRC DST --kind acc0 [--which lm_head|all]

``--kind int8``: the chosen MatMulNBits of ``decoder_step.onnx`` become ``DynamicQuantizeMatMul``
(ONNX Runtime's u8s8 QGEMM) with per-output-channel 7-bit weights (``quantize-int8``'s default
range on AVX2) requantized from the int4 blocks (dequantize, then round to 7 bits per column;
a second rounding, fine for timing, not for accuracy claims); the new weights are stored inline
in the variant's ``decoder_step.onnx``. ``--kind acc0``: the chosen MatMulNBits of both decoders
get ``accuracy_level=0`` (fp32 compute instead of int8 activations). ``lm_head`` is the step's
last MatMulNBits. Every other file is hard-linked (the runtime refuses external data that
resolves outside the bundle, so no symlinks); DST must be on SRC's file system.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _array(model_dir: Path, tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    with open(model_dir / info["location"], "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        raw = fh.read(int(info["length"]))
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.frombuffer(raw, dtype).reshape(tuple(tensor.dims))


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 [N, X] -> float [N, 2X], low nibble first (MatMulNBits packing)."""
    out = np.empty((packed.shape[0], packed.shape[1] * 2), np.float32)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


def dequantize(model_dir: Path, node: onnx.NodeProto, inits: dict) -> np.ndarray:
    """The fp32 ``[K, N]`` weight a 4-bit MatMulNBits node computes with."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
    if attrs.get("bits", 4) != 4:
        raise SystemExit(f"{node.name}: only 4-bit MatMulNBits are handled")
    blocks = -(-k // block)
    values = _nibbles(_array(model_dir, inits[node.input[1]]).reshape(n, -1))
    values = values.reshape(n, blocks, block)
    scales = _array(model_dir, inits[node.input[2]]).reshape(n, blocks, 1).astype(np.float32)
    if len(node.input) > 3 and node.input[3]:
        packed = _array(model_dir, inits[node.input[3]]).reshape(n, -1)
        zero = _nibbles(packed)[:, :blocks, None]
    else:
        zero = np.float32(8.0)
    return ((values - zero) * scales).reshape(n, blocks * block)[:, :k].T


def to_int8(model_dir: Path, model: onnx.ModelProto, chosen: set[str]) -> None:
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.name not in chosen:
            nodes.append(node)
            continue
        weight = dequantize(model_dir, node, inits)
        scale = np.abs(weight).max(axis=0) / 63.0
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(weight / scale), -64, 63).astype(np.int8)
        base = f"{node.name}_int8"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(quantized), f"{base}_weight"),
                numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
            ]
        )
        nodes.append(
            helper.make_node(
                "DynamicQuantizeMatMul",
                [node.input[0], f"{base}_weight", f"{base}_scale", "", ""],
                list(node.output),
                name=base,
                domain="com.microsoft",
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def set_accuracy(model: onnx.ModelProto, chosen: set[str], level: int) -> None:
    for node in model.graph.node:
        if node.name in chosen:
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level


def chosen_nodes(model: onnx.ModelProto, which: str) -> set[str]:
    names = [n.name for n in model.graph.node if n.op_type == "MatMulNBits"]
    if not names:
        raise SystemExit("no MatMulNBits in the step graph")
    return {names[-1]} if which == "lm_head" else set(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--kind", choices=["int8", "acc0"], required=True)
    ap.add_argument("--which", choices=["lm_head", "all"], default="all")
    args = ap.parse_args()
    args.dst.mkdir(parents=True, exist_ok=True)
    rewritten = ["decoder_step.onnx"] + (["decoder_init.onnx"] if args.kind == "acc0" else [])
    for f in args.src.iterdir():
        if f.name not in rewritten and not (args.dst / f.name).exists():
            os.link(f, args.dst / f.name)
    step = onnx.load(str(args.src / "decoder_step.onnx"), load_external_data=False)
    chosen = chosen_nodes(step, args.which)
    for name in rewritten:
        model = onnx.load(str(args.src / name), load_external_data=False)
        if args.kind == "int8":
            to_int8(args.src, model, chosen)
        else:
            set_accuracy(model, chosen_nodes(model, args.which), 0)
        onnx.save(model, str(args.dst / name))
    print(f"{args.dst}: {len(chosen)} step MatMulNBits -> {args.kind}")


if __name__ == "__main__":
    main()
