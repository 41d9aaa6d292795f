"""``qgraph eval BUNDLE --data DIR``: word error rate, real-time factor, per-utterance report."""

from __future__ import annotations

from pathlib import Path

NAME = "eval"


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
        required=True,
        metavar="DIR",
        help="folder of audio files with reference transcripts",
    )
    p.add_argument("--language", help="force the language (default: the model decides)")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N utterances")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from qgraph.runtime.eval import evaluate

    report = evaluate(
        args.bundle, args.data, threads=args.threads, language=args.language, limit=args.limit
    )
    print(report.table())
    if args.json:
        args.json.write_text(report.to_json())
    return 0
