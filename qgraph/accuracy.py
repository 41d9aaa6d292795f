"""What a lossy bundle costs: a candidate bundle compared with its reference on speech.

``compare(reference, candidate, audio)`` decodes every clip with both bundles through their
families' runtime sessions (``qgraph.families.open_session``, the ``Session`` protocol) and
measures, per clip and pooled:

- **greedy tokens**: both bundles decode the clip greedily from the same prompt
  (``prompt_for(encode(features(clip)), language)``; a clip longer than the session's
  ``max_samples`` is cut to its first window). ``first_divergence`` is the first position where
  the candidate's tokens differ from the reference's (None: identical); token **agreement** is
  the matching prefix over the longer sequence, pooled over clips (sum of prefixes / sum of
  lengths). A **loop** is a clip that the reference ends with end-of-text and the candidate does
  not within ``4 * len(reference) + 16`` tokens (at most ``max_tokens``; repetition);
- **teacher-forced logits**: the candidate is run on the reference's own tokens (up to the first
  divergence its own greedy decode already did that; after it one prefill per position, so every
  family and layout works, last-position logits included) and its logits are
  compared with those the reference produced while decoding (captured with
  ``qgraph.runtime.session.observe``): mean KL(reference || candidate) in nats per token over the
  full vocabulary, and top-1 agreement;
- **WER**: for clips with a reference transcript (same-stem ``.txt`` or a ``*.trans.txt`` line,
  as ``qgraph eval`` reads them; the built-in clips have theirs) both bundles ``transcribe`` the
  whole clip and are scored with ``qgraph.runtime.eval.score`` (same normalisation); WER delta in
  percentage points, and each bundle's real-time factor.

**Loss and budget** (``AccuracyReport.loss``, percentage points): the WER delta when every clip has
a transcript, else the token disagreement ``100 * (1 - agreement)``. A report is **within budget**
when ``loss <= budget`` and no clip loops.

Audio: a folder (``find_audio``: ``.wav``/``.flac``/``.ogg``, recursively, the first
``max_files``), or, when none is given, the built-in speech (``qgraph.examples``: two synthesised
English clips with their transcripts).

``save_checked`` is ``qgraph compile --check-accuracy``: ``Bundle.save`` writes the compiled
bundle into its temporary folder beside the output and, before the rename, calls the check
(``before_commit``): it is compared with the reference, the result is written into its manifest
(``accuracy``), and only then is it renamed into place. Over budget (without
``accept_loss``) the staged bundle is deleted and ``AccuracyBudgetError`` (exit code 4) is raised:
nothing is written at the output and an existing output (``--force``) is left as it was.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qgraph.errors import BundleError, QGraphError
from qgraph.validation import first_mismatch

__all__ = [
    "AccuracyBudgetError",
    "AccuracyReport",
    "Clip",
    "ClipResult",
    "compare",
    "load_clips",
    "save_checked",
]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.5
"""Percentage points of WER (or token disagreement without transcripts)."""


class AccuracyBudgetError(QGraphError):
    """A compiled bundle lost more accuracy than its budget allows."""

    exit_code = 4


@dataclass(frozen=True)
class Clip:
    """One calibration utterance: samples at the session's rate, its transcript if known."""

    id: str
    samples: np.ndarray
    text: str | None


@dataclass
class ClipResult:
    """One clip decoded by both bundles (see the module docstring for each measure)."""

    id: str
    audio_s: float
    reference_tokens: list[int]
    tokens: list[int]
    reference_finish: str
    finish: str
    first_divergence: int | None
    kl: float
    top1: float
    words: int = 0
    reference_errors: int = 0
    errors: int = 0
    reference_text: str = ""
    text: str = ""
    reference_rtf: float = float("nan")
    rtf: float = float("nan")

    @property
    def matched(self) -> int:
        n = len(self.reference_tokens) if self.first_divergence is None else self.first_divergence
        return min(n, len(self.tokens))

    @property
    def length(self) -> int:
        return max(len(self.reference_tokens), len(self.tokens))

    @property
    def loop(self) -> bool:
        return self.reference_finish == "eos" and self.finish != "eos"


