"""The SSH gateway's sessions: logins (a token, or a registered key), then each channel
run in the user's own server through ``docker exec``.

One :class:`Gateway` holds what every connection shares (the hub's API, the engine, the
keys, the failed-login counts, the activity reports); one :class:`Connection` (asyncssh's
``SSHServer``) per client holds who logged in. Every login, refused or not, is one line
line of the audit log (``ssh login ok: ...``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable

import asyncssh

from . import direct
from .direct import DirectLine
from .engine import STDERR, Engine, EngineError, ExecStream, ServerContainer, first_line
from .hub import HubAPI, HubError, NotPending
from .keys import KeyStore
from .policy import (
    CONNECTED,
    DIRECT_STDIO,
    PROFILE_VARIABLE,
    ForwardRefused,
    Login,
    LoginLimits,
    LoginRefused,
    accepted_variables,
    choose_profile,
    forward_target,
    hidden_variables,
    judge_token,
    parse_direct_offer,
    parse_login,
    progress_line,
    refusal_message,
    session_command,
)
from .tuning import tune

#: Exit statuses of sessions that never reached the server.
REFUSED = 1  # the server could not be started (the hub's refusal), or is stopping
BAD_REQUEST = 2  # an unknown subsystem, two profiles asked
LOST = 255  # the client went away, or the gateway failed
#: Seconds after a failed direct line to a server's address during which its sftp sessions go through the engine.
NO_LINE_FOR = 600

_SIGNALS = {name: getattr(signal, f"SIG{name}") for name in ("INT", "TERM", "HUP", "QUIT", "KILL", "USR1", "USR2")}


def _field(value) -> str:
    text = str(value)
    return repr(text) if not text or any(c.isspace() or c in "='\"" for c in text) else text


class Audit:
    """One line per login and session: ``ssh login ok: user=alice method=publickey ... from=1.2.3.4:51234``."""

    def __init__(self, log: logging.Logger):
        self.log = log

    def __call__(self, event: str, **fields) -> None:
        self.log.info("ssh %s: %s", event, " ".join(f"{k}={_field(v)}" for k, v in fields.items() if v != ""))


class Activity:
    """Open sessions count as use: each user with one is reported to the hub every ``interval`` s,
    and when a session opens or closes, so that Jupyter-idle culling leaves their server alone."""

    def __init__(self, hub: HubAPI, interval: float, log: logging.Logger):
        self.hub, self.interval, self.log = hub, interval, log
        self.open_sessions: Counter[str] = Counter()
        self._task: asyncio.Task | None = None

    def _report(self, user: str) -> None:
        async def report():
            try:
                await self.hub.activity(user)
            except (HubError, OSError) as e:
                self.log.warning("Could not report %s's SSH activity to the hub: %s", user, e)

        asyncio.ensure_future(report())

    def opened(self, user: str) -> None:
        self.open_sessions[user] += 1
        self._report(user)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._every_interval())

    def closed(self, user: str) -> None:
        self.open_sessions[user] -= 1
        if self.open_sessions[user] <= 0:
            del self.open_sessions[user]
        self._report(user)

    async def _every_interval(self) -> None:
        while self.open_sessions:
            await asyncio.sleep(self.interval)
            for user in list(self.open_sessions):
                self._report(user)


class Gateway:
    def __init__(
        self,
        hub: HubAPI,
        engine: Engine,
        keys: KeyStore,
        limits: LoginLimits,
        *,
        log: logging.Logger,
        audit: Audit,
        activity_interval: float = 60,
        profile_separator: str = "+",
        admin_access: bool = False,
        sftp_direct: bool = True,
    ):
        self.hub, self.engine, self.keys, self.limits = hub, engine, keys, limits
        self.log, self.audit = log, audit
        self.activity = Activity(hub, activity_interval, log)
        self.profile_separator = profile_separator
        self.admin_access = admin_access
        self.sftp_direct = sftp_direct
        self._no_line: dict[str, float] = {}  # server address -> when a direct line to it last failed

    def connection(self) -> Connection:
        return Connection(self)

    # --- logins

    def _login(self, conn: Connection, username: str, method: str) -> Login | None:
        """The login asked, or None (logged) when the name is bad or the limits refuse it."""
        try:
            login = parse_login(username, self.profile_separator)
        except LoginRefused as e:
            self.audit("login failed", user=username, method=method, reason=str(e), **conn.where)
            return None
        refusal = self.limits.refusal(login.user, conn.address)
        if refusal:
            if conn.refused_for != refusal:  # once per connection
                conn.refused_for = refusal
                self.audit("login refused", user=login.user, method=method, reason=refusal, **conn.where)
            return None
        return login

    async def check_password(self, conn: Connection, username: str, password: str) -> bool:
        login = self._login(conn, username, "token")
        if login is None:
            return False
        try:
            model = await self.hub.token_owner(password)
        except (HubError, OSError) as e:
            self.audit(
                "login failed", user=login.user, method="token", reason=f"the hub did not answer: {e}", **conn.where
            )
            return False
        try:
            decision = judge_token(model, login.user, self.admin_access)
        except LoginRefused as e:
            self.limits.failed(login.user, conn.address)
            self.audit("login failed", user=login.user, method="token", reason=str(e), **conn.where)
            return False
        by = decision.owner if decision.as_other else ""
        conn.accept(login, "token", f"token_id={model.get('token_id') or '?'}", by)
        return True

    def check_key(self, conn: Connection, username: str, key: asyncssh.SSHKey) -> bool:
        login = self._login(conn, username, "publickey")
        if login is None:
            return False
        registered = self.keys.find(login.user, key)
        if registered is None:
            conn.offered.append((login.user, key.get_fingerprint("sha256")))
            return False
        conn.accept(login, "publickey", f"key={registered.fingerprint}")
        return True

    def login_ended(self, conn: Connection) -> None:
        """A connection closed: keys offered and none taken, and no login, is one failed login."""
        if conn.authenticated or not conn.offered:
            return
        user = conn.offered[-1][0]
        if conn.refused_for:
            return
        self.limits.failed(user, conn.address)
        offered = ",".join(sorted({fingerprint for _, fingerprint in conn.offered}))
        self.audit(
            "login failed", user=user, method="publickey", reason="no registered key", offered=offered, **conn.where
        )

    # --- the direct line of sftp sessions

    def direct_line_to(self, server: ServerContainer, now: float | None = None) -> str:
        """The address an sftp session's direct line connects to, or '' for the exec's stream: when
        the line is off, the server has no address of its own, or a line to it failed in the last
        :data:`NO_LINE_FOR` seconds (so that a network that drops the connection costs one
        session the wait, not every session)."""
        address = _direct_address(server) if self.sftp_direct else ""
        failed = self._no_line.get(address)
        if failed is not None and (time.monotonic() if now is None else now) - failed < NO_LINE_FOR:
            return ""
        return address

    def direct_line_failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._no_line = {a: t for a, t in self._no_line.items() if now - t < NO_LINE_FOR}  # bounded
        self._no_line[address] = now

    # --- the server

    async def ensure_server(self, user: str, profile: str, say: Callable[[str], None]) -> ServerContainer | None:
        """``user``'s running server, started first if needed (its progress said); None when refused (said why)."""
        model = await self.hub.user(user)
        if model is None:
            say(f"gpuspawner: the hub has no user {user}")
            return None
        server = (model.get("servers") or {}).get("")
        if server and server.get("pending") == "stop":
            say("gpuspawner: your server is stopping: try again in a few seconds")
            return None
        if server and server.get("ready"):
            running = (server.get("user_options") or {}).get("profile", "")
            if profile and running and profile != running:
                say(f"gpuspawner: your server runs profile {running}, not {profile}: stop it to change (on the hub)")
        elif server and server.get("pending") == "spawn":
            say("gpuspawner: your server is starting")
            if not await self._follow(user, None, say):
                return None
        else:
            say(f"gpuspawner: no server running for {user}: starting one" + (f" ({profile})" if profile else ""))
            if not await self._start(user, profile, say):
                return None
        for _ in range(20):  # the hub says ready a moment after the container runs: it is there
            container = await self.engine.server_of(user)
            if container is not None:
                return container
            await asyncio.sleep(0.5)
        say(f"gpuspawner: the hub says {user}'s server runs, but not in a container this gateway sees")
        return None

    async def _start(self, user: str, profile: str, say) -> bool:
        post = asyncio.ensure_future(self.hub.start_server(user, profile))
        try:
            return await self._follow(user, post, say)
        finally:
            if not post.done():
                post.cancel()

    async def _follow(self, user: str, post: asyncio.Future | None, say) -> bool:
        """Say the spawn's progress until it is ready (True) or refused or failed (False, said why)."""
        while True:
            if post is not None and post.done():
                status, body = post.result()
                if status >= 400 and not (status == 400 and "is already running" in body):
                    say(refusal_message(status, body))
                    return False
            try:
                async for event in self.hub.progress(user):
                    if event.get("failed"):
                        if post is not None:
                            status, body = await post
                            if status >= 400:
                                say(refusal_message(status, body))
                                return False
                        say(str(event.get("message") or "the server failed to start"))
                        return False
                    say("  " + progress_line(event))
                    if event.get("ready"):
                        return True
                return (await self._server_ready(user)) is True
            except NotPending:
                if post is None:
                    return (await self._server_ready(user)) is True
                if post.done() and post.result()[0] < 400:
                    return True  # started (and ready) before the progress was asked
                await asyncio.sleep(0.2)  # the hub has not marked it starting yet

    async def _server_ready(self, user: str) -> bool:
        model = await self.hub.user(user) or {}
        server = (model.get("servers") or {}).get("")
        return bool(server and server.get("ready"))

    # --- port forwarding (-L)

    async def open_forward(self, conn: Connection, host: str, port: int) -> asyncssh.SSHTCPSession:
        """A ``-L`` forward to ``host:port``, relayed from inside the user's server; refused
        (``ChannelOpenError``) for anything but the server's own ports, or with no server running."""
        server = await self.engine.server_of(conn.user)
        if server is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, "your server is not running: log in once without -N, which starts it"
            )
        try:
            target = forward_target(host, port, server.address)
        except ForwardRefused as e:
            self.audit("forward refused", user=conn.user, to=f"{host}:{port}", reason=str(e), **conn.where)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(e)) from None
        argv = session_command("forward", hidden_variables(server.environment), host=target, port=port)
        exec_id, stream = await self.engine.start(server, argv, tty=False)
        said, _, in_time = await first_line(stream)  # the relay writes nothing to stdout before it connects
        if not in_time:
            said = b"no answer within 20 s\n"
        if said != CONNECTED:
            stream.close()
            why = said.decode(errors="replace").strip() or "the relay in your server did not start"
            self.audit("forward failed", user=conn.user, to=f"{host}:{port}", reason=why, **conn.where)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, f"{host}:{port} in your server: {why}")
        self.audit("forward", user=conn.user, to=f"{host}:{port}", container=server.name, **conn.where)
        return Forward(self, conn.user, stream, exec_id)


