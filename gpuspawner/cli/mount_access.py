"""Datasets and shares as the servers' users find them, looked at through the hub's engine.

``doctor`` runs here on the hub's host or in the hub's container, which may see the
mount roots read-only, or not at all: only the engine sees the sources as a server
will. So for each profile image on the engine, one short container of that image,
as the user a server of it runs as (the image's, or ``extra_create_kwargs``'), with
the same hardening, no network, and every dataset and share of its profiles mounted
as a server mounts them (shares writable for their writers). It only looks: ``test``
(access(2)), ``ls -A`` and ``stat``; nothing is written.

A host path that is not there fails the container's creation (bind mounts of the
``Mounts`` API are never created), which is how its absence is learnt; a volume is
inspected, never mounted when missing (Docker would create it).

Pure: ``mount_uses``, ``LOOK_SH`` and ``parse_look``; the rest is the engine's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import docker
import docker.errors
import docker.types
import requests

from ..profiles import Profile
from .probe import CLI_LABEL

DATASET, SHARE = "dataset", "share"

#: Where the sources are mounted in the look's container: ``/gpuspawner-doctor/<n>``.
TARGET_ROOT = "/gpuspawner-doctor"


@dataclass(frozen=True)
class MountUse:
    """One dataset or share as the servers of one image mount it (all its profiles together)."""

    kind: str  # DATASET or SHARE
    name: str  # the folder students see: ~/datasets/<name>, ~/shared/<name>
    source: str  # an absolute host path, or a volume's name
    image: str
    writers: tuple[str, ...] = ()  # the groups that may write it (shares' writable_by); empty: read-only
    profiles: tuple[str, ...] = ()

    @property
    def host_path(self) -> bool:
        return self.source.startswith("/")

    @property
    def what(self) -> str:
        return f"{'host path' if self.host_path else 'volume'} {self.source}"


def mount_uses(profiles: Iterable[Profile]) -> list[MountUse]:
    """Every dataset and share of ``profiles``, once per (kind, source, image), in the config's order."""
    found: dict[tuple[str, str, str], MountUse] = {}
    for p in profiles:
        for kind, mounts in ((DATASET, p.datasets), (SHARE, p.shares)):
            for m in mounts:
                key = (kind, m.source, p.image)
                use = found.get(key) or MountUse(kind, m.name, m.source, p.image)
                found[key] = MountUse(
                    kind,
                    use.name,
                    m.source,
                    p.image,
                    tuple(sorted({*use.writers, *m.writable_by})),
                    (*use.profiles, p.slug) if p.slug not in use.profiles else use.profiles,
                )
    return list(found.values())


@dataclass(frozen=True)
class RunAs:
    """Who a server of the image runs as."""

    uid: int
    gid: int
    user: str = ""

    def __str__(self) -> str:
        return f"uid {self.uid}" + (f" ({self.user})" if self.user else "")


@dataclass(frozen=True)
class SourceSeen:
    """What the server's user finds at a mounted source."""

    folder: bool
    readable: bool
    enterable: bool  # may search it (x): needed, with readable, to use a folder
    writable: bool
    has_entries: bool  # a folder with something in it; a file that is not empty
    owner: str = ""  # "uid:gid" of the source, '' when unknown
    mode: str = ""  # its permission bits in octal ("700"), '' when unknown

    @property
    def usable(self) -> bool:
        """Whether the user can read it: a folder needs r and x, a file r."""
        return self.readable and (self.enterable or not self.folder)

    @property
    def owner_uid(self) -> int | None:
        uid = self.owner.partition(":")[0]
        return int(uid) if uid.isdigit() else None

    def describe(self) -> str:
        """'owned by 0:0, mode 700', or '' when ``stat`` could not say."""
        return f"owned by {self.owner}, mode {self.mode}" if self.owner and self.mode else ""


@dataclass
class ImageLook:
    """What one container of an image found: who it ran as and, by source, what it saw."""

    image: str
    run_as: RunAs | None = None
    seen: dict[str, SourceSeen] = field(default_factory=dict)
    error: str = ""  # why it could not look ('' when it did)


