"""What ``gpuspawner image build`` puts in an image, decided before anything is built (pure).

The arguments checked (pinned names, dataset dirs), the base judged from one probe
run (``ImageFacts``), the plan (``BuildPlan``) and its Dockerfile, and the engine's
build stream read line by line. The build itself is in ``image_build.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .. import labels as label
from ..images import ImageError, check_pinned, major_minor, runs_as_root, split_reference
from ..quantities import format_bytes
from .findings import FAIL, OK, WARN, Finding
from .probe import ImageFacts

#: Where ``image build`` puts the datasets baked into an image, one folder per ``--data`` dir.
DATASETS_DIR = "/opt/datasets"
#: Over this, a dataset belongs in a mount (a profile's ``datasets``), not in the image.
DATASET_WARN_BYTES = 500 * 1000**2
#: Where the build's own files (requirements, wheels) go inside the image; removed in the same step.
BUILD_DIR = "/tmp/gpuspawner-build"

#: The labels ``image build`` sets on what it builds.
LABEL_BASE = "org.opencontainers.image.base.name"
LABEL_JUPYTERHUB = label.IMAGE_JUPYTERHUB
LABEL_REQUIREMENTS = label.IMAGE_REQUIREMENTS
LABEL_DATASETS = label.IMAGE_DATASETS

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class BuildRefused(ValueError):
    """``image build`` will not start: the message says what to change."""


@dataclass(frozen=True)
class Dataset:
    """One ``--data`` dir: baked in at ``/opt/datasets/<name>``."""

    name: str  # the folder's own name
    source: str  # the dir on this machine
    size: int = 0  # bytes


@dataclass(frozen=True)
class BuildPlan:
    """What ``image build`` will put in the image, decided before anything is built."""

    base: str
    tag: str
    jupyterhub: str  # the hub's version: installed when ``install_jupyterhub``
    install_jupyterhub: bool
    python: str  # the base's interpreter that runs jupyterhub-singleuser (pip runs with it)
    user: str = ""  # the base's USER, restored after the root steps
    requirements_sha256: str = ""  # '' when no requirements file was given
    wheels: bool = False  # a local wheel dir goes into the build: pip --find-links it
    datasets: tuple[Dataset, ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        labels = {LABEL_BASE: self.base, LABEL_JUPYTERHUB: self.jupyterhub}
        if self.requirements_sha256:
            labels[LABEL_REQUIREMENTS] = f"sha256:{self.requirements_sha256}"
        labels[LABEL_DATASETS] = ",".join(d.name for d in self.datasets)
        return labels


def check_build_tags(base: str, tag: str) -> None:
    """Refuse an unpinned base, or an output tag that is missing, ``latest`` or a digest.

    Raises ``BuildRefused`` with ``check_pinned``'s message (the hub's own rule).
    """
    for what, ref in (("--base", base), ("--tag", tag)):
        if not ref:
            raise BuildRefused(f"{what} is required")
        try:
            check_pinned(ref)
        except ImageError as e:
            raise BuildRefused(f"{what}: {e}") from None
    if split_reference(tag)[2]:
        raise BuildRefused(f"--tag {tag!r}: a digest is what a build produces, not a name to give it: use NAME:TAG")


def dataset_names(dirs: Iterable[str]) -> list[str]:
    """The name each ``--data`` dir gets under /opt/datasets (its own name); refuses clashes."""
    names: list[str] = []
    for d in dirs:
        name = d.rstrip("/").rsplit("/", 1)[-1]
        if not _DATASET_NAME.match(name):
            raise BuildRefused(f"--data {d!r}: the folder's name {name!r} cannot name a dataset (letters, digits, ._-)")
        if name in names:
            raise BuildRefused(f"--data {d!r}: two datasets named {name!r}; rename one of the folders")
        names.append(name)
    return names


def needs_jupyterhub(facts: ImageFacts, hub_version: str) -> bool:
    """Install jupyterhub==<hub's> when the base has no jupyterhub-singleuser, or one of another major.minor.

    A base whose singleuser has the hub's major.minor is kept as it is: ``image check``
    accepts it, and reinstalling could disturb the base's own pins.
    """
    if not facts.singleuser or not facts.jupyterhub:
        return True
    return major_minor(facts.jupyterhub) != major_minor(hub_version)


def jupyterhub_step(facts: ImageFacts, hub_version: str) -> tuple[bool, Finding]:
    """Whether ``image build`` installs jupyterhub==<hub's> in this base, and the line saying so."""
    install = needs_jupyterhub(facts, hub_version)
    has = (
        f"has JupyterHub {facts.jupyterhub}"
        if facts.singleuser and facts.jupyterhub
        else "has no jupyterhub-singleuser"
    )
    does = f"installing jupyterhub=={hub_version} (the hub's)" if install else "kept"
    return install, Finding(OK, "jupyterhub", f"the base {has}: {does}")


