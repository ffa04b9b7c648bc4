"""A Docker engine of a test's own, to restart as it likes, beside the test bed's.

Started the way ``deploy/testbed/testbed.sh up`` starts the shared one (its own
data root, exec root, pid file, socket, containerd namespaces and cgroup parent,
no bridge, no iptables, the NVIDIA hook double on its PATH only), plus
``"live-restore": true``, so that its containers keep running while it restarts.
The shared engine is never restarted: other tests and CI use it.

Its single-user image is a small stand-in, built here in a second from the host's
own Python: the test bed's image (495 MB) takes ~45 s to ``docker save | docker
load`` on 2 cores, more than the whole chaos run may take. The stand-in answers
HTTP on the port the spawner gives it, as a server that has started does, runs as
uid 1000 with ``/home/jovyan`` its own, and has ``python3`` to write homes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import docker

from .realhub import REPO, wait_for

SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE = "gpuspawner-chaos-server:2"

#: The stand-in server: answers every request on the port of JUPYTERHUB_SERVICE_URL (or --port) until SIGTERM.
SERVER = """\
import http.server, os, signal, sys, urllib.parse
port = urllib.parse.urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "")).port or 8888
args = sys.argv[1:]
for i, a in enumerate(args):
    if a.startswith("--port="):
        port = int(a.split("=", 1)[1])
    elif a == "--port":
        port = int(args[i + 1])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
print("chaos stand-in server on 127.0.0.1:%d" % port, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Answer).serve_forever()
"""

# Parts of the standard library a small HTTP server never imports.
_SKIP = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "pydoc_data", "dist-packages", "site-packages"}


class ChaosEngine:
    """dockerd under ``root`` (``root/docker.sock``): start, restart (SIGTERM, start again), remove."""

    def __init__(self, root: Path):
        self.root = root
        self.sock = root / "docker.sock"
        self.pidfile = root / "docker.pid"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, version="auto", timeout=30)

    def start(self, timeout: float = 60) -> None:
        if self.root.exists():
            raise RuntimeError(f"{self.root} exists: another chaos run's, or a leftover to remove by hand")
        for sub in ("data", "exec", "fake-nvidia"):
            (self.root / sub).mkdir(parents=True)
        (self.root / "daemon.json").write_text(json.dumps({"live-restore": True}) + "\n")
        hook = self.root / "fake-nvidia" / "nvidia-container-runtime-hook"
        shutil.copy(REPO / "deploy/testbed/fake-nvidia/nvidia-container-runtime-hook", hook)
        hook.chmod(0o755)
        self._run(timeout)

    def _run(self, timeout: float) -> None:
        r = self.root
        env = {
            "PATH": f"{r}/fake-nvidia:{SYS_PATH}",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "GPUSPAWNER_FAKE_HOOK_LOG": f"{r}/hook.log",
        }
        with open(r / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "/usr/sbin/dockerd",
                    f"--config-file={r}/daemon.json",
                    f"--data-root={r}/data",
                    f"--exec-root={r}/exec",
                    f"--pidfile={self.pidfile}",
                    f"--host={self.host}",
                    "--containerd-namespace=gpuspawner-chaos",
                    "--containerd-plugins-namespace=gpuspawner-chaos-plugins",
                    "--cgroup-parent=/gpuspawner-chaos",
                    "--bridge=none",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._answers, timeout, f"the chaos engine answers on {self.sock}", details=self.log_tail)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return bool(self.client().ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to our dockerd, and wait: with live-restore its containers keep running."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> float:
        """Stop and start dockerd again; the seconds the engine did not answer."""
        began = time.monotonic()
        self.stop()
        self._run(60)
        self.restarts += 1
        return time.monotonic() - began

    def remove(self) -> None:
        """Every container, volume and the engine itself gone, then its folder."""
        if self.proc and self.proc.poll() is None:
            client = self.client()
            for c in client.containers.list(all=True):
                c.remove(force=True)
            client.volumes.prune()
        self.stop()
        # What dockerd leaves mounted (exec/netns/default), then the folder: never crossing into another filesystem.
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.root}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def build_image(self) -> str:
        """The stand-in server's image (``IMAGE``), imported from a tar of the host's Python."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            _add_python(tar)
            _add_dir(tar, "tmp", mode=0o1777)
            _add_dir(tar, "home", mode=0o755)
            _add_dir(tar, "home/jovyan", mode=0o755, uid=1000)
            _add_file(tar, "srv/server.py", SERVER.encode())
            _add_file(
                tar, "etc/passwd", b"root:x:0:0::/root:/nonexistent\njovyan:x:1000:1000::/home/jovyan:/nonexistent\n"
            )
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        changes = [
            f'ENTRYPOINT ["{python}", "/srv/server.py"]',
            'CMD ["jupyterhub-singleuser"]',
            "USER 1000",
            "WORKDIR /home/jovyan",
            "ENV HOME=/home/jovyan",
            f"ENV PATH={SYS_PATH}",
        ]
        repository, tag = IMAGE.split(":")
        self.client().api.import_image_from_data(data.getvalue(), repository=repository, tag=tag, changes=changes)
        return IMAGE


def _add_dir(tar: tarfile.TarFile, name: str, mode: int, uid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, body: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(body), 0o644
    tar.addfile(info, io.BytesIO(body))


def _add_python(tar: tarfile.TarFile) -> None:
    """The host's python3 (the interpreter the tests run on is a venv of it), its libraries and stdlib."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python = Path("/usr/bin") / version
    libs = subprocess.run(["ldd", str(python)], capture_output=True, text=True, check=True).stdout
    paths = [python, Path("/usr/bin/python3")]
    paths += [Path(p) for line in libs.splitlines() for p in line.split() if p.startswith("/")]
    stdlib = Path("/usr/lib") / version
    for top in ("/lib64", "/lib", "/bin"):  # merged /usr: links first, or untar makes them folders
        if os.path.islink(top):
            tar.add(top, arcname=top.lstrip("/"))
    added: set[str] = set()
    for path in paths:
        while str(path) not in added:  # each link on the way, then the file
            real = Path(os.path.realpath(path.parent)) / path.name
            added.update((str(path), str(real)))
            tar.add(str(real), arcname=str(real).lstrip("/"), recursive=False)
            if not real.is_symlink():
                break
            path = Path(os.path.normpath(real.parent / os.readlink(real)))
    tar.add(str(stdlib), arcname=str(stdlib).lstrip("/"), filter=lambda i: _keep(i, stdlib))


def _keep(info: tarfile.TarInfo, stdlib: Path) -> tarfile.TarInfo | None:
    parts = Path(info.name).relative_to(str(stdlib).lstrip("/")).parts
    return None if parts and parts[0] in _SKIP else info
