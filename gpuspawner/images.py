"""Course images: pinned references, the CUDA they need, and pulls that block no one.

Pure functions decide (is a reference pinned, which CUDA an image declares,
does this host's driver run it, which digest ran); ``ImagePuller`` is the only
I/O, behind one seam: a callable returning a docker-py ``APIClient``.

Why its own threads: DockerSpawner sends every Docker call of every user
through one ``ThreadPoolExecutor(1)``, so a 10 GB pull there would hold up all
other users' creates and starts until it finished.
"""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .docker_client import LazyClient
from .labels import IMAGE_CUDA
from .quantities import format_bytes

if TYPE_CHECKING:
    import docker

#: Where an image may declare the CUDA it needs, first match wins. ``gpuspawner.cuda``
#: is the teacher's own label (it can describe a CUDA runtime that pip installed, e.g.
#: PyTorch's cu128 wheels, which the base image knows nothing about); ``CUDA_VERSION``
#: is what ``nvidia/cuda`` base images set; the other labels are set by some images.
CUDA_LABEL = IMAGE_CUDA
CUDA_ENV = "CUDA_VERSION"
OTHER_CUDA_LABELS = ("com.nvidia.cuda.version", "org.opencontainers.image.cuda")
#: The label of the short-lived containers ``ImagePuller.passwd`` reads an image's users from (never started).
PASSWD_LABEL = "gpuspawner.passwd-read"

#: The first Linux driver branch that supports each CUDA release (NVIDIA's CUDA
#: release notes, "CUDA Toolkit and Corresponding Driver Versions"); only for messages.
DRIVER_BRANCH = {
    (11, 0): 450, (11, 1): 455, (11, 2): 460, (11, 3): 465, (11, 4): 470, (11, 5): 495,
    (11, 6): 510, (11, 7): 515, (11, 8): 520, (12, 0): 525, (12, 1): 530, (12, 2): 535,
    (12, 3): 545, (12, 4): 550, (12, 5): 555, (12, 6): 560, (12, 8): 570, (12, 9): 575,
    (13, 0): 580,
}  # fmt: skip

_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
# A release's numbers, then what PEP 440 allows after them ("6.0.0b1", "5.3.0.dev0", "2.5.1+cu124").
_VERSION = re.compile(
    r"^(\d+)(?:\.(\d+))?(?:\.\d+)*(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview|post|rev|r|dev)\d*)*(?:\+[a-z0-9.]+)?$"
)


class ImageError(ValueError):
    """An image reference or pull that cannot be used; the message says what to do."""


def split_reference(image: str) -> tuple[str, str, str]:
    """``"host:5000/lab:1.0@sha256:..."`` -> (repository, tag, digest); '' for what is absent.

    The tag is after the last ``:`` of the last path component, so a registry
    port (``host:5000/lab``) is never mistaken for one.
    """
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest
    return rest, "", digest


def check_pinned(image: str, allow_unpinned: bool = False) -> None:
    """Refuse an image that may change under a running course: no tag, or ``latest``.

    A tag other than ``latest`` or a digest pins it. Unpinned, every pull (a new
    host, a pruned cache) can give students a different environment mid-term.
    """
    repo, tag, digest = split_reference(image.strip())
    if not repo:
        raise ImageError(f"image {image!r}: no repository name")
    if digest:
        if not _DIGEST.match(digest):
            raise ImageError(f"image {image!r}: {digest!r} is not a digest like 'sha256:<64 hex digits>'")
        return
    if allow_unpinned or tag not in ("", "latest"):
        return
    what = "has no tag (which means 'latest')" if not tag else "uses the tag 'latest'"
    raise ImageError(
        f"image {image!r} {what}, which can change under a running course: pin a tag such as"
        f" '{repo}:2026.1' or a digest '{repo}@sha256:...'"
    )


