"""``gpuspawner prepull``: pull every profile's image before class, with progress and a summary.

The same images and the same puller (``ImagePuller``) the hub uses; a table of
what happened to each image, and an exit status of 1 when any pull failed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from textwrap import dedent

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..images import ImagePuller
from ..traits import format_bytes
from . import output, probe
from .command import LabCommand, by_image, profiles_of
from .findings import FAIL, Finding

PRESENT, PULLED, FAILED = "already present", "pulled", "failed"


@dataclass(frozen=True)
class PullResult:
    """One image of ``prepull``: what happened to it."""

    image: str
    state: str  # PRESENT, PULLED or FAILED
    size: int = 0  # bytes, once present
    seconds: float = 0.0
    error: str = ""
    profiles: tuple[str, ...] = ()


def prepull_summary(results: Iterable[PullResult]) -> tuple[int, str]:
    """(exit status, summary line): 1 when any pull failed."""
    results = list(results)
    counts = {s: sum(r.state == s for r in results) for s in (PRESENT, PULLED, FAILED)}
    text = f"{len(results)} image(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
    return (1 if counts[FAILED] else 0), text


_PULL_STYLE = {PRESENT: "green", PULLED: "green", FAILED: "bold red"}


def prepull_lines(results: list[PullResult]) -> list[Text]:
    """The same as ``prepull_table``, one line per image, for a console too narrow for the table."""
    lines, width = [], max((len(r.state) for r in results), default=0)
    for r in results:
        line = Text(f"{r.state:<{width}}", style=_PULL_STYLE.get(r.state, ""))
        size = f"{format_bytes(r.size)}, " if r.size else ""
        line.append(f"  {r.image}  ({size}{r.seconds:.1f} s; profiles {', '.join(r.profiles) or '-'})")
        lines.append(line)
    return lines


def print_results(out, results: list[PullResult]) -> None:
    """The table when it fits whole, else one line per image: image names are never cut."""
    table = prepull_table(results)
    if output.fits(out, table):
        out.print(table)
    else:
        for line in prepull_lines(results):
            out.print(line)


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


class PrepullApp(LabCommand):
    name = "gpuspawner prepull"
    description = """Pull every profile's image on the hub's engine before class, with progress.

    The same images and the same puller the hub uses (one pull per image, at most
    c.GPUSpawner.max_concurrent_pulls at once), whatever c.GPUSpawner.pull_policy
    says. Then a table: each image, its size, the seconds until it was present, and
    whether it was already present, pulled, or failed (with the registry's message).
    Exit status 1 when any pull failed.
    """
    judges_the_hub = True
    examples = dedent("""
    gpuspawner prepull
    gpuspawner prepull -f /srv/jupyterhub/jupyterhub_config.py
    """)

    def start(self) -> int:
        if self.extra_args:
            print("gpuspawner prepull: takes no IMAGE; it pulls the profiles' images", file=sys.stderr)
            return 2
        hub = self.load_hub_config()
        users = {image: [p.slug for p in its] for image, its in by_image(profiles_of(hub)).items()}
        client = hub.docker()
        out = output.console()
        if not users:
            out.print("No profile names an image: nothing to pull.")
            return 0
        if hub.spawner.pull_policy.lower() != "ifnotpresent":
            out.print(
                f"note: c.GPUSpawner.pull_policy is {hub.spawner.pull_policy!r}: the hub does not pull at spawn;"
                " pulling now as asked"
            )
        puller = ImagePuller(hub.spawner.new_docker_client, hub.spawner.max_concurrent_pulls)
        try:
            results = asyncio.run(self.pull_all(puller, users, out))
        finally:
            puller.close()
        results = [
            r
            if r.state == FAILED
            else PullResult(
                **{**r.__dict__, "size": int((probe.image_inspect(client, r.image) or {}).get("Size") or 0)}
            )
            for r in results
        ]
        print_results(out, results)
        output.print_findings(
            out,
            [
                Finding(FAIL, r.image, r.error, "check the name and the registry's login (docker login)")
                for r in results
                if r.error
            ],
        )
        status, text = prepull_summary(results)
        out.print(output.verdict_line(status, text))
        return status

    @staticmethod
    async def pull_all(puller: ImagePuller, users: dict[str, list[str]], out) -> list[PullResult]:
        started = time.monotonic()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
        )
        # Live bars on a terminal only, gone when done (a narrow one cuts their names); the results follow.
        with Progress(*columns, console=out, transient=True, disable=not out.is_terminal) as progress:
            tasks = await puller.prepull(users)
            bars = [progress.add_task(escape(t.image), total=100) for t in tasks]

            async def follow(task, bar) -> PullResult:
                present = task.done and not task.error
                async for percent, _ in task.updates():
                    progress.update(bar, completed=percent)
                seconds = time.monotonic() - started
                slugs = tuple(users[task.image])
                if task.error:
                    progress.update(bar, description=escape(f"{task.image}: {FAILED}"))
                    return PullResult(task.image, FAILED, seconds=seconds, error=task.error, profiles=slugs)
                return PullResult(task.image, PRESENT if present else PULLED, seconds=seconds, profiles=slugs)

            return list(await asyncio.gather(*(follow(t, b) for t, b in zip(tasks, bars))))
