"""The SSH gateway end to end: Debian's OpenSSH client (ssh, scp, sftp) against the gateway
run by a real hub as a managed service, the real proxy, and the test bed's engine.

One hub for the module, one simulated GPU, two profiles on the test bed's image with
sftp-server (``read_testbed("image-ssh")``). The servers are on a lab network of their
own, so that a forward to another student's server or to the hub's host is a real one.
Alice gets the GPU (started through the REST API), carol is started by her first ``ssh``,
bob is refused for lack of a GPU. Last, the hub restarts with a Jupyter-idle culler of a
few seconds: the gateway keeps its host key, and an open session keeps carol's server.

The client is driven by ``tests/ssh_client.py``: a token goes in as the password through
``SSH_ASKPASS``, so nothing beyond openssh-client is needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import textwrap
import time

import pytest
import requests

from gpuspawner.ssh.policy import HIDDEN_VARIABLES, parse_direct_offer, session_command

from .realhub import free_port, read_testbed, running_hub, simulated_gpus, wait_for
from .ssh_client import OpenSSH, answers, listens, new_key, set_size

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
GPU = "GPU-55500000-0000-4000-8000-000000000000"
IDLE_TIMEOUT = 5  # the Jupyter-idle culler's, after the restart
SESSION = 9  # seconds an SSH session stays open: past it, with the culler's rounds every second


def user(name: str) -> str:
    return f"{name}-{RUN}"


ALICE, BOB, CAROL, ADMIN = (user(n) for n in ("alice", "bob", "carol", "ada"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    image = read_testbed("image-ssh")
    folder = tmp_path_factory.mktemp("ssh")
    port, page_port = free_port(), free_port()
    small = {"image": image, "mem_limit": "512M", "cpu_limit": 1}
    config = f"""
    c.GPUSpawner.gpus = {simulated_gpus([GPU])!r}
    c.GPUSpawner.profiles = [
        dict(slug="cpu", display_name="CPU only", **{small!r}),
        dict(slug="gpu", display_name="One GPU", gpus=1, **{small!r}),
    ]
    c.GPUSpawner.home_volume_name = "jupyterhub-user-{{username}}"
    c.Authenticator.admin_users = {{{ADMIN!r}}}
    from gpuspawner import services
    services.add_ssh_gateway(
        c, __file__, port={port}, ip="127.0.0.1", url="http://127.0.0.1:{page_port}", args=["--activity-interval=1"]
    )
    """
    with running_hub(folder / "hub", config, RUN) as hub:
        gw = OpenSSH(hub, port, folder)
        wait_for(lambda: answers(port), 30, "the SSH gateway listens", details=hub.log_tail)
        gw.trust_host_key()
        r = hub.start_server(ALICE, "gpu")
        assert r.status_code in (201, 202), r.text
        yield gw


def test_a_token_logs_in_and_a_command_runs_in_the_students_server(gateway):
    gateway.hub.wait_ready(ALICE)
    unit = gateway.hub.visible_devices(ALICE)
    assert unit == GPU
    done = gateway.ssh(
        ALICE,
        'echo "$NVIDIA_VISIBLE_DEVICES"; id -un; pwd; env | grep -c -e JUPYTERHUB_API_TOKEN -e JPY_API_TOKEN; exit 3',
        token=gateway.token(ALICE),
    )
    lines = done.stdout.splitlines()
    # The server's unit, as the image's user in the home, without the hub's tokens; the exit status comes through.
    assert lines == [GPU, "jovyan", "/home/jovyan", "0"], (done.stdout, done.stderr)
    assert done.returncode == 3
    assert gateway.ssh(ALICE, "exit 0", token=gateway.token(ALICE)).returncode == 0
    lines = [a for a in gateway.audit() if f"ssh login ok: user={ALICE} method=token token_id=" in a]
    assert len(lines) == 2 and all("source=127.0.0.1:" in a for a in lines), lines


def test_an_interactive_shell_has_a_terminal_that_follows_window_resizes(gateway):
    """A shell with a PTY (``ssh -tt``, no command) on a terminal of 33x111, then resized to 44x120."""
    shell, master = gateway.shell_on_a_terminal(ALICE, 33, 111, token=gateway.token(ALICE))
    seen = b""

    def read_until(text: bytes) -> bytes:
        nonlocal seen

        def found():
            nonlocal seen
            if select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 65536)
            return text in seen

        wait_for(found, 30, f"{text!r} on the terminal", every=0, details=lambda: seen.decode(errors="replace"))
        return seen

    try:
        os.write(master, b"tty; stty size; echo size-$((1+1))\n")
        read_until(b"size-2")
        assert b"/dev/pts/" in seen and b"33 111" in seen, seen
        set_size(master, 44, 120)
        shell.send_signal(signal.SIGWINCH)
        time.sleep(0.5)  # the window change goes to the gateway, then the engine
        os.write(master, b"stty size; exit 5\n")
        read_until(b"44 120")
        assert shell.wait(30) == 5
    finally:
        if shell.poll() is None:
            shell.kill()
        os.close(master)


def test_a_client_that_goes_away_leaves_no_process_behind(gateway):
    opts, env = gateway.options(gateway.token(ALICE))
    client = subprocess.Popen(
        ["ssh", *opts, "-p", str(gateway.port), f"{ALICE}@127.0.0.1", "sleep 3600"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    container = gateway.hub.container(ALICE)

    def sleeping() -> bool:
        return any("sleep 3600" in " ".join(p) for p in container.top()["Processes"])

    wait_for(sleeping, 30, "the command runs in the server")
    client.kill()  # no goodbye: the connection just drops
    client.wait()
    wait_for(lambda: not sleeping(), 15, "the command hung up on")


def test_wrong_tokens_other_users_and_unregistered_keys_are_refused(gateway):
    alice_token = gateway.token(ALICE)
    gateway.hub.ensure_user(BOB)
    wrong = gateway.ssh(ALICE, "true", token="not-a-token-" + secrets.token_hex(8))
    as_bob = gateway.ssh(BOB, "true", token=alice_token)  # alice's token, bob's name
    admin = gateway.ssh(ALICE, "true", token=gateway.token(ADMIN))  # an admin's: no way in by default
    key = new_key(gateway.folder / "unregistered")
    by_key = gateway.ssh(ALICE, "true", key=key)
    for done in (wrong, as_bob, admin, by_key):
        assert done.returncode == 255 and "Permission denied" in done.stderr, done
    audit = "\n".join(gateway.audit())
    assert f"ssh login failed: user={ALICE} method=token reason='not a valid token of this hub'" in audit
    assert f"ssh login failed: user={BOB} method=token reason='a token of another user ({ALICE})'" in audit
    assert f"ssh login failed: user={ALICE} method=token reason='a token of another user ({ADMIN})'" in audit
    # A key login fails when the connection closes with no key taken: logged then, once.
    key_failed = f"ssh login failed: user={ALICE} method=publickey reason='no registered key' offered=SHA256:"
    wait_for(lambda: any(key_failed in a for a in gateway.audit()), 10, "the failed key login logged")
    assert alice_token not in gateway.hub.log_text()


def test_a_key_registered_on_the_page_logs_in(gateway):
    key = new_key(gateway.folder / "alice")
    fingerprint = gateway.register_key(ALICE, key)  # through the page's API, with a token of hers
    # The page, through the hub's login (OAuth), in the hub's look, lists it.
    page = gateway.hub.login(ALICE).get(gateway.page, timeout=30)
    assert page.status_code == 200, page.text[:500]
    assert fingerprint in page.text and "/hub/static/css/style.min.css" in page.text
    assert f"ssh -p {gateway.port} {ALICE}@" in page.text
    keys_file = gateway.hub.workdir / "gpuspawner-ssh-keys.json"
    assert keys_file.stat().st_mode & 0o777 == 0o600

    done = gateway.ssh(ALICE, "echo in by key", key=key)
    assert (done.returncode, done.stdout) == (0, "in by key\n"), done.stderr
    assert any(f"ssh login ok: user={ALICE} method=publickey key={fingerprint}" in a for a in gateway.audit())
    # Alice's key is not bob's.
    assert gateway.ssh(BOB, "true", key=key).returncode == 255


def test_scp_round_trip_and_sftp_listing(gateway, tmp_path):
    token = gateway.token(ALICE)
    data = os.urandom(10 * 1000**2)
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "up.bin").write_bytes(data)
    up = gateway.scp(str(tmp_path / "up.bin"), f"{ALICE}@127.0.0.1:data.bin", token=token)
    assert up.returncode == 0, up.stderr
    inside = gateway.ssh(ALICE, "sha256sum data.bin", token=token)
    assert inside.stdout.split()[0] == digest
    down = gateway.scp(f"{ALICE}@127.0.0.1:data.bin", str(tmp_path / "down.bin"), token=token)
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256((tmp_path / "down.bin").read_bytes()).hexdigest() == digest

    listing = gateway.sftp(ALICE, "ls -l\n", gateway.folder / "alice")  # the key registered above
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"\s10000000\s.*data\.bin", listing.stdout), listing.stdout

    # Three copies at once, each on a line of its own: none gets another's bytes.
    files = {f"at-once-{i}.bin": os.urandom(3 * 1000**2) for i in range(3)}
    opts, env = gateway.options(token)
    copies = []
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        scp = ["scp", *opts, "-P", str(gateway.port), str(tmp_path / name), f"{ALICE}@127.0.0.1:{name}"]
        copies.append(subprocess.Popen(scp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    assert [copy.wait(120) for copy in copies] == [0, 0, 0], [copy.stderr.read() for copy in copies]
    sums = gateway.ssh(ALICE, "sha256sum " + " ".join(files), token=token).stdout.split()
    assert dict(zip(sums[1::2], sums[0::2])) == {n: hashlib.sha256(c).hexdigest() for n, c in files.items()}


def test_sftp_goes_by_its_direct_line_and_leaves_nothing_listening(gateway):
    """The sftp-server of an open sftp session reads and writes a TCP connection (the direct
    line), not the exec's pipes; the listener that took it is gone: only Jupyter listens in the
    server (and the engine's own DNS resolver on 127.0.0.11)."""
    opts, env = gateway.options(key=gateway.folder / "alice")
    session = subprocess.Popen(
        ["sftp", *opts, "-P", str(gateway.port), "-b", "-", f"{ALICE}@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    # From the engine's host: sftp-server makes itself undumpable, so not even the container's root may look.
    container = gateway.hub.container(ALICE)

    def sftp_server() -> int:
        top = container.top(ps_args="-eo pid,comm")
        return next((int(pid) for pid, comm in top["Processes"] if comm == "sftp-server"), 0)

    try:
        pid = wait_for(sftp_server, 30, "the sftp session's server runs")
        stdin, stdout = os.readlink(f"/proc/{pid}/fd/0"), os.readlink(f"/proc/{pid}/fd/1")
        assert stdin == stdout and stdin.startswith("socket:["), (stdin, stdout)
        listening = set()
        for table in ("tcp", "tcp6"):
            for row in open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                if state == "0A" and not local.startswith("0B00007F:"):
                    listening.add(int(local.rsplit(":", 1)[1], 16))
        assert listening == {8888}, listening
    finally:
        session.stdin.close()
        assert session.wait(30) == 0


def test_a_local_forward_reaches_the_servers_own_jupyter_port(gateway):
    local = free_port()
    opts, env = gateway.options(gateway.token(ALICE))
    tunnel = subprocess.Popen(
        ["ssh", *opts, "-p", str(gateway.port), "-N", "-o", "ExitOnForwardFailure=yes"]
        + ["-L", f"127.0.0.1:{local}:localhost:8888", f"{ALICE}@127.0.0.1"],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: listens(local), 30, "ssh -L listens", details=lambda: _stderr_if_done(tunnel))
        r = requests.get(f"http://127.0.0.1:{local}/user/{ALICE}/api", timeout=30)
        assert r.status_code == 200 and "version" in r.json(), r.text
    finally:
        tunnel.terminate()
        tunnel.wait(10)


def test_a_user_with_no_server_gets_one_started_with_its_progress(gateway):
    done = gateway.ssh(CAROL, "echo started", token=gateway.token(CAROL))
    assert (done.returncode, done.stdout) == (0, "started\n"), done.stderr
    said = done.stderr.splitlines()
    assert said[0] == f"gpuspawner: no server running for {CAROL}: starting one"
    assert "  [  2%] Preparing CPU only" in said
    assert re.match(rf"  \[100%\] Server ready at /user/{CAROL}/", said[-1]), said
    assert gateway.hub.server_model(CAROL)["user_options"] == {"profile": "cpu"}


def test_forwards_to_another_server_or_the_hubs_host_are_refused(gateway):
    carol_ip = gateway.hub.container(CAROL).attrs["NetworkSettings"]["Networks"][gateway.hub.lab.name]["IPAddress"]
    for target in (f"{carol_ip}:8888", f"{gateway.hub.lab.gateway}:{gateway.hub.hub_port}", "example.org:80"):
        done = gateway.ssh(ALICE, extra=("-W", target), token=gateway.token(ALICE), timeout=60, log_level="INFO")
        assert done.returncode == 255, (target, done)
        assert "administratively prohibited" in done.stderr and "is not in your server" in done.stderr, done.stderr
    # Inside one's own server nothing listens there: a plain refusal from the relay in the server.
    closed = gateway.ssh(ALICE, extra=("-W", "localhost:1"), token=gateway.token(ALICE), timeout=60, log_level="INFO")
    assert closed.returncode == 255 and "Connection refused" in closed.stderr, closed.stderr


def test_the_direct_lines_listener_answers_the_gateway_only(gateway):
    """The listener an sftp session starts in the server, started as the gateway starts it:
    another student's server cannot reach it, and a connection without its secret is closed."""
    hub = gateway.hub
    alice, carol = hub.container(ALICE), hub.container(CAROL)
    alice_ip = alice.attrs["NetworkSettings"]["Networks"][hub.lab.name]["IPAddress"]
    argv = session_command("sftp", HIDDEN_VARIABLES, host=alice_ip)
    user_of = alice.attrs["Config"]["User"]
    listener = subprocess.Popen(
        ["docker", "exec", "-i", "-u", user_of, alice.id, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        offer = parse_direct_offer(listener.stderr.readline())
        assert offer is not None
        knock = f"import socket; socket.create_connection(({alice_ip!r}, {offer.port}), timeout=5); print('reached')"
        from_carol = carol.exec_run(["python3", "-c", knock], user=carol.attrs["Config"]["User"])
        assert from_carol.exit_code != 0 and b"reached" not in from_carol.output, from_carol.output
        assert b"ConnectionRefusedError" in from_carol.output, from_carol.output  # the lab's reset
        with socket.create_connection((alice_ip, offer.port), timeout=10) as stranger:
            stranger.sendall(secrets.token_bytes(16))
            assert stranger.recv(64) == b""
        with socket.create_connection((alice_ip, offer.port), timeout=10) as line:
            line.sendall(offer.ask)
            answer = b""
            while len(answer) < 16 and (piece := line.recv(16 - len(answer))):
                answer += piece
            assert answer == offer.answer
            line.sendall(b"\0\0\0\5\1\0\0\0\3")  # SSH_FXP_INIT, version 3: the image's sftp-server answers
            version = b""
            while len(version) < 4 or len(version) < 4 + int.from_bytes(version[:4], "big"):
                version += line.recv(65536) or pytest.fail(f"the line closed after {version!r}")
            assert version[4:9] == b"\2\0\0\0\3", version  # SSH_FXP_VERSION 3
            line.shutdown(socket.SHUT_WR)  # the end of its input: sftp-server ends
            assert line.recv(1) == b""
        assert listener.wait(30) == 0
    finally:
        listener.kill()


def test_no_gpu_free_is_the_spawn_pages_sentence_and_a_nonzero_status(gateway):
    done = gateway.ssh(f"{BOB}+gpu", "echo never", token=gateway.token(BOB))
    assert done.returncode == 1 and done.stdout == ""
    sentence = (
        "One GPU: Needs 1 whole GPU: all 1 NVIDIA A100-SXM4-80GB GPUs are taken (1/1 in use). Can start now: CPU only."
    )
    assert done.stderr.splitlines()[-1] == sentence, done.stderr
    # The same sentence the hub gives the spawn page and the REST API.
    r = gateway.hub.start_server(BOB, "gpu")
    assert (r.status_code, r.json()["message"]) == (503, sentence)
    assert gateway.hub.server_model(BOB) is None


def test_the_host_key_is_kept_and_a_session_keeps_its_server_past_jupyter_idle_culling(gateway):
    hub = gateway.hub
    usage = hub.workdir / "usage.json"  # GPU usage: none known, so no GPU rule judges anything
    usage.write_text("{}")
    hub.stop()
    hub.config += textwrap.dedent(f"""
    services.add_culler(c, __file__, cull_every=1, args=["--timeout={IDLE_TIMEOUT}", "--usage-file={usage}"])
    """)
    hub.start()
    wait_for(lambda: answers(gateway.port), 30, "the SSH gateway listens again", details=hub.log_tail)
    # The same host key: known_hosts from the first start still holds (StrictHostKeyChecking=yes).
    started = time.monotonic()
    done = gateway.ssh(CAROL, f"sleep {SESSION}; echo still here", token=gateway.token(CAROL))
    assert done.stdout == "still here\n", done.stderr
    assert time.monotonic() - started > SESSION > IDLE_TIMEOUT + 3
    model = hub.server_model(CAROL)
    assert model and model["ready"], "a server in use over SSH was culled"
    # With the session closed, the culler stops it as idle: it was the session that kept it.
    hub.wait_gone(CAROL, timeout=IDLE_TIMEOUT + 20)


def _stderr_if_done(process: subprocess.Popen) -> str:
    return process.stderr.read() if process.poll() is not None else "(still running)"
