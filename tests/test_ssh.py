"""The SSH gateway's decisions and parts, without a hub or an engine (tests/test_ssh_e2e.py has both):
login names, tokens, failed-login limits, forwards, what runs in a container (run here by /bin/sh),
the keys and their file, the host key, the service's config."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import asyncssh
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE
from jupyterhub.scopes import scope_definitions
from traitlets.config import Config

from gpuspawner import services
from gpuspawner.config import ConfigError
from gpuspawner.ssh import direct
from gpuspawner.ssh.app import CIPHERS, SSHGateway, host_key
from gpuspawner.ssh.engine import (
    STDERR,
    STDOUT,
    EngineAddress,
    EngineError,
    Frames,
    ServerContainer,
    engine_address,
    open_exec_stream,
    server_container,
)
from gpuspawner.ssh.gateway import NO_LINE_FOR, Audit, Connection, Gateway, Session
from gpuspawner.ssh.keys import MAX_KEYS, KeyRefused, KeyStore, parse_key
from gpuspawner.ssh.policy import (
    CONNECTED,
    DIRECT_LINE,
    DIRECT_STDIO,
    NO_SFTP,
    SFTP_SERVER_PATHS,
    ForwardRefused,
    Limit,
    Login,
    LoginLimits,
    LoginRefused,
    ServerAddress,
    accepted_variables,
    choose_profile,
    forward_target,
    hidden_variables,
    judge_token,
    parse_direct_offer,
    parse_events,
    parse_login,
    progress_line,
    refusal_message,
    session_command,
)
from gpuspawner.ssh.tuning import INPUT_SLICE, tune

# --- login names and profiles


@pytest.mark.parametrize(
    "name, separator, login",
    [
        ("alice", "+", Login("alice")),
        ("alice+gpu", "+", Login("alice", "gpu")),
        ("a+b+ml101-gpu", "+", Login("a+b", "ml101-gpu")),  # the last separator: a name holding it still works
        ("alice+gpu", "", Login("alice+gpu")),  # off, for a lab whose names hold it
        ("alice@uni.edu", "+", Login("alice@uni.edu")),
    ],
    ids=["plain", "profile", "name-holds-separator", "separator-off", "email"],
)
def test_login_names(name, separator, login):
    assert parse_login(name, separator) == login


@pytest.mark.parametrize("name", ["alice+", "+gpu", "alice+gp u", ""])
def test_bad_login_names_are_refused(name):
    with pytest.raises(LoginRefused):
        parse_login(name)


def test_the_profile_from_the_name_or_setenv_and_both_only_when_they_agree():
    assert choose_profile(Login("alice")) == ""
    assert choose_profile(Login("alice"), "gpu") == "gpu"
    assert choose_profile(Login("alice", "gpu"), "") == "gpu"
    assert choose_profile(Login("alice", "gpu"), "gpu") == "gpu"
    with pytest.raises(LoginRefused, match="two profiles asked"):
        choose_profile(Login("alice", "gpu"), "cpu")
    with pytest.raises(LoginRefused, match="not a profile"):
        choose_profile(Login("alice"), "../etc")


# --- tokens


def model(name="alice", scopes=("access:servers!user=alice",), kind="user", **more):
    return {"kind": kind, "name": name, "scopes": list(scopes), **more}


def test_a_users_own_token_reaching_their_server_logs_in():
    assert judge_token(model(), "alice").owner == "alice"
    assert judge_token(model(scopes=["access:servers!server=alice/"]), "alice").as_other is False


@pytest.mark.parametrize(
    "answer, admin_access, why",
    [
        (None, False, "not a valid token"),
        (model(kind="service", name="gpu-culler"), False, "a token of the service 'gpu-culler'"),
        (model(name="bob", scopes=["access:servers!user=bob"]), False, r"a token of another user \(bob\)"),
        (model(scopes=["read:users:activity!user=alice"]), False, "without access to their server"),
        (model(name="ada", scopes=["access:servers"], admin=True), False, r"another user \(ada\)"),
        (model(name="bob", scopes=["access:servers!user=bob"]), True, "do not reach alice's server"),
    ],
    ids=["invalid", "service", "other-user", "narrow-token", "admin-by-default", "other-with-admin-access"],
)
def test_tokens_that_do_not_log_in(answer, admin_access, why):
    with pytest.raises(LoginRefused, match=why):
        judge_token(answer, "alice", admin_access)


def test_admin_access_lets_a_token_reaching_the_server_in_as_another():
    decision = judge_token(model(name="ada", scopes=["access:servers"], admin=True), "alice", admin_access=True)
    assert (decision.owner, decision.as_other) == ("ada", True)
    teacher = model(name="tom", scopes=["access:servers!user=alice"])
    assert judge_token(teacher, "alice", admin_access=True).as_other


# --- failed logins


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_failed_logins_are_limited_per_user_and_per_address_over_a_window():
    clock = Clock()
    limits = LoginLimits(Limit(3, 60), Limit(5, 60), clock)
    for _ in range(3):
        assert limits.refusal("alice", "10.0.0.1") == ""
        limits.failed("alice", "10.0.0.1")
    assert limits.refusal("alice", "10.0.0.9") == "too many failed logins for user alice (3 in 60 s)"
    assert limits.refusal("bob", "10.0.0.1") == ""  # the address has 3 of its 5
    limits.failed("bob", "10.0.0.1")
    limits.failed("carol", "10.0.0.1")
    assert limits.refusal("dave", "10.0.0.1") == "too many failed logins for address 10.0.0.1 (5 in 60 s)"
    assert limits.refusal("dave", "10.0.0.2") == ""
    clock.now += 61  # the window slid past them
    assert limits.refusal("alice", "10.0.0.1") == ""
    assert ("user", "alice") not in limits._failures  # forgotten once looked at


def test_no_limit_when_off_and_memory_bounded():
    limits = LoginLimits(Limit(0, 60), Limit(0, 60), Clock(), max_keys=10)
    for i in range(100):
        limits.failed(f"user{i}", f"10.0.0.{i}")
    assert limits.refusal("user99", "10.0.0.99") == ""
    assert len(limits._failures) == 10
    assert ("user", "user99") in limits._failures  # the most recent kept


# --- forwards

LAB = ServerAddress(addresses=("10.213.0.7",), hostname="c0ffee", host_network=False, port=8888)
HOST = ServerAddress(addresses=(), hostname="gpu-host", host_network=True, port=47321)


@pytest.mark.parametrize(
    "host, port, server, target",
    [
        ("localhost", 8888, LAB, "127.0.0.1"),
        ("127.0.0.1", 8080, LAB, "127.0.0.1"),
        ("127.1.2.3", 8080, LAB, "127.0.0.1"),
        ("::1", 8080, LAB, "::1"),
        ("[::1]", 8080, LAB, "::1"),
        ("LOCALHOST.", 22, LAB, "127.0.0.1"),
        ("10.213.0.7", 8888, LAB, "10.213.0.7"),
        ("c0ffee", 5000, LAB, "c0ffee"),
        ("localhost", 47321, HOST, "127.0.0.1"),
    ],
)
def test_forwards_inside_ones_own_server(host, port, server, target):
    assert forward_target(host, port, server) == target


@pytest.mark.parametrize(
    "host, port, server",
    [
        ("10.213.0.8", 8888, LAB),  # another student's server
        ("10.213.0.1", 8081, LAB),  # the hub's host, on the lab network
        ("172.17.0.1", 22, LAB),
        ("gpu-host", 22, LAB),
        ("example.org", 80, LAB),
        ("0.0.0.0", 8888, LAB),
        ("localhost", 0, LAB),
        ("localhost", 8081, HOST),  # on the host's network, loopback is the host's: only the server's port
        ("gpu-host", 22, HOST),
    ],
)
def test_forwards_elsewhere_are_refused(host, port, server):
    with pytest.raises(ForwardRefused):
        forward_target(host, port, server)


# --- what runs in the container


def test_the_hubs_tokens_are_hidden_and_the_clients_locale_taken():
    env = [
        "JUPYTERHUB_API_TOKEN=t",
        "JPY_API_TOKEN=t",
        "JUPYTERHUB_CLIENT_ID=jupyterhub-user-alice",
        "JUPYTERHUB_OAUTH_SCOPES=[]",
        "JUPYTERHUB_USER=alice",
        "NVIDIA_VISIBLE_DEVICES=GPU-1",
        "WANDB_API_KEY=the course's",
    ]
    assert hidden_variables(env) == [
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
        "JUPYTERHUB_CLIENT_ID",
        "JUPYTERHUB_OAUTH_SCOPES",
    ]
    sent = {"LANG": "de_DE.UTF-8", "LC_ALL": "C", "GPUSPAWNER_PROFILE": "gpu", "LD_PRELOAD": "/x.so", "PATH": "/evil"}
    assert accepted_variables(sent) == {"LANG": "de_DE.UTF-8", "LC_ALL": "C"}


def run_here(argv, home: Path, **kwargs) -> subprocess.CompletedProcess:
    """A session's argv run on this machine, as the container would run it."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "JUPYTERHUB_API_TOKEN": "secret", "SHELL": "/bin/sh"}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, **kwargs)


