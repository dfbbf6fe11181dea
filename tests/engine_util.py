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


def add_worker(store, campaign_id: int, host: str, pid: int, expires_in: float = 60.0) -> str:
    """A sender's row as another process would have written it; returns its token."""
    import datetime as dt
    import os

    from sqlalchemy import insert

    from newsletter.store.schema import campaign_workers

    now = dt.datetime.now(dt.UTC)
    token = os.urandom(8).hex()
    with store.write() as conn:
        conn.execute(insert(campaign_workers).values(
            campaign_id=campaign_id, token=token, host=host, pid=pid, sent=0, started_at=now,
            last_seen=now, expires=now + dt.timedelta(seconds=expires_in)))
    return token


def hand_to(store, token: str, ids) -> None:
    """Mark deliveries ``ids`` in flight under ``token``'s first claim, as its claim would."""
    from sqlalchemy import update

    from newsletter.store.schema import deliveries

    with store.write() as conn:
        conn.execute(update(deliveries).where(deliveries.c.id.in_(list(ids))).values(
            status="sending", worker=token, claim=f"{token}.1"))
