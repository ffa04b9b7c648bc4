"""Units that fail: which start errors are the device's, and when a unit is set aside.

Pure: no Docker, no file, no clock it does not receive. A server whose container
cannot start because of its GPU (the NVIDIA hook or the runtime could not set the
device up: an Xid, a GPU fallen off the bus, a broken MIG instance) fails its spawn.
Placement is deterministic, so the next spawn would pick the same unit and fail
again: after ``threshold`` such failures in a row a unit is quarantined, and the
ledger skips it (``Ledger.quarantined``) until an admin puts it back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

# What the NVIDIA Container Toolkit's hook and runtime, and runc running them, say when the
# device is the problem (not the image, the config or the engine). "error running hook"
# is runc's: a prestart hook failed, and the only prestart hook a GPU container gets is NVIDIA's.
_DEVICE_ERRORS = re.compile(
    r"nvidia-container-cli|error running hook|nvidia-container-runtime|device error|"
    r"cuda error|nvml error|unknown device|gpu is lost|xid",
    re.IGNORECASE,
)


def device_failure(message: str, unit_ids: Iterable[str]) -> tuple[str, ...]:
    """The units a failed container start blames, from the engine's error ``message``.

    () when the error is not the device's (or the server had no unit). When the
    message names some of ``unit_ids`` (the hook names the device it could not set
    up), only those; else all of them, since each may be the broken one.
    """
    unit_ids = tuple(unit_ids)
    if not unit_ids or not _DEVICE_ERRORS.search(message or ""):
        return ()
    named = tuple(u for u in unit_ids if u in message)
    return named or unit_ids


def short_reason(message: str, limit: int = 300) -> str:
    """The part of an engine's error worth showing: from the hook's own words when they are there."""
    message = " ".join((message or "").split())
    at = message.find("stderr:")
    if at >= 0 and message[at + 7 :].strip():
        message = message[at + 7 :].strip()
    return message if len(message) <= limit else message[: limit - 3] + "..."


@dataclass(frozen=True)
class Quarantined:
    """A unit set aside: placement skips it until an admin puts it back."""

    unit: str  # its id (GPU-... or MIG-...)
    since: datetime
    reason: str  # the last error, as the engine told it
    failures: int  # the failed starts in a row that set it aside
    holder: str = ""  # the server whose start failed last ("user/server")

    def as_json(self) -> dict:
        return {
            "unit": self.unit,
            "since": self.since.isoformat(timespec="seconds"),
            "reason": self.reason,
            "failures": self.failures,
            "holder": self.holder,
        }


class FailureCount:
    """Failed starts in a row, per unit; a unit that reaches ``threshold`` is to be quarantined.

    A start that succeeds on a unit clears its count: only failures in a row count,
    so one bad image or a full disk never sets a good GPU aside. ``threshold`` 0: never.
    """

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._failures: dict[str, int] = {}

    def failed(self, unit_ids: Iterable[str]) -> dict[str, int]:
        """Count one failed start on each unit; returns ``{unit: failures}`` of those now at the threshold."""
        reached = {}
        for unit in unit_ids:
            n = self._failures[unit] = self._failures.get(unit, 0) + 1
            if self.threshold and n >= self.threshold:
                reached[unit] = n
                del self._failures[unit]  # from here on the quarantine record says it
        return reached

    def started(self, unit_ids: Iterable[str]) -> None:
        """A start that succeeded: these units work."""
        for unit in unit_ids:
            self._failures.pop(unit, None)

    def failures(self, unit: str) -> int:
        return self._failures.get(unit, 0)


__all__ = ["FailureCount", "Quarantined", "device_failure", "short_reason"]
