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

from .engine import STDOUT, ProcessStream
from .policy import DirectOffer

#: How long the gateway tries to connect before it falls back to the exec's stdin and stdout.
CONNECT_TIMEOUT = 3.0


class DirectLine(ProcessStream):
    """The connection to sftp-server, used by a session as an exec's stream is; what comes
    before the listener's answer (the second secret) is the answer, not sftp-server's."""

    def __init__(self, answer: bytes):
        super().__init__()
        self.answered: asyncio.Future = asyncio.get_running_loop().create_future()  # the right answer?
        self._answer = answer
        self._heard = b""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        if not self.answered.done():
            self._heard += data
            if len(self._heard) < len(self._answer):
                return
            heard, data = self._heard[: len(self._answer)], self._heard[len(self._answer) :]
            self._heard = b""
            self.answered.set_result(hmac.compare_digest(heard, self._answer))
            if not data:
                return
        self._hand_on([(STDOUT, data)])

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