def test_a_command_runs_in_the_home_with_its_status_and_without_the_token(tmp_path):
    argv = session_command("command", ["JUPYTERHUB_API_TOKEN"], command='pwd; echo "[$JUPYTERHUB_API_TOKEN]"; exit 7')
    done = run_here(argv, tmp_path, text=True)
    assert (done.stdout, done.returncode) == (f"{tmp_path}\n[]\n", 7)


def test_a_shell_reads_its_commands(tmp_path):
    done = run_here(session_command("shell"), tmp_path, input=b"echo $((6*7))\n")
    assert done.stdout == b"42\n"


def test_sftp_runs_the_first_sftp_server_found_else_says_there_is_none(tmp_path):
    """The script's search, on paths of this test's own (this machine's may or may not have one)."""

    def sftp_argv(paths):
        return [a.replace(" ".join(SFTP_SERVER_PATHS), " ".join(map(str, paths))) for a in session_command("sftp")]

    fake = tmp_path / "sftp-server"
    fake.write_text("#!/bin/sh\necho fake sftp-server as $(id -un)\n")
    fake.chmod(0o755)
    found = run_here(sftp_argv([tmp_path / "missing", fake]), tmp_path, text=True)
    assert (found.returncode, found.stdout.strip()) == (0, f"fake sftp-server as {getpass.getuser()}")
    none = run_here(sftp_argv([tmp_path / "missing"]), tmp_path, text=True)
    assert (none.returncode, none.stderr.strip()) == (127, NO_SFTP)


