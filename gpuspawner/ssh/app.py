"""``python -m gpuspawner.ssh``: the SSH gateway, a hub-managed JupyterHub service.

It listens for SSH (``--port``, 2222 by default) and serves its keys page through the
hub's proxy (``/services/gpu-ssh/``). Its own token needs ``read:servers``,
``start:servers`` and ``users:activity``; it reads the hub's config (``-f``) for the
Docker engine. Its host key is kept in a file of the hub's folder (mode 600), made on
the first start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import sys
import time
from textwrap import dedent
from urllib.parse import urlparse

import asyncssh
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import web
from traitlets import Bool, Float, Int, List, Unicode, default, validate
from traitlets.config import Application

from ..config import ConfigError, load_service_config
from ..hub_child import stop_with_the_hub
from .engine import Engine
from .gateway import Audit, Gateway
from .hub import HubAPI
from .keys import KeyRefused, KeyStore
from .page import handlers
from .policy import Limit, LoginLimits

#: The ciphers the gateway can offer: counter and AEAD modes only (asyncssh's defaults). Never CBC,
#: whose defence (an SSH_MSG_IGNORE before each packet) the gateway turns off (tuning.py).
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)


def host_key(path: str) -> asyncssh.SSHKey:
    """The gateway's host key from ``path``, made (ed25519, mode 600) when there is none.

    Refuses a key file others can read or write, as sshd does.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        key = asyncssh.generate_private_key("ssh-ed25519", comment="gpuspawner SSH gateway")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        return key
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the host key {path} is readable or writable by others (mode {mode & 0o777:o}): chmod 600 it"
        )
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as e:
        raise ConfigError(f"cannot read the host key {path}: {e}") from None


