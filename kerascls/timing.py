"""The one latency timer: warm up, time repeated calls, summarize.

Used by the export report, ``compare`` and the benchmarks, so every latency figure kerascls
prints is measured the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 5) -> list[float]:
    """Seconds of each of ``runs`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def percentiles(seconds: list[float]) -> dict:
    """``{"p50_ms": ..., "p90_ms": ...}`` of call times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p90_ms": round(float(np.percentile(ms, 90)), 4)}


def best_block_ms(fn: Callable[[], object], repeats: int, blocks: int, warmup: int = 1) -> float:
    """Milliseconds per call: the mean of the fastest of ``blocks`` blocks of ``repeats`` calls.

    The fastest block (as ``timeit`` reports) is the figure least inflated by other processes
    on a shared machine.
    """
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best * 1e3
