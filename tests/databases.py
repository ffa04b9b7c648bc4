"""A real PostgreSQL server for the usage store's tests: Debian's, on loopback, in a folder of its own.

``initdb`` and ``postgres`` run as Debian's ``postgres`` user (they refuse root); the cluster
trusts loopback connections and lives only while the tests that use it run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from .realhub import MissingTestbed, debian_binary, free_port, stop_process, wait_for


def postgres_bin(program: str) -> str:
    """Debian's ``program`` of the newest PostgreSQL installed; ``postgresql`` installed with apt when missing."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    if not found:
        debian_binary("/usr/bin/pg_lsclusters", "postgresql")
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    if not found:
        raise MissingTestbed(f"PostgreSQL's {program} is missing: run `bash deploy/testbed/testbed.sh install`")
    return found[-1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """``postgresql+psycopg://postgres@127.0.0.1:<port>/`` of a PostgreSQL running while in the block."""
    initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise MissingTestbed("no postgres user: Debian's postgresql package makes it") from None
    folder = tempfile.mkdtemp(prefix="gpuspawner-pg-")
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(folder, "data")
    subprocess.run(
        [*as_postgres, initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [*as_postgres, postgres, "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", folder, "-F"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/"
    try:
        import psycopg

        def answers() -> bool:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2).close()
            except psycopg.OperationalError:
                assert server.poll() is None, f"postgres exited: {server.stderr.read().decode()[-2000:]}"
                return False
            return True

        wait_for(answers, 30, "PostgreSQL answers")
        yield url
    finally:
        stop_process(server)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str, name: str) -> str:
    """A new, empty database ``name`` on the server: its SQLAlchemy URL."""
    import psycopg

    port = server_url.rsplit(":", 1)[1].strip("/")
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return server_url + name
