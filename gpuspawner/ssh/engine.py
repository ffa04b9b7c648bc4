"""The SSH gateway's way into a server: ``docker exec`` in the user's own container.

The container is found by the hub's labels (``gpuspawner.user``, ``gpuspawner.server``)
and checked against its environment (the hub's ``JUPYTERHUB_USER``). Each session is an
exec as the container's own user (the image's, as the server runs), created and
inspected through docker-py on a few threads of its own; its stream is the engine's
upgraded HTTP connection, opened here with asyncio (``POST /exec/{id}/start`` with
``Upgrade: tcp``), so that no byte the engine sends right after its answer's headers is
lost in a blocking client's buffer, and stdin can be closed on its own (half-close).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import docker
import docker.errors

from .. import labels as label
from ..docker_client import LazyClient
from .policy import ServerAddress

STDOUT, STDERR = 1, 2


class EngineError(Exception):
    """The engine refused or failed an exec; the message says what happened."""


@dataclass(frozen=True)
class ServerContainer:
    """The running container of a user's default server, as the gateway needs it."""

    id: str
    name: str
    user: str  # the user the server runs as (its Config.User): sessions run as it too
    environment: tuple[str, ...]  # its Config.Env, NAME=value
    address: ServerAddress


@dataclass(frozen=True)
class EngineAddress:
    """Where the engine's API listens, for the exec streams."""

    unix: str = ""  # a socket's path, or
    host: str = ""  # a TCP address
    port: int = 0
    ssl: ssl.SSLContext | None = None
    api_version: str = "1.41"