# --- the direct line (sftp's bytes on a connection of their own)


def echo_server(folder: Path) -> Path:
    """A stand-in for sftp-server: it copies its stdin to its stdout."""
    fake = folder / "sftp-server"
    fake.write_text("#!/bin/sh\nexec cat\n")
    fake.chmod(0o755)
    return fake


def direct_session(folder: Path, host: str) -> subprocess.Popen:
    """An sftp session asked for the direct line on ``host``, run here as the container would run it."""
    fake = echo_server(folder)
    argv = [a.replace(" ".join(SFTP_SERVER_PATHS), str(fake)) for a in session_command("sftp", host=host)]
    env = {"PATH": os.environ["PATH"], "HOME": str(folder)}
    return subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n and (piece := conn.recv(n - len(data))):
        data += piece
    return data


def test_the_direct_line_takes_only_the_connection_with_the_secret_and_gives_it_to_sftp_server(tmp_path):
    session = direct_session(tmp_path, "127.0.0.1")
    try:
        offer = parse_direct_offer(session.stderr.readline())
        assert offer is not None
        # A connection without the secret is closed, unanswered; the listener waits on.
        with socket.create_connection(("127.0.0.1", offer.port), timeout=10) as stranger:
            stranger.sendall(os.urandom(16))
            assert stranger.recv(64) == b""
        with socket.create_connection(("127.0.0.1", offer.port), timeout=10) as stranger:
            stranger.sendall(offer.answer)  # the other secret, the one the gateway checks
            assert stranger.recv(64) == b""
        with socket.create_connection(("127.0.0.1", offer.port), timeout=10) as gateway:
            gateway.sendall(offer.ask)
            assert read_exactly(gateway, 16) == offer.answer
            gateway.sendall(b"sftp packets " * 10000)
            gateway.shutdown(socket.SHUT_WR)
            assert read_exactly(gateway, 130000) == b"sftp packets " * 10000
            assert gateway.recv(1) == b""  # sftp-server ended with its input
            # Nothing listens any more.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", offer.port), timeout=10)
        assert session.wait(10) == 0
        assert session.stdout.read() == b""  # not a byte through the exec's own stdout
    finally:
        session.kill()


def test_the_direct_line_runs_sftp_server_on_stdin_and_stdout_when_the_gateway_says_so(tmp_path):
    session = direct_session(tmp_path, "127.0.0.1")
    assert parse_direct_offer(session.stderr.readline()) is not None
    out, err = session.communicate(b"\nsftp packets", timeout=10)  # the line the gateway sends when it cannot connect
    assert (session.returncode, out, err) == (0, b"sftp packets", b"")


def test_an_address_the_server_cannot_listen_on_means_stdin_and_stdout(tmp_path):
    session = direct_session(tmp_path, "198.51.100.7")  # not this machine's
    out, err = session.communicate(b"sftp packets", timeout=10)
    assert (session.returncode, out, err) == (0, b"sftp packets", DIRECT_STDIO)


def test_a_listener_nobody_connects_to_ends(tmp_path):
    argv = [sys.executable, "-I", "-c", DIRECT_LINE, "127.0.0.1", str(echo_server(tmp_path)), "0.5"]
    listener = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert listener.wait(10) == 1
        said = listener.stderr.read().splitlines()
        assert parse_direct_offer(said[0]) is not None
        assert said[1] == b"gpuspawner: the SSH gateway did not connect to the sftp server"
    finally:
        listener.kill()


def test_the_gateways_side_of_the_direct_line(tmp_path):
    session = direct_session(tmp_path, "127.0.0.1")
    offer = parse_direct_offer(session.stderr.readline())

    async def talk():
        line = await direct.connect("127.0.0.1", offer)
        heard = bytearray()
        line.attach(lambda which, data: heard.extend(data), lambda full: None)
        line.write(b"x" * 3_000_000)
        line.close_stdin()
        await asyncio.wait_for(line.ended, 10)
        return bytes(heard)

    assert asyncio.run(talk()) == b"x" * 3_000_000
    assert session.wait(10) == 0


