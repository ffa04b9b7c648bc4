"""How the command prints for people (rich): finding lines and the verdict; JSON for scripts.

The tables of ``status`` and ``prepull`` are beside their commands. A table is printed
only when it fits the console with every cell whole (``fits``); else its command prints
a line per row, which the terminal may wrap but never cuts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import IO

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.text import Text

from .findings import FAIL, OK, WARN, Finding

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}


#: The width of plain output (a pipe or a file) when COLUMNS does not say.
PLAIN_WIDTH = 160


def console(file: IO[str] | None = None) -> Console:
    """A console for people: colours on a terminal, plain text and wide lines in a pipe or file.

    A terminal's width is its own (or COLUMNS); in a pipe, COLUMNS when it is set, else 160.
    """
    file = file or sys.stdout
    plain = not (hasattr(file, "isatty") and file.isatty())
    columns = os.environ.get("COLUMNS", "")
    width = (int(columns) if columns.isdigit() and int(columns) > 0 else PLAIN_WIDTH) if plain else None
    return Console(file=file, highlight=False, soft_wrap=True, width=width)


def fits(out: Console, renderable: RenderableType) -> bool:
    """Whether ``renderable`` (a table) prints within ``out``'s width with no cell wrapped or cut."""
    unbounded = out.options.update(width=10**6)  # measured against the console's own width, it always fits
    return Measurement.get(out, unbounded, renderable).maximum <= out.width


def short_ids(ids: Iterable[str], keep: int = 8, tail: int = 4) -> dict[str, str]:
    """GPU and MIG ids shortened for people: ``GPU-51a11a7e…0001`` (the first ``keep`` and last ``tail``
    characters after the prefix), each id to its short form; ids short already, or that would no
    longer be told apart, stay whole."""
    ids = list(dict.fromkeys(ids))

    def short(unit_id: str) -> str:
        prefix, dash, rest = unit_id.partition("-")
        if not dash or len(rest) <= keep + tail + 1:
            return unit_id
        return f"{prefix}-{rest[:keep]}…{rest[-tail:]}"

    shortened = {i: short(i) for i in ids}
    if len(set(shortened.values())) < len(ids):
        return {i: i for i in ids}
    return shortened


def finding_lines(findings: Iterable[Finding], indent: str = "") -> list[Text]:
    """One line per finding: level, subject, message, and '-> fix: ...' when there is one."""
    findings = list(findings)
    width = min(max((len(f.subject) for f in findings), default=0), 26)
    lines = []
    for f in findings:
        line = Text(indent)
        line.append(f"{f.level:<4}", style=_STYLE.get(f.level, ""))  # Text: messages are never markup
        line.append(f"  {f.subject:<{width}}  {f.message}")
        if f.fix:
            line.append(f"  -> fix: {f.fix}", style="cyan")
        lines.append(line)
    return lines


def print_findings(out: Console, findings: Iterable[Finding], indent: str = "") -> None:
    for line in finding_lines(findings, indent):
        out.print(line)


def verdict_line(status: int, text: str, what: str = "") -> Text:
    line = Text("verdict: ")
    line.append(text, style=_STYLE[FAIL] if status else _STYLE[OK])
    if what:
        line.append(f": {what}")
    return line


def print_json(data: object, file: IO[str] | None = None) -> None:
    (file or sys.stdout).write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def docker_text(text: str) -> Text:
    """A line from Docker (a build's output, a server's log) as rich text: its colour codes become
    styles, shown on a terminal and dropped in a pipe or file, never printed raw."""
    shown = Text.from_ansi(text)
    shown.rstrip()  # a stream's chunk may end in a newline, then a reset code
    return shown
