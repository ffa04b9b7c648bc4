"""The stops file: one JSON object a line for each server the GPU culler stopped.

The culler appends a record just before it asks the hub to stop a server; the
spawner finds it by container id when the stop comes, to tell the student why
on the next spawn page; the dashboard lists the recent ones.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

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
) -> None:
    """Append one stop; raises ``OSError`` when the file cannot be written."""
    event = {
        "time": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "user": user,
        "server": server,
        "profile": profile,
        "container": container,
        "reason": reason,
        "message": message,
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def stop_record_for(
    path: str, container: str, now: datetime | None = None, within: timedelta = timedelta(minutes=10)
) -> dict | None:
    """The culler's latest record for ``container`` made within ``within`` of ``now``, or None."""
    if not path or not container:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    now = now or datetime.now(timezone.utc)
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn line
        if not isinstance(event, dict) or event.get("container") != container:
            continue
        try:
            when = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError):
            return None
        if when.tzinfo is None:  # written by hand or by another tool: the culler's own times are UTC
            when = when.replace(tzinfo=timezone.utc)
        return event if now - when <= within else None
    return None
