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
from .server_start import JUPYTER_COMMAND, server_command

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
    wheels: bool = False  # a local wheel dir goes into the build: pip installs from it alone (offline)
    datasets: tuple[Dataset, ...] = ()
    command: tuple[str, ...] = ()  # the CMD the image gets, when the base's is not a Jupyter server's
    sftp_with: str = ""  # the base's package manager, when OpenSSH's sftp-server is to be installed with it

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


#: How ``image build --sftp`` installs OpenSSH's sftp-server, by the base's package manager
#: (Fedora and RHEL ship it in openssh-server; nothing is started by installing it).
SFTP_INSTALL = {
    "apt-get": "apt-get update -q && apt-get install -y -q --no-install-recommends openssh-sftp-server"
    " && rm -rf /var/lib/apt/lists/*",
    "dnf": "dnf install -y openssh-server && dnf clean all",
    "microdnf": "microdnf install -y openssh-server && microdnf clean all",
    "yum": "yum install -y openssh-server && yum clean all",
    "apk": "apk add --no-cache openssh-sftp-server",
}


def sftp_step(facts: ImageFacts) -> tuple[str, Finding]:
    """``--sftp``: the package manager to install sftp-server with ('' when the base has it), and the line saying so."""
    if facts.sftp_server:
        return "", Finding(OK, "sftp", f"the base has {facts.sftp_server}: kept")
    if facts.package_manager in SFTP_INSTALL:
        return facts.package_manager, Finding(
            OK, "sftp", f"the base has no sftp-server: installing OpenSSH's with {facts.package_manager}"
        )
    return "", Finding(
        FAIL,
        "sftp",
        "--sftp: the base has no sftp-server and none of apt-get, dnf, microdnf, yum or apk to install it with",
        "build on a base with a package manager, or copy a static sftp-server into /usr/lib/openssh/ yourself",
    )


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
    if plan.sftp_with:
        lines.append(f"RUN {SFTP_INSTALL[plan.sftp_with]}")
    packages = []
    if plan.install_jupyterhub:
        packages.append(f"jupyterhub=={plan.jupyterhub}")
    if plan.requirements_sha256 or packages:
        pip = [plan.python, "-m", "pip", "install", "--no-cache-dir"]
        if plan.wheels:
            lines.append(f"COPY wheels {BUILD_DIR}/wheels")
            pip += ["--no-index", "--find-links", f"{BUILD_DIR}/wheels"]
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
    if plan.command:
        lines.append(f"CMD {json.dumps(list(plan.command))}")
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


# --- the start command ------------------------------------------------------------------------


def start_command_step(base_config: dict) -> tuple[tuple[str, ...], Finding]:
    """The CMD ``image build`` sets (none when the base's command is a Jupyter server's), and the line saying so.

    The hub runs the image's command (DockerSpawner: the ENTRYPOINT, then the CMD), so a
    base such as ``pytorch/pytorch`` (``CMD ["python3"]``, or ``bash``) would give a server
    that exits at once. Its ENTRYPOINT, when it has one, is kept: NVIDIA's run the CMD.
    """
    command = server_command(base_config)
    if command.looks_like_jupyter:
        return (), Finding(OK, "command", f"the base runs {command.describe()}: kept")
    was = command.describe() if not command.missing else "no command"
    return JUPYTER_COMMAND, Finding(
        OK, "command", f"the base runs {was}: setting CMD {json.dumps(list(JUPYTER_COMMAND))}, which the hub runs"
    )


# --- a tag the hub's profiles use ---------------------------------------------------------------


def _repository(name: str) -> str:
    """A repository as Docker Hub names it with or without its defaults: ``docker.io/library/x`` is ``x``."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.removeprefix("library/")


def tag_users(tag: str, profiles: Iterable) -> list:
    """The profiles whose image is ``tag`` by name (not pinned by a digest): building it again changes them."""
    repo, name_tag, _ = split_reference(tag)
    used = []
    for p in profiles:
        p_repo, p_tag, p_digest = split_reference(p.image)
        if not p_digest and p_tag == name_tag and _repository(p_repo) == _repository(repo):
            used.append(p)
    return used


def check_tag_unused(tag: str, profiles: Iterable, force: bool) -> Finding | None:
    """Refuse to move a tag that profiles use (``BuildRefused``), unless ``force``: then the line saying which change."""
    users = tag_users(tag, profiles)
    if not users:
        return None
    slugs = ", ".join(p.slug for p in users)
    if not force:
        raise BuildRefused(
            f"--tag {tag}: the hub's profiles {slugs} use this tag, and building it again would change their image"
            " under a running course. Build under a new tag and pin that in the profiles (or add --force to move"
            f" it: {slugs} would get the new image at their next start)"
        )
    return Finding(
        WARN,
        "tag",
        f"moving {tag} (--force): profiles {slugs} get the new image at their next start;"
        " servers running now keep the old one",
    )


# --- a failed build: pip's own words, and what to do --------------------------------------------

_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_CERTIFICATE = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSLError", re.IGNORECASE)
_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|No route to host|Connection refused|ConnectTimeoutError"
    r"|Read timed out|ProxyError|Could not fetch URL|connection broken by",
    re.IGNORECASE,
)
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_VERSIONS = re.compile(r"\(from versions: ([^)]*)\)")
#: pip's ``ERROR:`` lines the verdict quotes, at most.
PIP_ERRORS_SHOWN = 6


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape codes (pip's colours, ``\\x1b[91m`` ... ``\\x1b[0m``)."""
    return _ESCAPE.sub("", text)


