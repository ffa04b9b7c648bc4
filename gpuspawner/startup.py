"""A server's first seconds: does it answer, or does its container show it never will?

JupyterHub waits for a started server to answer over HTTP and does not look at
its container meanwhile, so a server that dies at once would hold its GPUs for
the whole ``http_timeout``. :func:`watch_start` races the two (the spawner gives
it the two looks, at the server's URL and at the container). The container
shows it never will when it exits (:class:`Exited`), or when every process in
it is one that never serves (:func:`never_serves`: ``sleep infinity``, a shell
or Python with nothing to run). :func:`exit_message` and
:func:`not_a_server_message` say what the student sees then. No Docker and no
clock of their own here: the tests pass both.
"""

from __future__ import annotations

import asyncio
import html
import posixpath
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Exited:
    """A container that stopped: its status and why, as Docker's ``State`` says."""

    status: int
    oom_killed: bool = False
    error: str = ""  # Docker's own error (the runtime's), '' when the process just exited
    command: str = ""  # what ran (the image's entrypoint and command, or the spawner's cmd), '' when unknown

    @classmethod
    def of(cls, state: dict, command: str = "") -> Exited | None:
        """From ``inspect_container()["State"]``; None while the container runs (or is paused)."""
        if state.get("Running") or state.get("Status", "exited") not in ("exited", "dead"):
            return None
        status, error = int(state.get("ExitCode") or 0), str(state.get("Error") or "")
        return cls(status, bool(state.get("OOMKilled")), error, command)


@dataclass(frozen=True)
class NotAServer:
    """A container that runs, but only processes that never serve: ``command`` is its main one."""

    command: str


def command_line(inspect: dict, width: int = 200) -> str:
    """What a container runs, from ``inspect_container()``: its program and arguments, cut at ``width``."""
    words = [inspect.get("Path") or "", *(inspect.get("Args") or [])]
    line = " ".join(str(w) for w in words if w)
    return line if len(line) <= width else line[: width - 1] + "…"


#: Programs that never serve, whatever their arguments: ``sleep infinity``, ``tail -f /dev/null``, ``cat``.
WAITERS = frozenset({"sleep", "tail", "cat", "pause"})
#: Programs that serve only what they are given to run: with nothing (or only options), a shell or
#: Python reads its standard input, which a server's container does not have.
INTERPRETERS = re.compile(r"(?:ba|da|z|k|a|fi)?sh|python[0-9.]*|ipython[0-9.]*")
#: Init processes that only start and reap another one (``docker run --init``, tini): they tell nothing.
INITS = frozenset({"tini", "dumb-init", "docker-init", "catatonit"})


def top_commands(top: dict) -> list[str]:
    """The command lines of a container's processes, from ``top()`` (``ps -ef`` on the engine's host)."""
    titles = top.get("Titles") or []
    column = next((titles.index(t) for t in ("CMD", "COMMAND") if t in titles), None)
    if column is None:
        return []
    return [str(row[column]) for row in top.get("Processes") or [] if len(row) > column]


def _never_serves(command: str) -> bool:
    words = command.split()
    if not words:
        return False
    program = posixpath.basename(words[0]).lstrip("-")  # a login shell is "-bash"
    if program in WAITERS:
        return True
    if INTERPRETERS.fullmatch(program):
        # Given something to run (a script, -c code, -m module), it may well serve.
        return all(w.startswith("-") and not w.startswith(("-c", "-m")) for w in words[1:])
    return False


def never_serves(processes: list[str]) -> NotAServer | None:
    """The container's processes (their command lines, main one first) when none of them can be a server.

    Conservative on purpose, as a false alarm would fail a good server in front of a class: only
    ``WAITERS`` and ``INTERPRETERS`` with nothing to run count, and one other process (a start
    script, a server still starting) is enough to say nothing. ``INITS`` are passed over.
    """
    main = [p for p in processes if posixpath.basename((p.split() or [""])[0]) not in INITS]
    if not main or not all(_never_serves(p) for p in main):
        return None
    return NotAServer(main[0])


