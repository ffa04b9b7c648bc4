"""How the command prints: finding lines, the verdict, the status table (rich)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..traits import format_bytes
from .checks import FAIL, FAILED, OK, PRESENT, PULLED, WARN, Finding, PullResult

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


def holder_name(holder: dict) -> str:
    return f"{holder['user']}/{holder['server']}" if holder["server"] else holder["user"]


def status_table(rows: list[dict], share_limit: int) -> Table:
    """The assignment of every GPU unit: one line per unit and holder, 'free' for units no one holds."""
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("Unit", "Id", "Model", "Memory", "Holder", "Profile", "Shared"):
        table.add_column(column, no_wrap=column in ("Unit", "Id", "Memory"))
    for row in rows:
        unit = row["unit"] + (f" {row['mig_profile']}" if row["mig_profile"] else "")
        first = [unit, row["id"], row["model"], format_bytes(row["memory"])]
        if row["free"]:
            table.add_row(*first, Text("free", style="green"), "", "")
            continue
        holders = row["holders"]
        for n, h in enumerate(holders):
            shared = f"yes, {len(holders)}/{share_limit}" if h["shared"] else ""
            cells = first if n == 0 else ["", "", "", ""]
            table.add_row(*cells, holder_name(h), h["profile"], shared)
    return table


def status_summary(rows: list[dict], cpu_servers: int) -> str:
    held = sum(not r["free"] for r in rows)
    servers = {holder_name(h) for r in rows for h in r["holders"]}
    return (
        f"{len(rows)} unit(s): {held} held, {len(rows) - held} free; {len(servers)} server(s) hold GPUs,"
        f" {cpu_servers} run without a GPU"
    )


def print_json(data: object, file: IO[str] | None = None) -> None:
    (file or sys.stdout).write(json.dumps(data, indent=2, sort_keys=False) + "\n")


_PULL_STYLE = {PRESENT: "green", PULLED: "green", FAILED: "bold red"}


def prepull_table(results: list[PullResult]) -> Table:
    """One line per image: its size, the seconds its pull took, and what happened."""
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("Image", "Profiles", "Size", "Seconds", "Result"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("Size", "Seconds") else "left")
    for r in results:
        result = Text(r.state, style=_PULL_STYLE.get(r.state, ""))  # the errors: below the table
        size = format_bytes(r.size) if r.size else ""
        table.add_row(r.image, ", ".join(r.profiles), size, f"{r.seconds:.1f}", result)
    return table
