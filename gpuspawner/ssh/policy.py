"""What the SSH gateway allows, decided with no I/O and no clock of its own.

- :func:`parse_login`: the login name, ``alice`` or ``alice+gpu`` (a profile to start with);
- :func:`judge_token`: whether the hub's answer about a token lets it log in as a user;
- :class:`LoginLimits`: failed logins counted per user and per source address, over a window;
- :func:`forward_target`: where a ``-L`` forward may go (ports inside the user's own server only);
- :func:`hidden_variables`: the hub's tokens, kept out of SSH sessions' environment;
- :func:`session_command`: what runs in the server's container for a shell, a command, sftp or a forward;
- :func:`progress_line`, :func:`parse_events`: a spawn's progress as the student reads it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

#: The variable a client may send (``ssh -o SetEnv=GPUSPAWNER_PROFILE=gpu``) to name the profile to start.
PROFILE_VARIABLE = "GPUSPAWNER_PROFILE"
#: Variables of a client that a session takes on (as OpenSSH's ``AcceptEnv LANG LC_*``).
ACCEPTED_VARIABLES = re.compile(r"^(LANG|LC_[A-Z_]+|TERM|COLORTERM)$")

#: The hub's own variables in a server's environment that an SSH session does not get: the
#: server's API token (JupyterHub sets it twice) and its OAuth client's settings.
HIDDEN_VARIABLES = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_CLIENT_ID")
HIDDEN_PREFIXES = ("JUPYTERHUB_OAUTH_",)

_PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LoginRefused(Exception):
    """A login name, token or key that does not log in; the message says why (for the audit log)."""


class ForwardRefused(Exception):
    """A port forward the gateway does not open; the message is what the client is told."""


# --- the login name


@dataclass(frozen=True)
class Login:
    user: str
    profile: str = ""  # '' : the user's default profile, when a server must be started


def parse_login(name: str, separator: str = "+") -> Login:
    """``alice`` or ``alice+gpu``: the hub's user, and the profile named after ``separator``.

    The part after the last ``separator`` is the profile, so that a name holding it
    (``a+b`` with ``separator="+"``) cannot log in without one; set ``separator`` to ``""``
    in a lab whose user names hold it. Raises ``LoginRefused`` for an empty name or profile.
    """
    user, profile = name, ""
    if separator and separator in name:
        user, _, profile = name.rpartition(separator)
        if not profile or not _PROFILE.match(profile):
            raise LoginRefused(f"{name!r}: no profile after {separator!r} (name one: USER{separator}PROFILE)")
    if not user:
        raise LoginRefused(f"{name!r}: no user name")
    return Login(user, profile)


def choose_profile(login: Login, sent: str = "") -> str:
    """The profile to start a server with: the login name's, or the one sent as ``GPUSPAWNER_PROFILE``.

    Both may be given only when they agree. '' means the user's default profile.
    """
    sent = sent.strip()
    if sent and not _PROFILE.match(sent):
        raise LoginRefused(f"{PROFILE_VARIABLE}={sent!r} is not a profile's name")
    if sent and login.profile and sent != login.profile:
        raise LoginRefused(
            f"two profiles asked: {login.profile!r} in the login name and {sent!r} in {PROFILE_VARIABLE}"
        )
    return login.profile or sent


# --- a token as the password


def _grants_server(scopes: Iterable[str], user: str) -> bool:
    """Whether ``scopes`` (a token's, expanded as the hub lists them) reach ``user``'s default server."""
    wanted = {"access:servers", f"access:servers!user={user}", f"access:servers!server={user}/"}
    return any(scope in wanted for scope in scopes)


@dataclass(frozen=True)
class TokenLogin:
    owner: str  # who the token belongs to
    as_other: bool = False  # True: another user's token, allowed by admin_access


def judge_token(model: Mapping | None, user: str, admin_access: bool = False) -> TokenLogin:
    """Whether the hub's ``GET /api/user`` answer for a token lets it log in as ``user``.

    The token must be a user's (not a service's) and reach ``user``'s server
    (``access:servers`` for that server, which a user's own tokens have unless made with
    fewer scopes). Another user's token logs in only with ``admin_access``, and only when
    its scopes reach this user's server (an admin's do; a teacher's role may). Raises
    ``LoginRefused`` naming the reason.
    """
    if not model:
        raise LoginRefused("not a valid token of this hub")
    kind = model.get("kind", "user")
    owner = str(model.get("name") or "")
    if kind != "user":
        raise LoginRefused(f"a token of the {kind} {owner!r}, not of a user")
    scopes = model.get("scopes") or ()
    if owner != user:
        if not admin_access:
            raise LoginRefused(f"a token of another user ({owner})")
        if not _grants_server(scopes, user):
            raise LoginRefused(f"a token of {owner}, whose scopes do not reach {user}'s server")
        return TokenLogin(owner, as_other=True)
    if not _grants_server(scopes, user):
        raise LoginRefused(f"a token of {user} without access to their server (scope access:servers!user={user})")
    return TokenLogin(owner)


# --- failed logins


@dataclass(frozen=True)
class Limit:
    """At most ``failures`` failed logins within ``seconds``; 0 failures: no limit."""

    failures: int
    seconds: float


class LoginLimits:
    """Failed logins, per user and per source address: past a limit, every login is refused
    (right credentials too) until the window has slid past the failures.

    The clock is injected (``time.monotonic`` in the gateway). Memory is bounded: at most
    ``max_keys`` users and addresses are remembered, the least recent forgotten first.
    """

    def __init__(self, per_user: Limit, per_address: Limit, clock: Callable[[], float], max_keys: int = 100_000):
        self.per_user, self.per_address, self.clock, self.max_keys = per_user, per_address, clock, max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], limit: Limit) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        horizon = self.clock() - limit.seconds
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def refusal(self, user: str, address: str) -> str:
        """Why a login of ``user`` from ``address`` is refused before its credentials are looked at; ''."""
        for key, limit, who in (
            (("user", user), self.per_user, f"user {user}"),
            (("address", address), self.per_address, f"address {address}"),
        ):
            if limit.failures and len(self._recent(key, limit)) >= limit.failures:
                return f"too many failed logins for {who} ({limit.failures} in {limit.seconds:g} s)"
        return ""

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        for key in (("user", user), ("address", address)):
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            self._failures[key] = times  # the most recent last: the first to forget is the least recent
        while len(self._failures) > self.max_keys:
            del self._failures[next(iter(self._failures))]


# --- port forwarding


@dataclass(frozen=True)
class ServerAddress:
    """Where a user's server listens, as its container says."""

    addresses: tuple[str, ...] = ()  # its IPs on its networks (none on the host's network)
    hostname: str = ""  # the container's host name
    host_network: bool = False  # it shares the host's network: its loopback is the host's
    port: int = 8888  # the Jupyter server's port


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forward_target(host: str, port: int, server: ServerAddress) -> str:
    """The address a ``-L`` forward to ``host:port`` connects to, from inside the user's server.

    Only the server itself: ``localhost`` (any loopback address) or the container's own
    address or host name, on any port. A server on the host's network shares the host's
    loopback, where the hub and other servers listen: there only its own Jupyter port.
    Anything else (another server, the hub's host, any other name) raises ``ForwardRefused``.
    """
    name = host.strip().strip("[]").lower().rstrip(".")
    if not 0 < port < 65536:
        raise ForwardRefused(f"port {port} is not a port")
    own = {a.lower() for a in server.addresses} | ({server.hostname.lower()} if server.hostname else set())
    if server.host_network:
        if (_is_loopback(name) or name in own) and port == server.port:
            return "127.0.0.1"
        raise ForwardRefused(
            f"only localhost:{server.port} can be forwarded: your server shares the host's network,"
            " where every other port is not yours"
        )
    if _is_loopback(name):
        return "::1" if name == "::1" else "127.0.0.1"
    if name in own:
        return name  # its own address, or its host name, which resolves to it inside the container
    raise ForwardRefused(f"{host}:{port} is not in your server: forward to localhost:PORT (your server's own ports)")


