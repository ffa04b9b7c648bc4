"""``gpuspawner image build --base IMAGE --tag NAME:TAG``: a class image from a pinned base, then checked.

The plan and its Dockerfile are decided in ``build_plan.py`` (pure); here the base
is pulled and probed, the build context is packed, the engine's classic builder
runs it, and the result gets the checks of ``image check``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from textwrap import dedent
from typing import IO

import docker
import docker.errors
import jupyterhub
from traitlets import Bool, Float, List, Unicode
from traitlets.config import Application

from ..config import ConfigError
from . import output, probe
from .build_plan import (
    BuildPlan,
    BuildRefused,
    Dataset,
    base_findings,
    build_event,
    build_failure_findings,
    check_build_tags,
    check_tag_unused,
    dataset_finding,
    dataset_names,
    dockerfile,
    jupyterhub_step,
    more_data_dirs,
    sftp_step,
    start_command_step,
    strip_escapes,
    tag_users,
)
from .command import LabCommand, profiles_of
from .findings import verdict
from .image_check import check_one


class ImageBuildApp(LabCommand):
    name = "gpuspawner image build"
    description = """Build a class image from a pinned base, then check it as `image check` does.

    FROM the base (pinned: a tag other than latest, or a digest), as root:
    OpenSSH's sftp-server with --sftp (for scp and sftp over the hub's SSH gateway;
    apt-get, dnf, yum or apk; kept when the base has one), the
    requirements file (pip install -r, with the Python that runs the base's
    jupyterhub-singleuser), JupyterHub at the hub's exact version when the base
    has no jupyterhub-singleuser or one of another major.minor (found by one short
    run of the base, no network), each --data dir copied to /opt/datasets/<name>
    (over 500 MB: a warning, mount it instead); then the base's USER again (a root
    base gets uid 1000, jovyan), CMD ["jupyterhub-singleuser"] when the base's
    command is not a Jupyter server's, and labels naming the base, the JupyterHub
    version, the requirements' sha256 and the datasets. The output --tag must be
    pinned, and not a tag the hub's profiles use (--force moves it). Built by the
    engine's classic builder (RUN steps on the host's network, so pip reaches PyPI
    or the mirror configured in the base image, and --sftp the distribution's;
    --wheels DIR: pip from those wheels only, offline). A failed pip is quoted, with what to do. Exit status: the
    check's verdict (0 OK, 1 FAIL), 1 when the build fails, 2 when it cannot start.
    """
    examples = dedent("""
    gpuspawner image build --base pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime --tag ml101-cuda:2026.1 \\
        --requirements requirements.txt --data ./mnist
    pip download -d wheels -r requirements.txt jupyterhub==6.1.1  # where pip reaches the index; then:
    gpuspawner image build --base lab:1 --tag lab:2 --requirements requirements.txt --wheels wheels  # offline
    gpuspawner image build --base lab:2 --tag lab:3 --sftp  # scp and sftp over the hub's SSH gateway
    """)

    base = Unicode("", help="The pinned image to build FROM (NAME:TAG or NAME@sha256:...).").tag(config=True)
    tag = Unicode("", help="The name of the image built: NAME:TAG, never latest.").tag(config=True)
    requirements = Unicode("", help="A pip requirements file to install in the image.").tag(config=True)
    wheels = Unicode(
        "",
        help="""A dir of wheels: pip installs from it alone, with no index (the offline route).

        Make it where pip reaches the index: ``pip download -d wheels -r requirements.txt``
        (with ``jupyterhub==<the hub's version>`` when the base has none).""",
    ).tag(config=True)
    data = List(
        Unicode(),
        help="Small dataset dirs baked into the image at /opt/datasets/<name> (--data a b, or --data a --data b).",
    ).tag(config=True)
    force = Bool(False, help="Build even under a tag the hub's profiles use (they change at their next start).").tag(
        config=True
    )
    sftp = Bool(
        False,
        help="Install OpenSSH's sftp-server when the base lacks it (apt-get, dnf, yum or apk), for scp and"
        " sftp over the hub's SSH gateway.",
    ).tag(config=True)
    network = Unicode("host", help="The network of the build's RUN steps (pip needs one).").tag(config=True)
    timeout = Float(60, help="Seconds the check of the base, and of the result, may take.").tag(config=True)

    aliases = {
        **LabCommand.aliases,
        "base": "ImageBuildApp.base",
        "tag": "ImageBuildApp.tag",
        "requirements": "ImageBuildApp.requirements",
        "wheels": "ImageBuildApp.wheels",
        "data": "ImageBuildApp.data",
        "network": "ImageBuildApp.network",
        "timeout": "ImageBuildApp.timeout",
    }
    flags = {
        **Application.flags,
        "force": ({"ImageBuildApp": {"force": True}}, "Move a tag the hub's profiles use (they change)."),
        "sftp": ({"ImageBuildApp": {"sftp": True}}, "Install OpenSSH's sftp-server (scp, sftp over the SSH gateway)."),
    }

    def validate(self) -> list[str]:
        """Refuse what cannot be built, before Docker is asked anything; the dataset names."""
        more = more_data_dirs(getattr(self, "argv", None) or ())
        unexpected = [a for a in self.extra_args if a not in more]
        if unexpected:
            raise BuildRefused(
                f"unexpected arguments {' '.join(unexpected)}: name the base and the result with --base and --tag"
            )
        self.data = [*self.data, *(a for a in self.extra_args if a not in self.data)]
        check_build_tags(self.base, self.tag)
        if self.requirements and not os.path.isfile(self.requirements):
            raise BuildRefused(f"--requirements {self.requirements}: no such file")
        if self.wheels and not os.path.isdir(self.wheels):
            raise BuildRefused(f"--wheels {self.wheels}: no such dir")
        for d in self.data:
            if not os.path.isdir(d):
                raise BuildRefused(f"--data {d}: no such dir")
        return dataset_names(self.data)

    def start(self) -> int:
        try:
            names = self.validate()
        except BuildRefused as e:
            print(f"gpuspawner image build: {e}", file=sys.stderr)
            return 2
        hub = self.load_hub_config()
        out = output.console()
        profiles = profiles_of(hub)
        try:
            moving = check_tag_unused(self.tag, profiles, self.force)
        except BuildRefused as e:
            print(f"gpuspawner image build: {e}", file=sys.stderr)
            return 2
        client = hub.docker()

        if not probe.image_inspect(client, self.base):
            out.print(f"{self.base} is not on this engine: pulling it...")
            refused = probe.pull(client, self.base)
            if refused:
                raise ConfigError(f"cannot pull the base {self.base}: {refused}")
        out.print(f"{self.base}: looking at the base (one short run, no network)...")
        facts = probe.run_probe(client, self.base, self.timeout)
        findings = base_findings(facts)
        hub_version = jupyterhub.__version__
        datasets = tuple(Dataset(name, os.path.abspath(d), dir_size(d)) for name, d in zip(names, self.data))
        findings += [dataset_finding(d) for d in datasets]
        install, step = jupyterhub_step(facts, hub_version)
        command, command_step = start_command_step(facts.config or {})
        if not facts.probe_error:
            findings[:0] = [step, command_step]
        sftp_with = ""
        if self.sftp and not facts.probe_error:
            sftp_with, sftp_line = sftp_step(facts)
            findings.append(sftp_line)
        if moving:
            findings.append(moving)
        output.print_findings(out, findings, "  ")
        if verdict(findings)[0]:
            out.print(output.verdict_line(1, "FAIL", f"nothing built from {self.base}"))
            return 1

        plan = BuildPlan(
            base=self.base,
            tag=self.tag,
            jupyterhub=hub_version if install else facts.jupyterhub,
            install_jupyterhub=install,
            python=facts.python,
            user=(facts.config or {}).get("User") or "",
            requirements_sha256=_sha256(self.requirements) if self.requirements else "",
            wheels=bool(self.wheels),
            datasets=datasets,
            command=command,
            sftp_with=sftp_with,
        )
        self.log.debug("Dockerfile:\n%s", dockerfile(plan))
        route = f"pip from {self.wheels} only" if self.wheels else f"RUN on the {self.network!r} network"
        out.print(f"building {self.tag} (classic builder, {route})...")
        started = time.monotonic()
        with build_context(plan, self.requirements, self.wheels, {d.name: d.source for d in datasets}) as ctx:
            try:
                image_id = build_image(
                    client, ctx, self.tag, self.network, show=lambda text: out.print(output.docker_text("  " + text))
                )
            except docker.errors.BuildError as e:
                log = "".join(str(event.get("stream") or "") for event in e.build_log or ())
                failed = build_failure_findings(
                    strip_escapes(e.msg), log, plan, self.requirements, facts.python_version, _here_python()
                )
                output.print_findings(out, failed, "  ")
                pip = [f.message for f in failed if f.subject == "pip"]
                why = f"pip: {pip[-1]}" if pip else strip_escapes(e.msg)
                out.print(output.verdict_line(1, "FAIL", f"the build of {self.tag} failed: {why}"))
                return 1
            except docker.errors.APIError as e:
                out.print(output.verdict_line(1, "FAIL", f"the engine refused the build: {e.explanation or e}"))
                return 1
        out.print(f"built {self.tag} ({image_id[:19]}) in {time.monotonic() - started:.0f} s; checking it:")
        # Checked for the profiles that use the tag (--force), as `image check --profiles` would.
        return check_one(client, hub, self.tag, tag_users(self.tag, profiles), out, self.timeout)


