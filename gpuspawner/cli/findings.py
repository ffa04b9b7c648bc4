"""What every check of the ``gpuspawner`` command concludes: findings, and the verdict.

Pure. Each finding is ``ok``, ``warn`` or ``fail``, with what to do about it;
a warning never fails a check, one failure does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Finding:
    """One line of a report: its level, what it is about, what was found, and the fix."""

    level: str  # OK, WARN or FAIL
    subject: str  # "user", "docker", "image lab:1", ...
    message: str
    fix: str = ""


def verdict(findings: Iterable[Finding]) -> tuple[int, str]:
    """(exit status, verdict line): 1 when anything failed, else 0; warnings do not fail."""
    findings = list(findings)
    fails = sum(f.level == FAIL for f in findings)
    warns = sum(f.level == WARN for f in findings)

    def n(count: int, what: str) -> str:
        return f"{count} {what}{'s' if count != 1 else ''}"

    if fails:
        return 1, f"FAIL ({n(fails, 'failure')}, {n(warns, 'warning')})"
    return 0, f"OK ({n(warns, 'warning')})" if warns else "OK"


__all__ = ["FAIL", "OK", "WARN", "Finding", "verdict"]