@dataclass
class AccuracyReport:
    """A candidate against its reference on a set of clips."""

    reference: str
    candidate: str
    audio: str
    budget: float
    clips: list[ClipResult] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        total = sum(c.length for c in self.clips)
        return sum(c.matched for c in self.clips) / total if total else 1.0

    @property
    def exact(self) -> int:
        return sum(c.first_divergence is None for c in self.clips)

    @property
    def kl(self) -> float:
        """Mean teacher-forced KL per token (nats), over all positions of all clips."""
        n = sum(len(c.reference_tokens) for c in self.clips)
        return sum(c.kl * len(c.reference_tokens) for c in self.clips) / n if n else 0.0

    @property
    def top1(self) -> float:
        n = sum(len(c.reference_tokens) for c in self.clips)
        return sum(c.top1 * len(c.reference_tokens) for c in self.clips) / n if n else 1.0

    @property
    def loops(self) -> list[str]:
        return [c.id for c in self.clips if c.loop]

    @property
    def has_text(self) -> bool:
        return bool(self.clips) and all(c.words for c in self.clips)

    @property
    def words(self) -> int:
        return sum(c.words for c in self.clips)

    @property
    def reference_wer(self) -> float:
        return sum(c.reference_errors for c in self.clips) / self.words if self.words else math.nan

    @property
    def wer(self) -> float:
        return sum(c.errors for c in self.clips) / self.words if self.words else math.nan

    @property
    def metric(self) -> str:
        return "wer_delta_pp" if self.has_text else "token_disagreement_pp"

    @property
    def loss(self) -> float:
        """Percentage points: WER delta with transcripts, else token disagreement."""
        if self.has_text:
            return 100 * (self.wer - self.reference_wer)
        return 100 * (1 - self.agreement)

    @property
    def within_budget(self) -> bool:
        return self.loss <= self.budget + 1e-9 and not self.loops

    def summary(self) -> dict[str, Any]:
        """The totals recorded in a manifest (``accuracy``) and printed by the CLI."""
        out: dict[str, Any] = {
            "reference": self.reference,
            "audio": self.audio,
            "clips": len(self.clips),
            "budget_pp": self.budget,
            "metric": self.metric,
            "loss_pp": round(self.loss, 4),
            "within_budget": self.within_budget,
            "token_agreement": round(self.agreement, 6),
            "exact_clips": self.exact,
            "first_divergence": {
                c.id: c.first_divergence for c in self.clips if c.first_divergence is not None
            },
            "kl_nats_per_token": round(self.kl, 6),
            "teacher_forced_top1": round(self.top1, 6),
            "loops": self.loops,
        }
        if self.words:
            out |= {
                "words": self.words,
                "reference_wer": round(self.reference_wer, 6),
                "wer": round(self.wer, 6),
                "wer_delta_pp": round(100 * (self.wer - self.reference_wer), 4),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "candidate": self.candidate,
            "per_clip": [asdict(c) for c in self.clips],
        }

    def table(self) -> str:
        """One line per clip, then the totals and the verdict."""
        width = max([len(c.id) for c in self.clips] + [4])
        lines = [
            f"{'clip':<{width}}  {'tokens':>7}  {'diverge':>7}  {'KL':>8}  {'top1':>6}  WER ref/out"
        ]
        for c in self.clips:
            div = "-" if c.first_divergence is None else str(c.first_divergence)
            wer = (
                f"{100 * c.reference_errors / c.words:5.1f}/{100 * c.errors / c.words:5.1f}%"
                if c.words
                else "-"
            )
            loop = "  LOOP" if c.loop else ""
            lines.append(
                f"{c.id:<{width}}  {len(c.reference_tokens):>3}/{len(c.tokens):<3}  {div:>7}  "
                f"{c.kl:8.4f}  {100 * c.top1:5.1f}%  {wer}{loop}"
            )
        lines.append(
            f"{len(self.clips)} clips: token agreement {100 * self.agreement:.1f}% "
            f"({self.exact} identical), KL {self.kl:.4f} nats/token, teacher-forced top-1 "
            f"{100 * self.top1:.1f}%"
            + (
                f", WER {100 * self.reference_wer:.2f}% -> {100 * self.wer:.2f}% "
                f"({self.words} words)"
                if self.words
                else ""
            )
        )
        verdict = "within" if self.within_budget else "OVER"
        loops = f", loops on {', '.join(self.loops)}" if self.loops else ""
        lines.append(
            f"loss {self.loss:+.2f} pp ({self.metric}){loops}: {verdict} the budget of "
            f"{self.budget:g} pp"
        )
        return "\n".join(lines)