def major_minor(version: str) -> tuple[int, int] | None:
    """(12, 4) of ``"12.4.1"``; (12, 0) of ``"12"``; (6, 0) of ``"6.0.0b1"``; None when it is not a version."""
    m = _VERSION.match(version.strip())
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def _image_user(image_config: dict) -> str:
    config = image_config.get("Config", image_config) or {}
    return (config.get("User") or "").split(":")[0].strip()


def user_name_to_resolve(image_config: dict) -> str:
    """The image's user when it is a name other than ``root``, whose uid only the image's
    ``/etc/passwd`` knows; '' when the user is a number, root, or none."""
    user = _image_user(image_config)
    return "" if user in ("", "root") or user.isdigit() else user


def passwd_uid(passwd: str, name: str) -> int | None:
    """The uid of user ``name`` in the text of an ``/etc/passwd``; None when it is not there."""
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name:
            return int(fields[2]) if fields[2].isdigit() else None
    return None


def runs_as_root(image_config: dict, passwd: str = "") -> bool:
    """Whether an image's user is root: no user, ``root``, uid 0 written any way (``0``, ``00``),
    or a name that ``passwd`` (the image's ``/etc/passwd``, when read) gives uid 0 (``toor``).

    Takes ``inspect_image()["Config"]`` (or the whole ``inspect_image()`` result).
    """
    user = _image_user(image_config)
    if user in ("", "root") or user.isdigit():
        return user in ("", "root") or int(user) == 0
    return passwd_uid(passwd, user) == 0


#: Swarm's variables for the generic resources it assigns a task, ``DOCKER_RESOURCE_<KIND>`` (the kind in upper
#: case). On a GPU node the NVIDIA toolkit's ``swarm-resource`` setting takes a container's GPUs from them: the
#: union of every listed variable present, before ``NVIDIA_VISIBLE_DEVICES``. So they are Swarm's to set, never
#: an image's or a profile's.
RESOURCE_ENV_PREFIX = "DOCKER_RESOURCE_"


def resource_variable(kind: str) -> str:
    """The variable Swarm sets for units of generic resource ``kind``: ``DOCKER_RESOURCE_NVIDIA-GPU``."""
    return RESOURCE_ENV_PREFIX + kind.upper()


def is_resource_variable(name: str) -> bool:
    """Whether ``name`` is a ``DOCKER_RESOURCE_*`` variable (any case)."""
    return name.upper().startswith(RESOURCE_ENV_PREFIX)


def declared_resource_variables(image_config: dict) -> tuple[str, ...]:
    """The ``DOCKER_RESOURCE_*`` variables an image's own environment sets (its ``ENV`` lines), in order.

    Takes ``inspect_image()["Config"]`` (or the whole ``inspect_image()`` result).
    """
    config = image_config.get("Config", image_config) or {}
    names = (entry.partition("=")[0] for entry in config.get("Env") or ())
    return tuple(dict.fromkeys(name for name in names if is_resource_variable(name)))


def resource_variables_refusal(image: str, names: Iterable[str]) -> str | None:
    """Why an image that sets ``DOCKER_RESOURCE_*`` variables is refused, or None when it sets none."""
    names = list(names)
    if not names:
        return None
    listed = ", ".join(names)
    return (
        f"The image {image} sets {listed} in its environment. On a Swarm GPU node the NVIDIA toolkit takes a"
        " container's GPUs from such variables, so a value built into the image could name GPUs assigned to"
        " someone else. Remove that ENV line from the image: Swarm sets the variable itself for the GPUs it assigns."
    )


def declared_cuda(image_config: dict) -> str | None:
    """The CUDA version an image declares (e.g. ``"12.4.1"``, kept whole), or None.

    Takes ``inspect_image()["Config"]`` (or the whole ``inspect_image()`` result).
    Looks, in order, at the label ``gpuspawner.cuda``, the variable ``CUDA_VERSION``
    and the labels in ``OTHER_CUDA_LABELS``; values that are not versions are skipped.
    """
    config = image_config.get("Config", image_config) or {}
    labels = config.get("Labels") or {}
    env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
    for value in (labels.get(CUDA_LABEL), env.get(CUDA_ENV), *map(labels.get, OTHER_CUDA_LABELS)):
        if value and major_minor(value):
            return value.strip()
    return None


