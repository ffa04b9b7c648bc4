"""The direct line: an sftp session's bytes on a TCP connection of their own into the server.

An exec's stdin and stdout pass through the engine (the gateway's socket to dockerd, dockerd
to the container's shim, the shim to the process): three copies and two processes between
the SSH channel and sftp-server. For sftp (and scp, which speaks SFTP), the session's exec
starts a small listener in the server instead (:data:`~.policy.DIRECT_LINE`, run by the
image's Python as the image's user, with Docker's confinement as any exec): it announces
a port and two random secrets on the exec's stderr, which only the gateway reads; the
gateway connects to the server's address, sends the first secret and checks the second,
and the listener hands the connection to sftp-server as its stdin and stdout. The exec
stays for sftp-server's stderr and exit status.

When the gateway cannot connect (a network that does not carry it), it says so on the
exec's stdin and sftp-server runs on stdin and stdout as before: the line is a shortcut,
never a condition. Only the gateway's host connects to the server's port; the lab network
keeps other servers from reaching it, and a connection without the first secret is closed.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from .engine import STDOUT
from .policy import DirectOffer

#: How long the gateway tries to connect before it falls back to the exec's stdin and stdout.
CONNECT_TIMEOUT = 3.0


class DirectLine(asyncio.Protocol):
    """The connection to sftp-server, with the interface of :class:`~.engine.ExecStream` that
    :class:`~.gateway._Pipe` uses: :meth:`write`, :meth:`close_stdin`, :meth:`attach`,
    :meth:`pause_output`, :meth:`resume_output`, :meth:`close` and :attr:`ended`."""

    def __init__(self, answer: bytes):
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.answered: asyncio.Future = loop.create_future()  # True once the listener said the answer
        self.ended: asyncio.Future = loop.create_future()
        self._answer = answer
        self._heard = b""
        self._early: list[bytes] = []  # sftp-server's output before attach
        self._output: Callable[[int, bytes], None] | None = None
        self._stdin_full: Callable[[bool], None] | None = None
        self._stdin_is_full = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        if not self.answered.done():
            self._heard += data
            if len(self._heard) < len(self._answer):
                return
            heard, rest = self._heard[: len(self._answer)], self._heard[len(self._answer) :]
            self._heard = b""
            self.answered.set_result(hmac.compare_digest(heard, self._answer))
            if not rest:
                return
            data = rest
        if self._output is not None:
            self._output(STDOUT, data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc) -> None:
        self._end()

    def _end(self) -> None:
        if not self.answered.done():
            self.answered.set_result(False)
        if not self.ended.done():
            self.ended.set_result(None)

    def pause_writing(self) -> None:
        self._stdin_is_full = True
        if self._stdin_full is not None:
            self._stdin_full(True)

    def resume_writing(self) -> None:
        self._stdin_is_full = False
        if self._stdin_full is not None:
            self._stdin_full(False)

    # --- the gateway's side, as an exec stream's

    def attach(self, output: Callable[[int, bytes], None], stdin_full: Callable[[bool], None]) -> None:
        self._output, self._stdin_full = output, stdin_full
        for data in self._early:
            output(STDOUT, data)
        self._early = []
        if self._stdin_is_full:
            stdin_full(True)

    def pause_output(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_output(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close_stdin(self) -> None:
        transport = self.transport
        if transport is not None and transport.can_write_eof() and not transport.is_closing():
            try:
                transport.write_eof()
            except OSError:
                pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, offer: DirectOffer, timeout: float = CONNECT_TIMEOUT) -> DirectLine | None:
    """The direct line to the listener ``offer`` announced, on ``host``; None when it cannot be
    reached in ``timeout`` seconds or does not answer with the listener's second secret."""
    loop = asyncio.get_running_loop()
    line: DirectLine | None = None
    try:
        _, line = await asyncio.wait_for(
            loop.create_connection(lambda: DirectLine(offer.answer), host, offer.port), timeout
        )
        line.write(offer.ask)
        if await asyncio.wait_for(asyncio.shield(line.answered), timeout):
            return line
    except (OSError, asyncio.TimeoutError):
        pass
    if line is not None:
        line.close()
    return None
