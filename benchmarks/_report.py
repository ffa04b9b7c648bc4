"""How a benchmark reports: its command line with ``--json``, its figures with the machine's load, one
line or a table for people, and with ``--json`` all its figures."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import _lab


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: ``doc`` (its module's docstring) as the help, and ``--json``
    (listed after the benchmark's own options)."""
    command = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument_group("report").add_argument("--json", help="write all figures to this file ('-': stdout)")
    return command


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


def report_table(
    result: dict,
    json_to: str | None,
    table: Callable[[dict], str],
    machine: dict,
    notes: Callable[[dict], Iterable[str]] = lambda result: (),
    **settings,
) -> dict:
    """The end of a ``main`` on the test bed's engine: ``result`` with its ``settings``, the ``machine``
    (``_lab.machine()`` from before the run) and the load after; its ``table``, the machine line and any
    ``notes`` printed; with ``--json``, all its figures."""
    result.update(settings, machine=machine, load_after=_lab.loadavg())
    print(table(result))
    print(f"\nmachine: {machine}; load after: {result['load_after']}")
    for note in notes(result):
        print(note)
    _lab.print_json(result, json_to)
    return result
