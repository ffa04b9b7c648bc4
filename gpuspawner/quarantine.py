"""The quarantine file: the units set aside because spawns on them kept failing.

One small JSON file beside the stops file (``GPUSpawner.quarantine_file``). The
hub adds a unit when its starts fail ``quarantine_after`` times in a row
(``gpus.health``); an admin removes it with ``gpuspawner gpus unquarantine`` or the
dashboard's button. The hub reads it again whenever it changed, so a unit put back
is handed out on the next spawn, and a restarted hub still skips a broken unit.

Why a file, not labels: a unit has no Docker object of its own to label, and the
container whose start failed is removed; the file is where the hub, the dashboard
and the command already meet (the denials and stops files), and an admin can read
it. Writers take a lock beside it and replace it whole, so a reader never sees half.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

from .gpus.health import Quarantined

log = logging.getLogger(__name__)


def _parse(text: str, path: str) -> dict[str, Quarantined]:
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as e:
        log.warning("Quarantine file %s is not JSON (%s): no unit is quarantined until it is fixed", path, e)
        return {}
    units = data.get("units") if isinstance(data, dict) else None
    found: dict[str, Quarantined] = {}
    for unit, entry in (units or {}).items():
        if not isinstance(entry, dict):
            continue
        try:
            since = datetime.fromisoformat(str(entry.get("since", "")).replace("Z", "+00:00"))
        except ValueError:
            since = datetime.fromtimestamp(0, timezone.utc)
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
        failures = entry.get("failures")
        found[str(unit)] = Quarantined(
            unit=str(unit),
            since=since,
            reason=str(entry.get("reason") or ""),
            failures=failures if isinstance(failures, int) else 0,
            holder=str(entry.get("holder") or ""),
        )
    return found


def read_quarantine(path: str) -> dict[str, Quarantined]:
    """The quarantined units, by id: {} when there is no file; a broken file is logged and read as {}."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return _parse(f.read(), path)
    except FileNotFoundError:
        return {}


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: str, units: dict[str, Quarantined]) -> None:
    body = {"version": 1, "units": {unit: q.as_json() for unit, q in sorted(units.items())}}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".quarantine-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def quarantine(path: str, records: Iterable[Quarantined]) -> None:
    """Add (or renew) ``records``; raises ``OSError`` when the file cannot be written."""
    with _locked(path):
        units = read_quarantine(path)
        units.update((q.unit, q) for q in records)
        _write(path, units)


def put_back(path: str, unit_ids: Iterable[str]) -> list[str]:
    """Take ``unit_ids`` out of quarantine; returns those that were in it."""
    unit_ids = list(unit_ids)
    with _locked(path):
        units = read_quarantine(path)
        removed = [u for u in unit_ids if units.pop(u, None) is not None]
        if removed:
            _write(path, units)
    return removed


class QuarantineFile:
    """The file as the hub sees it: read again only when it changed (a ``stat`` per look)."""

    def __init__(self, path: str):
        self.path = path
        self._key: tuple | None = None
        self.units: dict[str, Quarantined] = {}

    def current(self) -> dict[str, Quarantined]:
        if not self.path:
            return {}
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        except OSError as e:
            log.warning("Cannot read the quarantine file %s: %s", self.path, e)
            return self.units
        if key != self._key:
            self.units = read_quarantine(self.path) if key else {}
            self._key = key
        return self.units


__all__ = ["QuarantineFile", "put_back", "quarantine", "read_quarantine"]