async def watch_start(
    answers: Callable[[], Awaitable[bool]],
    never_will: Callable[[], Awaitable[Exited | NotAServer | None]],
    *,
    timeout: float,
    every: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable] = asyncio.sleep,
) -> Exited | NotAServer | None:
    """Until the server answers (None) or its container shows it never will (how), looking every ``every`` s.

    The container first: asking a server whose container is gone may wait for its address until a timeout.
    Raises ``TimeoutError`` when neither happened within ``timeout`` seconds.
    """
    deadline = clock() + timeout
    while True:
        failed = await never_will()
        if failed is not None:
            return failed
        if await answers():
            return None
        if clock() >= deadline:
            raise TimeoutError(f"the server did not answer within {timeout:g} s")
        await sleep(every)


def last_lines(log: bytes | str, lines: int = 10, width: int = 300) -> list[str]:
    """The last ``lines`` non-blank lines of a container's log, each cut at ``width`` characters."""
    text = log.decode("utf-8", errors="replace") if isinstance(log, bytes) else log
    kept = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()][-lines:]
    return [line if len(line) <= width else line[: width - 1] + "…" for line in kept]


#: What makes a server of an image whose command is not one: the student can only pass it on.
NEEDS_A_SERVER = (
    "A server's command must start a Jupyter server: CMD [\"jupyterhub-singleuser\"] in the image's Dockerfile,"
    " or the admin's c.Spawner.cmd."
)
KEPT = "Its GPUs are free again and your files are kept."


def _message(what: str, log_lines: list[str], after: str) -> tuple[str, str]:
    """(text, HTML): ``what`` first, alone, as the plain sentence; then the log's last lines and ``after``."""
    if log_lines:
        text = f"{what}\nThe last lines of its log:\n" + "\n".join(log_lines) + f"\n{after}"
        log = "<p>The last lines of its log:</p><pre>" + html.escape("\n".join(log_lines)) + "</pre>"
    else:
        text = f"{what}\nIt wrote nothing to its log. {after}"
        log = "<p>It wrote nothing to its log.</p>"
    return text, f"<p>{html.escape(what)}</p>{log}<p>{html.escape(after)}</p>"


def exit_message(exited: Exited, log_lines: list[str], seconds: float) -> tuple[str, str]:
    """(text, HTML) for the spawn page: the exit status, why where known, the log's last lines, the command."""
    what = f"Your server exited with status {exited.status} before it answered ({seconds:.1f} s after it started)"
    ended = exited.status == 0 and not exited.error and exited.command
    if exited.oom_killed:
        what += ": it used more memory than its profile allows"
    elif exited.error:
        what += f": {exited.error}"
    elif ended:
        # A Jupyter server runs until it is stopped: one that ends by itself, unasked, is something else.
        what += f": its command, {exited.command}, ended by itself, where a Jupyter server keeps running"
    if ended:
        after = f"{NEEDS_A_SERVER} {KEPT} Show this to the admin."
    else:
        command = f"Its command: {exited.command}. " if exited.command else ""
        after = f"{command}{KEPT} Fix what the log says, or show it to the admin."
    return _message(what + ".", log_lines, after)


def not_a_server_message(found: NotAServer, log_lines: list[str], seconds: float) -> tuple[str, str]:
    """(text, HTML) for the spawn page: a server whose processes never serve (see ``never_serves``)."""
    what = (
        f"Your server's command, {found.command}, is not a Jupyter server: it runs, but will never answer"
        f" (seen {seconds:.1f} s after it started)."
    )
    return _message(what, log_lines, f"{NEEDS_A_SERVER} {KEPT} Show this to the admin.")


__all__ = [
    "Exited",
    "NotAServer",
    "command_line",
    "exit_message",
    "last_lines",
    "never_serves",
    "not_a_server_message",
    "top_commands",
    "watch_start",
]