# --- what runs in the container


def hidden_variables(environment: Iterable[str]) -> list[str]:
    """The names in a container's ``Env`` (``NAME=value`` entries) that sessions do not get."""
    names = [entry.partition("=")[0] for entry in environment]
    return [n for n in names if n in HIDDEN_VARIABLES or n.startswith(HIDDEN_PREFIXES)]


def accepted_variables(sent: Mapping[str, str]) -> dict[str, str]:
    """The client's variables a session takes on: the locale and the terminal's, as sshd's AcceptEnv."""
    return {k: v for k, v in sent.items() if ACCEPTED_VARIABLES.match(k) and "\0" not in v}


#: The places images keep OpenSSH's sftp-server (Debian and Ubuntu, Fedora and RHEL, Arch, Alpine).
SFTP_SERVER_PATHS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/lib/sftp-server",
    "/usr/libexec/sftp-server",
)

NO_SFTP = (
    "gpuspawner: this server's image has no sftp-server, which scp and sftp need:"
    " ask for it in the image (gpuspawner image build --sftp)"
)
NO_PYTHON = "gpuspawner: this server's image has no python3, which port forwarding needs"

# Run by /bin/sh in the container as the image's user: $1 says what to run. The user's
# login shell from the image's passwd (else $SHELL, else /bin/sh), started in the home,
# not as a login shell: a login shell's /etc/profile would reset PATH, and the session
# is to have the notebooks' environment. sftp and forwards need no shell: they start
# without looking it up (three processes fewer before an scp's first byte).
SESSION_SCRIPT = (
    r"""
cd "$HOME" 2>/dev/null || cd /
case "$1" in
sftp)
    for p in SFTP_SERVER_PATHS; do
        [ -x "$p" ] || continue
        if [ -n "$2" ]; then
            command -v python3 >/dev/null 2>&1 && exec python3 -I -c "$3" "$2" "$p"
            echo gpuspawner-stdio >&2
        fi
        exec "$p"
    done
    echo "NO_SFTP" >&2
    exit 127 ;;
forward)
    for p in python3 python; do command -v "$p" >/dev/null 2>&1 && exec "$p" -c "$4" "$2" "$3"; done
    echo "NO_PYTHON" >&2
    exit 127 ;;
esac
shell=$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f7)
[ -n "$shell" ] && [ -x "$shell" ] || shell=${SHELL:-/bin/sh}
[ -x "$shell" ] || shell=/bin/sh
case "$1" in
shell) exec "$shell" ;;
command) exec "$shell" -c "$2" ;;
esac
exit 2
""".replace("SFTP_SERVER_PATHS", " ".join(SFTP_SERVER_PATHS))
    .replace("NO_SFTP", NO_SFTP)
    .replace("NO_PYTHON", NO_PYTHON)
)

