"""``qgraph demo [DIR]``: the main job end to end on the built-in example, with no download.

1. export the tiny random-weight Qwen3-ASR (fixed seed) to ``DIR/raw``;
2. ``qgraph compile DIR/raw -o DIR/compiled --passes default`` with one line per pass;
3. compile it with ``fp32`` (every lossless pass) to ``DIR/fp32`` as well;
4. transcribe the bundled speech clip with all three (raw and fp32 must agree exactly);
5. validate the fp32 bundle against PyTorch eager, token for token.
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
        "per pass) and with fp32 to DIR/fp32, transcribe the bundled speech clip with all three "
        "and validate the fp32 one against PyTorch eager, token for token. The three folders "
        "are replaced if they exist. A random model's words are gibberish: what matters is that "
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

    raw, compiled, exact = args.dir / "raw", args.dir / "compiled", args.dir / "fp32"
    steps = expand(args.passes, default_registry(), what="--passes")

    step(f"export: tiny random-weight Qwen3-ASR -> {raw}")
    start = time.perf_counter()
    export_qwen3_asr("tiny", raw, overwrite=True)
    print(f"exported in {time.perf_counter() - start:.1f}s")

    step(f"compile: {raw} -> {compiled} with --passes {args.passes}")
    compile_bundle(raw, compiled, steps, verbose=True)
    step(f"compile: {raw} -> {exact} with --passes fp32 (every lossless pass)")
    compile_bundle(raw, exact, expand("fp32", default_registry()), verbose=False)

    audio_path = example_audio()
    audio = load_audio(audio_path)
    # a random model rarely says end-of-text: hitting max_tokens is expected here
    logging.getLogger("qgraph.runtime.qwen3").setLevel(logging.ERROR)
    step(f"transcribe {audio_path.name} ({len(audio) / 16000:.1f}s of speech)")
    tokens = {}
    for path in (raw, exact, compiled):
        t = AsrSession(path).transcribe(audio)
        tokens[path] = t.token_ids
        ids = " ".join(map(str, t.token_ids[:8]))
        print(f"{path.name:>9}: {len(t.token_ids)} tokens in {t.timings.total_s:.2f}s: {ids} ...")
    if tokens[exact] != tokens[raw]:
        raise VerificationError("the fp32 bundle decodes different tokens than the raw one")
    same = sum(a == b for a, b in zip(tokens[raw], tokens[compiled], strict=False))
    print(
        f"fp32 decodes exactly the raw tokens; {args.passes}: {same}/{len(tokens[raw])} "
        "positions agree (int4 on a random model's near-flat logits: see "
        "benchmarks/results/accuracy.md for what each option costs)"
    )

    step("validate the fp32 bundle against PyTorch eager")
    report = validate_bundle(exact, "tiny", [(audio_path.name, audio)])
    print(report.table())
    report.raise_for_failure()
    print(
        f"\ndone: {exact} is token-exact with PyTorch and {compiled} is the release layout. "
        f"Next: qgraph transcribe {compiled} YOUR.wav, qgraph bench {compiled}, or "
        "qgraph compile --print-changed=diff to see each rewrite."
    )
    return 0


def compile_bundle(src: Path, out: Path, steps, *, verbose: bool) -> None:
    bundle = Bundle.load(src)
    on_record = (lambda r: print_record(r, None, sys.stdout)) if verbose else None
    run_pipeline(bundle, steps, Instruments(on_record=on_record))
    bundle.save(out, overwrite=True)
    size = sum(f["bytes"] for f in bundle.manifest["files"].values())
    raw = sum(f["bytes"] for f in Bundle.load(src).manifest["files"].values())
    print(f"wrote {out}: {human_bytes(size)} (raw: {human_bytes(raw)})")
