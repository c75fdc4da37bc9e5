"""Where a loop's time goes: wall time per named phase, and CPU time, between two marks.

    timer = PhaseTimer("env", "act", "update")
    with timer("env"):
        envs.step(actions)
    start = timer.mark()                 # e.g. when learning begins
    ...
    split = timer.since(start)           # {"env": s, "act": s, "update": s, "wall": s, "cpu": s}

A phase costs two ``perf_counter`` calls (well under a microsecond), so it can stay in a loop
that runs thousands of steps per second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TimerMark:
    seconds: dict[str, float]
    wall: float
    cpu: float


class _Phase:
    __slots__ = ("timer", "name", "start")

    def __init__(self, timer: PhaseTimer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.seconds[self.name] += time.perf_counter() - self.start


class PhaseTimer:
    """Accumulated wall seconds per phase; ``timer(name)`` is the context that times one."""

    def __init__(self, *phases: str):
        self.seconds = dict.fromkeys(phases, 0.0)
        self._phases = {name: _Phase(self, name) for name in phases}

    def __call__(self, phase: str) -> _Phase:
        return self._phases[phase]

    def mark(self) -> TimerMark:
        """The totals now, with the wall clock and the process's CPU time (all threads)."""
        return TimerMark(dict(self.seconds), time.perf_counter(), time.process_time())

    def since(self, mark: TimerMark) -> dict[str, float]:
        """Seconds per phase since ``mark``, plus ``wall`` and ``cpu`` (CPU seconds of all
        threads: robust to other processes sharing the cores)."""
        split = {k: v - mark.seconds[k] for k, v in self.seconds.items()}
        split["wall"] = time.perf_counter() - mark.wall
        split["cpu"] = time.process_time() - mark.cpu
        return split