def cuda_refusal(image: str, image_cuda: str, driver_cuda: str, driver_version: str = "") -> str | None:
    """Why this host cannot run ``image``, or None when it can (or nobody can tell).

    ``driver_cuda`` is the highest CUDA the driver supports (NVML, e.g. ``"12.4"``).
    Conservative: the driver must support the image's major.minor. CUDA's "minor
    version compatibility" (a 12.8 runtime on a 12.0 driver) is not assumed, since
    PTX JIT and newer APIs fail under it in ways students cannot diagnose.
    """
    need, have = major_minor(image_cuda or ""), major_minor(driver_cuda or "")
    if need is None or have is None or have >= need:
        return None
    need_s, have_s = f"{need[0]}.{need[1]}", f"{have[0]}.{have[1]}"
    driver = f"NVIDIA driver {driver_version}" if driver_version else "NVIDIA driver"
    branch = DRIVER_BRANCH.get(need)
    upgrade = f" (CUDA {need_s} needs >= {branch})" if branch else f" to one that supports CUDA {need_s}"
    return (
        f"The image {image} needs CUDA {need_s}, but this host's {driver} supports up to CUDA {have_s}."
        f" Ask the admin to upgrade the driver{upgrade}, or choose a profile with an older image."
    )


def image_digest(inspect: dict, name: str = "") -> str:
    """The ``sha256:...`` that identifies what ran, from ``inspect_image()``.

    An image from a registry: its registry (manifest) digest from ``RepoDigests``,
    the one of repository ``name`` if given, else the first; ``repo@<digest>``
    pulls exactly it again. A locally built image has none: its Id (the config
    digest), which identifies it on this engine only.
    """
    repo = split_reference(name)[0] if name else ""
    digests = [d.partition("@") for d in inspect.get("RepoDigests") or []]
    for want in (repo, ""):
        for r, _, digest in digests:
            if not want or r == want:
                return digest
    return inspect["Id"]


