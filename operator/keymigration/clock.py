"""The one UTC timestamp helper: RFC 3339 with a ``Z``, as Kubernetes, checkpoints and logs
write it."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def utc_timestamp(moment: datetime | None = None, *, precise: bool = False) -> str:
    """``2026-01-31T12:00:00Z`` (Kubernetes' metav1.Time); with ``precise``, microseconds too."""
    moment = (moment or utc_now()).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if precise else "%Y-%m-%dT%H:%M:%SZ")


def seconds_since(stamp: str, now: datetime) -> float:
    """Seconds from a timestamp as Kubernetes writes it (``...Z``) to ``now``; ``ValueError``
    for one that is not a timestamp."""
    return (now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


__all__ = ["seconds_since", "utc_now", "utc_timestamp"]