@dataclass
class MountsLooked:
    """Everything learnt about the sources through the engine."""

    missing: set[str] = field(default_factory=set)  # the engine has no such path or volume
    there: set[str] = field(default_factory=set)  # the engine has it
    by_image: dict[str, ImageLook] = field(default_factory=dict)  # images on the engine, looked with

    def knows(self, source: str) -> bool:
        return source in self.missing or source in self.there


# Run by /bin/sh as the server's user, the mounted sources as arguments. Output: one "user"
# line, then one "source N ..." line per argument (N its position: a path may hold spaces).
LOOK_SH = r"""
printf 'user %s %s %s\n' "$(id -u 2>/dev/null)" "$(id -g 2>/dev/null)" "$(id -un 2>/dev/null)"
i=0
for p in "$@"; do
    f=0; r=0; x=0; w=0; e=0
    [ -d "$p" ] && f=1
    [ -r "$p" ] && r=1
    [ -x "$p" ] && x=1
    [ -w "$p" ] && w=1
    if [ "$f" = 1 ]; then
        [ -n "$(ls -A "$p" 2>/dev/null | head -n 1)" ] && e=1
    else
        [ -s "$p" ] && e=1
    fi
    o=$(stat -c '%u:%g %a' "$p" 2>/dev/null) || o='- -'
    printf 'source %s folder=%s read=%s enter=%s write=%s entries=%s owner=%s mode=%s\n' \
        "$i" "$f" "$r" "$x" "$w" "$e" "${o% *}" "${o#* }"
    i=$((i + 1))
done
"""

_USER = re.compile(r"^user (\d+) (\d+) ?(\S*)$")
_SOURCE = re.compile(r"^source (\d+) (.*)$")


def parse_look(text: str, sources: list[str]) -> tuple[RunAs | None, dict[str, SourceSeen]]:
    """Who the look ran as, and what it saw of each of ``sources`` (in the order they were mounted).

    Lines it does not know are ignored (an image's shell profile may print things).
    """
    run_as, seen = None, {}
    for line in text.splitlines():
        line = line.strip()
        m = _USER.match(line)
        if m:
            run_as = RunAs(int(m.group(1)), int(m.group(2)), m.group(3))
            continue
        m = _SOURCE.match(line)
        if not m or int(m.group(1)) >= len(sources):
            continue
        values = dict(part.partition("=")[::2] for part in m.group(2).split())
        seen[sources[int(m.group(1))]] = SourceSeen(
            folder=values.get("folder") == "1",
            readable=values.get("read") == "1",
            enterable=values.get("enter") == "1",
            writable=values.get("write") == "1",
            has_entries=values.get("entries") == "1",
            owner=values.get("owner", "").strip("-"),
            mode=values.get("mode", "").strip("-"),
        )
    return run_as, seen


_MISSING_PATH = re.compile(r"bind source path does not exist: (.+?)\s*$")


def _mount(use: MountUse, target: str) -> docker.types.Mount:
    return docker.types.Mount(
        target,
        use.source,
        type="bind" if use.host_path else "volume",
        read_only=not use.writers,  # as a server of a writer mounts it; nothing is written
        no_copy=not use.host_path,  # never fill a volume with the image's files
    )


def _create(client: docker.APIClient, image: str, uses: list[MountUse], looker: dict, missing: set[str]) -> str:
    """Create the look's container with every source of ``uses`` not known missing; a host path the
    engine does not have is added to ``missing`` and the rest tried again. Returns the container's id."""
    while True:
        mounted = [u for u in uses if u.source not in missing]
        targets = [f"{TARGET_ROOT}/{n}" for n in range(len(mounted))]
        host_config = client.create_host_config(
            network_mode="none",
            cap_drop=looker["cap_drop"] or None,
            security_opt=["no-new-privileges"] if looker["no_new_privileges"] else None,
            group_add=looker["group_add"] or None,
            pids_limit=64,
            mem_limit="256m",
            mounts=[_mount(u, t) for u, t in zip(mounted, targets)],
        )
        try:
            container = client.create_container(
                image,
                command=[LOOK_SH, "sh", *targets],
                entrypoint=["/bin/sh", "-c"],
                user=looker["user"] or None,
                environment={"NVIDIA_VISIBLE_DEVICES": "void"},
                labels={CLI_LABEL: "doctor-mounts"},
                host_config=host_config,
                network_disabled=True,
            )
        except docker.errors.APIError as e:
            gone = _MISSING_PATH.search(str(e.explanation or ""))
            if gone and gone.group(1) not in missing:
                missing.add(gone.group(1))
                continue
            raise
        return container["Id"]