@dataclass
class PullProgress:
    """Overall progress of one ``docker pull`` stream; pure, fed one event at a time.

    Each layer whose size S is known counts download and extraction as S bytes each:
    ``percent = floor(100 * sum(downloaded + extracted) / sum(2 * S))``. Sizes become
    known only as layers start downloading, so the raw figure can drop: the reported
    percent is the highest so far, capped at 99 until the pull has ended (then 100,
    set by whoever sees the stream end). Layers that "Already exists" are left out.
    """

    percent: int = 0
    digest: str = ""  # the registry's "Digest: sha256:..." line
    sizes: dict[str, int] = field(default_factory=dict)
    downloaded: dict[str, int] = field(default_factory=dict)
    extracted: dict[str, int] = field(default_factory=dict)

    def feed(self, event: dict) -> int:
        layer, status = event.get("id", ""), event.get("status", "")
        detail = event.get("progressDetail") or {}
        current, total = detail.get("current"), detail.get("total")
        if status in ("Downloading", "Extracting") and total and total > 0:
            self.sizes[layer] = max(self.sizes.get(layer, 0), total)
            done = self.downloaded if status == "Downloading" else self.extracted
            done[layer] = max(done.get(layer, 0), min(current or 0, total))
        if status in ("Verifying Checksum", "Download complete", "Extracting", "Pull complete"):
            self.downloaded[layer] = self.sizes.get(layer, 0)
        if status == "Pull complete":
            self.extracted[layer] = self.sizes.get(layer, 0)
        if status.startswith("Digest: "):
            self.digest = status.removeprefix("Digest: ").strip()
        total_work = 2 * sum(self.sizes.values())
        if total_work:
            work = sum(self.downloaded.values()) + sum(self.extracted.values())
            self.percent = max(self.percent, min(99, 100 * work // total_work))
        return self.percent

    def describe(self) -> str:
        total = sum(self.sizes.values())
        if not total:
            return "starting"
        complete = sum(1 for k, s in self.sizes.items() if self.extracted.get(k, 0) >= s)
        return (
            f"{format_bytes(sum(self.downloaded.values()), decimal=True)} of {format_bytes(total, decimal=True)} downloaded,"
            f" {complete} of {len(self.sizes)} layers extracted"
        )


class PullTask:
    """One image being made present; shared by every spawn that waits for it.

    Written only by a puller thread (under ``_lock``); read from the event loop.
    """

    def __init__(self, image: str):
        self.image = image
        self.percent = 0
        self.status = f"Waiting to pull {image}"
        self.done = False
        self.error = ""  # the registry's or engine's message, when the pull failed
        self.digest = ""
        self._lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @classmethod
    def present(cls, image: str) -> PullTask:
        task = cls(image)
        task._update(100, f"{image} is present", done=True)
        return task

    def _update(self, percent: int, status: str, *, done: bool = False, error: str = "") -> None:
        """From any thread: record progress and wake every ``updates()`` on its own loop."""
        with self._lock:
            if (max(self.percent, percent), status, done) == (self.percent, self.status, self.done):
                return
            self.percent = max(self.percent, percent)
            self.status, self.done, self.error = status, done, error
            listeners = list(self._listeners)
        for loop, event in listeners:
            try:
                loop.call_soon_threadsafe(event.set)  # asyncio.Event is not thread-safe
            except RuntimeError:  # that loop is closed; its listener is gone
                pass

    async def updates(self) -> AsyncIterator[tuple[int, str]]:
        """Yield ``(percent, status)`` as it changes, until the task is done.

        Updates that arrive faster than the consumer reads are merged: it always
        gets the latest. Ends without raising; ``wait()`` raises on failure.
        """
        event = asyncio.Event()
        me = (asyncio.get_running_loop(), event)
        with self._lock:
            self._listeners.append(me)
        try:
            last = None
            while True:
                event.clear()
                with self._lock:
                    now, done = (self.percent, self.status), self.done
                if now != last:
                    last = now
                    yield now
                if done:
                    return
                await event.wait()
        finally:
            with self._lock:
                self._listeners.remove(me)

    async def wait(self) -> None:
        """Until the image is present; raises ImageError with the registry's message."""
        async for _ in self.updates():
            pass
        if self.error:
            raise ImageError(self.error)


class ImagePuller:
    """Pulls images on its own threads, one pull per image however many spawns ask.

    ``client`` returns the docker-py ``APIClient`` to use; it is called on first use
    (and again after a call to the engine failed), and that client is then used from
    this puller's threads (not DockerSpawner's), up to ``max_concurrent + 1`` at once. Tasks are keyed by the exact image string, so
    ``lab:1`` and ``docker.io/library/lab:1`` are two pulls.
    """

    def __init__(self, client: Callable[[], docker.APIClient], max_concurrent: int = 2):
        self._lock = threading.Lock()
        # Under the same lock: a pull gets its client once ensure() has handed its task out.
        self._docker = LazyClient(client, self._lock)
        self._pulls = ThreadPoolExecutor(max_concurrent, thread_name_prefix="gpuspawner-pull")
        # Presence checks get their own thread, so they never queue behind long pulls.
        self._checks = ThreadPoolExecutor(1, thread_name_prefix="gpuspawner-image-check")
        self._tasks: dict[str, PullTask] = {}
        self._passwd: dict[str, str] = {}  # image id -> its /etc/passwd (images are immutable by id)

    def _is_present(self, image: str) -> bool:
        import docker.errors  # the puller's I/O only: the pure checks above import no Docker

        with self._docker.use() as client:
            try:
                client.inspect_image(image)
            except docker.errors.NotFound:
                return False
        return True

    async def ensure(self, image: str) -> PullTask:
        """A task that ends when ``image`` is present: done already if it is, else its pull."""
        with self._lock:
            task = self._tasks.get(image)
        if task is not None and not task.done:
            return task
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self._checks, self._is_present, image):
            return PullTask.present(image)
        with self._lock:
            task = self._tasks.get(image)
            if task is None or task.done:  # none yet, or an old one (failed, or image since removed)
                task = self._tasks[image] = PullTask(image)
                self._pulls.submit(self._pull, task)
        return task

    async def prepull(self, images: Iterable[str]) -> list[PullTask]:
        """Start pulling every missing image; returns once the pulls are under way."""
        return list(await asyncio.gather(*(self.ensure(i) for i in dict.fromkeys(images))))

    def _pull(self, task: PullTask) -> None:
        import docker.errors

        repo, tag, digest = split_reference(task.image)
        progress = PullProgress()
        task._update(0, f"Pulling {task.image}")
        refused = ""
        try:
            with self._docker.use() as client:  # the engine failed: a new client for the next call
                for event in client.pull(repo, tag=digest or tag or "latest", stream=True, decode=True):
                    if "error" in event:  # the registry's answer, through an engine that works
                        refused = (event.get("errorDetail") or {}).get("message") or event["error"]
                        break
                    percent = progress.feed(event)
                    task._update(percent, f"Pulling {task.image}: {progress.describe()}")
            if refused:
                raise ImageError(refused)
        except Exception as e:  # noqa: BLE001 - any failure ends the task, and every waiter sees it
            why = (e.explanation or e) if isinstance(e, docker.errors.APIError) else e
            task._update(task.percent, "Pull failed", done=True, error=f"Could not pull {task.image}: {why}")
        else:
            task.digest = progress.digest
            task._update(100, f"Pulled {task.image}", done=True)

    async def passwd(self, inspect: dict) -> str:
        """The image's ``/etc/passwd`` when its user is a name other than root (``user_name_to_resolve``),
        so that the name can be resolved to a uid; '' when not needed, or when it cannot be read.

        Read once per image id, on the presence-check thread, from a container created from the
        image and removed at once, never started. Unreadable: Docker could not start the image
        as that user either, so the name is taken for what it says.
        """
        if not user_name_to_resolve(inspect):
            return ""
        image_id = inspect["Id"]
        with self._lock:
            known = self._passwd.get(image_id)
        if known is None:
            known = await asyncio.get_running_loop().run_in_executor(self._checks, self._read_passwd, image_id)
            if known is not None:
                with self._lock:
                    self._passwd[image_id] = known
        return known or ""

    def _read_passwd(self, image_id: str) -> str | None:
        """The text of ``/etc/passwd`` in the image; '' when it has none; None when the engine failed."""
        import docker.errors

        try:
            with self._docker.use() as client:
                cid = client.create_container(
                    image_id, command=["true"], entrypoint=[], network_disabled=True, labels={PASSWD_LABEL: "1"}
                )["Id"]
                try:
                    stream, _ = client.get_archive(cid, "/etc/passwd")
                    archive = b"".join(stream)
                except docker.errors.NotFound:
                    return ""
                finally:
                    client.remove_container(cid, force=True)
        except docker.errors.APIError:
            return None
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.next()
            data = tar.extractfile(member) if member is not None and member.isfile() else None
            return data.read().decode(errors="replace") if data is not None else ""

    def close(self) -> None:
        """Take no new work; pulls already started or queued finish in the background."""
        self._pulls.shutdown(wait=False)
        self._checks.shutdown(wait=False)


__all__ = [
    "CUDA_ENV",
    "CUDA_LABEL",
    "ImageError",
    "ImagePuller",
    "PullProgress",
    "PullTask",
    "RESOURCE_ENV_PREFIX",
    "check_pinned",
    "cuda_refusal",
    "declared_cuda",
    "declared_resource_variables",
    "image_digest",
    "is_resource_variable",
    "passwd_uid",
    "resource_variable",
    "resource_variables_refusal",
    "runs_as_root",
    "split_reference",
    "user_name_to_resolve",
]
