"""Timing and profiling helpers shared by the benchmark scripts beside this file.

Every timed call is bracketed by a device synchronisation on CUDA (a no-op on a CPU), so the seconds are those of
the work, not of the kernel launches. Times are returned in seconds; ``summary_ms`` turns a list of them into the
``{"median", "min", "max", "n"}`` milliseconds every report prints.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["profile_top_ops", "summary_ms", "sync", "time_calls", "time_interleaved", "timed"]


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, fn())`` of one call, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def time_calls(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1,
               warmup_s: float = 0.0) -> list[float]:
    """Seconds per call: ``warmup`` calls (and at least ``warmup_s`` seconds of them) untimed, then ``repeats``."""
    start, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - start < warmup_s:
        fn()
        done += 1
    return [timed(fn, device)[0] for _ in range(repeats)]


def time_interleaved(fns: dict[str, tuple[Callable[[], object], int]], device: torch.device,
                     rounds: int) -> dict[str, list[float]]:
    """``fns``: name -> (callable, calls per round). Every round times each callable that many times, in turn, so a
    burst of load from other jobs on the machine hits all of them alike. Returns name -> seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (fn, calls) in fns.items():
            times[name] += time_calls(fn, device, calls, warmup=0)
    return times


def summary_ms(times: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` in milliseconds and ``"n"``, the number of calls, from seconds per call."""
    ms = [t * 1e3 for t in times]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}


def profile_top_ops(fn: Callable[[], object], device: torch.device, top: int = 8,
                    calls: int = 1) -> list[tuple[str, float, float]]:
    """Top ops of ``calls`` calls of ``fn`` by self time: ``[(op name, ms per call, % of the total self time)]``
    (device time on CUDA, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [(e.key, getattr(e, attr) / 1e3 / calls, 100.0 * getattr(e, attr) / total) for e in events[:top]]
