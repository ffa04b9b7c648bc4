"""The stops file: one JSON object a line for each server the GPU culler stopped.

The culler appends a record just before it asks the hub to stop a server; the
spawner finds it by container id when the stop comes, to tell the student why
on the next spawn page; the dashboard lists the recent ones. The file rotates by
size, and its readers read a bounded tail that skips unusable lines
(``gpuspawner.eventfiles``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from ..eventfiles import (
    DEFAULT_BACKUPS,
    DEFAULT_MAX_BYTES,
    Skipped,
    append_event,
    events_from_lines,
    parse_time,
    read_tail,
)

# How far back from its end the spawner looks: thousands of records.
_TAIL_BYTES = 256 * 1024


def record_stop(
    path: str,
    *,
    user: str,
    server: str,
    profile: str,
    container: str,
    reason: str,
    message: str,
    now: datetime | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
) -> None:
    """Append one stop, rotating the file past ``max_bytes`` (``backups`` generations kept);
    raises ``OSError`` when the file cannot be written."""
    event = {
        "time": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "user": user,
        "server": server,
        "profile": profile,
        "container": container,
        "reason": reason,
        "message": message,
    }
    append_event(path, event, max_bytes=max_bytes, backups=backups)


def stop_record_for(
    path: str,
    container: str,
    now: datetime | None = None,
    within: timedelta = timedelta(minutes=10),
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict | None:
    """The culler's latest record for ``container`` made within ``within`` of ``now``, or None.

    Reads the file's last 256 KB; a line that cannot be used (not JSON, no time, a time
    without a timezone, torn) is skipped with a warning in ``log``. Never raises.
    """
    if not path or not container:
        return None
    try:
        lines, torn = read_tail(path, _TAIL_BYTES)
    except OSError:
        return None
    skipped = Skipped()
    events = events_from_lines(lines, torn, skipped)
    skipped.warn(path, log)
    now = now or datetime.now(timezone.utc)
    for event in reversed(events):
        if event.get("container") != container:
            continue
        when = parse_time(event["time"])  # aware: events_from_lines left out the others
        return event if when is not None and now - when <= within else None
    return None