#: The direct line's listener (sftp's bytes on a TCP connection of their own, not through
#: the engine), run by the server's Python as its user: it listens on argv[1] (the server's
#: address the gateway connects to), says on stderr ``gpuspawner-direct PORT ASK ANSWER``,
#: and takes the first connection that sends ASK, answers it ANSWER (so the gateway knows it
#: reached this listener), and runs argv[2] (sftp-server) with the connection as its stdin
#: and stdout. A line (or the end) on stdin instead says the gateway could not connect: then
#: sftp-server runs on stdin and stdout as without the line. Nothing after 20 s (argv[3]): it exits.
DIRECT_LINE = r"""
import hmac, os, select, socket, sys, time
address, server = sys.argv[1], sys.argv[2]
conn = None
try:
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    s.bind((address, 0))
    s.listen(4)
except OSError:
    os.write(2, b"gpuspawner-stdio\n")
    os.execv(server, [server])
ask, answer = os.urandom(16), os.urandom(16)
os.write(2, ("gpuspawner-direct %d %s %s\n" % (s.getsockname()[1], ask.hex(), answer.hex())).encode())
deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 20)
while conn is None:
    left = deadline - time.monotonic()
    ready = select.select([s, 0], [], [], left)[0] if left > 0 else []
    if not ready:
        os.write(2, b"gpuspawner: the SSH gateway did not connect to the sftp server\n")
        sys.exit(1)
    if 0 in ready:
        break
    c = s.accept()[0]
    c.settimeout(2)
    got = b""
    try:
        while len(got) < len(ask):
            piece = c.recv(len(ask) - len(got))
            if not piece:
                break
            got += piece
        if hmac.compare_digest(got, ask):
            c.sendall(answer)
            c.settimeout(None)
            conn = c
            break
    except OSError:
        pass
    c.close()
s.close()
if conn is None:
    while os.read(0, 1) not in (b"\n", b""):
        pass
else:
    os.dup2(conn.fileno(), 0)
    os.dup2(conn.fileno(), 1)
    conn.close()
os.execv(server, [server])
"""
#: What an sftp session asked for the direct line says on stderr when it runs on stdin and
#: stdout after all (the image has no python3, or the address cannot be listened on).
DIRECT_STDIO = b"gpuspawner-stdio\n"