class _Pipe:
    """A channel and an exec stream joined, with flow control both ways: what the client sends
    goes to the process's stdin, and the channel stops taking it while the engine's socket is
    full; what the process writes goes back as it comes, and the engine's socket is not read
    while the channel's buffer is full."""

    gateway: Gateway
    stream: ExecStream | None = None
    chan = None

    def _start_pipe(self) -> None:
        self.pending: list[bytes] = []  # what came before the process started
        self.eof_pending = False
        self.output_paused = False
        self.stderr_too = True

    def data_received(self, data: bytes, datatype) -> None:
        if self.stream is None:
            self.pending.append(data)
        else:
            self.stream.write(data)

    def eof_received(self) -> bool:
        if self.stream is None:
            self.eof_pending = True
        else:
            self.stream.close_stdin()
        return True  # half open: the process's output may still come

    def pause_writing(self) -> None:
        self.output_paused = True
        if self.stream is not None:
            self.stream.pause_output()

    def resume_writing(self) -> None:
        self.output_paused = False
        if self.stream is not None:
            self.stream.resume_output()

    def _joined(self, stream: ExecStream, stderr_too: bool) -> None:
        """The process runs: what the client sent meanwhile goes to it, and its output (its
        stderr dropped unless ``stderr_too``) to the client, until ``stream.ended``."""
        self.stream, self.stderr_too = stream, stderr_too
        for data in self.pending:
            stream.write(data)
        self.pending = []
        if self.eof_pending:
            stream.close_stdin()
        if self.output_paused:
            stream.pause_output()
        stream.attach(self._output, self._stdin_full)

    def _output(self, which: int, data: bytes) -> None:
        try:
            if which != STDERR:
                self.chan.write(data)
            elif self.stderr_too:
                self.chan.write_stderr(data)
        except (OSError, asyncssh.Error):
            self.stream.close()  # the channel is closing: the rest has nowhere to go

    def _stdin_full(self, full: bool) -> None:
        if full:
            self.chan.pause_reading()
        else:
            self.chan.resume_reading()


