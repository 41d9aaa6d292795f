"""Crash safety, measured: ``kill -9`` a compile at points spread over its run.

    python -m tests.core.kill_compile RAW WORK [--points 20] [--full-points 4] [--passes default]

Compiles RAW once into WORK/ref, timing the run and the moment its save starts (the temporary
folder appears), and copies it to WORK/out. Then ``--points`` compiles into WORK/out
(``--force``) are killed with SIGKILL:

- ``--full-points`` of them at moments spread evenly over the whole measured run;
- the others at moments spread evenly over the save, the only phase that touches the disk:
  their children are forked after this process ran the pipeline itself, and call
  ``Bundle.save(out, overwrite=True)`` exactly as ``qgraph compile`` does, so a point costs a
  fraction of the save instead of a whole compile (``--full-points`` equal to ``--points`` gives
  the plain, slower measure).

After each kill, WORK/out must be absent or a complete output (every file its manifest lists,
with that sha256, and nothing else), and no ``.out.tmp-*`` / ``.out.old-*`` folder may remain
beside it (the crash watcher gets a few seconds to clean up). Finally one more compile must
succeed and be byte-identical to WORK/ref (manifest timings aside). Prints one JSON report;
exit status 0 if every check held. Children are forked after the imports, so kill moments
measure the compile, not the interpreter start-up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path


def compile_child(raw: Path, out: Path, passes: str) -> int:
    """Fork a child that runs ``qgraph compile``; returns its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            from qgraph.cli import main

            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # keep the JSON report alone on stdout

            code = main(["compile", str(raw), "-o", str(out), "--passes", passes, "--force", "-q"])
        finally:
            os._exit(code)
    return pid


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def complete(out: Path) -> str | None:
    """None if ``out`` is a complete bundle (files match its manifest), else what is wrong."""
    try:
        manifest = json.loads((out / "qgraph.json").read_text())
    except (OSError, ValueError) as err:
        return f"no readable manifest ({err})"
    files = manifest["files"]
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    if present != set(files) | {"qgraph.json"}:
        return f"files differ from the manifest: {sorted(present ^ (set(files) | {'qgraph.json'}))}"
    for rel, info in files.items():
        if hashlib.sha256((out / rel).read_bytes()).hexdigest() != info["sha256"]:
            return f"{rel} does not match its sha256"
    return None


def same_bundle(a: Path, b: Path) -> str | None:
    """None if the bundles are byte-identical apart from the pipeline's timings."""
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return "different file lists"
    for name in names:
        if name == "qgraph.json":
            ma, mb = (json.loads((x / name).read_text()) for x in (a, b))
            for m in (ma, mb):
                for record in m["pipeline"]:
                    record.pop("seconds", None)
            if ma != mb:
                return "manifests differ beyond timings"
        elif (a / name).read_bytes() != (b / name).read_bytes():
            return f"{name} differs"
    return None


def wait_clean(out: Path, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := leftovers(out)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def fork(job) -> int:
    """Run ``job() -> exit code`` in a forked child; returns its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = job()
        finally:
            os._exit(code)
    return pid


def timed_reference(raw: Path, ref: Path, passes: str) -> tuple[float, float | None, int]:
    """Compile into ``ref``: (run seconds, seconds until the save began, exit code)."""
    start, save_at = time.monotonic(), None
    pid = compile_child(raw, ref, passes)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return time.monotonic() - start, save_at, os.waitstatus_to_exitcode(status)
        if save_at is None and leftovers(ref):
            save_at = time.monotonic() - start
        time.sleep(0.005)


def kill_at(pid: int, at: float, out: Path, before: int, report: dict, kind: str) -> None:
    """Kill ``pid`` ``at`` seconds from now, then check ``out`` and its neighbourhood."""
    time.sleep(at)
    during_save = bool(leftovers(out))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    left = wait_clean(out)
    state = "absent"
    if out.exists():
        state = "previous" if os.stat(out).st_ino == before else "new"
        if problem := complete(out):
            report["failures"].append(f"{kind} kill at {at:.2f}s: incomplete output: {problem}")
    if left:
        report["failures"].append(f"{kind} kill at {at:.2f}s: left behind {left}")
    report["kills"].append(
        {
            "kind": kind,
            "at": round(at, 3),
            "killed": os.WIFSIGNALED(status),
            "during_save": during_save,
            "output": state,
        }
    )


def run(raw: Path, work: Path, points: int, full_points: int, passes: str) -> dict:
    from qgraph.bundle import Bundle
    from qgraph.manager import run_pipeline
    from qgraph.pipeline import expand
    from qgraph.registry import default_registry

    steps = expand(passes, default_registry())  # imports every pass module before forking
    work.mkdir(parents=True, exist_ok=True)
    ref, out = work / "ref", work / "out"
    seconds, save_at, code = timed_reference(raw, ref, passes)
    report: dict = {"run_seconds": round(seconds, 2), "kills": [], "failures": []}
    if code != 0:
        report["failures"].append("the reference compile failed")
        return report
    save_at = seconds * 0.8 if save_at is None else save_at
    report["save_starts_at"] = round(save_at, 2)
    shutil.copytree(ref, out)
    full_points = min(full_points, points)
    for i in range(full_points):
        before = os.stat(out).st_ino
        pid = compile_child(raw, out, passes)
        kill_at(pid, seconds * (i + 0.5) / full_points, out, before, report, "compile")
        if not out.exists():  # the next kill needs a previous output to protect
            shutil.copytree(ref, out)
    if points > full_points:
        bundle = Bundle.load(raw)
        run_pipeline(bundle, steps)  # in this process: the children fork at the save
        save_points = points - full_points
        scratch = work / "scratch"
        start = time.monotonic()  # the save alone, as the children run it
        os.waitpid(fork(lambda: bool(bundle.save(scratch)) and 0), 0)
        save_seconds = time.monotonic() - start
        report["save_seconds"] = round(save_seconds, 2)
        shutil.rmtree(scratch, ignore_errors=True)
        for i in range(save_points):
            before = os.stat(out).st_ino
            pid = fork(lambda: bool(bundle.save(out, overwrite=True)) and 0)
            kill_at(pid, save_seconds * (i + 0.5) / save_points, out, before, report, "save")
            if not out.exists():
                shutil.copytree(ref, out)
    _, status = os.waitpid(compile_child(raw, out, passes), 0)
    if os.waitstatus_to_exitcode(status) != 0:
        report["failures"].append("the compile after the kills failed")
    elif problem := same_bundle(ref, out):
        report["failures"].append(f"not deterministic: {problem}")
    report["deterministic"] = not any("deterministic" in f for f in report["failures"])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--full-points", type=int, default=4)
    parser.add_argument("--passes", default="default")
    args = parser.parse_args(argv)
    report = run(args.raw, args.work, args.points, args.full_points, args.passes)
    print(json.dumps(report, indent=1))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