def pip_errors(log: str) -> list[str]:
    """pip's own error lines in a build's output (``ERROR: ...``, and ``error: <kind>`` of its
    longer diagnostics), once each, in order."""
    found: list[str] = []
    for line in strip_escapes(log).splitlines():
        line = line.strip()
        if line.startswith(("ERROR:", "error:")) and line not in found:
            found.append(line)
    return found


def pip_download_command(requirements: str, plan: BuildPlan, base_python: str, host_python: str) -> str:
    """The ``pip download`` that makes the wheels of the offline route (``--wheels wheels``).

    For the base's Python when it is not the one here (``--python-version``: wheels only).
    """
    words = ["pip", "download", "-d", "wheels"]
    if requirements:
        words += ["-r", requirements]
    if plan.install_jupyterhub:
        words.append(f"jupyterhub=={plan.jupyterhub}")
    base, here = major_minor(base_python), major_minor(host_python)
    if base and base != here:
        words += ["--python-version", f"{base[0]}.{base[1]}", "--only-binary=:all:"]
    return " ".join(_shell_word(w) for w in words)


def build_failure_findings(
    message: str, log: str, plan: BuildPlan, requirements: str, base_python: str, host_python: str
) -> list[Finding]:
    """Why a build failed, in pip's own words when pip failed, with what to do about it.

    ``message`` is the engine's (``The command ... returned a non-zero code: 1``), ``log``
    the build's output, ``requirements`` the file as it was named on the command line.
    """
    errors = pip_errors(log)
    plain = strip_escapes(log)
    if not errors:
        return [Finding(FAIL, "build", message, "fix what the build's output above says")]
    download = pip_download_command(requirements, plan, base_python, host_python)
    missing = next((m.group(1) for e in errors for m in [_NO_MATCH.search(e)] if m), "")
    if _CERTIFICATE.search(plain) or _NETWORK.search(plain):
        cause = "a certificate error" if _CERTIFICATE.search(plain) else "a network error"
        fix = (
            f"pip in the build could not reach the package index ({cause}): build offline instead. Where pip"
            f" reaches the index, `{download}`, then add `--wheels wheels` to this command"
        )
    elif missing:
        name = re.split(r"[<>=!~;\[ ]", missing, maxsplit=1)[0]
        versions = next((m.group(1).strip() for e in errors for m in [_VERSIONS.search(e)] if m), "")
        if versions and versions != "none":
            known = ", ".join(v.strip() for v in versions.split(",")[-5:])
            where = "among the wheels" if plan.wheels else "on the index"
            fix = f"no release {missing} {where}: a misspelled version? {name} has {known} (the last ones listed)"
        elif plan.wheels:
            fix = (
                f"{missing} is not among the wheels: a misspelled name or version? Correct it, then make the"
                f" wheels again: `{download}`"
            )
        else:
            fix = (
                f"no package {missing} on the index: a misspelled name or version?"
                f" (`pip index versions {name}` lists the versions of a package)"
            )
    elif "ResolutionImpossible" in plain or "conflicting dependencies" in plain:
        fix = "two pins conflict (pip names them above): change one so that they agree"
    elif "externally-managed-environment" in plain:
        fix = (
            "the base's Python belongs to its system (PEP 668): build on a base with Python of its own"
            " (a venv or conda, as pytorch/pytorch and Jupyter's images have)"
        )
    else:
        fix = "fix what pip says above"
    shown = errors[-PIP_ERRORS_SHOWN:]
    findings = [Finding(FAIL, "pip", line) for line in shown[:-1]]
    findings.append(Finding(FAIL, "pip", shown[-1], fix))
    return findings


# --- the arguments ------------------------------------------------------------------------------


def more_data_dirs(argv: Iterable[str]) -> list[str]:
    """The words after a ``--data DIR`` up to the next option: ``--data a b`` names two dirs.

    (traitlets takes one value per ``--data`` and leaves the rest as arguments.)
    """
    more: list[str] = []
    state = ""  # "value": the next word is --data's own; "more": words are more dirs
    for word in argv:
        if word.startswith("-"):
            state = "value" if word == "--data" else "more" if word.startswith("--data=") else ""
        elif state == "value":
            state = "more"
        elif state == "more":
            more.append(word)
    return more