def test_the_gateway_takes_no_line_from_a_listener_without_the_answer():
    impostor = socket.create_server(("127.0.0.1", 0))
    offer = parse_direct_offer(b"gpuspawner-direct %d %s %s" % (impostor.getsockname()[1], b"a" * 32, b"b" * 32))

    def answer_wrong():
        conn, _ = impostor.accept()
        with conn:
            read_exactly(conn, 16)
            conn.sendall(b"c" * 16)
            conn.recv(1)

    threading.Thread(target=answer_wrong, daemon=True).start()
    assert asyncio.run(direct.connect("127.0.0.1", offer)) is None
    impostor.close()
    # Nothing listening: no line, at once.
    assert asyncio.run(direct.connect("127.0.0.1", offer, timeout=5)) is None


@pytest.mark.parametrize(
    "said",
    [
        b"",
        b"gpuspawner-stdio\n",
        b"gpuspawner-direct 0 " + b"a" * 32 + b" " + b"b" * 32,
        b"gpuspawner-direct 70000 " + b"a" * 32 + b" " + b"b" * 32,
        b"gpuspawner-direct 22 " + b"a" * 30 + b" " + b"b" * 32,
        b"gpuspawner-direct 22 " + b"x" * 32 + b" " + b"b" * 32,
        b"gpuspawner-direct 22 " + b"a" * 32,
        b"gpuspawner: this server's image has no sftp-server",
    ],
)
def test_what_is_not_a_direct_lines_offer(said):
    assert parse_direct_offer(said) is None


def test_a_direct_lines_offer():
    offer = parse_direct_offer(b"gpuspawner-direct 40123 " + b"0a" * 16 + b" " + b"ff" * 16 + b"\n")
    assert (offer.port, offer.ask, offer.answer) == (40123, b"\n" * 16, b"\xff" * 16)