@dataclass(frozen=True)
class DirectOffer:
    """The direct line's listener, as it announced itself: its port and the two secrets."""

    port: int
    ask: bytes
    answer: bytes


def parse_direct_offer(line: bytes) -> DirectOffer | None:
    """``gpuspawner-direct PORT ASK ANSWER`` (the listener's first line), or None for any other line."""
    words = line.strip().split()
    if len(words) != 4 or words[0] != b"gpuspawner-direct" or not words[1].isdigit():
        return None
    port = int(words[1])
    try:
        ask, answer = bytes.fromhex(words[2].decode("ascii")), bytes.fromhex(words[3].decode("ascii"))
    except ValueError:
        return None
    if not 0 < port < 65536 or len(ask) != 16 or len(answer) != 16:
        return None
    return DirectOffer(port, ask, answer)


#: The forward's relay, run in the server's network namespace by its Python: it connects to
#: argv[1]:argv[2], says "connected" (or why not) on stderr, then copies stdin to the
#: connection and the connection to stdout until either ends.
RELAY = r"""
import os, socket, sys, threading
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
except OSError as e:
    os.write(2, ("refused: %s\n" % (e.strerror or e)).encode())
    sys.exit(1)
s.settimeout(None)
os.write(2, b"connected\n")
def up():
    try:
        while True:
            d = os.read(0, 65536)
            if not d:
                break
            s.sendall(d)
    except OSError:
        pass
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=up, daemon=True).start()
while True:
    try:
        d = s.recv(65536)
    except OSError:
        break
    if not d:
        break
    v = memoryview(d)
    while v:
        v = v[os.write(1, v):]
"""
CONNECTED = b"connected\n"


def session_command(kind: str, hidden: Iterable[str] = (), command: str = "", host: str = "", port: int = 0):
    """The argv a session runs in the container: ``kind`` is shell, command, sftp or forward.

    For sftp, ``host`` (the server's address the gateway connects to) asks for the direct
    line (:data:`DIRECT_LINE`); without it, sftp-server runs on the exec's stdin and stdout.

    The hub's tokens (``hidden``) are removed from the environment first (``env -u``).
    """
    if kind not in ("shell", "command", "sftp", "forward"):
        raise ValueError(f"unknown session kind {kind!r}")
    unset = [word for name in hidden for word in ("-u", name)]
    args = [kind]
    if kind == "command":
        args.append(command)
    elif kind == "forward":
        args += [host, str(port), RELAY]
    elif kind == "sftp" and host:
        args += [host, DIRECT_LINE]
    return ["env", *unset, "/bin/sh", "-c", SESSION_SCRIPT, "gpuspawner-ssh", *args]


# --- a spawn's progress


def parse_events(lines: Iterable[str]) -> Iterator[dict]:
    """The JSON events of a server-sent event stream (the hub's progress API), line by line."""
    for line in lines:
        if line.startswith("data:"):
            try:
                event = json.loads(line[5:].strip())
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event


def progress_line(event: Mapping) -> str:
    """One progress event as the student reads it: ``[ 65%] Assigning 1 whole GPU``."""
    percent = event.get("progress")
    message = str(event.get("message") or "").strip()
    if isinstance(percent, (int, float)):
        return f"[{int(percent):3d}%] {message}"
    return message


def refusal_message(status: int, body: str) -> str:
    """The hub's refusal of a spawn (``{"status": 503, "message": ...}``): its message, the spawn page's sentence."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or body.strip() or f"the hub answered {status}")


__all__ = [
    "ACCEPTED_VARIABLES",
    "CONNECTED",
    "DIRECT_LINE",
    "DIRECT_STDIO",
    "DirectOffer",
    "ForwardRefused",
    "HIDDEN_PREFIXES",
    "HIDDEN_VARIABLES",
    "Limit",
    "Login",
    "LoginLimits",
    "LoginRefused",
    "NO_PYTHON",
    "NO_SFTP",
    "PROFILE_VARIABLE",
    "RELAY",
    "SFTP_SERVER_PATHS",
    "ServerAddress",
    "TokenLogin",
    "accepted_variables",
    "choose_profile",
    "forward_target",
    "hidden_variables",
    "judge_token",
    "parse_direct_offer",
    "parse_events",
    "parse_login",
    "progress_line",
    "refusal_message",
    "session_command",
]