def engine_address(client: docker.APIClient) -> EngineAddress:
    """The address of the engine ``client`` talks to: its Unix socket, or its TCP address and TLS."""
    version = client.api_version
    adapter = getattr(client, "_custom_adapter", None)
    socket_path = getattr(adapter, "socket_path", "")
    if socket_path:
        return EngineAddress(unix=socket_path, api_version=version)
    url = urlsplit(client.base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise EngineError(f"the SSH gateway reaches the engine over a Unix socket or TCP only, not {client.base_url}")
    context = None
    if url.scheme == "https":
        verify = client.verify
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client.cert:
            cert, key = client.cert if isinstance(client.cert, tuple) else (client.cert, None)
            context.load_cert_chain(cert, key)
    return EngineAddress(
        host=url.hostname, port=url.port or (2376 if context else 2375), ssl=context, api_version=version
    )


class Frames:
    """Docker's multiplexed exec stream (an exec without a TTY), parsed as it comes.

    Each frame is an 8-byte header (its stream, 1 for stdout or 2 for stderr, then its
    payload's length in 4 big-endian bytes) and the payload; a read from the engine may
    end anywhere, in a header too. ``feed`` gives what a read holds, each run of one
    stream's frames joined into one piece: at most one copy of each byte, and one write
    to the client for a read's worth of output rather than one per frame.
    """

    def __init__(self):
        self._header = b""
        self._which = STDOUT
        self._left = 0  # bytes of the current frame's payload still to come

    def feed(self, data: bytes) -> list[tuple[int, bytes | memoryview]]:
        """The output in ``data``: (STDOUT or STDERR, bytes) pieces, in order; a piece of one
        frame is a memoryview of ``data``, not a copy."""
        view = memoryview(data)
        parts: list[tuple[int, list]] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                if parts and parts[-1][0] == self._which:
                    parts[-1][1].append(view[pos : pos + take])
                else:
                    parts.append((self._which, [view[pos : pos + take]]))
                pos += take
                self._left -= take
                continue
            if not self._header and end - pos >= 8:
                header = data[pos : pos + 8]
                pos += 8
            else:
                need = 8 - len(self._header)
                self._header += data[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._header) < 8:
                    break
                header, self._header = self._header, b""
            self._which = STDERR if header[0] == 2 else STDOUT
            self._left = int.from_bytes(header[4:8], "big")
        return [(which, pieces[0] if len(pieces) == 1 else b"".join(pieces)) for which, pieces in parts]


class ProcessStream(asyncio.Protocol):
    """A connection to a process in a server, as a session uses it: its stdin, and its output
    handed on as it comes (queued in ``_queue`` until :meth:`attach`), with flow control both ways.
    An exec's stream (:class:`ExecStream`), or an sftp session's direct line (:mod:`.direct`)."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()  # the output's end (None)
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._queued = asyncio.Event()  # set when output is queued, and at the end
        self._output: Callable[[int, bytes], None] | None = None
        self._stdin_full: Callable[[bool], None] | None = None
        self._stdin_is_full = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def _hand_on(self, parts) -> None:
        """The process's output, (STDOUT or STDERR, bytes) pieces: to the attached callback, else queued."""
        if self._output is not None:
            for which, piece in parts:
                self._output(which, piece)
        else:
            self._queue.extend(parts)
            self._queued.set()

    def pause_writing(self) -> None:
        self._stdin_is_full = True
        if self._stdin_full is not None:
            self._stdin_full(True)

    def resume_writing(self) -> None:
        self._stdin_is_full = False
        if self._stdin_full is not None:
            self._stdin_full(False)

    def attach(self, output: Callable[[int, bytes], None], stdin_full: Callable[[bool], None]) -> None:
        """From now on, hand each output to ``output(which, data)`` as it comes (what was not
        read first), and say ``stdin_full(True)`` when the process takes no more input for now,
        ``stdin_full(False)`` when it does again. The output's end is :attr:`ended`."""
        self._output, self._stdin_full = output, stdin_full
        while self._queue:
            output(*self._queue.popleft())
        if self._stdin_is_full:
            stdin_full(True)

    def pause_output(self) -> None:
        """Read no more of the process's output (the client is not taking it) until :meth:`resume_output`."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_output(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Input for the process."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close_stdin(self) -> None:
        """End of input for the process (a half-close of the stream; not over TLS, which cannot)."""
        transport = self.transport
        if transport is not None and transport.can_write_eof() and not transport.is_closing():
            try:
                transport.write_eof()
            except OSError:
                pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ExecStream(ProcessStream):
    """One exec's stream: stdin in, stdout and stderr out (one stream with a TTY).

    The engine's connection as an asyncio protocol, not a stream reader: output is parsed
    as each read comes (:class:`Frames`) and handed on at once, to :meth:`read` before
    :meth:`attach` and to the attached callbacks after, with no task switch per frame.
    """

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty
        self._frames = None if tty else Frames()
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()  # (code, header lines)
        self._head = bytearray()  # the answer, until its headers end; after an error, its body too
        self._head_changed = asyncio.Event()
        self._started = False

    # --- asyncio's side

    def data_received(self, data: bytes) -> None:
        if self._started:
            self._deliver(data)
            return
        self._head += data
        self._head_changed.set()
        if self.answer.done():
            return  # an error's body
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > 65536:
                self.answer.set_exception(EngineError("the engine's answer has no end"))
            return
        status_line, *headers = self._head[:end].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.answer.set_result((code, headers))
        rest = bytes(self._head[end + 4 :])
        if code in (101, 200):
            self._started = True
            self._head = bytearray()
            if rest:
                self._deliver(rest)
        else:
            self._head = bytearray(rest)

    def _deliver(self, data: bytes) -> None:
        self._hand_on([(STDOUT, data)] if self._frames is None else self._frames.feed(data))

    def eof_received(self) -> bool:
        self._end()
        return False  # the process's output has ended: so has the exec

    def connection_lost(self, exc) -> None:
        self._end()

    def _end(self) -> None:
        self._head_changed.set()
        self._queued.set()
        if not self.answer.done():
            self.answer.set_exception(EngineError("the engine closed the connection"))
        if not self.ended.done():
            self.ended.set_result(None)

    # --- the gateway's side

    async def answer_body(self, length: int, wait: float = 5) -> bytes:
        """The body of an error answer: ``length`` bytes, or what came within ``wait`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(self._head) < length and not self.ended.done() and loop.time() < deadline:
            self._head_changed.clear()
            try:
                await asyncio.wait_for(self._head_changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
        return bytes(self._head[:length])

    async def read(self) -> tuple[int, bytes]:
        """The next output: (STDOUT or STDERR, bytes); (0, b'') at the end. Only before :meth:`attach`."""
        while not self._queue:
            if self.ended.done():
                return 0, b""
            self._queued.clear()
            await self._queued.wait()
        return self._queue.popleft()


async def first_line(stream: ExecStream, wait: float = 20) -> tuple[bytes, list[bytes], bool]:
    """What ``stream``'s process says first on stderr, up to its first newline (4 KiB at most, or
    all it said if it ended), what it wrote to stdout meanwhile, and whether that came in
    time (False: ``wait`` seconds passed with no output, and the line is unfinished).
    Only before :meth:`ExecStream.attach`."""
    said, stdout = b"", []
    while not said.endswith(b"\n") and len(said) < 4096:
        try:
            which, data = await asyncio.wait_for(stream.read(), wait)
        except asyncio.TimeoutError:
            return said, stdout, False
        if not which:
            break
        if which == STDERR:
            said += data
        else:
            stdout.append(data)
    return said, stdout, True


async def open_exec_stream(address: EngineAddress, exec_id: str, tty: bool) -> ExecStream:
    """Start the exec ``exec_id`` attached: the engine's upgraded connection, as an :class:`ExecStream`."""
    loop = asyncio.get_running_loop()
    if address.unix:
        _, stream = await loop.create_unix_connection(lambda: ExecStream(tty), address.unix)
    else:
        _, stream = await loop.create_connection(lambda: ExecStream(tty), address.host, address.port, ssl=address.ssl)
    body = json.dumps({"Detach": False, "Tty": tty}).encode()
    head = (
        f"POST /v{address.api_version}/exec/{exec_id}/start HTTP/1.1\r\n"
        "Host: docker\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    stream.transport.write(head.encode() + body)
    try:
        code, headers = await asyncio.wait_for(stream.answer, 30)
    except (EngineError, asyncio.TimeoutError) as e:
        stream.close()
        why = str(e) if isinstance(e, EngineError) else "no answer within 30 s"
        raise EngineError(f"the engine did not start exec {exec_id[:12]}: {why}") from None
    if code not in (101, 200):
        length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
        detail = (await stream.answer_body(length)).decode(errors="replace") if length else ""
        stream.close()
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise EngineError(f"the engine refused exec {exec_id[:12]}: {code} {detail}".strip())
    return stream


def _environment(entries) -> dict[str, str]:
    return dict(entry.partition("=")[::2] for entry in entries or ())


def server_container(inspected: dict) -> ServerContainer:
    """What the gateway needs of a container (``inspect_container``): its user, environment, addresses."""
    config = inspected.get("Config") or {}
    env = _environment(config.get("Env"))
    host_network = (inspected.get("HostConfig") or {}).get("NetworkMode") == "host"
    networks = ((inspected.get("NetworkSettings") or {}).get("Networks")) or {}
    addresses = tuple(n["IPAddress"] for n in networks.values() if n.get("IPAddress")) if not host_network else ()
    port = urlsplit(env.get("JUPYTERHUB_SERVICE_URL", "")).port or 8888
    return ServerContainer(
        id=inspected["Id"],
        name=inspected.get("Name", "").lstrip("/"),
        user=config.get("User") or "",
        environment=tuple(config.get("Env") or ()),
        address=ServerAddress(addresses, config.get("Hostname", ""), host_network, port),
    )


class Engine:
    """The hub's engine as the gateway uses it: finding servers, running execs in them."""

    def __init__(self, make_client: Callable[[], docker.APIClient], api_url: str = "", threads: int = 8):
        self.clients = LazyClient(make_client)
        self.api_url = api_url  # the hub's API as its servers know it: a container of another hub has another
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="gpuspawner-ssh-docker")
        self._address: EngineAddress | None = None

    async def _call(self, method: str, *args, **kwargs):
        def call():
            with self.clients.use() as client:
                return getattr(client, method)(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def address(self) -> EngineAddress:
        if self._address is None:
            self._address = engine_address(self.clients.get())
        return self._address

    async def server_of(self, user: str) -> ServerContainer | None:
        """The running container of ``user``'s default server; None when there is none.

        Found by the hub's labels, and only if its ``JUPYTERHUB_USER`` is ``user`` too
        (and its hub's API is this gateway's, when known): a container that merely carries
        the labels (another hub's on the same engine) is not taken.
        """
        found = await self._call(
            "containers", filters={"label": [f"{label.USER}={user}", f"{label.SERVER}="], "status": "running"}
        )
        servers = []
        for entry in found:
            try:
                inspected = await self._call("inspect_container", entry["Id"])
            except docker.errors.NotFound:
                continue
            env = _environment((inspected.get("Config") or {}).get("Env"))
            if env.get("JUPYTERHUB_USER") != user:
                continue
            if self.api_url and env.get("JUPYTERHUB_API_URL", self.api_url).rstrip("/") != self.api_url.rstrip("/"):
                continue
            servers.append(server_container(inspected))
        if len(servers) > 1:
            raise EngineError(f"{len(servers)} running containers claim to be {user}'s server: ask the admin")
        return servers[0] if servers else None

    async def start(
        self, server: ServerContainer, argv: list[str], *, tty: bool, environment: dict[str, str] | None = None
    ) -> tuple[str, ExecStream]:
        """Run ``argv`` in ``server``'s container as its user; the exec's id and its attached stream."""
        try:
            created = await self._call(
                "exec_create",
                server.id,
                argv,
                stdin=True,
                stdout=True,
                stderr=True,
                tty=tty,
                user=server.user,
                environment=environment or None,
            )
        except docker.errors.APIError as e:
            raise EngineError(f"cannot run in {server.name}: {e.explanation or e}") from None
        exec_id = created["Id"]
        return exec_id, await open_exec_stream(await self.address(), exec_id, tty)

    async def resize(self, exec_id: str, width: int, height: int) -> None:
        if width > 0 and height > 0:
            try:
                await self._call("exec_resize", exec_id, height=height, width=width)
            except docker.errors.APIError:
                pass  # it exited meanwhile

    async def exit_status(self, exec_id: str, wait: float = 5) -> int:
        """The exec's exit status, once the engine has it (its output ends a moment before)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            info = await self._call("exec_inspect", exec_id)
            if not info.get("Running") or loop.time() > deadline:
                code = info.get("ExitCode")
                return int(code) if code is not None else 255
            await asyncio.sleep(0.02)

    async def signal(self, exec_id: str, sig: int) -> bool:
        """Send ``sig`` to the exec's process (and its process group, when it leads one).

        The engine has no call for it: the process is signalled through the host's pid,
        which the gateway sees when it runs in the host's pid namespace (as the hub does).
        Returns whether the process was still running.
        """
        try:
            info = await self._call("exec_inspect", exec_id)
        except docker.errors.APIError:
            return False
        pid = int(info.get("Pid") or 0)
        if not info.get("Running") or pid <= 1:
            return False
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def hang_up(self, exec_id: str, grace: float = 2) -> None:
        """End an exec whose client went away, as sshd does: SIGHUP, then SIGKILL after ``grace`` s."""
        if not await self.signal(exec_id, signal.SIGHUP):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            await asyncio.sleep(0.1)
            info = await self._call("exec_inspect", exec_id)
            if not info.get("Running"):
                return
        await self.signal(exec_id, signal.SIGKILL)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "Engine",
    "EngineAddress",
    "EngineError",
    "ExecStream",
    "Frames",
    "first_line",
    "STDERR",
    "STDOUT",
    "ServerContainer",
    "engine_address",
    "open_exec_stream",
    "server_container",
]
