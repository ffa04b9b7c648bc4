"""How the command prints for people (rich): finding lines and the verdict; JSON for scripts.

The tables of ``status`` and ``prepull`` are beside their commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import IO

from rich.console import Console
from rich.text import Text

from .findings import FAIL, OK, WARN, Finding

_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}


def console(file: IO[str] | None = None) -> Console:
    """A console for people: colours on a terminal, plain text and wide lines in a pipe or file."""
    file = file or sys.stdout
    plain = not (hasattr(file, "isatty") and file.isatty())
    return Console(file=file, highlight=False, soft_wrap=True, width=160 if plain else None)


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