def _here_python() -> str:
    """This Python's version: ``pip download`` here gets wheels for it unless told the base's."""
    return "%d.%d.%d" % sys.version_info[:3]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the engine: the build context and the classic builder --------------------------------------


def dir_size(path: str) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += st.st_size
    return total


def build_context(
    plan: BuildPlan, requirements: str = "", wheels: str = "", data: dict[str, str] | None = None
) -> IO[bytes]:
    """A temporary tar (deleted when closed): the generated Dockerfile, the requirements file,
    the wheel dir and each dataset dir, under the names ``dockerfile()`` expects."""
    context = tempfile.TemporaryFile(prefix="gpuspawner-build-")
    with tarfile.open(fileobj=context, mode="w") as tar:
        text = dockerfile(plan).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(text), 0o644
        tar.addfile(info, io.BytesIO(text))
        if requirements:
            tar.add(requirements, arcname="requirements.txt", filter=_readable)
        if wheels:
            tar.add(wheels, arcname="wheels", filter=_readable)
        for name, source in (data or {}).items():
            tar.add(source, arcname=f"data/{name}", filter=_readable)
    context.seek(0)
    return context


def _readable(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root in the image, readable by the image's user (students): files 644, dirs 755."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = (info.mode | 0o444 | (0o111 if info.isdir() else 0)) & 0o7755
    return info


def build_image(
    client: docker.APIClient,
    context: IO[bytes],
    tag: str,
    network_mode: str = "host",
    show: Callable[[str], None] = print,
) -> str:
    """Build with the engine's classic builder; each line of its output goes to ``show``.

    Returns the image id; raises ``docker.errors.BuildError`` with the engine's message.
    """
    stream: Iterator[dict] = client.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        pull=False,
        network_mode=network_mode,
        decode=True,
    )
    image_id, log = "", []
    for event in stream:
        text, found, error = build_event(event)
        if error:
            raise docker.errors.BuildError(error, log)
        if text:
            log.append(event)
            show(text)
        image_id = found or image_id
    if not image_id:
        raise docker.errors.BuildError("the engine reported no image", log)
    return image_id
