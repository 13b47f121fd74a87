"""Quiet hours: a daily window in the browser's own time zone during which pushes are held. Pure.

``QuietHours`` (gateway/models.py) is re-exported here."""

from __future__ import annotations

import functools
import re
import zoneinfo
from datetime import datetime, time, timedelta

from gateway.models import QuietHours

_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
MINUTES_PER_DAY = 24 * 60
__all__ = ["QuietHours", "format_hhmm", "known_time_zones", "parse_hhmm", "quiet_hours", "quiet_until"]


@functools.cache
def known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def quiet_hours(time_zone: str | None, start: int | None, end: int | None) -> QuietHours | None:
    """A stream's stored quiet hours, or None when it has none."""
    if time_zone is None or start is None or end is None:
        return None
    return QuietHours(time_zone, start, end)


def parse_hhmm(text: str) -> int:
    """ "22:30" -> 1350; ValueError for anything else."""
    found = _HHMM.fullmatch(text)
    if found is None:
        raise ValueError("a time of day must be HH:MM, 00:00 to 23:59")
    return int(found[1]) * 60 + int(found[2])


def format_hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def quiet_until(now: float, quiet: QuietHours) -> float | None:
    """When the quiet window ``now`` falls in ends (epoch seconds), or None outside it."""
    if quiet.start == quiet.end or quiet.time_zone not in known_time_zones():
        return None
    zone = zoneinfo.ZoneInfo(quiet.time_zone)
    local = datetime.fromtimestamp(now, zone)
    minute = local.hour * 60 + local.minute
    if quiet.start < quiet.end:
        inside, ends_tomorrow = quiet.start <= minute < quiet.end, False
    else:  # spans midnight
        inside, ends_tomorrow = minute >= quiet.start or minute < quiet.end, minute >= quiet.start
    if not inside:
        return None
    day = local.date() + timedelta(days=1 if ends_tomorrow else 0)
    return _wall_end(datetime.combine(day, time(quiet.end // 60, quiet.end % 60)), zone, now)


def _wall_end(end: datetime, zone: zoneinfo.ZoneInfo, now: float) -> float | None:
    """The instant after ``now`` when the local clock first reads ``end``: the repeated hour of an
    autumn change has it twice (the one after now), a spring change may skip it (then the jump)."""
    before = end.replace(tzinfo=zone, fold=0).timestamp()
    after = end.replace(tzinfo=zone, fold=1).timestamp()
    if before <= after:  # an ordinary time (equal) or one the clock shows twice
        return next((t for t in (before, after) if t > now), None)
    # Skipped: ``after`` (read with the new offset) is before the jump, ``before`` after it.
    low, high = int(after), int(before) + 1
    offset = datetime.fromtimestamp(high, zone).utcoffset()
    while high - low > 1:  # the first second with the new offset: the jump
        middle = (low + high) // 2
        low, high = (low, middle) if datetime.fromtimestamp(middle, zone).utcoffset() == offset else (middle, high)
    return float(high) if high > now else None
