"""What the spawn benchmarks share: two real hubs side by side, one with gpuspawner and one
with plain DockerSpawner, on the test bed's engine, and the clocks that time them.

Both hubs run from the start of a benchmark to its end (the idle one costs next
to nothing: it has no servers to poll), on their own ports, and the benchmark
drives them in turn, so both see the same engine, image, machine and load.

The times, per user, from the moment its REST request is sent:

- ``running``: until Docker started its container (``State.StartedAt``): the
  hub-side work (the spawner's decisions and Docker calls), free of the
  single-user server's own start-up;
- ``ready``: until the hub reports the server ``ready`` (its HTTP check passed,
  the proxy route added), polled every ``POLL`` seconds.

For bursts the containers run a stub server by default (``--server stub``): a
dozen lines of Python that answer HTTP at once, so that the figures are the
hub's and the engine's, not jupyterhub-singleuser's, whose start-up is
CPU-bound and takes ~40 s each when ten start at once on 2 cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import secrets
import statistics
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.realhub import RealHub, docker_host, engine, read_testbed, running_hub, simulated_gpus  # noqa: E402, F401

GPU = "gpuspawner"  # servers on its lab network (add_lab_network), as by default
GPU_HOST = "gpuspawner-host"  # the same, on the host network (network_name = "host")
DOCKER = "dockerspawner"
KINDS = (GPU, DOCKER)
POLL = 0.2  # seconds between looks at the hub's server models

#: A server that answers any HTTP request at once, on the address and port the hub gives
#: jupyterhub-singleuser (``JUPYTERHUB_SERVICE_URL``), so every spawner runs it unchanged.
STUB_SERVER = textwrap.dedent(
    """
    import http.server, os, signal, sys, urllib.parse
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1: no default action, docker stop would wait 10 s
    url = urllib.parse.urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer((url.hostname, url.port), Answer).serve_forever()
    """
).strip()

#: The plain DockerSpawner, with only what an engine without a bridge needs: servers
#: on the host network, each on a free port of 127.0.0.1 (as gpuspawner does).
DOCKER_HUB = """
from dockerspawner import DockerSpawner
from jupyterhub.utils import random_port

class HostNetworkDockerSpawner(DockerSpawner):
    async def start(self):
        self.ip = "127.0.0.1"
        self.port = random_port()
        return await super().start()

    async def get_ip_and_port(self):
        return "127.0.0.1", self.port

c.JupyterHub.spawner_class = HostNetworkDockerSpawner
c.DockerSpawner.extra_create_kwargs = c.GPUSpawner.extra_create_kwargs  # the clean-up label
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.image = {image!r}
c.DockerSpawner.allowed_images = {images!r}
c.DockerSpawner.volumes = {{"jupyterhub-user-{{username}}": "/home/jovyan"}}
# gpuspawner's hardening, for the same container
c.DockerSpawner.extra_host_config = {{"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": 4096}}
"""

GPU_HUB = """
c.JupyterHub.spawner_class = "gpu"
c.GPUSpawner.gpus = {gpus!r}
c.GPUSpawner.profiles = {profiles!r}
c.GPUSpawner.prepull_images = False  # the pull benchmark wants the pull during the burst
c.GPUSpawner.denials_file = ""
c.GPUSpawner.pull_policy = "ifnotpresent"
c.GPUSpawner.docker_threads = {threads}
"""

COMMON = """
c.Spawner.cmd = {cmd!r}
c.Spawner.mem_limit = "512M"
c.Spawner.cpu_limit = 1.0
c.Spawner.http_timeout = 300
c.Spawner.start_timeout = 600
c.Spawner.poll_interval = 30
c.DockerSpawner.pull_policy = "ifnotpresent"
"""


def fake_gpus(n: int) -> list[dict]:
    """``n`` simulated whole GPUs; the test bed's engine accepts their uuids (its hook is a test double)."""
    return simulated_gpus([f"GPU-bench{i:03d}-0000-4000-8000-{i:012d}" for i in range(n)], "Bench GPU", "16G")


def hub_configs(image: str, gpus: int, server: str, big_image: str = "", threads: int = 8) -> dict[str, str]:
    """The two hubs' configs: the same image, limits, network, home volume and server command."""
    cmd = ["python3", "-c", STUB_SERVER] if server == "stub" else ["jupyterhub-singleuser"]
    profiles = [
        {"slug": "cpu", "display_name": "CPU", "image": image},
        {"slug": "gpu", "display_name": "One GPU", "image": image, "gpus": 1},
    ]
    images = {"cpu": image, "gpu": image}
    if big_image:
        profiles.append({"slug": "big", "display_name": "Big image", "image": big_image})
        images["big"] = big_image
    common = COMMON.format(cmd=cmd)
    gpu = common + GPU_HUB.format(gpus=fake_gpus(gpus), profiles=profiles, threads=threads)
    return {
        GPU: gpu,
        GPU_HOST: gpu + 'c.GPUSpawner.network_name = "host"\n',
        DOCKER: common + DOCKER_HUB.format(image=image, images=images),
    }


