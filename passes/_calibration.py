"""Activations for calibrating passes (AWQ smoothing, low-rank PCA).

``calibration_outputs`` runs components in ONNX Runtime with chosen intermediate values added as
graph outputs: on generated inputs (``qgraph.instruments.verify.sample_inputs``, several seeds)
or, given a folder of audio files, through the reference runtime (encoder, decoder_init
prefill, greedy decoder_step steps) on a temporary copy of the bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)


AUDIO_SUFFIXES = (".wav", ".flac")


@contextlib.contextmanager
def _extra_outputs(models: dict[str, ir.Model], wanted: dict[str, list[ir.Value]]):
    """Temporarily add ``wanted`` values as graph outputs."""
    added = {c: [v for v in wanted.get(c, []) if not v.is_graph_output()] for c in models}
    for c, values in added.items():
        models[c].graph.outputs.extend(values)
    try:
        yield
    finally:
        for c, values in added.items():
            for v in values:
                models[c].graph.outputs.remove(v)


def calibration_outputs(
    bundle,
    wanted: dict[str, list[ir.Value]],
    *,
    audio: str = "",
    max_files: int = 32,
    max_tokens: int = 32,
    samples: int = 4,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield ``(component, {value name: array})`` for the ``wanted`` values of each run."""
    comps = {c: bundle.components[c] for c in wanted}
    with (
        tempfile.TemporaryDirectory(prefix="qgraph-calibrate-") as tmp,
        _extra_outputs(comps, wanted),
    ):
        if audio:
            yield from _audio_runs(bundle, wanted, Path(tmp), audio, max_files, max_tokens)
        else:
            yield from _generated_runs(comps, wanted, Path(tmp), samples)


def _session(model: ir.Model, path: Path):
    import onnxruntime as ort

    ir.save(model, path, external_data=path.name + ".data")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _generated_runs(comps, wanted, tmp: Path, samples: int):
    from qgraph.instruments.verify import sample_inputs

    for c, model in comps.items():
        names = [v.name for v in wanted[c]]
        feeds = [sample_inputs(model, seed=seed) for seed in range(samples)]
        sess = _session(model, tmp / f"{c.replace('/', '_')}.onnx")
        for feed in feeds:
            yield c, dict(zip(names, sess.run(names, feed), strict=True))
        del sess


def audio_files(folder: str, limit: int) -> list[Path]:
    """The calibration audio files of ``folder`` (sorted, at most ``limit``)."""
    from qgraph.errors import BundleError

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise BundleError(f"{folder}: no calibration audio ({', '.join(AUDIO_SUFFIXES)}) found")
    return files[:limit]


def _audio_runs(bundle, wanted, tmp: Path, folder: str, max_files: int, max_tokens: int):
    from qgraph.runtime import AsrSession

    files = audio_files(folder, max_files)
    dataclasses.replace(bundle, manifest={}, history=[]).save(tmp / "bundle")
    session = AsrSession(tmp / "bundle", optimization="basic")
    names = {c: [v.name for v in values] for c, values in wanted.items()}

    def pick(c: str, out: dict[str, np.ndarray]):
        return (c, {n: out[n] for n in names[c]}) if c in names else None

    for path in files:
        mel = session.features(session.read_audio(path))
        enc = session.encoder.run({next(iter(session.encoder.input_types)): mel})
        features = enc[session.encoder.output_names[0]]
        prompt, offset = session.prompt(int(features.shape[1]))
        out = session.decoder_init.run(
            {
                "input_ids": np.asarray([prompt], np.int64),
                "position_ids": np.arange(len(prompt), dtype=np.int64)[None],
                "audio_features": features,
                "audio_offset": np.asarray([offset], np.int64),
            }
        )
        runs = [pick("encoder", enc), pick("decoder_init", out)]
        position = len(prompt)
        for _ in range(max_tokens):
            token = int(np.argmax(out["logits"][0, -1]))
            if token in session.eos_ids:
                break
            feeds = {
                "position_ids": np.asarray([[position]], np.int64),
                "past_keys": out["present_keys"],
                "past_values": out["present_values"],
            }
            if session.embed_table is not None:
                feeds["input_embeds"] = session.embed_table.lookup(np.asarray([[token]]))
            else:
                feeds["input_ids"] = np.asarray([[token]], np.int64)
            out = session.decoder_step.run(feeds)
            runs.append(pick("decoder_step", out))
            position += 1
        yield from (r for r in runs if r is not None)
        logger.debug("calibrated on %s (%d decode steps)", path.name, position - len(prompt))
