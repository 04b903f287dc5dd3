"""Budget periods as pure functions of a moment: when the current one began and when it ends (UTC).

Usage::

    period_bounds("month", now=time.time())     # (start of this UTC month, start of the next)
    period_bounds("total", now=time.time())     # (None, None): never resets
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def period_bounds(period: str, *, now: float) -> tuple[float | None, float | None]:
    """``(start, end)`` in epoch seconds of the period containing ``now``.

    >>> period_bounds("day", now=86400 * 3 + 5)
    (259200.0, 345600.0)
    >>> period_bounds("month", now=datetime(2026, 12, 2, tzinfo=UTC).timestamp())
    (1796083200.0, 1798761600.0)
    """
    if period == "total":
        return None, None
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), (start + timedelta(days=1)).timestamp()
    if period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start.timestamp(), end.timestamp()
    raise ValueError(f"unknown period {period!r}")


def iso(moment: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC (``None`` stays ``None``)."""
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
