"""``qgraph validate BUNDLE --reference CHECKPOINT``: ONNX bundle vs PyTorch eager, per clip."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "validate"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="compare a bundle with the PyTorch model it came from",
        description="Run each audio clip through the bundle (ONNX Runtime, the reference\n"
        "runtime's greedy decode) and through the PyTorch model it came from (transformers,\n"
        "eager) with the same log-mel and prompt. Reports the encoder-feature and\n"
        "prefill-logit max abs diffs and whether the greedy tokens match one for one;\n"
        "exits 1 on any mismatch.\n"
        "Needs torch and transformers: pip install 'qgraph[export]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  qgraph validate raw-tiny/ --reference tiny\n"
        "  qgraph validate raw/ --reference ./Qwen3-ASR-0.6B-hf --audio a.wav b.flac --json",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder to check")
    p.add_argument(
        "--reference",
        required=True,
        metavar="CHECKPOINT",
        help="what the bundle was exported from: checkpoint folder, hub id, or a built-in "
        "random model (tiny, random-0.6b, random-1.7b)",
    )
    p.add_argument(
        "--audio",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="audio files (WAV/FLAC/OGG, any rate; resampled to 16 kHz) "
        "(default: the built-in example clip)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="greedy token budget per clip (default: 32 + 10 per second of audio)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        metavar="X",
        help="allowed max abs diff of features and logits, times max(1, max|reference|) "
        "(default: 1e-3)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from qgraph.commands.export import import_exporter
    from qgraph.errors import VerificationError
    from qgraph.families import family_of
    from qgraph.runtime.audio import load_audio

    validate_bundle = import_exporter(family_of(args.bundle), "validate")

    if args.max_tokens is not None and args.max_tokens < 1:
        raise VerificationError("--max-tokens must be 1 or more")
    if args.audio:
        paths = list(args.audio)
    else:
        from qgraph.examples import example_audio

        paths = [example_audio()]
    clips = [(path.name, load_audio(path)) for path in paths]
    report = validate_bundle(
        args.bundle,
        args.reference,
        clips,
        max_tokens=args.max_tokens,
        tolerance=args.tolerance,
    )
    print(report.to_json() if args.json else report.table())
    report.raise_for_failure()
    return 0
