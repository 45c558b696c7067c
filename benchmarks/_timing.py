"""Shared benchmark method: alternate the sides in one process, repeat, report medians.

Every script in ``benchmarks/`` times its sides with :func:`alternate`: each repetition
runs every side once, in turn (so a load spike on the shared machine hits all sides, not
one), and the report is the median over repetitions of process (CPU) time and of wall
time. :func:`machine_line` prints the thread count and the load average beside the figures.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Timing:
    name: str
    process: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    result: Any = None

    @property
    def process_median(self) -> float:
        return statistics.median(self.process)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)


def machine_line(threads: int | None = None) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"threads = {threads if threads is not None else torch.get_num_threads()} (torch {torch.get_num_threads()}), "
            f"CPU count = {os.cpu_count()}, load average (1/5/15 min) = {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def alternate(sides: dict[str, Callable[[], Any]], repeats: int = 3, warmup: bool = True,
              verbose: bool = True) -> dict[str, Timing]:
    """Run every side ``repeats`` times, alternating; returns per-side timings and last result."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    out = {name: Timing(name) for name in sides}
    if warmup:
        for fn in sides.values():
            fn()
    for rep in range(repeats):
        for name, fn in sides.items():
            p0, w0 = time.process_time(), time.perf_counter()
            res = fn()
            out[name].process.append(time.process_time() - p0)
            out[name].wall.append(time.perf_counter() - w0)
            out[name].result = res
            if verbose:
                print(f"  rep {rep + 1}/{repeats} {name}: process {out[name].process[-1]:.3f} s, "
                      f"wall {out[name].wall[-1]:.3f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def table(timings: dict[str, Timing], bound: str | None = None, unit: str = "s") -> None:
    """Print medians; with ``bound`` (a side's name) also each side's ratio to it."""
    ref = timings[bound].process_median if bound else None
    width = max(len(n) for n in timings)
    print(f"  {'side':{width}s}  {'process (median)':>16s}  {'wall (median)':>13s}" + ("  ratio to " + bound if bound else ""))
    for name, t in timings.items():
        ratio = f"  {t.process_median / ref:6.2f}x" if ref else ""
        print(f"  {name:{width}s}  {t.process_median:14.3f} {unit}  {t.wall_median:11.3f} {unit}{ratio}")
