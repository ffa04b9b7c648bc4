"""How a benchmark reports: its figures with the machine's load, one line for people, and ``--json``."""

from __future__ import annotations

from collections.abc import Callable

import _lab


def measured(result: dict, line: Callable[[dict], str]) -> dict:
    """``result`` with the load at the end of the run put in, and printed as ``line`` says."""
    result["load"] = _lab.loadavg()
    print(line(result))
    return result


def report(result: dict, json_to: str | None, line: Callable[[dict], str] | None = None) -> dict:
    """The end of a benchmark's ``main``: its line (when given) and, with ``--json``, all its figures."""
    if line is not None:
        measured(result, line)
    if json_to:
        _lab.print_json(result, json_to)
    return result
