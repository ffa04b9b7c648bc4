"""Debian's OpenSSH client (ssh, scp, sftp) against a hub's SSH gateway, as a student uses it.

A token goes in as the password through ``SSH_ASKPASS`` (OpenSSH 8.4+:
``SSH_ASKPASS_REQUIRE=force``), so nothing beyond openssh-client is needed. Every call
ignores the user's own ssh config and agent, and checks the gateway's host key against
the one it keeps in the hub's folder.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import termios
from pathlib import Path

HOST_KEY_FILE = "gpuspawner-ssh-host-key"  # in the hub's folder (SSHGateway.host_key_file)


class OpenSSH:
    """The gateway of ``hub``, on 127.0.0.1:``port``, reached with files kept in ``folder``."""

    def __init__(self, hub, port: int, folder: Path):
        self.hub, self.port, self.folder = hub, port, folder
        self.known_hosts = folder / "known_hosts"
        self.askpass = folder / "askpass"
        self.askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$GPUSPAWNER_TEST_TOKEN"\n')
        self.askpass.chmod(0o700)
        self.tokens: dict[str, str] = {}

    @property
    def page(self) -> str:
        return f"{self.hub.url}/services/gpu-ssh/"

    def trust_host_key(self) -> str:
        """known_hosts with the key the gateway keeps in the hub's folder (mode 600), as an admin would publish it."""
        path = self.hub.workdir / HOST_KEY_FILE
        assert path.stat().st_mode & 0o777 == 0o600
        public = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public.stdout.strip()}\n")
        return public.stdout.strip()

    def token(self, name: str) -> str:
        """A token of ``name``'s own, made as the hub's token page makes it (a login, then the API)."""
        if name not in self.tokens:
            self.hub.ensure_user(name)
            session = self.hub.login(name)
            xsrf = next(c.value for c in session.cookies if c.name == "_xsrf" and c.path.startswith("/hub"))
            r = session.post(
                f"{self.hub.api}/users/{name}/tokens",
                json={"note": "ssh e2e"},
                headers={"X-XSRFToken": xsrf},
                timeout=30,
            )
            assert r.status_code == 201, r.text
            self.tokens[name] = r.json()["token"]
        return self.tokens[name]

    def register_key(self, name: str, key: Path) -> str:
        """``key``'s public half registered for ``name`` through the page's API (with their token); its fingerprint."""
        import requests

        r = requests.post(
            self.page + "api/keys",
            data=key.with_suffix(".pub").read_text().strip(),
            headers={"Authorization": f"token {self.token(name)}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return r.json()["fingerprint"]

    def options(self, token: str | None = None, key: Path | None = None, log_level="ERROR") -> tuple[list[str], dict]:
        """The client's options and environment: a key (``-i``), else ``token`` as the password."""
        opts = [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"LogLevel={log_level}",
            "-o", "ConnectTimeout=20",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        if key is not None:
            opts += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "PreferredAuthentications=publickey"]
            opts += ["-o", "BatchMode=yes"]
        else:
            # OpenSSH's own order: keyboard-interactive (the gateway asks for the password), then password.
            opts += ["-o", "PreferredAuthentications=keyboard-interactive,password", "-o", "PubkeyAuthentication=no"]
            opts += ["-o", "NumberOfPasswordPrompts=1"]
            env.update(SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", GPUSPAWNER_TEST_TOKEN=token or "")
        return opts, env

    def ssh(self, login: str, *command: str, token=None, key=None, extra=(), timeout=120, log_level="ERROR"):
        opts, env = self.options(token, key, log_level)
        return subprocess.run(
            ["ssh", *opts, "-p", str(self.port), *extra, f"{login}@127.0.0.1", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def scp(self, *args: str, token=None, key=None, timeout=300):
        opts, env = self.options(token, key)
        return subprocess.run(
            ["scp", *opts, "-P", str(self.port), *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    def sftp(self, login: str, batch: str, key: Path):
        """``sftp -b``, which logs in without prompts only: with a key."""
        opts, env = self.options(key=key)
        return subprocess.run(
            ["sftp", *opts, "-P", str(self.port), "-b", "-", f"{login}@127.0.0.1"],
            input=batch,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def shell_on_a_terminal(
        self, login: str, rows: int, columns: int, token: str | None = None, key: Path | None = None
    ) -> tuple[subprocess.Popen, int]:
        """``ssh -tt LOGIN@127.0.0.1`` (a shell, no command) on a new terminal of ``rows`` x ``columns``:
        the process, and the terminal's master side to read and write (the caller closes it)."""
        master, slave = os.openpty()
        set_size(slave, rows, columns)
        opts, env = self.options(token=token, key=key)
        shell = subprocess.Popen(
            ["ssh", *opts, "-tt", "-p", str(self.port), f"{login}@127.0.0.1"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        return shell, master

    def audit(self) -> list[str]:
        """The gateway's audit lines so far, in the hub's log."""
        return [line for line in self.hub.log_text().splitlines() if "ssh login" in line]


def answers(port: int) -> bool:
    """Whether an SSH server greets on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def new_key(path: Path) -> Path:
    """A new ed25519 key pair at ``path`` (and ``path.pub``), without a passphrase."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


def set_size(fd: int, rows: int, columns: int) -> None:
    """A terminal's window size, as a resized terminal window sets it."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
