"""Two habits of asyncssh's connections that the gateway turns off, for file copies' sake.

A 100 MB scp is some 3,200 SSH packets each way, and asyncssh handles each in Python; two
habits of its connection cost the gateway more per packet than the cipher does
(measured: docs/topic/performance.md). Neither is needed with the ciphers the gateway
offers, and both are changed on the gateway's own connections only (:func:`tune`), not
on asyncssh's classes:

- **An empty SSH_MSG_IGNORE before every packet it sends.** That is a defence for CBC
  ciphers, whose next IV an attacker could otherwise know (RFC 4251, 9.3.1). The gateway
  never offers a CBC cipher (``SSHGateway.ciphers`` refuses them), and counter and AEAD
  modes (CTR, GCM, ChaCha20-Poly1305) need no such packet. It doubled the packets of a
  download: one more encryption and one more write to the socket for each.
- **A copy of its whole input buffer at each packet it takes from it.** asyncio reads up
  to 256 KiB at a time, some eight 32 KiB packets of an upload, so each byte was copied
  about eight times; fed to it in slices of :data:`INPUT_SLICE` bytes, once or twice.

Both rely on asyncssh's internals (``SSHConnection.send_packet`` and ``data_received``,
unchanged from 2.14.2 to 2.24.1). Where they are missing, :func:`tune` changes nothing and
the connection works as asyncssh made it; ``tests/test_ssh.py`` checks both on the
installed asyncssh.
"""

from __future__ import annotations

from asyncssh.constants import MSG_IGNORE

#: The most input handed to asyncssh at once: about one packet of a copy (OpenSSH's 32 KiB).
INPUT_SLICE = 32768

_EMPTY_IGNORE = (b"\0\0\0\0",)  # the payload of asyncssh's own empty SSH_MSG_IGNORE: String(b"")


def tune(conn) -> bool:
    """Turn both habits off on ``conn`` (an ``asyncssh.SSHServerConnection``, just made);
    whether it could be."""
    send_packet = getattr(conn, "send_packet", None)
    data_received = getattr(conn, "data_received", None)
    if not callable(send_packet) or not callable(data_received):
        return False

    def send_without_ignore(pkttype, *args, **kwargs):
        if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE:
            return None
        return send_packet(pkttype, *args, **kwargs)

    def receive_in_slices(data, *args):
        if len(data) <= INPUT_SLICE:
            return data_received(data, *args)
        for start in range(0, len(data), INPUT_SLICE):
            data_received(data[start : start + INPUT_SLICE], *args)
        return None

    conn.send_packet = send_without_ignore
    conn.data_received = receive_in_slices
    return True


__all__ = ["INPUT_SLICE", "tune"]