class Session(_Pipe, asyncssh.SSHServerSession):
    """One session channel: a shell (with a PTY or not), a command, or the sftp subsystem,
    run in the user's server; its exit status is the process's."""

    def __init__(self, gateway: Gateway, conn: Connection):
        self.gateway, self.conn = gateway, conn
        self.kind, self.command, self.term, self.size = "", "", "", (0, 0)
        self.exec_id = ""
        self.closed = asyncio.Event()
        self.task: asyncio.Task | None = None
        self._start_pipe()

    def connection_made(self, chan) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size, term_modes) -> bool:
        self.term, self.size = term_type or "xterm", tuple(term_size[:2])
        return True

    def shell_requested(self) -> bool:
        self.kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self.kind, self.command = "command", _text(command)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        # sftp: the image's own sftp-server, in the container (never a server on the gateway's host).
        if _text(subsystem) != "sftp":
            return False
        self.kind = "sftp"
        return True

    def session_started(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.size = (width, height)
        if self.exec_id:
            asyncio.ensure_future(self.gateway.engine.resize(self.exec_id, width, height))

    def signal_received(self, signal_name: str) -> None:
        name = _text(signal_name)
        if self.exec_id and name in _SIGNALS:
            asyncio.ensure_future(self.gateway.engine.signal(self.exec_id, _SIGNALS[name]))

    def break_received(self, msec: int) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.closed.set()

    def say(self, text: str) -> None:
        """A line to the client's stderr (CR LF on a terminal): the gateway's own words, not the server's."""
        if not self.closed.is_set():
            self.chan.write_stderr((text + ("\r\n" if self.tty else "\n")).encode())

    @property
    def tty(self) -> bool:
        return bool(self.term) and self.kind != "sftp"

    async def _run(self) -> None:
        try:
            status = await self._session()
        except Exception:
            self.gateway.log.exception("SSH session of %s failed", self.conn.user)
            self.say("gpuspawner: the SSH gateway failed: see its log")
            status = LOST
        if not self.closed.is_set():
            self.chan.exit(status)

    async def _session(self) -> int:
        gateway, conn = self.gateway, self.conn
        sent = {_text(k): _text(v) for k, v in (self.chan.get_environment() or {}).items()}
        try:
            profile = choose_profile(conn.login, sent.get(PROFILE_VARIABLE, ""))
        except LoginRefused as e:
            self.say(f"gpuspawner: {e}")
            return BAD_REQUEST
        try:
            server = await gateway.ensure_server(conn.user, profile, self.say)
        except (HubError, EngineError, OSError) as e:
            self.say(f"gpuspawner: cannot reach your server: {e}")
            return REFUSED
        if server is None:
            return REFUSED
        if self.closed.is_set():
            return LOST
        environment = accepted_variables(sent)
        if self.tty:
            environment["TERM"] = self.term
        direct_to = gateway.direct_line_to(server) if self.kind == "sftp" else ""
        argv = session_command(self.kind, hidden_variables(server.environment), command=self.command, host=direct_to)
        self.exec_id, stream = await gateway.engine.start(server, argv, tty=self.tty, environment=environment)
        gateway.audit(
            "session",
            user=conn.user,
            kind=self.kind,
            command=self.command[:200],
            tty="yes" if self.tty else "",
            container=server.name,
            **conn.where,
        )
        if self.tty:
            await gateway.engine.resize(self.exec_id, *self.size)
        line = await self._direct_line(stream, direct_to) if direct_to else None
        if line is not None:
            self._joined(line, stderr_too=True)
            stream.attach(self._output, lambda full: None)  # sftp-server's stderr, if it says anything
        else:
            self._joined(stream, stderr_too=True)
        output_ended = (line or stream).ended
        gateway.activity.opened(conn.user)
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({output_ended, closed}, return_when=asyncio.FIRST_COMPLETED)
            if output_ended.done() and not self.closed.is_set():
                if line is not None:  # sftp-server closed its connection: the exec ends with it
                    await asyncio.wait({stream.ended}, timeout=5)
                return await gateway.engine.exit_status(self.exec_id)
            await gateway.engine.hang_up(self.exec_id)  # the client went away: as sshd, hang up on the process
            return LOST
        finally:
            closed.cancel()
            stream.close()
            if line is not None:
                line.close()
            gateway.activity.closed(conn.user)

    async def _direct_line(self, stream: ExecStream, host: str) -> DirectLine | None:
        """The sftp session's direct line (:mod:`.direct`), once the listener in the server has
        announced itself on the exec's stderr; None when sftp-server runs on the exec's stdin
        and stdout instead (no Python in the image, or no connection: then the listener is told
        so), or did not start (what it said goes to the client)."""
        said, early, in_time = await first_line(stream)
        if not in_time:
            said += b"gpuspawner: the sftp server did not start within 20 s\n"
        offer = parse_direct_offer(said)
        line = await direct.connect(host, offer) if offer else None
        if offer and line is None:
            self.gateway.log.warning(
                "no direct line to %s:%s: sftp through the engine, for the next %d s", host, offer.port, NO_LINE_FOR
            )
            self.gateway.direct_line_failed(host)
            stream.write(b"\n")  # the listener runs sftp-server on the exec's stdin and stdout
        elif not offer and said != DIRECT_STDIO:
            self.chan.write_stderr(said)
        for data in early:
            self.chan.write(data)
        return line


class Forward(_Pipe, asyncssh.SSHTCPSession):
    """One forwarded connection: the SSH channel and the relay in the server."""

    def __init__(self, gateway: Gateway, user: str, stream: ExecStream, exec_id: str):
        self.gateway, self.user, self.exec_id = gateway, user, exec_id
        self.task: asyncio.Task | None = None
        self._start_pipe()
        self.relay = stream

    def connection_made(self, chan) -> None:
        self.chan = chan
        self.gateway.activity.opened(self.user)
        self._joined(self.relay, stderr_too=False)
        self.task = asyncio.ensure_future(self._relay())

    async def _relay(self) -> None:
        await self.stream.ended
        self.chan.close()

    def connection_lost(self, exc) -> None:
        if self.task is not None:
            self.task.cancel()
        self.relay.close()
        self.gateway.activity.closed(self.user)
        asyncio.ensure_future(self.gateway.engine.hang_up(self.exec_id))


class Connection(asyncssh.SSHServer):
    """One client: who it logs in as, and how."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.address, self.port = "?", 0
        self.login: Login | None = None
        self.method = ""
        self.authenticated = False
        self.offered: list[tuple[str, str]] = []  # (user, fingerprint) of keys offered and not registered
        self.refused_for = ""
        self._accepted: tuple = ()

    @property
    def user(self) -> str:
        return self.login.user if self.login else ""

    @property
    def where(self) -> dict:
        return {"source": f"{self.address}:{self.port}"}

    def connection_made(self, conn) -> None:
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.address, self.port = peer[0], peer[1]
        tune(conn)

    def connection_lost(self, exc) -> None:
        self.gateway.login_ended(self)

    def accept(self, login: Login, method: str, credential: str, by: str = "") -> None:
        self._accepted = (login, method, credential, by)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        return await self.gateway.check_password(self, username, password)

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self.gateway.check_key(self, username, key)

    def auth_completed(self) -> None:
        login, method, credential, by = self._accepted
        self.login, self.method, self.authenticated = login, method, True
        key, _, value = credential.partition("=")
        self.gateway.audit(
            "login ok",
            user=login.user,
            method=method,
            **{key: value},
            profile=login.profile,
            by=by,
            **self.where,
        )

    def session_requested(self) -> Session:
        return Session(self.gateway, self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        return self.gateway.open_forward(self, dest_host, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no -R: nothing in a server listens on the gateway's host

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


def _direct_address(server: ServerContainer) -> str:
    """The server's address an sftp session's direct line connects to: its first network's,
    or '' (through the engine) for a server on the host's network or with no address."""
    address = server.address
    return "" if address.host_network or not address.addresses else address.addresses[0]


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


__all__ = ["Activity", "Audit", "Connection", "Forward", "Gateway", "Session"]