# -- audio -------------------------------------------------------------------------------------
def load_clips(
    audio: str | os.PathLike[str] | None, sample_rate: int, max_files: int | None = None
) -> list[Clip]:
    """The clips of folder ``audio`` (with transcripts where it has them), or the built-in
    speech when ``audio`` is None or ''."""
    from qgraph.runtime.audio import find_audio, load_audio
    from qgraph.runtime.eval import reference_texts

    if not audio:
        from qgraph.examples import (
            EXAMPLE_LONG_TEXT,
            EXAMPLE_TEXT,
            example_audio,
            example_long_audio,
        )

        pairs = [(example_audio(), EXAMPLE_TEXT), (example_long_audio(), EXAMPLE_LONG_TEXT)]
        return [Clip(p.stem, load_audio(p, sample_rate), t) for p, t in pairs][:max_files]
    root = Path(audio)
    files = find_audio(root, "calibration audio", max_files)
    texts = reference_texts(root, files)
    return [
        Clip(
            p.relative_to(root).with_suffix("").as_posix(), load_audio(p, sample_rate), texts.get(p)
        )
        for p in files
    ]


# -- comparison --------------------------------------------------------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def _last_logits(rows: list[np.ndarray]) -> Callable[[str, Any], None]:
    def keep(component: str, out: Any) -> None:
        logits = out.get("logits")
        if logits is not None:
            rows.append(np.array(logits[0, -1], dtype=np.float32))

    return keep


def _window(session: Any, samples: np.ndarray) -> np.ndarray:
    """The first window the session decodes in one greedy call (all of it if unbounded)."""
    limit = getattr(session, "max_samples", None)
    return samples[:limit] if limit else samples


def _decode(session: Any, samples: np.ndarray, language: str | None, max_tokens: int):
    """(encoded features, prompt, greedy tokens, finish reason, last-position logits rows)."""
    from qgraph.runtime.session import observe

    features = session.encode(session.features(_window(session, samples)))
    prompt = session.prompt_for(features, language)
    rows: list[np.ndarray] = []
    observe(session, _last_logits(rows))
    try:
        tokens, finish = session.greedy(features, prompt, max_tokens)
    finally:
        observe(session, None)
    return features, prompt, tokens, finish, rows[-len(tokens) :] if tokens else []


def _teacher_forced(
    session: Any, features: Any, prompt: Any, tokens: list[int], own: list[np.ndarray], start: int
) -> list[np.ndarray]:
    """The candidate's logits for every position of ``tokens``: its own greedy rows ``own`` up to
    ``start`` (up to the first divergence the prefixes are the same), then one prefill each."""
    from qgraph.runtime.session import Prompt, observe

    rows: list[np.ndarray] = list(own[:start])
    observe(session, _last_logits(rows))
    try:
        for i in range(start, len(tokens)):
            session.greedy(features, Prompt([*prompt.ids, *tokens[:i]], prompt.offset), 1)
    finally:
        observe(session, None)
    return rows