@contextlib.contextmanager
def hub_pair(
    workdir: Path,
    run: str,
    *,
    gpus: int = 8,
    server: str = "stub",
    big_image: str = "",
    threads: int = 8,
    kinds: tuple[str, ...] = KINDS,
):
    """The hubs of ``kinds``, started, as ``{GPU: hub, DOCKER: hub}``; stopped and cleaned up afterwards.

    Only the ``GPU`` hub has a lab network (of its own); the others run servers on the host's.
    """
    image = read_testbed("image")
    configs = hub_configs(image, gpus, server, big_image, threads)
    with contextlib.ExitStack() as stack:
        yield {
            kind: stack.enter_context(running_hub(workdir / kind, configs[kind], run, lab=kind == GPU))
            for kind in kinds
        }


def server_option(parser, default: str) -> None:
    """``--server``: what the containers run, as ``hub_configs`` takes it."""
    parser.add_argument(
        "--server",
        choices=["stub", "singleuser"],
        default=default,
        help="what the containers run: 'stub', a few lines of Python that answer HTTP at once,"
        f" or 'singleuser', the image's jupyterhub-singleuser (default: {default})",
    )


# --- driving a hub


def options(kind: str, profile: str) -> dict:
    """What a user sends for ``profile``: gpuspawner's profile, or DockerSpawner's allowed image."""
    return {"image": profile} if kind == DOCKER else {"profile": profile}


def started_at(container: dict) -> float:
    """Docker's ``State.StartedAt`` (RFC 3339, nanoseconds) as a Unix time."""
    stamp = container["State"]["StartedAt"]
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


@dataclass
class Spawn:
    user: str
    profile: str
    requested: float = 0.0  # Unix time the REST request was sent
    status: int = 0  # the REST answer: 201, 202, or a refusal
    ready: float | None = None  # Unix time the hub first reported it ready
    running: float | None = None  # Unix time its container started (Docker's clock)
    gpus: tuple[str, ...] = ()  # the device ids Docker was asked for
    error: str = ""

    @property
    def to_running(self) -> float | None:
        return None if self.running is None else self.running - self.requested

    @property
    def to_ready(self) -> float | None:
        return None if self.ready is None else self.ready - self.requested


def _post(hub: RealHub, kind: str, spawn: Spawn, start: threading.Event) -> None:
    hub.ensure_user(spawn.user)
    start.wait()
    spawn.requested = time.time()
    body = json.dumps({"user_options": options(kind, spawn.profile)})
    r = hub.request("POST", f"/users/{spawn.user}/servers/", data=body)
    spawn.status = r.status_code
    if r.status_code not in (201, 202):
        spawn.error = f"{r.status_code} {r.text[:200]}"


def burst(
    hub: RealHub, kind: str, spawns: list[Spawn], timeout: float = 600, stagger: dict[str, float] | None = None
) -> list[Spawn]:
    """Request every spawn at once (``stagger``: user -> seconds to ask earlier); wait until all are ready or failed."""
    stagger = stagger or {}
    with ThreadPoolExecutor(len(spawns)) as pool:
        gates = {s.user: threading.Event() for s in spawns}
        posts = [pool.submit(_post, hub, kind, s, gates[s.user]) for s in spawns]
        early = sorted((s for s in spawns if s.user in stagger), key=lambda s: -stagger[s.user])
        for s in early:
            gates[s.user].set()
        if early:
            time.sleep(max(stagger.values()))
        for gate in gates.values():
            gate.set()
        _watch(hub, spawns, timeout, posts)
        for p in posts:
            p.result()
    docker = engine().api
    for s in spawns:
        try:
            c = docker.inspect_container(f"jupyter-{s.user}")
        except Exception as e:  # noqa: BLE001 - reported with the figures
            s.error = s.error or f"no container: {e}"
            continue
        s.running = started_at(c)
        requests_ = c["HostConfig"].get("DeviceRequests") or []
        s.gpus = tuple(i for r in requests_ for i in (r.get("DeviceIDs") or []))
    return spawns


