"""``qgraph eval BUNDLE --data DIR``: word error rate, real-time factor, per-utterance report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qgraph.commands._accuracy import add_budget_options, print_report
from qgraph.errors import RuntimeInputError

NAME = "eval"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="word error rate and real-time factor of a bundle on a folder of audio",
        description="Transcribe every audio file of DIR with the reference runtime (Qwen3-ASR "
        "or Whisper, from the bundle's family) and score it against its reference text: a "
        "same-stem .txt file, or a line of a LibriSpeech-style *.trans.txt. Prints WER (jiwer, "
        "after the normalisation documented in qgraph.runtime.eval), RTF and one row per "
        "utterance. Keep evaluation audio apart from any calibration audio.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder")
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="folder of audio files with reference transcripts (with --against: transcripts "
        "optional, default the built-in speech)",
    )
    p.add_argument(
        "--against",
        type=Path,
        metavar="REF_BUNDLE",
        help="compare with a reference bundle instead: token agreement, first divergence, "
        "teacher-forced KL, WER delta; exit 4 over --budget (qgraph.accuracy)",
    )
    add_budget_options(p)
    p.add_argument(
        "--batch",
        type=_positive_int,
        default=1,
        metavar="N",
        help="decode N utterances at once (sorted by length), each decoder step serving all of "
        "them; needs a qwen3-asr bundle compiled with static-kv-cache. Per-utterance seconds "
        "are then the utterance's own log-mel and encoder time plus an equal share of its "
        "batch's decoding (default: 1)",
    )
    p.add_argument("--language", help="force the language (default: the model decides)")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N utterances")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.against is not None:
        return run_against(args)
    if args.data is None:
        raise RuntimeInputError("qgraph eval: give --data DIR (or --against REF_BUNDLE)")
    from qgraph.runtime.eval import evaluate

    report = evaluate(
        args.bundle,
        args.data,
        threads=args.threads,
        language=args.language,
        limit=args.limit,
        batch=args.batch,
    )
    print(report.table())
    if args.json:
        args.json.write_text(report.to_json())
    return 0


def run_against(args) -> int:
    """``--against REF``: the bundle's loss against REF (``qgraph.accuracy.compare``)."""
    if args.batch > 1:
        raise RuntimeInputError("--batch applies to WER scoring (--data), not to --against")
    from qgraph.accuracy import AccuracyBudgetError, compare

    report = compare(
        args.against,
        args.bundle,
        args.data,
        budget=args.budget,
        max_files=args.limit or args.max_files,
        max_tokens=args.max_tokens,
        language=args.language,
        threads=args.threads,
    )
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.within_budget and not args.accept_loss:
        raise AccuracyBudgetError(
            f"loss {report.loss:+.2f} pp ({report.metric}) exceeds the budget of "
            f"{args.budget:g} pp (--accept-loss to report only)"
        )
    return 0
