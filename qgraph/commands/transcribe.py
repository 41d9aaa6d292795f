"""``qgraph transcribe BUNDLE AUDIO...``: transcribe audio files with the reference runtime;
``--batch N`` decodes N files per step on a ``static-kv-cache`` bundle (``qgraph.runtime.batch``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qgraph.errors import RuntimeInputError

NAME = "transcribe"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="transcribe audio files with a raw or compiled bundle",
        description="Run greedy decoding with ONNX Runtime on CPU and print the transcript. "
        "Any WAV/FLAC/OGG file is read, mixed to mono and resampled to 16 kHz. "
        "AUDIO 'example' (when no file has that name) is the built-in speech clip. With several "
        "files each gets one line 'FILE<TAB>TEXT' (--json: a list of objects).",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder (raw or compiled)")
    p.add_argument(
        "audio",
        nargs="+",
        metavar="AUDIO",
        help="audio file(s), or 'example' for the built-in speech clip",
    )
    p.add_argument(
        "--batch",
        type=_positive_int,
        default=1,
        metavar="N",
        help="decode N files at once, each step serving all of them (needs a bundle compiled "
        "with static-kv-cache; default: 1)",
    )
    p.add_argument(
        "--language",
        metavar="X",
        help="force the output language: a name (English) or code (en); default: detect",
    )
    p.add_argument(
        "--context",
        default="",
        metavar="TEXT",
        help="context text (names, terms) put in the system turn of the prompt",
    )
    p.add_argument(
        "--max-tokens",
        type=_positive_int,
        metavar="N",
        help="stop after N generated tokens (default: 32 + 10 per second of audio)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object with text, language, token ids, finish reason and timings",
    )
    p.set_defaults(run=run)


def _audio_path(text: str) -> Path:
    path = Path(text)
    if text == "example" and not path.exists():
        from qgraph.examples import example_audio

        return example_audio()
    if not path.is_file():
        raise RuntimeInputError(f"audio file not found: {path}")
    return path


def run(args) -> int:
    import inspect

    from qgraph.families import family_of, open_session

    audios = [_audio_path(a) for a in args.audio]
    session = open_session(args.bundle, threads=args.threads)
    kwargs = {"max_tokens": args.max_tokens, "language": args.language}
    if args.context:
        if "context" not in inspect.signature(session.transcribe).parameters:
            family = family_of(args.bundle).name
            raise RuntimeInputError(f"--context does not apply to {family} bundles")
        kwargs["context"] = args.context
    if args.batch > 1:
        from qgraph.runtime.batch import require_batching, transcribe_many

        require_batching(session)
        results = transcribe_many(session, audios, batch_size=args.batch, **kwargs)
    else:
        results = [session.transcribe(a, **kwargs) for a in audios]
    if len(results) == 1:
        result = results[0]
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        else:
            print(result.text)
        return 0
    if args.json:
        items = [{"audio": str(a), **r.to_dict()} for a, r in zip(audios, results, strict=True)]
        print(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        for a, r in zip(audios, results, strict=True):
            print(f"{a}\t{r.text}")
    return 0
