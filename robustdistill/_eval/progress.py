"""What ``eval`` reports while it runs: each attack's start and end, progress within long attacks, the time left."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .._config import format_duration
from .settings import EvalSettings

FORWARD_COST = 1 / 3
"""A forward pass counted in forward-and-backward passes, for the estimate of the time left."""


def attack_cost(name: str, settings: EvalSettings) -> float | None:
    """Forward-and-backward passes per image a built-in attack takes; None when unknown (AutoAttack's
    length depends on how many images stay robust; a plugin's attack is not known)."""
    forwards = FORWARD_COST * (1 + settings.restarts)  # the final count, plus picking the worst restart
    costs = {"clean": FORWARD_COST, "fgsm": 1 + FORWARD_COST,
             "pgd20": settings.pgd_steps * settings.restarts + forwards,
             "cw": settings.cw_steps * settings.cw_runs + FORWARD_COST * (1 + settings.cw_runs)}
    return costs.get(name)


class EvalProgress:
    """Progress of an evaluation, written to a stream (stderr by default) so that it reads in a log file too.

    One line when each attack starts and ends (accuracy, seconds, attacks left, time left in all), and
    within an attack that runs batch by batch a line every ``every`` seconds with the accuracy so far
    and the time left (on a terminal, a progress bar instead). The time left comes from the seconds
    per forward-and-backward pass measured so far and each attack's passes per image
    (:func:`attack_cost`); attacks of unknown length are named instead of estimated.
    """

    def __init__(self, stream: TextIO | None = None, *, every: float = 30.0, bar: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._stream = stream
        self.every = every
        self.bar = self.stream.isatty() if bar is None else bar
        self.clock = clock
        self._plan: list[tuple[str, float | None]] = []
        self._n = 0
        self._finished: set[str] = set()
        self._spent = 0.0  # seconds of the finished attacks of known cost
        self._work = 0.0  # their passes times images
        self._current: str | None = None
        self._started = 0.0
        self._last_line = 0.0
        self._seen = 0
        self._tqdm: Any = None

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def write(self, message: str) -> None:
        """One line, flushed at once (above the bar on a terminal)."""
        if self._tqdm is not None:
            self._tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def plan(self, attacks: list[tuple[str, float | None]], n: int) -> None:
        """The attacks about to run with their passes per image (:func:`attack_cost`), on ``n`` images."""
        self._plan, self._n = list(attacks), n

    def _rate(self) -> float | None:
        """Seconds per pass and image, from the finished attacks and the running one."""
        spent, work = self._spent, self._work
        cost = dict(self._plan).get(self._current or "")
        if self._current is not None and cost is not None and self._seen:
            spent += self.clock() - self._started
            work += cost * self._seen
        return spent / work if work > 0 and spent > 0 else None

    def _left(self, *, include_current: bool, current_seconds: float = 0.0) -> str:
        """``about 3m05s``, ``about 3m05s + autoattack`` (attacks of unknown length are named),
        ``unknown (autoattack)``, or ``''`` before anything has been timed."""
        rate = self._rate()
        seconds, unknown, timed = current_seconds, [], current_seconds > 0
        for name, cost in self._plan:
            if name in self._finished or (name == self._current and not include_current):
                continue
            if cost is None:
                unknown.append(name)
                continue
            if rate is None:
                return ""
            todo = self._n - (self._seen if name == self._current else 0)
            seconds, timed = seconds + rate * cost * todo, True
        if not timed:
            return f"unknown ({', '.join(unknown)})" if unknown else ""
        return f"about {format_duration(seconds)}" + "".join(f" + {name}" for name in unknown)

    def attack_started(self, name: str) -> None:
        self._current, self._seen = name, 0
        self._started = self._last_line = self.clock()
        names = [n for n, _ in self._plan]
        place = f" [{names.index(name) + 1}/{len(names)}]" if name in names else ""
        left = self._left(include_current=True)
        self.write(f"eval{place}: {name} on {self._n} images started{'; time left: ' + left if left else ''}")

    def batch_finished(self, done: int, total: int, correct: int, seen: int) -> None:
        """After ``done`` of ``total`` batches: ``correct`` of the ``seen`` images still classified right."""
        self._seen = seen
        now = self.clock()
        accuracy = 100 * correct / max(seen, 1)
        if self.bar:
            if self._tqdm is None:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, desc=self._current, unit="batch", leave=False, file=self.stream)
            self._tqdm.set_postfix_str(f"accuracy {accuracy:.2f}%", refresh=False)
            self._tqdm.update(done - self._tqdm.n)
            return
        if done == total or now - self._last_line < self.every:
            return
        self._last_line = now
        elapsed = now - self._started
        own = elapsed / done * (total - done)
        left = self._left(include_current=False, current_seconds=own)
        self.write(f"eval: {self._current} batch {done}/{total}, accuracy so far {accuracy:.2f}% ({seen} images), "
                   f"{format_duration(elapsed)}; {self._current} about {format_duration(own)} left"
                   f"{', in all ' + left if left else ''}")

    def attack_finished(self, name: str, accuracy: float, seconds: float) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        cost = dict(self._plan).get(name)
        if cost is not None:
            self._spent += seconds
            self._work += cost * self._n
        self._finished.add(name)
        self._current = None
        remaining = sum(1 for n, _ in self._plan if n not in self._finished)
        tail = ""
        if remaining:
            left = self._left(include_current=False)
            tail = f"; {remaining} attack{'s' if remaining > 1 else ''} left{', time left: ' + left if left else ''}"
        self.write(f"eval: {name} done: {100 * accuracy:.2f}% in {format_duration(seconds)}{tail}")
