"""Peak resident memory of a stretch of code, for the calibration benchmarks (bench.calibrated,
bench.memory).

``PeakRSS`` measures the process's anonymous resident memory (RSS less its file-backed and
shared pages: what the code allocates; the libraries' pages, which the system may drop and
read again under memory pressure, would blur it) above its value at the start: a thread reads
/proc/self/statm every ``interval`` seconds (10 ms; torch's kernels release the GIL, and
Python hands it over every 5 ms, so the thread runs while the code does), and once more at
the end.  A peak shorter than the interval can be missed.  ``ru_maxrss`` (the
kernel's exact peak of the process so far) cannot: where the stretch raised it, its value at
the end is the stretch's peak; where it did not (an earlier peak of the process was higher,
which includes the RSS of the parent a child process was started from: Linux carries it
across exec) it says nothing, and ``max_rss_above_start`` is None.  It is reported beside the
sampled peak, not instead.  At the start glibc's ``malloc_trim(0)`` returns freed heap memory
to the system, so that memory an earlier stretch freed but glibc kept does not hide this
one's growth.

No torch or ComfyUI import here: a child process can measure itself cheaply (the tests).
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


def statm() -> tuple[int, int]:
    """(resident, anonymous resident) bytes of the process now: statm's resident, and that
    less its shared pages (file-backed and shared memory); psutil's RSS for both where there
    is no /proc (not Linux), if psutil is installed."""
    try:
        with open("/proc/self/statm") as f:
            fields = f.read().split()
        return int(fields[1]) * PAGE, (int(fields[1]) - int(fields[2])) * PAGE
    except OSError:
        import psutil

        rss = psutil.Process().memory_info().rss
        return rss, rss


def rss_bytes() -> int:
    """The process's anonymous resident memory now (bytes)."""
    return statm()[1]


def max_rss_bytes() -> int:
    """ru_maxrss: the process's peak RSS so far (bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trim():
    """Return glibc's freed heap memory to the system (nothing elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """``with PeakRSS() as m: ...``; then ``m.above_start`` (bytes: the sampled peak of the
    anonymous RSS above its start), ``m.max_rss_above_start`` (ru_maxrss at the end above the
    whole RSS at the start, where the stretch raised ru_maxrss; else None), ``m.start``,
    ``m.peak``, ``m.max_rss``, ``m.seconds`` and ``m.samples``."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start = self.peak = self.start_rss = self.max_rss = self.max_rss_before = 0
        self.samples = 0
        self.seconds = 0.0

    def _watch(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1

    def __enter__(self):
        trim()
        self.max_rss_before = max_rss_bytes()
        self.start_rss, self.start = statm()
        self.peak = self.start
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._started
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.max_rss = max_rss_bytes()
        return False

    @property
    def above_start(self) -> int:
        return self.peak - self.start

    @property
    def max_rss_above_start(self) -> int | None:
        if self.max_rss <= self.max_rss_before:
            return None  # the process's peak was earlier: this stretch's is not known from it
        return self.max_rss - self.start_rss

    def summary(self) -> dict:
        """The measurement in MiB (and the sampling it rests on)."""
        above = self.max_rss_above_start
        return {"peak_rss_above_start_mb": round(self.above_start / MB, 1),
                "max_rss_above_start_mb": None if above is None else round(above / MB, 1),
                "start_rss_mb": round(self.start_rss / MB, 1),
                "start_anonymous_rss_mb": round(self.start / MB, 1),
                "sample_interval_s": self.interval, "rss_samples": self.samples}
