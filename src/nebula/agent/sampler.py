"""Samples on a timer into a short ring buffer; faster for a while when someone watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from nebula.agent import const
from nebula.agent.collectors import Collector
from nebula.agent.shapes import MetricsSample

log = logging.getLogger("nebula.agent")


class Sampler:
    def __init__(self, collector: Collector, interval_s: float) -> None:
        self.collector = collector
        self.interval_s = interval_s
        self.recent: deque[MetricsSample] = deque(maxlen=const.RING_SIZE)
        self.fast_until = 0.0  # monotonic
        self._woken = asyncio.Event()
        self._first = asyncio.Event()

    @property
    def current_interval_s(self) -> float:
        if time.monotonic() < self.fast_until:
            return min(const.FAST_INTERVAL_S, self.interval_s)
        return self.interval_s

    @property
    def latest(self) -> MetricsSample:
        if not self.recent:
            self.take()
        return self.recent[-1]

    async def current(self) -> MetricsSample:
        """The latest sample; right after start, waits for the first one (its CPU figure
        needs a measuring window, so it comes a moment after the collector starts)."""
        if not self.recent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first.wait(), const.FIRST_SAMPLE_AFTER_S + 1.0)
        return self.latest

    def take(self) -> MetricsSample:
        sample = self.collector.sample()
        self.recent.append(sample)
        return sample

    def go_fast(self) -> None:
        """Sample every second for the next minute (renewed by each call)."""
        was_fast = time.monotonic() < self.fast_until
        self.fast_until = time.monotonic() + const.FAST_FOR_S
        if not was_fast:
            self._woken.set()  # cut the current slow wait short

    def since(self, taken_after: float) -> list[MetricsSample]:
        return [s for s in self.recent if s["taken_at"] > taken_after]

    async def run(self) -> None:
        """Sample until cancelled; the schedule does not drift with the time a sample takes."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(min(const.FIRST_SAMPLE_AFTER_S, self.interval_s))
        next_at = loop.time()
        while True:
            try:
                self.take()
            except Exception:  # one bad reading (a vanished disk) must not stop the timer
                log.exception("sample=failed")
            self._first.set()
            next_at = max(next_at + self.current_interval_s, loop.time() + 0.05)
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), next_at - loop.time())
            if self._woken.is_set():
                next_at = loop.time()