def base_findings(facts: ImageFacts) -> list[Finding]:
    """Why a base cannot be built on (its probe failed, or it has no Python for pip)."""
    if facts.probe_error:
        return [Finding(FAIL, "base", f"{facts.image}: the check of the base failed: {facts.probe_error}")]
    if not facts.python:
        return [
            Finding(
                FAIL,
                "base",
                f"{facts.image} has no Python: pip cannot install into it",
                "start from a base with Python 3 and pip (a jupyter/docker-stacks or pytorch image)",
            )
        ]
    return []


def _json_word(value: str) -> str:
    return json.dumps(value)


def dockerfile(plan: BuildPlan) -> str:
    """The Dockerfile of ``image build``, for a context holding ``requirements.txt``,
    ``wheels/`` (when ``plan.wheels``) and ``data/<name>/`` for each dataset."""
    lines = ["# Generated by `gpuspawner image build`.", f"FROM {plan.base}", "USER root"]
    packages = []
    if plan.install_jupyterhub:
        packages.append(f"jupyterhub=={plan.jupyterhub}")
    if plan.requirements_sha256 or packages:
        pip = [plan.python, "-m", "pip", "install", "--no-cache-dir"]
        if plan.wheels:
            lines.append(f"COPY wheels {BUILD_DIR}/wheels")
            pip += ["--find-links", f"{BUILD_DIR}/wheels"]
        if plan.requirements_sha256:
            lines.append(f"COPY requirements.txt {BUILD_DIR}/requirements.txt")
            pip += ["-r", f"{BUILD_DIR}/requirements.txt"]
        pip += packages  # in the same pip run as the requirements: one resolution, conflicts named
        lines.append(f"RUN {' '.join(_shell_word(w) for w in pip)} && rm -rf {BUILD_DIR}")
    for d in plan.datasets:
        lines.append(f"COPY data/{d.name} {DATASETS_DIR}/{d.name}")
    labels = " ".join(f"{_json_word(k)}={_json_word(v)}" for k, v in plan.labels.items())
    lines.append(f"LABEL {labels}")
    if not runs_as_root({"User": plan.user}):
        lines.append(f"USER {plan.user}")
    else:
        # A base that runs as root (pytorch/pytorch, nvidia/cuda): students get a user of
        # their own, uid 1000 as in Jupyter's images, with a home for their volume.
        lines += [
            f"RUN (getent passwd {STUDENT_UID} >/dev/null || useradd -m -u {STUDENT_UID} -s /bin/bash jovyan"
            f" || echo 'jovyan:x:{STUDENT_UID}:{STUDENT_UID}::{STUDENT_HOME}:/bin/sh' >> /etc/passwd)"
            f" && mkdir -p {STUDENT_HOME} && chown {STUDENT_UID}:{STUDENT_UID} {STUDENT_HOME}",
            f"ENV HOME={STUDENT_HOME}",
            f"WORKDIR {STUDENT_HOME}",
            f"USER {STUDENT_UID}",
        ]
    return "\n".join(lines) + "\n"


#: The user ``image build`` adds to a base that runs as root.
STUDENT_UID = 1000
STUDENT_HOME = "/home/jovyan"


def _shell_word(word: str) -> str:
    return word if re.match(r"^[A-Za-z0-9_./=:+,@%-]+$", word) else "'" + word.replace("'", "'\\''") + "'"


def build_event(event: dict) -> tuple[str, str, str]:
    """One event of the engine's build stream: (text to show, image id, error); '' for what it lacks.

    The classic builder sends ``{"stream": "Step 1/5 : FROM ..."}``, ``{"status": ...}``
    (pulling the base), ``{"aux": {"ID": "sha256:..."}}`` and, on failure, ``{"error": ...}``.
    """
    if "error" in event:
        return ("", "", ((event.get("errorDetail") or {}).get("message") or str(event["error"])).strip())
    image_id = (event.get("aux") or {}).get("ID", "") if isinstance(event.get("aux"), dict) else ""
    text = event.get("stream") or ""
    if not text and event.get("status"):
        text = " ".join(str(event[k]) for k in ("id", "status", "progress") if event.get(k))
    return text.rstrip("\n"), image_id, ""


def dataset_finding(d: Dataset) -> Finding:
    if d.size > DATASET_WARN_BYTES:
        return Finding(
            WARN,
            f"dataset {d.name}",
            f"{d.source} is {format_bytes(d.size)}: every copy of the image carries it, and every change is a new image",
            f"mount it instead: a profile's datasets: [{{name: {d.name}, source: {d.source}}}]",
        )
    return Finding(OK, f"dataset {d.name}", f"{d.source} ({format_bytes(d.size)}) -> {DATASETS_DIR}/{d.name}")