def alternating(
    hubs: dict[str, RealHub],
    rounds: int,
    run_id: str,
    profile: str,
    warmup: bool = True,
    spawner_of: Callable[[str], str] = lambda kind: kind,
) -> dict[str, list[Spawn]]:
    """One spawn of ``profile`` at a time, taking ``hubs`` in turn (each first in turn, round after round),
    each stopped before the next; the spawns of each hub, the first round a warm-up not kept.
    ``spawner_of``: the spawner kind (``options``) of a hub's name."""
    kinds = tuple(hubs)
    samples: dict[str, list[Spawn]] = {k: [] for k in kinds}
    for r in range(-1 if warmup else 0, rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for kind in order:
            (user,) = user_names(f"s{kind[0]}{r + 1}", 1, run_id)
            (spawn,) = burst(hubs[kind], spawner_of(kind), [Spawn(user, profile)])
            stop_all(hubs[kind], [user])
            if r >= 0:
                samples[kind].append(spawn)
    return samples


def _watch(hub: RealHub, spawns: list[Spawn], timeout: float, posts) -> None:
    deadline = time.monotonic() + timeout
    waiting = {s.user: s for s in spawns}
    while waiting and time.monotonic() < deadline:
        time.sleep(POLL)
        now = time.time()
        models = {u["name"]: u for u in hub.request("GET", "/users", params={"state": "active"}).json()}
        for name, s in list(waiting.items()):
            server = (models.get(name) or {}).get("servers", {}).get("")
            if server and server.get("ready"):
                s.ready = now
                del waiting[name]
            elif s.status and s.status not in (201, 202):
                del waiting[name]  # refused: the error says why
            elif s.status and not server and all(p.done() for p in posts):
                s.error = s.error or "server gone before it was ready"
                del waiting[name]
    for s in waiting.values():
        s.error = s.error or f"not ready within {timeout:g} s"


def stop_all(hub: RealHub, users: list[str], timeout: float = 300) -> None:
    """Stop every listed user's server at once, and wait until the hub has none left."""
    with ThreadPoolExecutor(min(len(users), 16) or 1) as pool:
        list(pool.map(lambda u: hub.request("DELETE", f"/users/{u}/servers/"), users))
    deadline = time.monotonic() + timeout
    wanted = set(users)
    while time.monotonic() < deadline:
        models = hub.request("GET", "/users", params={"state": "active"}).json()
        if not any(u["name"] in wanted and u.get("servers") for u in models):
            return
        time.sleep(0.5)
    raise RuntimeError(f"servers still up after {timeout} s:\n{hub.log_tail()}")


def user_names(prefix: str, n: int, run: str) -> list[str]:
    """Names valid for the hub and for DockerSpawner's container and volume names (no escaping)."""
    return [f"{prefix}{i:03d}x{run}" for i in range(n)]


def new_run() -> str:
    return secrets.token_hex(3)


# --- the figures


def median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def percentile(values, p: float) -> float:
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def machine() -> dict:
    """Where the figures were taken: cores, memory, engine, and the load before and after."""
    try:
        version = engine().version()
        engine_version = f"dockerd {version.get('Version')} (API {version.get('ApiVersion')})"
    except Exception as e:  # noqa: BLE001
        engine_version = f"unknown ({e})"
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return {
        "cpus": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "engine": engine_version,
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def fmt(seconds: float) -> str:
    return f"{seconds:.2f}"


def print_json(result: dict, path: str | None) -> None:
    """All figures as JSON: to stdout with ``-``, else to the file ``path`` (and say where)."""
    if not path:
        return
    text = json.dumps(result, indent=2, default=str)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")
        print(f"(all figures in {path})", file=sys.stderr)


# --- a large image in a registry on loopback, for the pull benchmark


def payload_image_context(base: str, megabytes: int, work: Path) -> Path:
    """A build context FROM ``base`` with one layer of ``megabytes`` MB that do not compress.

    The bytes come from a seeded generator and the file has a fixed time, so the
    layer is the same every time: a registry that already holds it (a kept
    storage) is not sent it again, while the engine, once the image is removed,
    must pull all of it.
    """
    import random

    tar_path = work / "context.tar"
    # at the root: a new folder (or a file in an existing one) would carry the build's time
    dockerfile = f"FROM {base}\nCOPY payload /benchmark-payload\n".encode()
    rng = random.Random(megabytes)
    chunk = 1 << 20
    payload = work / "payload"
    with payload.open("wb") as f:
        for _ in range(megabytes):
            f.write(rng.randbytes(chunk))
    with tarfile.open(tar_path, "w") as tar:
        for name, source in (("Dockerfile", None), ("payload", payload)):
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if source is None:
                info.size = len(dockerfile)
                tar.addfile(info, io.BytesIO(dockerfile))
            else:
                info.size = source.stat().st_size
                with source.open("rb") as f:
                    tar.addfile(info, f)
    payload.unlink()
    return tar_path


def push_large_image(registry: str, megabytes: int, work: Path, run: str) -> str:
    """Build and push ``<registry>/gpuspawner-bench-big:<run>``; it is then removed from the engine."""
    client = engine()
    ref = f"{registry}/gpuspawner-bench-big:{run}"
    context = payload_image_context(read_testbed("image"), megabytes, work)
    with context.open("rb") as f:
        client.images.build(fileobj=f, custom_context=True, tag=ref, rm=True, forcerm=True)
    context.unlink()
    for line in client.api.push(ref, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"push of {ref} failed: {line['error']}")
    remove_image(ref)
    return ref


def remove_image(ref: str) -> None:
    """Untag ``ref``, so that the next spawn pulls it again (its own layer goes with it)."""
    import docker.errors

    with contextlib.suppress(docker.errors.ImageNotFound):
        engine().images.remove(ref, force=True)


@dataclass
class Table:
    """Rows of figures, printed as the Markdown table docs/topic/performance.md holds."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)
