"""Activations for calibrating passes (AWQ smoothing, low-rank PCA).

``calibration_outputs`` runs components in ONNX Runtime with chosen intermediate values added as
graph outputs: on generated inputs (``qgraph.instruments.verify.sample_inputs``, several seeds)
or, given a folder of audio files, by transcribing them with the bundle family's own runtime
session on a temporary copy of the bundle (``qgraph.runtime.session.observe`` hands over every
component run: encoder, prefill, greedy steps), so calibration works on every family and layout
whose values are top-level graph values.
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


def _generated_runs(comps, wanted, tmp: Path, samples: int):
    from qgraph.instruments.verify import model_session, sample_inputs

    for c, model in comps.items():
        names = [v.name for v in wanted[c]]
        feeds = [sample_inputs(model, seed=seed) for seed in range(samples)]
        sess = model_session(model, tmp / f"{c.replace('/', '_')}.onnx", "basic")
        for feed in feeds:
            yield c, dict(zip(names, sess.run(names, feed), strict=True))
        del sess


def _audio_runs(bundle, wanted, tmp: Path, folder: str, max_files: int, max_tokens: int):
    """Transcribe each file with the bundle's own session (any family) and yield the wanted
    values of every component run: encoder, prefill and up to ``max_tokens`` greedy steps."""
    from qgraph.families import open_session
    from qgraph.runtime.audio import find_audio
    from qgraph.runtime.session import observe

    files = find_audio(folder, "calibration audio", max_files)
    dataclasses.replace(bundle, manifest={}, history=[]).save(tmp / "bundle")
    session = open_session(tmp / "bundle", optimization="basic")
    names = {c: [v.name for v in values] for c, values in wanted.items()}
    runs: list[tuple[str, dict[str, np.ndarray]]] = []

    def keep(component: str, out) -> None:
        if component in names:
            runs.append((component, {n: out[n] for n in names[component]}))

    observe(session, keep)
    for path in files:
        # max_tokens steps after the prefill's token (the EOS stops earlier)
        session.transcribe(path, max_tokens=max_tokens + 1)
        yield from runs
        logger.debug("calibrated on %s (%d component runs)", path.name, len(runs))
        runs.clear()
