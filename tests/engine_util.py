"""A clock for campaign-engine tests: ``sleep`` moves time on at once, and records the wait."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds that only ``sleep`` advances; pass ``clock=c, sleep=c.sleep``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