def look_at_mounts(
    client: docker.APIClient,
    uses: list[MountUse],
    *,
    user: str = "",
    group_add: Iterable[str] = (),
    cap_drop: Iterable[str] = ("ALL",),
    no_new_privileges: bool = True,
    timeout: float = 30,
) -> MountsLooked:
    """Look at every source of ``uses`` through the engine: one container per image on the engine.

    ``user``, ``group_add``: who the servers run as, when the config says (else the image's user);
    ``cap_drop``, ``no_new_privileges``: the servers' hardening (root without capabilities cannot read
    a stranger's mode 700 folder).
    """
    looked = MountsLooked()
    for source in {u.source for u in uses if not u.host_path}:
        try:
            client.inspect_volume(source)
            looked.there.add(source)
        except docker.errors.NotFound:
            looked.missing.add(source)
    looker = {
        "user": user,
        "group_add": [str(g) for g in group_add],
        "cap_drop": list(cap_drop),
        "no_new_privileges": no_new_privileges,
    }
    images = list(dict.fromkeys(u.image for u in uses))
    present = [i for i in images if _on_engine(client, i)]
    for image in present:
        its = [u for u in uses if u.image == image and u.source not in looked.missing]
        looked.by_image[image] = _look(client, image, its, looker, looked, timeout)
    # Host paths only images absent from the engine mount: created, never started, to learn if they are there.
    unknown = [u for u in uses if u.host_path and not looked.knows(u.source)]
    if unknown and present:
        try:
            cid = _create(client, present[0], unknown, looker, looked.missing)
            client.remove_container(cid, force=True)
            looked.there.update(u.source for u in unknown if u.source not in looked.missing)
        except docker.errors.APIError:
            pass  # told by the caller as not known
    return looked


def _on_engine(client: docker.APIClient, image: str) -> bool:
    try:
        client.inspect_image(image)
    except docker.errors.NotFound:
        return False
    return True


def _look(client, image: str, uses: list[MountUse], looker: dict, looked: MountsLooked, timeout: float) -> ImageLook:
    try:
        cid = _create(client, image, uses, looker, looked.missing)
    except docker.errors.APIError as e:
        return ImageLook(image, error=str(e.explanation or e))
    mounted = [u.source for u in uses if u.source not in looked.missing]
    looked.there.update(u.source for u in uses if u.host_path and u.source not in looked.missing)
    try:
        if not mounted:
            return ImageLook(image)  # every source it mounts is missing: nothing to look at
        client.start(cid)
        status = client.wait(cid, timeout=timeout).get("StatusCode", 0)
        out = client.logs(cid, stdout=True, stderr=False).decode(errors="replace")
        run_as, seen = parse_look(out, mounted)
        if run_as is None:
            err = client.logs(cid, stdout=False, stderr=True).decode(errors="replace").strip().splitlines()
            return ImageLook(image, error=f"exit status {status}: {err[-1] if err else 'no output'}")
        return ImageLook(image, run_as, seen)
    except docker.errors.APIError as e:
        return ImageLook(image, error=str(e.explanation or e))
    except requests.exceptions.RequestException:
        return ImageLook(image, error=f"it did not finish within {timeout:g} s")
    finally:
        try:
            client.remove_container(cid, force=True)
        except docker.errors.APIError:
            pass


__all__ = [
    "DATASET",
    "LOOK_SH",
    "SHARE",
    "ImageLook",
    "MountUse",
    "MountsLooked",
    "RunAs",
    "SourceSeen",
    "look_at_mounts",
    "mount_uses",
    "parse_look",
]
