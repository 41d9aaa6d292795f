"""Block quantization in ONNX Runtime's MatMulNBits layout, and its inverse.

``block_quantize`` mirrors ``DefaultWeightOnlyQuantizer.qbits_block_quant`` (the same C++
kernel, the same padding and array shapes, a slice of columns at a time), so the packed bytes,
scales and zero points are ORT's.
"""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 64 << 20
"""Columns are quantized in slices of about this many input bytes (the kernel's results are per
column, so the bytes do not depend on it): a transposed or huge weight (the lm_head) is never
copied whole."""


def block_quantize(
    w: np.ndarray, bits: int, block_size: int, symmetric: bool, chunk_bytes: int = CHUNK_BYTES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W[K, N]`` -> (packed ``[N, k_blocks, blob]`` uint8, scales ``[N, k_blocks]``, zero
    points uint8 ``[N, ceil(k_blocks * bits / 8)]``), exactly as ORT's quantizer packs them."""
    from onnxruntime.capi import _pybind_state as ort_c

    rows, cols = w.shape
    k_blocks = (rows + block_size - 1) // block_size
    pack = 8 // bits
    packed = np.zeros((cols, k_blocks, (block_size + pack - 1) // pack), dtype=np.uint8)
    zero_points = np.zeros((cols, (k_blocks + pack - 1) // pack), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=w.dtype)
    kernel = ort_c.quantize_matmul_4bits if bits == 4 else ort_c.quantize_matmul_8bits
    step = max(1, chunk_bytes // max(1, k_blocks * block_size * w.dtype.itemsize))
    for start in range(0, cols, step):
        end = min(cols, start + step)
        # row-major and padded to whole blocks, as ORT's quantizer hands the kernel its weight
        part = np.zeros((k_blocks * block_size, end - start), dtype=w.dtype)
        part[:rows] = w[:, start:end]
        kernel(
            packed[start:end],
            part,
            scales[start:end],
            zero_points[start:end],
            block_size,
            end - start,
            rows,
            symmetric,
        )
    return packed, scales, zero_points


def unpacked_zero_points(zero_points: np.ndarray, k_blocks: int, bits: int) -> np.ndarray:
    """Packed zero points ``[N, ceil(k_blocks * bits / 8)]`` -> one uint8 per block."""
    if bits == 8:
        return zero_points[:, :k_blocks]
    nibbles = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1)
    return nibbles.reshape(zero_points.shape[0], -1)[:, :k_blocks]


def dequantize(
    packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, rows: int, bits: int
) -> np.ndarray:
    """Inverse of ``block_quantize``: the ``W[K, N]`` that MatMulNBits multiplies with."""
    cols, k_blocks, _ = packed.shape
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(cols, k_blocks, -1)
    else:
        q = packed
    if zero_points is None:
        zp = np.full((cols, k_blocks), 1 << (bits - 1), dtype=np.float32)
    else:
        zp = unpacked_zero_points(zero_points, k_blocks, bits).astype(np.float32)
    w = (q.astype(np.float32) - zp[..., None]) * scales.astype(np.float32)[..., None]
    return w.reshape(cols, -1)[:, :rows].T


def fake_quantize(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """``W`` after a block-quantization round trip (what the quantized MatMul computes with)."""
    packed, scales, zp = block_quantize(w.astype(np.float32), bits, block_size, symmetric)
    return dequantize(packed, scales, None if symmetric else zp, w.shape[0], bits)