def test_the_forward_relay_connects_and_copies_both_ways(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    done = run_here(session_command("forward", host="127.0.0.1", port=port), tmp_path, input=b"hello " * 50000)
    assert done.stderr == CONNECTED
    assert done.stdout == b"HELLO " * 50000
    listener.close()
    refused = run_here(session_command("forward", host="127.0.0.1", port=port), tmp_path)
    assert refused.returncode == 1 and refused.stderr.startswith(b"refused: Connection refused")


def test_an_unknown_session_kind_is_an_error():
    with pytest.raises(ValueError):
        session_command("x11")


# --- progress


def test_progress_events_and_refusals_as_the_student_reads_them():
    stream = ['data: {"progress": 2, "message": "Preparing One GPU"}', "", "data: not json", ": keepalive"]
    (event,) = parse_events(stream)
    assert progress_line(event) == "[  2%] Preparing One GPU"
    assert progress_line({"message": "Server requested"}) == "Server requested"
    assert refusal_message(503, '{"status": 503, "message": "One GPU: all 2 GPUs are taken."}') == (
        "One GPU: all 2 GPUs are taken."
    )
    assert refusal_message(502, "") == "the hub answered 502"


# --- keys


def keygen(path: Path, *args: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", "me@laptop", "-f", str(path), *args], check=True)
    return path.with_suffix(".pub").read_text()


def test_keys_are_parsed_and_odd_ones_refused(tmp_path):
    key, comment = parse_key(keygen(tmp_path / "ed", "-t", "ed25519"))
    assert key.algorithm == b"ssh-ed25519" and comment == "me@laptop"
    cases = {
        "": "no key given",
        (tmp_path / "ed").read_text(): "private key",
        keygen(tmp_path / "rsa", "-t", "rsa", "-b", "1024"): "1024 bits is too weak",
        "ssh-ed25519 AAAAnot-base64": "not an OpenSSH public key line",
        'command="rm -rf ~" ' + (tmp_path / "ed.pub").read_text(): "not an OpenSSH public key line",
        "ssh-ed25519-cert-v01@openssh.com AAAA x": "certificates",
        (tmp_path / "ed.pub").read_text() * 2: "one key at a time",
    }
    for text, why in cases.items():
        with pytest.raises(KeyRefused, match=why):
            parse_key(text)


def test_the_key_store_keeps_each_users_keys_in_a_file_of_mode_600(tmp_path):
    path = tmp_path / "keys.json"
    store = KeyStore(str(path))
    line = keygen(tmp_path / "a", "-t", "ed25519")
    entry = store.add("alice", line.replace("me@laptop", "me@laptop \x1b[31mred"))
    assert entry.comment == "me@laptop [31mred"  # no terminal escapes on the page or in the log
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyRefused, match="registered already"):
        store.add("alice", line)
    key = asyncssh.import_public_key(line)
    again = KeyStore(str(path))  # as after a restart
    assert again.find("alice", key) == entry
    assert again.find("bob", key) is None  # alice's key is not bob's
    assert again.remove("alice", entry.fingerprint) and not again.remove("alice", entry.fingerprint)
    assert KeyStore(str(path)).keys_of("alice") == []


def test_a_user_has_at_most_max_keys(tmp_path):
    store = KeyStore(str(tmp_path / "keys.json"))
    for i in range(MAX_KEYS):
        store.add("alice", keygen(tmp_path / f"k{i}", "-t", "ed25519"))
    with pytest.raises(KeyRefused, match=f"{MAX_KEYS} keys already"):
        store.add("alice", keygen(tmp_path / "one-more", "-t", "ed25519"))


def test_a_broken_keys_file_stops_the_gateway_saying_which(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(KeyRefused, match="cannot read the keys file"):
        KeyStore(str(path))


# --- the host key


def test_the_host_key_is_made_once_with_mode_600_and_kept(tmp_path):
    path = str(tmp_path / "host-key")
    made = host_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert host_key(path).public_data == made.public_data
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        host_key(path)


# --- logins, with a hub that answers from a table


class FakeHub:
    def __init__(self, tokens: dict):
        self.tokens = tokens

    async def token_owner(self, token):
        return self.tokens.get(token)


class FakeConn:
    def __init__(self, address="10.0.0.1"):
        self.address, self.port = address, 5555
        self.offered, self.refused_for, self.authenticated, self.accepted = [], "", False, None

    where = Connection.where

    def accept(self, login, method, credential, by=""):
        self.accepted = (login, method, credential, by)


def gateway(tmp_path, tokens, caplog, **kwargs):
    import logging

    log = logging.getLogger("test-ssh-audit")
    caplog.set_level(logging.INFO, logger="test-ssh-audit")
    limits = LoginLimits(Limit(2, 600), Limit(100, 600), Clock())
    return Gateway(
        FakeHub(tokens), None, KeyStore(str(tmp_path / "k.json")), limits, log=log, audit=Audit(log), **kwargs
    )


def test_password_logins_are_audited_counted_and_limited(tmp_path, caplog):
    tokens = {"good": model(token_id="a7"), "bobs": model(name="bob", scopes=["access:servers!user=bob"])}
    gw = gateway(tmp_path, tokens, caplog)
    conn = FakeConn()
    assert asyncio.run(gw.check_password(conn, "alice+gpu", "good"))
    assert conn.accepted == (Login("alice", "gpu"), "token", "token_id=a7", "")
    assert not asyncio.run(gw.check_password(conn, "alice", "bobs"))
    assert not asyncio.run(gw.check_password(conn, "alice", "nonsense"))
    # Two failures for alice: now even her good token is refused, and said once.
    assert not asyncio.run(gw.check_password(conn, "alice", "good"))
    assert not asyncio.run(gw.check_password(conn, "alice", "good"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "ssh login failed: user=alice method=token reason='a token of another user (bob)' source=10.0.0.1:5555",
        "ssh login failed: user=alice method=token reason='not a valid token of this hub' source=10.0.0.1:5555",
        "ssh login refused: user=alice method=token reason='too many failed logins for user alice (2 in 600 s)'"
        " source=10.0.0.1:5555",
    ]
    assert not any("good" in line or "bobs" in line for line in lines)  # never a token in the log


def test_a_key_login_that_took_no_key_is_one_failure_when_the_connection_ends(tmp_path, caplog):
    gw = gateway(tmp_path, {}, caplog)
    registered = keygen(tmp_path / "mine", "-t", "ed25519")
    gw.keys.add("alice", registered)
    other = asyncssh.import_public_key(keygen(tmp_path / "other", "-t", "ed25519"))
    conn = FakeConn()
    assert not gw.check_key(conn, "alice", other)
    assert gw.check_key(conn, "alice", asyncssh.import_public_key(registered))
    conn.authenticated = True
    gw.login_ended(conn)  # logged in after all: no failure
    stranger = FakeConn("10.0.0.2")
    assert not gw.check_key(stranger, "alice", other)
    assert not gw.check_key(stranger, "alice+gpu", other)
    gw.login_ended(stranger)
    assert gw.limits.refusal("alice", "10.0.0.3") == ""  # one failure of two
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        "ssh login failed: user=alice method=publickey reason='no registered key'"
        f" offered={other.get_fingerprint('sha256')} source=10.0.0.2:5555"
    )


# --- the session's side of the direct line


class SaidFirst:
    """An exec stream whose process said ``said`` on stderr first; what the gateway writes to its stdin is kept."""

    def __init__(self, said: bytes, stdout: bytes = b""):
        self.output = [(STDOUT, stdout)] if stdout else []
        self.output += [(STDERR, said[:5]), (STDERR, said[5:])] if said else []
        self.stdin = b""

    async def read(self):
        return self.output.pop(0) if self.output else (0, b"")

    def write(self, data):
        self.stdin += data


class Channel:
    def __init__(self):
        self.stdout, self.stderr = b"", b""

    def write(self, data):
        self.stdout += data

    def write_stderr(self, data):
        self.stderr += data


def direct_line_of(said: bytes, host="127.0.0.1", stdout=b""):
    session = Session(lone_gateway(), FakeConn())
    session.chan, stream = Channel(), SaidFirst(said, stdout)

    async def line():
        taken = await session._direct_line(stream, host)
        if taken is not None:
            taken.close()
        return taken

    return asyncio.run(line()), stream, session.chan, session.gateway


def test_a_session_takes_the_direct_line_its_listener_offers(tmp_path):
    listener = direct_session(tmp_path, "127.0.0.1")
    try:
        said = listener.stderr.readline()
        line, stream, chan, _ = direct_line_of(said, stdout=b"early")
        assert isinstance(line, direct.DirectLine)
        assert (stream.stdin, chan.stdout, chan.stderr) == (b"", b"early", b"")
    finally:
        listener.kill()


def test_a_session_with_no_way_to_its_listener_tells_it_to_use_the_exec(tmp_path):
    nobody = socket.create_server(("127.0.0.1", 0))
    port = nobody.getsockname()[1]
    nobody.close()
    line, stream, chan, gw = direct_line_of(b"gpuspawner-direct %d %s %s\n" % (port, b"ab" * 16, b"cd" * 16))
    assert (line, stream.stdin, chan.stderr) == (None, b"\n", b"")
    assert gw.direct_line_to(server_at(addresses=("127.0.0.1",))) == ""  # not tried again for a while


def lone_gateway(**kwargs):
    import logging

    return Gateway(None, None, None, None, log=logging.getLogger("t"), audit=None, **kwargs)


def server_at(**address):
    return ServerContainer("id", "jupyter-alice", "1000", (), ServerAddress(**address))


def test_the_address_a_direct_line_connects_to():
    gw = lone_gateway()
    assert gw.direct_line_to(server_at(addresses=("10.213.0.5", "172.18.0.2"))) == "10.213.0.5"
    assert gw.direct_line_to(server_at(addresses=())) == ""  # through the engine
    assert gw.direct_line_to(server_at(addresses=(), host_network=True)) == ""
    assert lone_gateway(sftp_direct=False).direct_line_to(server_at(addresses=("10.213.0.5",))) == ""


def test_a_failed_direct_line_sends_that_servers_sessions_through_the_engine_for_a_while():
    gw, server = lone_gateway(), server_at(addresses=("10.213.0.5",))
    gw.direct_line_failed("10.213.0.5", now=1000)
    assert gw.direct_line_to(server, now=1000 + NO_LINE_FOR - 1) == ""
    assert gw.direct_line_to(server_at(addresses=("10.213.0.6",)), now=1001) == "10.213.0.6"  # others still try
    assert gw.direct_line_to(server, now=1000 + NO_LINE_FOR) == "10.213.0.5"
    gw.direct_line_failed("10.213.0.6", now=5000)  # and forgets the old failures
    assert list(gw._no_line) == ["10.213.0.6"]


def test_a_session_whose_server_runs_sftp_on_the_exec_or_not_at_all(tmp_path):
    line, stream, chan, _ = direct_line_of(DIRECT_STDIO)  # no python3 in the image
    assert (line, stream.stdin, chan.stderr) == (None, b"", b"")
    line, stream, chan, _ = direct_line_of(NO_SFTP.encode() + b"\n")  # then the exec ends: its status is 127
    assert (line, stream.stdin, chan.stderr) == (None, b"", NO_SFTP.encode() + b"\n")


# --- the engine's address, and a container as the gateway reads it


class FakeClient:
    api_version = "1.41"
    base_url = "https://gpu-host:2376"
    verify = False
    cert = None


def test_engine_addresses():
    class Adapter:
        socket_path = "/run/docker.sock"

    unix = FakeClient()
    unix._custom_adapter = Adapter()
    assert engine_address(unix).unix == "/run/docker.sock"
    tls = engine_address(FakeClient())
    assert (tls.host, tls.port, tls.ssl is not None) == ("gpu-host", 2376, True)


def test_a_container_as_the_gateway_reads_it():
    inspected = {
        "Id": "c0ffee",
        "Name": "/jupyter-alice",
        "Config": {
            "User": "1000",
            "Hostname": "c0ffee12",
            "Env": ["JUPYTERHUB_SERVICE_URL=http://0.0.0.0:8888/user/alice/", "JUPYTERHUB_USER=alice"],
        },
        "HostConfig": {"NetworkMode": "gpuspawner-lab"},
        "NetworkSettings": {"Networks": {"gpuspawner-lab": {"IPAddress": "10.213.0.7"}}},
    }
    server = server_container(inspected)
    assert (server.name, server.user) == ("jupyter-alice", "1000")
    assert server.address == ServerAddress(("10.213.0.7",), "c0ffee12", False, 8888)
    inspected["HostConfig"]["NetworkMode"] = "host"
    inspected["Config"]["Env"][0] = "JUPYTERHUB_SERVICE_URL=http://127.0.0.1:47321/user/alice/"
    assert server_container(inspected).address == ServerAddress((), "c0ffee12", True, 47321)


# --- the service in the hub's config


def test_the_gateway_service_has_three_scopes_and_every_user_its_page(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/docker.sock")
    c = Config()
    written = services.add_ssh_gateway(c, "/etc/jupyterhub/jupyterhub_config.py", port=2022, args=["--x=1"])
    assert written == {
        "name": "gpu-ssh",
        "url": "http://127.0.0.1:10102",
        "command": [
            sys.executable,
            "-m",
            "gpuspawner.ssh",
            "-f",
            "/etc/jupyterhub/jupyterhub_config.py",
            "--port=2022",
            "--ip=",
            "--x=1",
        ],
        "environment": {"DOCKER_HOST": "unix:///run/docker.sock"},
        "oauth_no_confirm": True,
        "display": True,
    }
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["gpu-ssh-service"]["scopes"] == ["read:servers", "start:servers", "users:activity"]
    assert all(s in scope_definitions for s in roles["gpu-ssh-service"]["scopes"])
    # Every user's (JupyterHub 6's extra_user_scopes: the default user role keeps "self").
    assert c.JupyterHub.extra_user_scopes == {"access:services!service=gpu-ssh"} and "user" not in roles
    # Twice changes nothing; an admin's own user role keeps its scopes.
    services.add_ssh_gateway(c, "/etc/jupyterhub/jupyterhub_config.py", port=2022, args=["--x=1"])
    assert len(c.JupyterHub.services) == 1 and len(c.JupyterHub.load_roles) == 1
    c2 = Config()
    c2.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "read:groups"]}]
    services.add_ssh_gateway(c2, "jupyterhub_config.py", admin_access=True)
    assert c2.JupyterHub.load_roles[0]["scopes"] == ["self", "read:groups", "access:services!service=gpu-ssh"]
    assert "--admin-access" in c2.JupyterHub.services[0]["command"]


