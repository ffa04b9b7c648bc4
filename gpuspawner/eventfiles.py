"""The lab's event files: the denials file (the hub's refused spawns) and the stops file
(the GPU culler's stops), one JSON object a line.

Bounded three ways:

- writers append through the standard library's ``RotatingFileHandler``: past
  ``max_bytes`` the file becomes ``FILE.1`` (``FILE.1`` becomes ``FILE.2``, ...,
  ``backups`` generations kept);
- readers read a bounded tail (``read_tail``): the newest ``max_bytes`` of the file,
  continued into ``FILE.1`` when the file was just rotated, never the whole file;
- refusals of one user for one profile, for one reason, within a window are merged
  into one record with a ``count`` (``RefusalMerger``, ``DenialLog``), so a REST loop
  of refusals writes two lines a window, not one a request.

A line that cannot be used (not a JSON object, no time, a time without a timezone,
a torn last line) is skipped and said in a warning; no reader ever raises on a line.

The snapshots (the hub's queue file, the GPU culler's clocks file) are one JSON object each,
replaced whole (``write_snapshot``) and read whole (``read_snapshot``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from logging.handlers import RotatingFileHandler

#: The defaults of the writers' and readers' traits.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
DEFAULT_TAIL_BYTES = 256 * 1024
DEFAULT_MERGE_WINDOW = 60.0

_log = logging.getLogger("gpuspawner")


# --- writing


class _Rotating(RotatingFileHandler):
    """A RotatingFileHandler whose write errors reach the caller instead of stderr."""

    def handleError(self, record):  # noqa: N802 - logging's name
        raise  # noqa: PLE0704 - called from emit's except block: re-raises its OSError


def append_event(path: str, event: dict, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
    """Append ``event`` as one line, rotating ``path`` first when the line would pass ``max_bytes``
    (0: never rotated). Raises ``OSError`` when the file cannot be written.

    The file is opened for each line and closed after it, as before rotation existed:
    a second writer (a node's culler on a shared filesystem) sees a rotation at its next line.
    """
    handler = _Rotating(
        path, maxBytes=max(0, int(max_bytes)), backupCount=max(1, int(backups)), encoding="utf-8", delay=True
    )
    handler.terminator = "\n"
    try:
        handler.handle(logging.makeLogRecord({"msg": json.dumps(event), "levelno": logging.INFO}))
    finally:
        handler.close()


# --- reading


def read_tail(path: str, max_bytes: int = DEFAULT_TAIL_BYTES) -> tuple[list[str], str]:
    """(the whole lines among the newest ``max_bytes`` of ``path``, oldest first; a torn last line or '').

    When ``path`` holds less than ``max_bytes`` (it was just rotated), the rest is read
    from the end of ``path.1``. A line cut by the start of the tail is left out without a
    word; a last line with no newline (being written, or cut by a crash) is returned apart.
    Raises ``FileNotFoundError`` when ``path`` does not exist, ``OSError`` when unreadable.
    """
    with open(path, "rb") as f:
        data = _tail(f, max_bytes)
    if len(data) < max_bytes:
        try:
            with open(f"{path}.1", "rb") as f:
                older = _tail(f, max_bytes - len(data))
        except OSError:
            older = b""  # no earlier generation
        data = older[: older.rfind(b"\n") + 1] + data  # a torn line of the older generation is left out
    lines = data.split(b"\n")
    torn = lines.pop()  # b'' when the data ends with a newline
    return [line.decode("utf-8", errors="replace") for line in lines if line.strip()], torn.decode(
        "utf-8", errors="replace"
    )


def _tail(f, max_bytes: int) -> bytes:
    """The newest ``max_bytes`` of an open file, less the line its start cuts."""
    size = os.fstat(f.fileno()).st_size
    start = max(0, size - max(0, max_bytes))
    if start == 0:
        return f.read(size)
    f.seek(start - 1)  # one byte before: a newline there means the tail starts with a whole line
    data = f.read(size - start + 1)
    return data[data.find(b"\n") + 1 :] if b"\n" in data else b""


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time with a timezone (``Z`` or an offset), else None (no time, unreadable, naive)."""
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else None


def event_from_line(line: str) -> tuple[dict | None, str]:
    """(the event, '') or (None, why the line cannot be used)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None, "not JSON"
    if not isinstance(event, dict):
        return None, "not a JSON object"
    if "time" not in event:
        return None, "no time"
    if parse_time(event["time"]) is None:
        try:
            datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
        except ValueError:
            return None, "an unreadable time"
        return None, "a time without a timezone"
    return event, ""


@dataclass
class Skipped:
    """The lines a reader left out, said once per read in one warning."""

    count: int = 0
    first: str = ""  # why the first was left out, and its start

    def add(self, why: str, line: str) -> None:
        if not self.count:
            self.first = f"{why}: {line[:80]!r}"
        self.count += 1

    def warn(self, path: str, log: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        if self.count:
            (log or _log).warning("Skipped %d unusable line(s) of %s (the first: %s)", self.count, path, self.first)


def events_from_lines(lines: Iterable[str], torn: str = "", skipped: Skipped | None = None) -> list[dict]:
    """The usable events of ``lines``, in order; the others (and ``torn``) counted in ``skipped``."""
    skipped = skipped if skipped is not None else Skipped()
    events = []
    for line in lines:
        event, why = event_from_line(line)
        if event is None:
            skipped.add(why, line)
        else:
            events.append(event)
    if torn.strip():
        skipped.add("a torn last line", torn)
    return events


def count_of(event: dict) -> int:
    """How many refusals a record stands for (a merged record's ``count``; 1 when absent or unreadable)."""
    try:
        return max(1, int(event.get("count", 1)))
    except (TypeError, ValueError):
        return 1


# --- merging refusals


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


@dataclass
class _Window:
    opened: datetime  # the time of the refusal written when it opened
    repeats: int = 0  # refusals since, not yet written
    first_repeat: datetime | None = None
    last: dict | None = None  # the latest refusal's record
    last_time: datetime | None = None


class RefusalMerger:
    """Refusals of one user for one profile and one reason within ``window`` seconds: one record.

    Pure, with the clock given. The first refusal of a window is written at once
    (``count`` 1), so the dashboard shows it; the refusals that follow within the window
    are counted and written as one record when the window closes (``count`` N, ``first``
    the time of the first of them, ``time`` and ``message`` of the latest). A REST loop of
    refusals thus writes at most two lines a window for each user, profile and reason.
    """

    def __init__(self, window: float = DEFAULT_MERGE_WINDOW):
        self.window = timedelta(seconds=max(0.0, float(window)))
        # In the order they opened (an OrderedDict: the oldest is reached in O(1) however many closed).
        self._open: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()

    def add(self, event: dict, now: datetime) -> list[dict]:
        """The records to write now for this refusal (``event`` without ``time``), oldest first."""
        out = self.due(now)
        if not self.window:
            return [*out, {"time": _iso(now), **event, "count": 1}]
        key = (str(event.get("user", "")), str(event.get("profile", "")), str(event.get("reason", "")))
        window = self._open.get(key)
        if window is None:
            self._open[key] = _Window(opened=now)
            return [*out, {"time": _iso(now), **event, "count": 1}]
        window.repeats += 1
        window.first_repeat = window.first_repeat or now
        window.last, window.last_time = event, now
        return out

    def due(self, now: datetime) -> list[dict]:
        """The windows closed by ``now``: their counted repeats, one record each."""
        out = []
        while self._open:
            window = next(iter(self._open.values()))
            if now - window.opened < self.window:
                break  # the others opened later
            self._open.popitem(last=False)
            out += self._repeats(window)
        return out

    def flush(self) -> list[dict]:
        """Every window's counted repeats, now (the hub stops)."""
        out = [record for window in self._open.values() for record in self._repeats(window)]
        self._open.clear()
        return out

    def next_due(self) -> datetime | None:
        """When the oldest open window closes (None: none is open)."""
        oldest = next(iter(self._open.values()), None)
        return oldest.opened + self.window if oldest else None

    @staticmethod
    def _repeats(window: _Window) -> list[dict]:
        if not window.repeats:
            return []
        first = _iso(window.first_repeat) if window.first_repeat else ""
        return [{"time": _iso(window.last_time), **window.last, "first": first, "count": window.repeats}]


class DenialLog:
    """The hub's denials file: refusals merged (``RefusalMerger``), appended with rotation.

    One per file, shared by every spawner of the hub (``DenialLog.of``). A timer on the
    hub's event loop writes a window's counted repeats when it closes, and the hub's exit
    writes those still open, so a count waits at most one window to be seen.
    """

    _files: dict[str, DenialLog] = {}

    def __init__(self, path: str, window: float, max_bytes: int, backups: int, clock: Callable[[], datetime]):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.clock = clock
        self.merger = RefusalMerger(window)
        self._timer: asyncio.TimerHandle | None = None
        self.log: logging.Logger | logging.LoggerAdapter = _log

    @classmethod
    def of(
        cls,
        path: str,
        *,
        window: float = DEFAULT_MERGE_WINDOW,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> DenialLog:
        """The one log of ``path`` in this process, with these settings (the latest caller's)."""
        key = os.path.abspath(path)
        found = cls._files.get(key)
        if found is None:
            found = cls._files[key] = cls(path, window, max_bytes, backups, clock)
            if len(cls._files) == 1:
                atexit.register(cls.flush_all)
        found.merger.window = timedelta(seconds=max(0.0, float(window)))
        found.max_bytes, found.backups = max_bytes, backups
        return found

    def record(self, event: dict, log: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        """Record one refusal (``event`` without ``time``); a write error is a warning in ``log``."""
        if log is not None:
            self.log = log
        self._write(self.merger.add(event, self.clock()))
        self._schedule()

    def write_due(self) -> None:
        self._timer = None
        self._write(self.merger.due(self.clock()))
        self._schedule()

    def flush(self) -> None:
        self._write(self.merger.flush())

    @classmethod
    def flush_all(cls) -> None:
        for found in cls._files.values():
            found.flush()

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a test, a command): written at the next refusal or at exit
        due = self.merger.next_due()
        if due is not None:
            delay = max(0.0, (due - self.clock()).total_seconds())
            self._timer = loop.call_later(delay + 0.01, self.write_due)

    def _write(self, records: list[dict]) -> None:
        for record in records:
            try:
                append_event(self.path, record, max_bytes=self.max_bytes, backups=self.backups)
            except OSError as err:
                self.log.warning("Could not record a denial in %s: %s", self.path, err)
                return


def read_snapshot(path: str) -> dict:
    """The hub's line as it last wrote it (``GPUSpawner.queue_file``, by ``gpuspawner.waiting``):
    ``{"time", "waiting": [{user, server, profile, label, kind, since, deadline, position, ...}],
    "waiting_for": [unit ids]}``; an empty line when there is no file (yet)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"time": None, "waiting": [], "waiting_for": []}


def write_snapshot(path: str, body: dict) -> None:
    """Replace ``path`` with ``body`` as JSON, at once: a reader sees the old file or the new one, never
    half of one (a temporary file in the same folder, then ``os.replace``); readable by all (0644).
    Raises ``OSError`` when it cannot be written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
