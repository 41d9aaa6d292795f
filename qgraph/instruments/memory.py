"""``--memory``: the process's peak resident set size (RSS) while each pass runs.

Two ways to get a per-pass high-water mark, since ``getrusage``'s ``ru_maxrss`` is a
process-lifetime maximum (a pass that peaks below an earlier pass would show no growth):

- ``kernel`` (Linux >= 4.0, used when available): before the pass, write ``5`` to
  ``/proc/self/clear_refs``, which resets the kernel's high-water mark (``VmHWM``) to the current
  RSS; after it, read ``VmHWM`` from ``/proc/self/status``. Exact: the kernel updates it on every
  page fault, however short the spike. Side effect: the process-lifetime peak that other tools
  read (``ru_maxrss``, ``/usr/bin/time -v``) afterwards covers only the time since the last pass
  began; the instrument keeps the run's peak itself (``run_peak``).
- ``sampler`` (elsewhere, or asked for): a daemon thread reads the RSS every ``interval``
  seconds (default 2 ms) while the pass runs. No side effects, but a spike shorter than the
  interval can be missed, so it is a lower bound.

Each record gets ``extra["memory"] = {"peak_rss": bytes, "start_rss": bytes, "method": ...}``,
which the manifest history keeps. RSS counts memory-mapped weight pages that were touched, as
``time -v`` does.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import psutil

from qgraph.instruments.base import Instrument, PassContext, PassRecord

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{_STATUS} has no {field}")
    return int(match.group(1)) * 1024


def kernel_hwm_available() -> bool:
    """Whether this process may reset and read its kernel RSS high-water mark."""
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
    except OSError:
        return False
    return True


class _Sampler:
    """A daemon thread that keeps the highest RSS it sees until ``stop``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qgraph-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.process.memory_info().rss)


class PeakMemory(Instrument):
    """Peak RSS per pass into ``record.extra["memory"]``; put it last in the instrument list so
    it measures the pass alone, not the other instruments' work."""

    def __init__(self, method: str = "auto", interval: float = 0.002) -> None:
        if method not in ("auto", "kernel", "sampler"):
            raise ValueError(f"method must be auto, kernel or sampler, not {method!r}")
        self.run_peak = self._lifetime_peak()
        """The process's peak RSS up to the end of the last pass (what ``ru_maxrss`` would say
        without the resets)."""
        if method == "auto":
            method = "kernel" if kernel_hwm_available() else "sampler"
        elif method == "kernel" and not kernel_hwm_available():
            raise OSError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
        self.method = method
        self.interval = interval
        self._start = 0
        self._sampler: _Sampler | None = None
        logger.debug("peak memory per pass: method %s", method)

    @staticmethod
    def _rss() -> int:
        return psutil.Process().memory_info().rss

    @classmethod
    def _lifetime_peak(cls) -> int:
        try:
            return _status_kib("VmHWM")
        except OSError:
            return cls._rss()

    def before_pass(self, ctx: PassContext) -> None:
        if self.method == "kernel":
            self.run_peak = max(self.run_peak, _status_kib("VmHWM"))
            _CLEAR_REFS.write_text("5")
            self._start = _status_kib("VmRSS")
        else:
            self._sampler = _Sampler(self.interval)
            self._start = self._sampler.peak

    def _stop(self) -> int:
        if self.method == "kernel":
            return _status_kib("VmHWM")
        peak = self._sampler.stop() if self._sampler is not None else self._rss()
        self._sampler = None
        return peak

    def after_pass(self, ctx: PassContext, record: PassRecord) -> None:
        peak = self._stop()
        self.run_peak = max(self.run_peak, peak)
        record.extra["memory"] = {
            "peak_rss": peak,
            "start_rss": self._start,
            "method": self.method,
        }

    def after_failure(self, ctx: PassContext, error: BaseException) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
