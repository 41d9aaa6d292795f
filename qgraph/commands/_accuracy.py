"""The accuracy options shared by ``qgraph compile --check-accuracy`` and ``qgraph eval --against``
(the measuring is ``qgraph.accuracy``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qgraph.accuracy import DEFAULT_BUDGET, AccuracyReport

BUILTIN = "built-in"


def add_budget_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        metavar="PP",
        help="largest accepted loss in percentage points: the WER delta when every clip has a "
        "transcript, else the token disagreement; a repetition loop on any clip also exceeds "
        f"it (default: {DEFAULT_BUDGET:g})",
    )
    p.add_argument(
        "--accept-loss",
        action="store_true",
        help="report a loss over --budget but do not fail (the manifest records it)",
    )
    p.add_argument(
        "--max-files", type=int, default=16, metavar="N", help="calibration clips used at most"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=224,
        metavar="N",
        help="greedy tokens decoded per clip at most (default: 224)",
    )


def add_accuracy_options(p: argparse.ArgumentParser) -> None:
    """``--check-accuracy [AUDIO_DIR] [--reference REF] [--budget PP] [--accept-loss]``."""
    p.add_argument(
        "--check-accuracy",
        nargs="?",
        const=BUILTIN,
        metavar="AUDIO_DIR",
        help="decode AUDIO_DIR (default: the built-in speech) with IN (or --reference) and with "
        "the result; report token agreement, first divergence, teacher-forced KL and WER delta "
        "(clips with transcripts); over --budget, exit 4 and write nothing. The result goes "
        "into the manifest ('accuracy')",
    )
    p.add_argument(
        "--reference",
        type=Path,
        metavar="REF",
        help="reference bundle for --check-accuracy (default: IN)",
    )
    add_budget_options(p)


def audio_arg(value: str | None) -> str | None:
    return None if value in (None, "", BUILTIN) else value


def print_report(report: AccuracyReport) -> None:
    print(f"\naccuracy of {report.candidate} against {report.reference} on {report.audio}:")
    print(report.table())


def save_checked_from_args(bundle: Any, args: argparse.Namespace) -> Path:
    """``qgraph compile --check-accuracy``: save ``bundle`` only within budget."""
    from qgraph.accuracy import save_checked

    path, _ = save_checked(
        bundle,
        args.output,
        args.reference or args.input,
        audio_arg(args.check_accuracy),
        budget=args.budget,
        accept_loss=args.accept_loss,
        overwrite=args.force,
        max_files=args.max_files,
        max_tokens=args.max_tokens,
        on_report=print_report,
    )
    return path
