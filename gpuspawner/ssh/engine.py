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


class ExecStream:
    """One exec's stream: stdin in, stdout and stderr out (one stream with a TTY)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tty: bool):
        self.reader, self.writer, self.tty = reader, writer, tty

    async def read(self) -> tuple[int, bytes]:
        """The next output: (STDOUT or STDERR, bytes); (0, b'') at the end."""
        if self.tty:
            data = await self.reader.read(65536)
            return (STDOUT, data) if data else (0, b"")
        try:
            header = await self.reader.readexactly(8)
            data = await self.reader.readexactly(int.from_bytes(header[4:8], "big"))
        except asyncio.IncompleteReadError:
            return 0, b""
        return (STDERR if header[0] == 2 else STDOUT), data

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    @property
    def buffered(self) -> int:
        return self.writer.transport.get_write_buffer_size() if self.writer.transport else 0

    def close_stdin(self) -> None:
        """End of input for the process (a half-close of the stream; not over TLS, which cannot)."""
        if self.writer.can_write_eof() and not self.writer.is_closing():
            try:
                self.writer.write_eof()
            except OSError:
                pass

    def close(self) -> None:
        self.writer.close()


async def open_exec_stream(address: EngineAddress, exec_id: str, tty: bool) -> ExecStream:
    """Start the exec ``exec_id`` attached: the engine's upgraded connection, as a stream."""
    if address.unix:
        reader, writer = await asyncio.open_unix_connection(address.unix)
    else:
        reader, writer = await asyncio.open_connection(address.host, address.port, ssl=address.ssl)
    body = json.dumps({"Detach": False, "Tty": tty}).encode()
    head = (
        f"POST /v{address.api_version}/exec/{exec_id}/start HTTP/1.1\r\n"
        "Host: docker\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError) as e:
        writer.close()
        raise EngineError(f"the engine did not start exec {exec_id[:12]}: {type(e).__name__}") from None
    status_line, *headers = answer.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if code not in (101, 200):
        length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
        detail = (await reader.read(length)).decode(errors="replace") if length else ""
        writer.close()
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise EngineError(f"the engine refused exec {exec_id[:12]}: {code} {detail}".strip())
    return ExecStream(reader, writer, tty)


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
    "STDERR",
    "STDOUT",
    "ServerContainer",
    "engine_address",
    "open_exec_stream",
    "server_container",
]