def compare(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    audio: str | os.PathLike[str] | None = None,
    *,
    budget: float = DEFAULT_BUDGET,
    max_files: int | None = 16,
    max_tokens: int = 224,
    language: str | None = None,
    threads: int | None = None,
    on_clip: Callable[[ClipResult], None] | None = None,
    cache: dict[str, Any] | None = None,
) -> AccuracyReport:
    """Decode ``audio`` (None: the built-in speech) with both bundles and measure the loss.

    ``cache``: a dict kept by the caller across calls with the same reference, audio and
    options; the reference's decodes are stored there and reused (candidate sweeps).

    ``max_tokens`` caps both greedy decodes; the candidate gets at most
    ``4 * len(reference tokens) + 16`` (more is a loop).
    """
    from qgraph.families import open_session
    from qgraph.runtime.eval import score

    cache = {} if cache is None else cache
    try:
        ref = open_session(reference, threads=threads)
        cand = open_session(candidate, threads=threads)
    except BundleError as err:
        raise BundleError(f"accuracy check: {err}") from None
    clips = load_clips(audio, ref.sample_rate, max_files)
    report = AccuracyReport(str(reference), str(candidate), str(audio or "built-in"), budget)
    for clip in clips:
        if clip.id not in cache:
            _, _, *decoded = _decode(ref, clip.samples, language, max_tokens)
            transcript = ref.transcribe(clip.samples, language=language) if clip.text else None
            cache[clip.id] = (*decoded, transcript)
        ref_tokens, ref_finish, ref_rows, r = cache[clip.id]
        budget_tokens = min(4 * len(ref_tokens) + 16, max_tokens)
        cand_features, cand_prompt, tokens, finish, own = _decode(
            cand, clip.samples, language, budget_tokens
        )
        divergence = first_mismatch(ref_tokens, tokens)
        start = len(ref_tokens) if divergence is None else min(divergence + 1, len(own))
        forced = _teacher_forced(cand, cand_features, cand_prompt, ref_tokens, own, start)
        kls = [_kl(p, q) for p, q in zip(ref_rows, forced, strict=True)]
        top1 = [int(np.argmax(p) == np.argmax(q)) for p, q in zip(ref_rows, forced, strict=True)]
        result = ClipResult(
            clip.id,
            clip.samples.size / ref.sample_rate,
            ref_tokens,
            tokens,
            ref_finish,
            finish,
            divergence,
            float(np.mean(kls)) if kls else 0.0,
            float(np.mean(top1)) if top1 else 1.0,
        )
        if clip.text:
            c = cand.transcribe(clip.samples, language=language)
            words, *ref_errors = score(clip.text, r.text)
            result.words, result.reference_errors = words, sum(ref_errors)
            result.errors = sum(score(clip.text, c.text)[1:])
            result.reference_text, result.text = r.text, c.text
            result.reference_rtf, result.rtf = r.timings.rtf, c.timings.rtf
        report.clips.append(result)
        logger.info(
            "%s: divergence %s, KL %.4f, top-1 %.3f",
            clip.id,
            result.first_divergence,
            result.kl,
            result.top1,
        )
        if on_clip is not None:
            on_clip(result)
    return report


# -- compile --check-accuracy ------------------------------------------------------------------
def record(bundle_dir: str | os.PathLike[str], report: AccuracyReport, accepted: bool) -> None:
    """Write ``report.summary()`` into the bundle's manifest as ``accuracy``."""
    path = Path(bundle_dir) / "qgraph.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["accuracy"] = {**report.summary(), "accepted_loss": accepted}
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def save_checked(
    bundle: Any,
    out: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    audio: str | os.PathLike[str] | None,
    *,
    budget: float = DEFAULT_BUDGET,
    accept_loss: bool = False,
    overwrite: bool = False,
    max_files: int | None = 16,
    max_tokens: int = 224,
    on_report: Callable[[AccuracyReport], None] | None = None,
) -> tuple[Path, AccuracyReport]:
    """Save ``bundle`` to ``out`` only if it is within ``budget`` of ``reference`` on ``audio``
    (or ``accept_loss``); see the module docstring. ``on_report`` sees the report before the
    verdict is acted on."""
    result: list[AccuracyReport] = []

    def check(staged: Path) -> None:
        report = compare(
            reference, staged, audio, budget=budget, max_files=max_files, max_tokens=max_tokens
        )
        report.candidate = str(Path(out).absolute())
        result.append(report)
        if on_report is not None:
            on_report(report)
        if not report.within_budget and not accept_loss:
            raise AccuracyBudgetError(
                f"accuracy check failed: loss {report.loss:+.2f} pp ({report.metric})"
                + (f", loops on {', '.join(report.loops)}" if report.loops else "")
                + f" exceeds the budget of {budget:g} pp against {reference}; nothing was "
                "written (raise --budget, pass --accept-loss, or choose a less lossy pipeline)"
            )
        record(staged, report, accepted=not report.within_budget)
        bundle.manifest["accuracy"] = json.loads((staged / "qgraph.json").read_text())["accuracy"]

    path = bundle.save(out, overwrite=overwrite, before_commit=check)
    return path, result[0]
