"""``qgraph demo [DIR]``: the main job end to end on the built-in example, with no download.

1. export the tiny random-weight Qwen3-ASR (fixed seed) to ``DIR/raw``;
2. ``qgraph compile DIR/raw -o DIR/compiled --passes default`` with one line per pass;
3. transcribe the bundled speech clip with both bundles (the token ids must match);
4. validate the compiled bundle against PyTorch eager, token for token.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from qgraph.bundle import Bundle
from qgraph.commands.compile import print_record
from qgraph.errors import QGraphError, VerificationError
from qgraph.instruments.diff import human_bytes
from qgraph.manager import Instruments, run_pipeline
from qgraph.pipeline import expand
from qgraph.registry import default_registry

NAME = "demo"


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="export, compile, transcribe and validate the built-in tiny example",
        description="Run the main job on the built-in example, offline: export a tiny "
        "random-weight Qwen3-ASR to DIR/raw, compile it with --passes to DIR/compiled (one line "
        "per pass), transcribe the bundled speech clip with both bundles and validate the "
        "compiled one against PyTorch eager, token for token. DIR/raw and DIR/compiled are "
        "replaced if they exist. A random model's words are gibberish: what matters is that "
        "every stage agrees with PyTorch.",
    )
    p.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=Path("qgraph-demo"),
        help="working folder (default: ./qgraph-demo)",
    )
    p.add_argument(
        "--passes",
        default="default",
        metavar="SPEC",
        help="pipeline to compile with (default: default)",
    )
    p.set_defaults(run=run)


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(args) -> int:
    try:
        from qgraph.export.qwen3_asr.exporter import export_qwen3_asr
        from qgraph.export.qwen3_asr.validate import validate_bundle
    except ImportError as err:
        raise QGraphError(
            f"the demo needs the exporter's dependencies ({err.name}); install them with "
            "pip install torch==2.13.0 && pip install -e '.[export]'"
        ) from None
    from qgraph.examples import example_audio
    from qgraph.runtime import AsrSession
    from qgraph.runtime.audio import load_audio

    raw, compiled = args.dir / "raw", args.dir / "compiled"
    steps = expand(args.passes, default_registry(), what="--passes")

    step(f"export: tiny random-weight Qwen3-ASR -> {raw}")
    start = time.perf_counter()
    export_qwen3_asr("tiny", raw, overwrite=True)
    print(f"exported in {time.perf_counter() - start:.1f}s")

    step(f"compile: {raw} -> {compiled} with --passes {args.passes}")
    bundle = Bundle.load(raw)
    inst = Instruments(on_record=lambda r: print_record(r, None, sys.stdout))
    run_pipeline(bundle, steps, inst)
    bundle.save(compiled, overwrite=True)
    sizes = {
        p: sum(f["bytes"] for f in Bundle.load(p).manifest["files"].values())
        for p in (raw, compiled)
    }
    print(f"wrote {compiled}: {human_bytes(sizes[compiled])} (raw: {human_bytes(sizes[raw])})")

    audio_path = example_audio()
    audio = load_audio(audio_path)
    # a random model rarely says end-of-text: hitting max_tokens is expected here
    logging.getLogger("qgraph.runtime.decode").setLevel(logging.ERROR)
    step(f"transcribe {audio_path.name} ({len(audio) / 16000:.1f}s of speech)")
    results = {}
    for path in (raw, compiled):
        t = AsrSession(path).transcribe(audio)
        results[path] = t
        ids = " ".join(map(str, t.token_ids[:8]))
        print(f"{path.name:>9}: {len(t.token_ids)} tokens in {t.timings.total_s:.2f}s: {ids} ...")
    if results[raw].token_ids != results[compiled].token_ids:
        raise VerificationError("raw and compiled bundles decode different tokens")
    print("raw and compiled bundles decode the same tokens")

    step("validate the compiled bundle against PyTorch eager")
    report = validate_bundle(compiled, "tiny", [(audio_path.name, audio)])
    print(report.table())
    report.raise_for_failure()
    print(
        f"\ndone: {compiled} is token-exact with PyTorch. Next: qgraph transcribe {compiled} "
        "YOUR.wav, qgraph bench, or qgraph compile --print-changed=diff to see each rewrite."
    )
    return 0
