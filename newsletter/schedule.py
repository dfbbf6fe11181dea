"""The weekly cadence: which slots are coming, and which are free."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from .config import Config


def slots(config: Config, after: dt.datetime) -> Iterator[dt.datetime]:
    """Weekly send slots strictly after ``after``, as aware datetimes in the newsletter's zone.

    The slot is wall-clock time: 09:00 Europe/Oslo stays 09:00 local across a DST change.
    """
    tz = config.newsletter.timezone
    local = after.astimezone(tz)
    days_ahead = (config.schedule.weekday - local.weekday()) % 7
    day = local.date() + dt.timedelta(days=days_ahead)
    while True:
        slot = dt.datetime.combine(day, config.schedule.time, tzinfo=tz)
        if slot > after:
            yield slot
        day += dt.timedelta(days=7)


def next_free_slot(config: Config, taken: Iterable[dt.date], after: dt.datetime) -> dt.datetime:
    """The first slot after ``after`` whose day no issue has claimed yet."""
    taken_days = set(taken)
    for slot in slots(config, after):
        if slot.date() not in taken_days:
            return slot
    raise AssertionError("unreachable: slots() is endless")
