"""A container registry on loopback for tests and benchmarks: Debian's ``docker-registry``.

Debian's ``docker-registry`` (distribution 2.8) serves 127.0.0.1:<free port>
from a directory of the caller's; the engine trusts 127.0.0.0/8 over plain HTTP
by default (its ``InsecureRegistryCIDRs``), so pushes and pulls need no TLS.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from .realhub import TESTBED, debian_binary, free_port, stop_process

REGISTRY_BIN = "/usr/bin/docker-registry"
#: A registry storage kept beside the test bed, for the benchmarks' quick tests.
CACHE = TESTBED / "registry-cache"
#: The port the tests' shared registry asks for first. The engine remembers which layers it pushed to
#: which registry address: pushed again to the same address, a layer the registry holds is a quick check;
#: to a new address, the engine compresses it again to learn its digest (the test bed image: 30-60 s on
#: 2 cores). A free port is taken when this one is in use.
SHARED_PORT = 5747


def registry_binary() -> str:
    """Debian's registry; installed with apt when missing (as testbed.sh install does)."""
    return debian_binary(REGISTRY_BIN, "docker-registry")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def local_registry(
    home: Path, timeout: float = 20, storage: Path | None = None, port: int | None = None
) -> Iterator[tuple[str, requests.Session]]:
    """``("127.0.0.1:<port>", an HTTP session for it)`` of a registry running in ``home``, while in the block.

    Its blobs go to ``storage`` (default: ``home/storage``). Blobs are stored by
    digest, so a storage kept between runs (``CACHE``) makes pushing layers it
    already holds, such as the test bed image's, a quick check instead of a
    compress-and-upload of every layer (~30 s on 2 cores).
    """
    binary = registry_binary()
    home.mkdir(parents=True, exist_ok=True)
    storage = storage or home / "storage"
    port = port if port and port_is_free(port) else free_port()
    config = home / "config.yml"
    config.write_text(
        textwrap.dedent(
            f"""
            version: 0.1
            log:
              level: warn
              accesslog:
                disabled: true
            storage:
              filesystem:
                rootdirectory: {storage}
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:{port}
              secret: {secrets.token_hex(16)}
            """
        )
    )
    log = (home / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    http = requests.Session()
    http.trust_env = False  # loopback: never through a proxy from the environment
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, f"docker-registry exited: {(home / 'registry.log').read_text()}"
            assert time.monotonic() < deadline, f"docker-registry did not answer within {timeout:g} s"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", http
    finally:
        stop_process(proc)
        log.close()
        http.close()