def test_the_profile_separator_is_one_harmless_character():
    app = SSHGateway()
    app.profile_separator = "%"
    for bad in ("a", "@", "++", ":"):
        with pytest.raises(Exception, match="profile_separator"):
            app.profile_separator = bad


def test_image_check_knows_from_the_hubs_config_file_whether_it_runs_the_gateway(tmp_path):
    from gpuspawner.cli.image_check import hub_context
    from gpuspawner.config import load_hub_config

    path = tmp_path / "jupyterhub_config.py"
    path.write_text(
        'c.JupyterHub.spawner_class = "gpu"\nfrom gpuspawner import services\nservices.add_culler(c, __file__)\n'
    )
    assert not services.runs_ssh_gateway(load_hub_config(str(path)).spawner.config)
    path.write_text(path.read_text() + "services.add_ssh_gateway(c, __file__)\n")
    assert hub_context(load_hub_config(str(path))).ssh_gateway
    assert not services.runs_ssh_gateway(Config())


# --- the exec stream: Docker's frames, the engine's connection, and asyncssh's connections tuned


def frame(which: int, payload: bytes) -> bytes:
    return bytes([which, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_docker_frames_are_parsed_from_reads_that_end_anywhere():
    frames = [(1, b"out one "), (1, b"out two "), (2, b"err"), (1, b""), (1, os.urandom(70000)), (2, b"!")]
    stream = b"".join(frame(which, payload) for which, payload in frames)
    want = [(1, b"out one out two "), (2, b"err"), (1, frames[4][1]), (2, b"!")]
    assert Frames().feed(stream) == want  # one read: each run of a stream's frames joined
    for size in (1, 3, 7, 8, 9, 4096, 65536):
        parser, got = Frames(), []
        for start in range(0, len(stream), size):
            for which, data in parser.feed(stream[start : start + size]):
                if got and got[-1][0] == which:
                    got[-1] = (which, got[-1][1] + bytes(data))
                else:
                    got.append((which, bytes(data)))
        assert got == want, size


async def fake_engine(path: Path, answer: bytes, seen: list):
    """An engine on a Unix socket that takes one exec's start: ``answer``, then (for a 101)
    an stderr frame, and each input echoed in a stdout frame until the input ends."""

    async def handle(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        length = next(int(h.split(b":")[1]) for h in seen[-1].split(b"\r\n") if h.startswith(b"Content-Length"))
        seen.append(await reader.readexactly(length))
        writer.write(answer)
        if answer.startswith(b"HTTP/1.1 101"):
            writer.write(frame(2, b"started\n"))
            while data := await reader.read(65536):
                writer.write(frame(1, data))
            writer.write(frame(1, b"bye"))
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, str(path))


def test_an_exec_stream_reads_then_hands_output_on_and_half_closes(tmp_path):
    async def main():
        seen = []
        server = await fake_engine(tmp_path / "engine.sock", b"HTTP/1.1 101 UPGRADED\r\n\r\n", seen)
        address = EngineAddress(unix=str(tmp_path / "engine.sock"), api_version="1.41")
        stream = await open_exec_stream(address, "abc123", tty=False)
        assert seen[0].startswith(b"POST /v1.41/exec/abc123/start HTTP/1.1\r\n")
        assert json.loads(seen[1]) == {"Detach": False, "Tty": False}
        assert await stream.read() == (STDERR, b"started\n")
        got = []
        stream.attach(lambda which, data: got.append((which, data)), lambda full: None)
        payload = os.urandom(300_000)
        stream.write(payload)
        stream.close_stdin()
        await asyncio.wait_for(stream.ended, 10)
        assert b"".join(bytes(data) for which, data in got if which == STDOUT) == payload + b"bye"
        assert await stream.read() == (0, b"")
        server.close()

    asyncio.run(main())


def test_an_exec_the_engine_refuses_is_an_error_with_its_message(tmp_path):
    async def main():
        body = b'{"message":"No such exec instance: abc123"}'
        answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        server = await fake_engine(tmp_path / "engine.sock", answer, [])
        with pytest.raises(EngineError, match="the engine refused exec abc123: 404 No such exec instance: abc123"):
            await open_exec_stream(EngineAddress(unix=str(tmp_path / "engine.sock")), "abc123", tty=False)
        server.close()

    asyncio.run(main())


class Recorded:
    """What asyncssh's connection is asked to send and given to read, before and after :func:`tune`."""

    def __init__(self):
        self.sent, self.received = [], []

    def send_packet(self, pkttype, *args, handler=None):
        self.sent.append((pkttype, args))

    def data_received(self, data, datatype=None):
        self.received.append(bytes(data))


def test_tuned_connections_send_no_empty_ignore_and_read_in_slices():
    conn = Recorded()
    assert tune(conn)
    conn.send_packet(MSG_IGNORE, b"\0\0\0\0")  # asyncssh's, before each packet it sends: dropped
    conn.send_packet(MSG_IGNORE, b"\0\0\0\5hello")  # any other: sent
    conn.send_packet(94, b"\0\0\0\1", b"data", handler=None)
    assert conn.sent == [(MSG_IGNORE, (b"\0\0\0\5hello",)), (94, (b"\0\0\0\1", b"data"))]
    big = os.urandom(3 * INPUT_SLICE + 5)
    conn.data_received(b"small")
    conn.data_received(big)
    assert conn.received[0] == b"small"
    assert [len(data) for data in conn.received[1:]] == [INPUT_SLICE] * 3 + [5]
    assert b"".join(conn.received[1:]) == big
    assert not tune(object())  # nothing to tune: left as it is


def test_tuned_asyncssh_connections_carry_data_both_ways_with_no_empty_ignore(tmp_path):
    """On the installed asyncssh: its connection still has what tune() changes, and works tuned."""
    sent, read = [], []

    class Echo(asyncssh.SSHServerSession):
        def connection_made(self, chan):
            self.chan = chan

        def exec_requested(self, command):
            return True

        def data_received(self, data, datatype):
            self.chan.write(data)

        def eof_received(self):
            self.chan.exit(0)

    class Server(asyncssh.SSHServer):
        def connection_made(self, conn):
            send_packet, data_received = conn.send_packet, conn.data_received

            def record_sent(pkttype, *args, **kwargs):
                sent.append(pkttype)
                return send_packet(pkttype, *args, **kwargs)

            def record_read(data, *args):
                read.append(len(data))
                return data_received(data, *args)

            conn.send_packet, conn.data_received = record_sent, record_read
            assert tune(conn)

        def begin_auth(self, username):
            return False

        def session_requested(self):
            return Echo()

    async def main():
        server = await asyncssh.create_server(
            Server, "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], encoding=None
        )
        port = server.sockets[0].getsockname()[1]
        payload = os.urandom(2_000_000)
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="x") as conn:
            result = await conn.run("echo", input=payload, encoding=None)
        server.close()
        assert result.stdout == payload and result.exit_status == 0

    asyncio.run(main())
    assert MSG_IGNORE not in sent and sent.count(MSG_CHANNEL_DATA) >= 2_000_000 // 32768
    assert max(read) <= INPUT_SLICE


def test_only_counter_and_aead_ciphers_can_be_offered():
    from asyncssh.encryption import get_default_encryption_algs

    assert {name.encode() for name in CIPHERS} <= set(get_default_encryption_algs())
    app = SSHGateway()
    assert set(app.ciphers) <= set(CIPHERS)
    app.ciphers = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    for bad in (["aes128-cbc"], ["arcfour"], [], ["aes128-gcm@openssh.com", "3des-cbc"]):
        with pytest.raises(Exception, match="ciphers .*: one or more of chacha20-poly1305@openssh.com"):
            app.ciphers = bad
