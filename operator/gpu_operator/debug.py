"""Memory: giving freed heap back to the OS, and heap reports on demand (off by default).

With `GPU_OPERATOR_DEBUG_DIR` set, SIGUSR1 writes `heap-<n>.txt` there: the process's RSS, the objects the
garbage collector tracks by type, and, when tracemalloc runs (start Python with `PYTHONTRACEMALLOC=<frames>`),
the top allocation sites of what is still allocated. With `GPU_OPERATOR_PROFILE_PASSES=1` as well, the reconcile
passes run under cProfile and `passes.prof` there (pstats) holds all of them so far, rewritten at most every 5 s.
"""

from __future__ import annotations

import collections
import cProfile
import ctypes
import ctypes.util
import gc
import os
import signal
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

DEBUG_DIR = "GPU_OPERATOR_DEBUG_DIR"
PROFILE_PASSES = "GPU_OPERATOR_PROFILE_PASSES"
TOP = 40
R = TypeVar("R")
_passes = cProfile.Profile() if os.environ.get(PROFILE_PASSES) and os.environ.get(DEBUG_DIR) else None
_dumped = [0.0]


def profiled(fn: Callable[[], R]) -> R:
    """fn(), under the passes' profiler when it is on (one pass at a time: the loop is single-flight)."""
    if _passes is None:
        return fn()
    _passes.enable()
    try:
        return fn()
    finally:
        _passes.disable()
        if time.monotonic() - _dumped[0] >= 5:
            _dumped[0] = time.monotonic()
            path = Path(os.environ[DEBUG_DIR]) / "passes.prof"
            try:
                _passes.dump_stats(str(path.with_suffix(".tmp")))
                path.with_suffix(".tmp").rename(path)
            except OSError as exc:  # a debug aid must not fail the pass (a missing or read-only directory)
                print(f"passes profile not written: {exc}", file=sys.stderr)


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 256 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def tune_malloc() -> None:
    """Large blocks (parsed list pages, response bodies) always from mmap, so they go back to the OS when freed
    (glibc otherwise raises the threshold after the first such free and keeps them in the heap)."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


# A watch thread gives up the GIL for each event it reads (one TLS record, one read) and, while a pass computes in
# another thread, waits a whole switch interval to get it back: at Python's 5 ms a watch read ~310 events a second
# beside a busy thread, ~29,000 alone; at 0.5 ms ~2,550, about 8 times more (e2e/bench/gil_watch.py, medians of 3),
# for a few per cent of CPU when threads do contend (and nothing when they do not).
SWITCH_INTERVAL_S = 0.0005


def tune_threads() -> None:
    """A shorter GIL switch interval, so watch threads keep up while a pass runs (SWITCH_INTERVAL_S)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def trim() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim; nothing elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def heap_report(top: int = TOP) -> str:
    before = rss_kib()
    gc.collect()
    trim()
    lines = [f"rss {before / 1024:.1f} MiB; after gc and malloc_trim {rss_kib() / 1024:.1f} MiB"]
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    lines.append(f"gc-tracked objects {sum(counts.values())}, by type:")
    lines += [f"  {n:9d}  {name}" for name, n in counts.most_common(25)]
    if tracemalloc.is_tracing():
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib.*")]
        snap = tracemalloc.take_snapshot().filter_traces(ignore)
        stats = snap.statistics("lineno")
        total = sum(s.size for s in stats)
        lines.append(f"tracemalloc: {total / 2**20:.1f} MiB in {sum(s.count for s in stats)} blocks; top sites:")
        for s in stats[:top]:
            frame = s.traceback[0]
            lines.append(f"  {s.size / 2**20:7.2f} MiB {s.count:8d}  {_short(frame.filename)}:{frame.lineno}")
        by_file = snap.statistics("filename")
        lines.append("by file:")
        for s in by_file[:20]:
            lines.append(f"  {s.size / 2**20:7.2f} MiB {s.count:8d}  {_short(s.traceback[0].filename)}")
        if tracemalloc.get_traceback_limit() > 1:
            lines.append("top tracebacks:")
            for s in snap.statistics("traceback")[:12]:
                lines.append(f"  {s.size / 2**20:7.2f} MiB {s.count:8d}")
                lines += [f"      {_short(f.filename)}:{f.lineno}" for f in s.traceback]
    return "\n".join(lines) + "\n"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/operator/", 1)[-1]


def install() -> None:
    """SIGUSR1 -> a heap report in $GPU_OPERATOR_DEBUG_DIR (nothing when the variable is unset)."""
    where = os.environ.get(DEBUG_DIR)
    if not where:
        return
    seq = [0]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        seq[0] += 1
        path = Path(where) / f"heap-{seq[0]}.txt"
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(heap_report())
            tmp.rename(path)
        except Exception as exc:  # noqa: BLE001 - a debug aid must not stop the operator
            print(f"heap report failed: {exc}", file=sys.stderr)

    signal.signal(signal.SIGUSR1, on_signal)
