"""Crash safety for atomic saves: a watcher process that cleans up after a killed save.

``Bundle.save`` writes into ``.OUT.tmp-PID-TOKEN`` beside the output and, to replace an existing
output, renames it to ``.OUT.old-PID-TOKEN`` just before renaming the new one into place. An
exception cleans up in-process (``recover``), but ``kill -9`` runs no code, so ``CrashGuard``
starts a tiny watcher (``python -m qgraph.crashguard TMP OUT OLD``, in its own session so that
signals to the saving process group do not reach it). It blocks on a pipe: the saver writes
``done`` once the output is in place (or cleaned up) and closes it. If the pipe closes without
``done``, the saver died, and the watcher runs ``recover``: the temporary folder is removed and
the output path is left either absent or holding the complete previous (or new) output.

``sweep`` does the same for leftovers of savers whose watcher died too (the whole machine
stopped): folders named after a process that no longer runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

DONE = b"done"


def recover(tmp: Path, out: Path, old: Path) -> None:
    """Undo a save that stopped anywhere; idempotent, and safe once the save completed."""
    shutil.rmtree(tmp, ignore_errors=True)
    if not (old.exists() or old.is_symlink()):
        return
    if out.exists() or out.is_symlink():  # the new output is in place: drop the old one
        _remove(old)
    else:  # stopped between the two renames: put the previous output back
        os.rename(old, out)


def sweep(out: Path) -> None:
    """Recover leftovers of dead savers of ``out`` (``.OUT.tmp-PID-*``, ``.OUT.old-PID-*``)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-([0-9a-f]+)")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m is None or _alive(int(m.group(2))):
            continue
        stem = f".{out.name}.{{}}-{m.group(2)}-{m.group(3)}"
        logger.info("removing the leftovers of an interrupted save: %s", p)
        recover(out.parent / stem.format("tmp"), out, out.parent / stem.format("old"))


class CrashGuard:
    """Watches a save from another process; ``done()`` when the save is complete or undone."""

    def __init__(self, tmp: Path, out: Path, old: Path) -> None:
        self.proc: subprocess.Popen | None = None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qgraph.crashguard", str(tmp), str(out), str(old)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as err:  # no watcher: a kill -9 may leave the temporary folder behind
            logger.warning("cannot start the crash watcher (%s); continuing without it", err)

    def done(self) -> None:
        if self.proc is None or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(DONE)
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    tmp, out, old = (Path(a) for a in argv)
    message = sys.stdin.buffer.read()  # returns when the saver closes the pipe or dies
    if message != DONE:
        recover(tmp, out, old)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
