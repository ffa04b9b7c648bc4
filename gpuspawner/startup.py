"""A server's first seconds: does it answer, or does its container exit first?

JupyterHub waits for a started server to answer over HTTP and does not look at
its container meanwhile, so a server that dies at once would hold its GPUs for
the whole ``http_timeout``. :func:`watch_start` races the two (the spawner gives
it the two looks, at the container and at the server's port) and
:func:`exit_message` says what the student sees when the container won. No
Docker and no clock of their own here: the tests pass both.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Exited:
    """A container that stopped: its status and why, as Docker's ``State`` says."""

    status: int
    oom_killed: bool = False
    error: str = ""  # Docker's own error (the runtime's), '' when the process just exited

    @classmethod
    def of(cls, state: dict) -> Exited | None:
        """From ``inspect_container()["State"]``; None while the container runs (or is paused)."""
        if state.get("Running") or state.get("Status", "exited") not in ("exited", "dead"):
            return None
        return cls(int(state.get("ExitCode") or 0), bool(state.get("OOMKilled")), str(state.get("Error") or ""))


async def watch_start(
    answers: Callable[[], Awaitable[bool]],
    exited: Callable[[], Awaitable[Exited | None]],
    *,
    timeout: float,
    every: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable] = asyncio.sleep,
) -> Exited | None:
    """Until the server answers (None) or its container exits (how it exited), looking every ``every`` s.

    Raises ``TimeoutError`` when neither happened within ``timeout`` seconds.
    """
    deadline = clock() + timeout
    while True:
        if await answers():
            return None
        stopped = await exited()
        if stopped is not None:
            return stopped
        if clock() >= deadline:
            raise TimeoutError(f"the server did not answer within {timeout:g} s")
        await sleep(every)


def last_lines(log: bytes | str, lines: int = 10, width: int = 300) -> list[str]:
    """The last ``lines`` non-blank lines of a container's log, each cut at ``width`` characters."""
    text = log.decode("utf-8", errors="replace") if isinstance(log, bytes) else log
    kept = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()][-lines:]
    return [line if len(line) <= width else line[: width - 1] + "…" for line in kept]


def exit_message(exited: Exited, log_lines: list[str], seconds: float) -> tuple[str, str]:
    """(text, HTML) for the spawn page: the exit status, why where Docker knows, the log's last lines."""
    what = f"Your server exited with status {exited.status} before it answered ({seconds:.1f} s after it started)"
    if exited.oom_killed:
        what += ": it used more memory than its profile allows"
    elif exited.error:
        what += f": {exited.error}"
    after = "Its GPUs are free again and your files are kept. Fix what the log says, or show it to the admin."
    if log_lines:
        text = f"{what}. The last lines of its log:\n" + "\n".join(log_lines) + f"\n{after}"
        shown = "<pre>" + html.escape("\n".join(log_lines)) + "</pre>"
        page = f"<p>{html.escape(what)}. The last lines of its log:</p>{shown}<p>{html.escape(after)}</p>"
    else:
        text = f"{what}. It wrote nothing to its log. {after}"
        page = f"<p>{html.escape(text)}</p>"
    return text, page


__all__ = ["Exited", "exit_message", "last_lines", "watch_start"]