class SSHGateway(Application):
    """The SSH gateway, ``python -m gpuspawner.ssh``: the service ``services.add_ssh_gateway`` runs.

    Its options are given on its command line (``--port=2222``, ``--SSHGateway.ciphers=...``),
    which is ``add_ssh_gateway``'s ``args``; it reads the hub's config (``-f``) only for the
    Docker settings.
    """

    name = "gpuspawner-ssh"
    description = """The SSH gateway: `ssh`, `scp`, `sftp` and `-L` forwards into each user's own server.

    Run by the hub as a managed service (services.add_ssh_gateway; see docs/how-to/ssh.md).
    A user logs in as their hub name with a token of theirs as the password, or with a key
    registered on the gateway's page; each session runs in their server's container
    (docker exec, as the server's user, with its environment less the hub's tokens),
    started first with their default profile (or USER+PROFILE) when none runs.
    """
    examples = dedent("""
    python -m gpuspawner.ssh -f /srv/jupyterhub/jupyterhub_config.py --port=2222
    python -m gpuspawner.ssh --activity-interval=30 --failed-logins-per-user=5
    """)

    hub_config = Unicode("jupyterhub_config.py", help="The hub's config file (its Docker settings).").tag(config=True)
    ip = Unicode("", help="The address SSH listens on ('' for all of this host's).").tag(config=True)
    port = Int(2222, min=1, max=65535, help="The port SSH listens on.").tag(config=True)
    host_key_file = Unicode(
        "gpuspawner-ssh-host-key",
        help="""The gateway's SSH host key (a private key file, mode 600), relative to the hub's folder.

        Made on the first start and kept: clients check it at every login. Back it up with the hub's state.""",
    ).tag(config=True)
    keys_file = Unicode(
        "gpuspawner-ssh-keys.json",
        help="The users' registered public keys (mode 600), relative to the hub's folder.",
    ).tag(config=True)
    url = Unicode(help="Where the keys page listens: http://127.0.0.1:PORT (default: $JUPYTERHUB_SERVICE_URL).").tag(
        config=True
    )
    service_prefix = Unicode(help="The page's URL prefix (default: $JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)
    public_host = Unicode(
        "", help="The host name students type, for the page's instructions (default: the page's own host)."
    ).tag(config=True)
    profile_separator = Unicode(
        "+",
        help="""What separates a profile from the user in the login name: ``alice+gpu``.

        '' turns it off, for a lab whose user names hold it; ``ssh -o SetEnv=GPUSPAWNER_PROFILE=gpu``
        names a profile either way.""",
    ).tag(config=True)
    admin_access = Bool(
        False,
        help="""Let a token whose scopes reach another user's server (an admin's, with access:servers)
        log into that server as its user. Off: every login is the user's own, whatever the token's scopes.""",
    ).tag(config=True)
    sftp_direct = Bool(
        True,
        help="""Carry scp's and sftp's bytes on a TCP connection of their own into the server (the
        "direct line"), not through the engine's exec stream.

        The session's exec starts a listener in the server (the image's python3, as the image's user)
        that hands the gateway's connection to sftp-server, once the gateway has shown a secret that
        only it read from the exec. It takes the server's address on its network from the gateway's
        host, as the hub's proxy does; where that cannot connect (or the image has no python3), the
        session goes through the engine by itself. False: always through the engine.""",
    ).tag(config=True)
    activity_interval = Float(
        60, min=1, help="Seconds between the reports of an open session's activity to the hub."
    ).tag(config=True)
    failed_logins_per_user = Int(
        10, min=0, help="Failed logins of one user, within failed_logins_window, after which it is refused (0: off)."
    ).tag(config=True)
    failed_logins_per_address = Int(
        30, min=0, help="Failed logins from one address, within failed_logins_window, after which it is refused."
    ).tag(config=True)
    failed_logins_window = Float(600, min=1, help="Seconds over which failed logins are counted.").tag(config=True)
    login_timeout = Float(60, min=1, help="Seconds a client has to log in.").tag(config=True)
    ciphers = List(
        Unicode(),
        ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
        help="""The ciphers offered, as OpenSSH names them; a client takes the first of its own list that is offered.

        AES-GCM only by default: OpenSSH's own order puts ChaCha20-Poly1305 and then AES-CTR first, so
        offering either makes OpenSSH take it, and both cost the gateway (in Python, through the
        cryptography library) and the client more per byte than AES-GCM with the processor's AES
        instructions (docs/topic/performance.md). Clients without AES-GCM (OpenSSH before 6.2, PuTTY before
        0.78 and the tools built on it, libssh2 before 1.11, Paramiko) need ``aes128-ctr`` added, and every
        OpenSSH client then takes it.
        Any of chacha20-poly1305@openssh.com, aes128-gcm@openssh.com, aes256-gcm@openssh.com, aes128-ctr,
        aes192-ctr and aes256-ctr; CBC and RC4 ciphers are refused.""",
    ).tag(config=True)

    aliases = {
        **Application.aliases,
        ("f", "config"): ("SSHGateway.hub_config", "The hub's config file (default: ./jupyterhub_config.py)"),
        "ip": "SSHGateway.ip",
        "port": "SSHGateway.port",
        "host-key-file": "SSHGateway.host_key_file",
        "keys-file": "SSHGateway.keys_file",
        "url": "SSHGateway.url",
        "public-host": "SSHGateway.public_host",
        "profile-separator": "SSHGateway.profile_separator",
        "activity-interval": "SSHGateway.activity_interval",
        "failed-logins-per-user": "SSHGateway.failed_logins_per_user",
        "failed-logins-per-address": "SSHGateway.failed_logins_per_address",
        "failed-logins-window": "SSHGateway.failed_logins_window",
    }
    flags = {
        **Application.flags,
        "admin-access": ({"SSHGateway": {"admin_access": True}}, "Let admins' tokens log into users' servers."),
        "no-sftp-direct": ({"SSHGateway": {"sftp_direct": False}}, "scp and sftp always through the engine."),
    }

    @default("log_level")
    def _default_log_level(self):
        return "INFO"

    @default("url")
    def _default_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10102")

    @default("service_prefix")
    def _default_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/gpu-ssh/")

    @validate("ciphers")
    def _validate_ciphers(self, proposal):
        value = list(proposal["value"])
        unknown = [name for name in value if name not in CIPHERS]
        if unknown or not value:
            raise ValueError(f"ciphers {unknown or value!r}: one or more of {', '.join(CIPHERS)}")
        return value

    @validate("profile_separator")
    def _validate_separator(self, proposal):
        value = proposal["value"]
        if len(value) > 1 or (value and (value.isalnum() or value in "@:/ ")):
            raise ValueError(
                f"profile_separator {value!r}: one character that is not a letter, digit, @, :, / or space"
            )
        return value

    def initialize(self, argv=None):
        super().initialize(argv)
        # Its own logger under the service's, whose output the hub's log takes: "ssh login ok: ..."
        self.audit = Audit(self.log.getChild("audit"))
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        settings = load_service_config(self, self.hub_config)
        self.spawner = settings.spawner
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not token:
            raise ConfigError("no JUPYTERHUB_API_TOKEN: the gateway runs as a hub service (services.add_ssh_gateway)")
        self.api_url = os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
        self.hub_auth = HubOAuth.instance(api_url=self.api_url, api_token=token, cache_max_age=60)
        self.token = token
        self.key = host_key(self.host_key_file)
        self.host_key_fingerprint = self.key.get_fingerprint("sha256")
        try:
            self.keys = KeyStore(self.keys_file)
        except KeyRefused as e:
            raise ConfigError(str(e)) from None

    def make_gateway(self) -> Gateway:
        limits = LoginLimits(
            Limit(self.failed_logins_per_user, self.failed_logins_window),
            Limit(self.failed_logins_per_address, self.failed_logins_window),
            time.monotonic,
        )
        return Gateway(
            HubAPI(self.api_url, self.token),
            Engine(self.spawner.new_docker_client, api_url=self.api_url),
            self.keys,
            limits,
            log=self.log,
            audit=self.audit,
            activity_interval=self.activity_interval,
            profile_separator=self.profile_separator,
            admin_access=self.admin_access,
            sftp_direct=self.sftp_direct,
        )

    def make_app(self) -> web.Application:
        return web.Application(
            [(url_path_join(self.service_prefix, "oauth_callback"), HubOAuthCallbackHandler), *handlers(self)],
            cookie_secret=secrets.token_bytes(32),
            xsrf_cookies=True,
            login_url=self.hub_auth.login_url,
            hub_auth=self.hub_auth,
        )

    async def serve(self) -> None:
        gateway = self.make_gateway()
        server = await asyncssh.create_server(
            gateway.connection,
            self.ip or None,
            self.port,
            server_host_keys=[self.key],
            encoding=None,
            line_editor=False,  # the server's own terminal edits and echoes, as with sshd
            allow_pty=True,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            login_timeout=self.login_timeout,
            encryption_algs=list(self.ciphers),
            compression_algs=["none"],  # zlib in Python would cost the gateway more than the link saves
            keepalive_interval=30,
            server_version="gpuspawner",
        )
        where = urlparse(self.url)
        self.make_app().listen(where.port or 80, where.hostname or "127.0.0.1")
        self.log.info(
            "SSH gateway on %s:%d (host key %s), keys page at %s%s",
            self.ip or "*",
            self.port,
            self.host_key_fingerprint,
            self.url.rstrip("/"),
            self.service_prefix,
        )
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop_with_the_hub(loop, stopped.set, self.log)
        await stopped.wait()
        self.log.info("SSH gateway stopping")
        server.close()
        gateway.engine.close()

    def start(self):
        asyncio.run(self.serve())


def main(argv: list[str] | None = None) -> int:
    """``python -m gpuspawner.ssh``; returns the exit status."""
    try:
        app = SSHGateway.instance()
        app.initialize(argv)
    except ConfigError as e:
        print(f"gpuspawner-ssh: {e}", file=sys.stderr)
        return 2
    app.start()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # nothing is left to write: the hub waits on this process


__all__ = ["SSHGateway", "host_key", "main"]
