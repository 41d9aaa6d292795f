"""Accuracy of the quantization options on the tiny Qwen3-ASR, against its FP32 compile.

Every option compiles the same raw tiny export with the lossless layout (``hygiene``,
``fusions``, FP32 ``embed_tokens.bin``, untied lm_head, last-position prefill logits), then the
option's passes, then ``share-weights``; the reference is that pipeline without quantization.
Each bundle transcribes the built-in clips (``example_audio``, ``example_long_audio``) for
``--tokens`` greedy tokens through the reference runtime:

- logits, teacher-forced along the FP32 greedy path (prefill + every step): max abs error,
  relative RMS error ``||q - ref|| / ||ref||``, cosine, top-1 agreement;
- greedy tokens, free running: agreement per position with FP32 and the first divergence;
- size of the decoders' shared data file.

AWQ calibrates on generated inputs, never on the evaluation clips. The tiny model has random
weights: its logits are nearly flat (top-1/top-2 gaps of a few hundredths), so its top-1 and
greedy numbers are a stress test that ranks the options, not a prediction of WER on a real
checkpoint. Results: ``benchmarks/results/accuracy.json`` and ``.md``.

    python benchmarks/accuracy.py [--raw TINY_RAW_DIR] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from qgraph.bundle import Bundle
from qgraph.examples import example_audio, example_long_audio
from qgraph.manager import run_pipeline
from qgraph.passes.awq_smooth import AwqSmooth
from qgraph.passes.quantize_int4 import QuantizeMatMulNBits
from qgraph.passes.quantize_int8 import QuantizeInt8
from qgraph.pipeline import expand
from qgraph.registry import default_registry
from qgraph.runtime import AsrSession

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUT = "hygiene,fusions,extract-embed-fp16{dtype=float32},inline-lm-head,slice-init-logits"
SHARE = "share-weights,remove-unused,topological-sort"
OPTIONS = [
    ("FP32 (reference)", ""),
    ("int4 bs64 asym al4 (default)", "quantize-int4"),
    ("int4 bs32", "quantize-int4{block_size=32}"),
    ("int4 bs128", "quantize-int4{block_size=128}"),
    ("int4 symmetric", "quantize-int4{symmetric=true}"),
    ("int4 accuracy_level 0", "quantize-int4{accuracy_level=0}"),
    ("int4, FP32 init embedding", "quantize-int4{tied_gather=fp32}"),
    (
        "int4, lm_head and layer 0's o/down excluded",
        "quantize-int4{exclude=[*.layers.0.*,lm_head*]}",
    ),
    ("int4 + encoder", "quantize-int4{roles=[q,k,v,o,gate,up,down,lm_head,other,encoder]}"),
    ("8-bit MatMulNBits bs64", "quantize-int4{bits=8}"),
    ("AWQ alpha 0.25 + int4", "awq-smooth{alpha=0.25},quantize-int4"),
    ("AWQ alpha 0.5 + int4", "awq-smooth,quantize-int4"),
    ("AWQ search + int4", "awq-smooth{search=true},quantize-int4"),
    ("INT8 dynamic per-channel, 8-bit", "quantize-int8{reduce_range=false}"),
    ("INT8 7-bit weights (default)", "quantize-int8"),
    ("INT8 per-tensor (public tool's trap)", "quantize-int8{per_channel=false}"),
]


def registry():
    reg = default_registry().copy()
    for cls in (QuantizeMatMulNBits, QuantizeInt8, AwqSmooth):
        reg.register(cls)
    return reg


def compile_option(raw: Path, passes: str, out: Path) -> Path:
    text = ",".join(p for p in (LAYOUT, passes, SHARE) if p)
    bundle = Bundle.load(raw)
    run_pipeline(bundle, expand(text, registry()))
    return bundle.save(out)


def trace(
    session: AsrSession, clip: Path, steps: int, forced: list[int] | None
) -> tuple[np.ndarray, list[int]]:
    """Logits rows (prefill + steps) and the tokens fed: the given ones, or greedy."""
    features = session.encode(session.features(session.read_audio(clip)))
    prompt, offset = session.prompt(int(features.shape[1]))
    logits, keys, values = session.prefill(prompt, features, offset)
    rows, tokens = [logits], []
    for i in range(steps - 1):
        token = forced[i] if forced is not None else int(np.argmax(logits))
        tokens.append(token)
        logits, keys, values = session.step(token, len(prompt) + i, keys, values)
        rows.append(logits)
    tokens.append(int(np.argmax(logits)) if forced is None else forced[steps - 1])
    return np.stack(rows).astype(np.float64), tokens


def measure(path: Path, reference: dict | None, clips: list[Path], steps: int) -> dict[str, Any]:
    session = AsrSession(path)
    out: dict[str, Any] = {"decoder_mb": (path / "decoder_weights.data").stat().st_size / 1e6}
    runs = {}
    for clip in clips:
        free = trace(session, clip, steps, None)
        forced = trace(session, clip, steps, reference[clip.name]["tokens"]) if reference else free
        runs[clip.name] = {"logits": forced[0], "tokens": free[1]}
    if reference is None:
        return {**out, "runs": runs}
    ref = np.concatenate([reference[c.name]["logits"] for c in clips])
    got = np.concatenate([runs[c.name]["logits"] for c in clips])
    agree, first = [], []
    for c in clips:
        a, b = np.array(reference[c.name]["tokens"]), np.array(runs[c.name]["tokens"])
        agree.append(float(np.mean(a == b)))
        first.append(int(np.argmax(a != b)) if (a != b).any() else len(a))
    out.update(
        max_abs=float(np.abs(got - ref).max()),
        rel_rms=float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
        cosine=float((got.ravel() @ ref.ravel()) / (np.linalg.norm(got) * np.linalg.norm(ref))),
        top1=float(np.mean(got.argmax(-1) == ref.argmax(-1))),
        greedy=float(np.mean(agree)),
        first_divergence=first,
    )
    return out


def export_tiny(out: Path) -> Path:
    from qgraph.export.qwen3_asr.exporter import export_qwen3_asr  # noqa: TID251 - benchmark

    return export_qwen3_asr("tiny", out)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Quantization accuracy on the tiny Qwen3-ASR (random weights) vs its FP32 compile",
        "",
        f"{meta['date']}, onnxruntime {meta['onnxruntime']}, {meta['tokens']} greedy tokens on "
        f"each of {', '.join(meta['clips'])}. Logits: teacher-forced along the FP32 greedy path "
        "(prefill + steps). Greedy: free-running tokens vs FP32 per position; first divergence "
        "per clip. AWQ calibrates on generated inputs (never the evaluation clips). The tiny "
        "model's near-flat random logits make top-1/greedy a stress test that ranks options, "
        "not a WER prediction. Its random weights have no outlier columns either, so the "
        "per-tensor INT8 trap (special tokens lost) does not show here; "
        "`tests/passes/test_quantize_int8.py` reproduces it. The layer-0 exclusion reaches only "
        "o_proj/down_proj: `fuse-sibling-matmuls` packs q/k/v and gate/up without recording their "
        "module scopes (`qgraph.module_scopes`), so the packed MatMuls have no layer name.",
        "",
        "| option | passes | decoder MB | max abs err | rel. RMS err | cosine | top-1 | greedy |"
        " first divergence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["passes"] == "":
            lines.append(f"| {r['option']} | — | {r['decoder_mb']:.1f} | 0 | 0 | 1 | 1 | 1 | — |")
            continue
        lines.append(
            f"| {r['option']} | `{r['passes']}` | {r['decoder_mb']:.1f} | {r['max_abs']:.3f} | "
            f"{r['rel_rms']:.4f} | {r['cosine']:.5f} | {r['top1']:.3f} | {r['greedy']:.3f} | "
            f"{', '.join(map(str, r['first_divergence']))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, help="tiny raw bundle (exported if not given)")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    import onnxruntime

    clips = [example_audio(), example_long_audio()]
    with tempfile.TemporaryDirectory(prefix="qgraph-accuracy-") as tmp:
        raw = args.raw or export_tiny(Path(tmp) / "raw")
        results, reference = [], None
        for option, passes in OPTIONS:
            start = time.perf_counter()
            path = compile_option(raw, passes, Path(tmp) / f"option{len(results)}")
            measured = measure(path, reference, clips, args.tokens)
            if reference is None:
                reference = measured.pop("runs")
            results.append({"option": option, "passes": passes, **measured})
            print(f"{option}: {time.perf_counter() - start:.1f} s", flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "tokens": args.tokens,
        "clips": [c.name for c in clips],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accuracy.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (RESULTS / "accuracy.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
