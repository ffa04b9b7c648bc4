"""Shared test doubles for unit tests of the logic above Docker.

``FakeDocker`` stands in for docker-py's ``APIClient`` at the one seam
DockerSpawner calls (``spawner.client.<method>``). End-to-end tests use the
real engine instead.
"""

from __future__ import annotations

import io
import itertools
import tarfile
from types import SimpleNamespace

import docker.errors
import docker.types
from jupyterhub.objects import Hub


class _Response:
    def __init__(self, status_code):
        self.status_code = status_code
        self.reason = "fake"
        self.url = "fake://docker"


def not_found(what):
    return docker.errors.NotFound(f"{what} not found", response=_Response(404))


class FakeDocker:
    """Containers as dicts; images as a dict of name -> image config."""

    def __init__(self, images=None):
        self.images = images or {
            "lab:1": {"Env": ["HOME=/home/jovyan"], "User": "jovyan", "Cmd": ["jupyterhub-singleuser"]}
        }
        self.pullable: dict[str, dict] = {}  # what the fake registry serves
        self.passwd: dict[str, str] = {}  # image name -> its /etc/passwd (none: the image has no such file)
        self.containers_by_id: dict[str, dict] = {}
        self.ids = itertools.count(1)
        self.fail_start = False
        self.exit_on_start: int | None = None  # the status a started server exits with at once (None: it runs)
        self.log = b""  # what every container wrote (``logs``)
        self.processes = ["/opt/venv/bin/python3 /opt/venv/bin/jupyterhub-singleuser"]  # every running one's (``top``)
        self.calls: list[str] = []
        self.networks = {"gpuspawner-lab", "gpuspawner-lab-internet"}  # as add_lab_network makes them
        self.volumes: dict[str, dict] = {}  # name -> {"Labels": ..., "files": {path: text}}
        self.fail_copy = False

    # the APIClient methods DockerSpawner and GPUSpawner use
    def create_host_config(self, **kwargs):
        return docker.types.HostConfig(version="1.41", **kwargs)

    def inspect_image(self, name):
        self.calls.append("inspect_image")
        if name not in self.images:
            raise not_found(name)
        return {"Id": self._image_id(name), "Config": self.images[name]}

    @staticmethod
    def _image_id(name):
        return f"sha256:{abs(hash(name)):064x}"[:71]

    def pull(self, repo, tag=None, stream=False, decode=False):
        """A registry with one 2-layer image per name in ``pullable``."""
        self.calls.append("pull")
        name = f"{repo}:{tag}"
        if name not in self.pullable:
            yield {"error": f"manifest for {name} not found: manifest unknown"}
            return
        for layer in ("a", "b"):
            for current in (0, 50, 100):
                yield {"id": layer, "status": "Downloading", "progressDetail": {"current": current, "total": 100}}
            yield {"id": layer, "status": "Extracting", "progressDetail": {"current": 100, "total": 100}}
        yield {"status": "Digest: sha256:" + "d" * 64}
        self.images[name] = self.pullable[name]

    def _find(self, name_or_id):
        for cid, c in self.containers_by_id.items():
            if name_or_id in (cid, c["Name"]):
                return c
        raise not_found(name_or_id)

    def inspect_network(self, name):
        self.calls.append("inspect_network")
        if name not in self.networks:
            raise not_found(name)
        return {"Name": name, "Driver": "bridge"}

    def inspect_container(self, name_or_id):
        self.calls.append("inspect_container")
        return self._find(name_or_id)

    def create_container(self, image, name=None, environment=None, labels=None, host_config=None, **kwargs):
        self.calls.append("create_container")
        cid = f"c{next(self.ids):063d}"
        image = next((n for n in self.images if self._image_id(n) == image), image)  # by name or id
        self.containers_by_id[cid] = {
            "Id": cid,
            "Name": name,
            "Image": image,
            "Path": "jupyterhub-singleuser",
            "Args": [],
            "Env": environment,
            "Config": {"Env": [f"{k}={v}" for k, v in (environment or {}).items()]},  # as Docker reports them
            "Labels": labels or {},
            "HostConfig": host_config,
            "State": {"Running": False, "ExitCode": 0, "Error": "", "FinishedAt": ""},
            "NetworkSettings": {
                "Networks": {
                    (host_config or {}).get("NetworkMode", "default"): {
                        "IPAddress": f"10.213.0.{int(cid[1:]) % 250 + 2}"
                    }
                }
            },
        }
        return {"Id": cid}

    def get_archive(self, cid, path):
        """A tar of the one file ``path``; only /etc/passwd exists (``passwd``)."""
        self.calls.append("get_archive")
        text = self.passwd.get(self._find(cid)["Image"]) if path == "/etc/passwd" else None
        if text is None:
            raise not_found(path)
        data, archive = text.encode(), io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[1])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return iter([archive.getvalue()]), {"name": info.name, "size": len(data)}

    def start(self, cid):
        self.calls.append("start")
        if self.fail_start:
            # as docker-py raises it: the daemon's words in ``explanation``
            why = self.fail_start if isinstance(self.fail_start, str) else None
            raise docker.errors.APIError("start failed", response=_Response(500), explanation=why)
        container = self._find(cid)
        if "gpuspawner.home.copy" in container["Labels"]:  # cp -a /from/. /to/
            binds = {b.split(":")[1]: b.split(":")[0] for b in container["HostConfig"]["Binds"]}
            if not self.fail_copy:
                self.volumes[binds["/to"]]["files"].update(self.volumes[binds["/from"]]["files"])
            container["State"]["ExitCode"] = 1 if self.fail_copy else 0
            return
        container["State"]["Running"] = True
        if self.exit_on_start is not None:
            self.crash(cid, self.exit_on_start)

    def wait(self, cid, timeout=None):
        return {"StatusCode": self._find(cid)["State"]["ExitCode"]}

    def inspect_volume(self, name):
        self.calls.append("inspect_volume")
        if name not in self.volumes:
            raise not_found(name)
        volume = self.volumes[name]
        return {"Name": name, "Labels": volume["Labels"] or None, "Options": volume.get("Options")}

    def create_volume(self, name, driver=None, driver_opts=None, labels=None):
        self.calls.append("create_volume")
        self.volumes.setdefault(name, {"Labels": dict(labels or {}), "files": {}})
        if driver_opts:
            self.volumes[name]["Options"] = dict(driver_opts)
        return {"Name": name}

    def remove_volume(self, name):
        self.calls.append("remove_volume")
        if name not in self.volumes:
            raise not_found(name)
        del self.volumes[name]

    def stop(self, cid):
        self.calls.append("stop")
        self._find(cid)["State"]["Running"] = False

    def remove_container(self, cid, **kwargs):
        self.calls.append("remove_container")
        self.containers_by_id.pop(self._find(cid)["Id"])

    def containers(self, filters=None, all=False):
        label = (filters or {}).get("label")
        return [
            c
            for c in self.containers_by_id.values()
            if (all or c["State"]["Running"]) and (label is None or label in c["Labels"])
        ]

    def logs(self, cid, stdout=True, stderr=True, tail="all"):
        self.calls.append("logs")
        if "gpuspawner.home.copy" in self._find(cid)["Labels"]:
            return b"cp: cannot write" if self.fail_copy else b""
        lines = self.log.splitlines(keepends=True)
        return b"".join(lines if tail == "all" else lines[-tail:])

    def top(self, cid):
        """As the engine's ``ps -ef``; a container that does not run has no processes (409)."""
        self.calls.append("top")
        if not self._find(cid)["State"]["Running"]:
            raise docker.errors.APIError(f"container {cid} is not running", response=_Response(409))
        rows = [["1000", str(pid), "0", "0", "10:00", "?", "00:00:00", p] for pid, p in enumerate(self.processes, 1)]
        return {"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], "Processes": rows}

    def crash(self, cid, status=1):
        self._find(cid)["State"].update(Running=False, ExitCode=status)


def fake_user(name="alice", groups=(), admin=False):
    return SimpleNamespace(
        name=name,
        id=sum(map(ord, name)) % 1000,
        created=None,
        url=f"/user/{name}/",
        base_url="/",
        server=None,
        groups=[SimpleNamespace(name=g) for g in groups],
        admin=admin,
    )


def make_spawner(spawner_class, fake_docker, user="alice", server_name="", groups=(), admin=False, **config):
    """A spawner of ``spawner_class`` talking to ``fake_docker`` instead of an engine."""
    config.setdefault("queue_file", "")  # never into the working tree
    config.setdefault("usage_db_url", "")

    async def answers(self, ip, port):  # a fake container's server answers as soon as it runs
        return fake_docker._find(self.object_id)["State"]["Running"]

    cls = type(
        "Fake" + spawner_class.__name__,
        (spawner_class,),
        {"client": fake_docker, "new_docker_client": lambda self: fake_docker, "_server_answers": answers},
    )
    orm_spawner = SimpleNamespace(name=server_name, display_name=server_name, state=None, server=None)
    spawner = cls(user=fake_user(user, groups, admin), hub=Hub(), orm_spawner=orm_spawner, **config)
    spawner.api_token = "token"
    return spawner
