"""``gpuspawner image check IMAGE`` (or ``--profiles``): will this image start under this hub?

The image runs once on the hub's engine (``probe.py``), with no GPU and no network;
the checks here (pure) judge what it reported against what the hub needs
(``HubContext``): jupyterhub-singleuser of the hub's major.minor, a user that is
not root, Python and JupyterLab, the CUDA it declares and contains against the
driver's, the frameworks, the command the hub will run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from textwrap import dedent

import docker.errors
import jupyterhub
from traitlets import Bool, Float
from traitlets.config import Application

from ..config import HubConfig, engine_where
from ..images import (
    cuda_refusal,
    declared_cuda,
    declared_resource_variables,
    major_minor,
    runs_as_root,
    split_reference,
)
from ..profiles import Profile, root_allowed
from ..services import runs_ssh_gateway
from ..traits import format_bytes
from . import output, probe
from .command import LabCommand, by_image, profiles_of
from .findings import FAIL, OK, WARN, Finding, verdict
from .probe import FRAMEWORKS, ImageFacts
from .server_start import (
    CHECK_USER,
    JUPYTER_COMMAND,
    ServerCommand,
    server_command,
    start_finding,
    start_plan,
    start_server,
)


@dataclass(frozen=True)
class HubContext:
    """What the hub's config and host say an image must fit."""

    jupyterhub_version: str  # the hub's own, e.g. "6.1.1"
    allow_root: bool = False
    driver_cuda: str = ""  # the highest CUDA the driver supports; '' when unknown
    driver_version: str = ""
    driver_source: str = ""  # where driver_cuda came from, for messages
    for_gpu: bool = True  # False: only CPU profiles use the image, so CUDA does not matter
    cmd: tuple[str, ...] = ()  # c.Spawner.cmd, when set
    args: tuple[str, ...] = ()  # c.Spawner.args
    ssh_gateway: bool = False  # the hub runs the SSH gateway: scp and sftp need sftp-server in the image


def _jupyterhub_finding(facts: ImageFacts, hub: str) -> Finding:
    subject = "jupyterhub-singleuser"
    if not facts.singleuser:
        return Finding(
            FAIL,
            subject,
            "not found on the image's PATH: the hub cannot start a server from this image",
            f"install jupyterhub=={hub} in the image (pip install jupyterhub=={hub}), next to JupyterLab",
        )
    if not facts.jupyterhub:
        why = f": {facts.jupyterhub_error}" if facts.jupyterhub_error else ""
        return Finding(
            FAIL,
            subject,
            f"{facts.singleuser} is there, but `import jupyterhub` fails in {facts.python or 'its python'}{why}",
            f"reinstall jupyterhub=={hub} in the image's Python environment",
        )
    where = f"{facts.singleuser}, JupyterHub {facts.jupyterhub} (the hub runs {hub})"
    mine, hubs = major_minor(facts.jupyterhub), major_minor(hub)
    if mine is None or hubs is None or mine[0] != hubs[0]:
        return Finding(
            FAIL,
            subject,
            f"{where}: a different major version, which the hub does not support",
            f"pin jupyterhub=={hub} in the image",
        )
    if mine != hubs:
        return Finding(
            WARN, subject, f"{where}: same major version, different minor", f"pin jupyterhub=={hub} in the image"
        )
    if not (facts.jupyter_server or facts.notebook):
        return Finding(
            FAIL,
            subject,
            f"{where}, but neither jupyter_server nor notebook is installed for it to run",
            "install jupyterlab (it brings jupyter_server) in the image",
        )
    return Finding(OK, subject, where)


def _user_finding(facts: ImageFacts, allow_root: bool) -> list[Finding]:
    # The hub decides by the image's USER (as here); the probe's uid confirms it.
    root = facts.uid == 0 or runs_as_root(facts.config)
    who = f"{facts.user or '?'} (uid {facts.uid if facts.uid is not None else '?'})"
    if root:
        if allow_root:
            return [Finding(WARN, "user", f"{who} runs as root; allowed by c.GPUSpawner.allow_root or its profiles")]
        return [
            Finding(
                FAIL,
                "user",
                f"{who} runs as root: the hub refuses root images",
                "add a non-root user and end the Dockerfile with USER 1000"
                " (or the admin sets allow_root on its profiles in c.GPUSpawner.profiles)",
            )
        ]
    findings = [Finding(OK, "user", f"{who}, home {facts.home or '?'}")]
    if facts.home_writable is False:
        findings.append(
            Finding(
                FAIL,
                "home",
                f"{facts.home or 'HOME'} is not writable by {facts.user or 'the user'}:"
                " the home volume is created from it, so students could not save their work",
                f"chown {facts.uid}: {facts.home or '$HOME'} in the Dockerfile",
            )
        )
    return findings


def _cuda_findings(facts: ImageFacts, ctx: HubContext) -> list[Finding]:
    declared = declared_cuda(facts.config) or ""
    found = [(f"libcudart {v}", v) for v in facts.libcudart]
    found += [("nvcc", facts.nvcc)] if facts.nvcc else []
    found += [(f"{fw.name} built for CUDA {fw.cuda}", fw.cuda) for fw in facts.frameworks if fw.cuda]
    found_text = ", ".join(what for what, _ in found)
    summary = f"declared {declared or 'none'}; found {found_text or 'none'}"
    if ctx.driver_cuda:
        driver = f"; the driver supports up to CUDA {ctx.driver_cuda}"
    else:
        driver = "; the driver's CUDA is unknown (no NVML, no c.GPUSpawner.driver_cuda_version)"
    if not ctx.for_gpu:
        return [Finding(OK, "cuda", f"{summary} (only CPU profiles use this image)")]

    findings = []
    refusal = cuda_refusal(facts.image, declared, ctx.driver_cuda, ctx.driver_version)
    if refusal:
        findings.append(
            Finding(FAIL, "cuda", refusal, "rebuild from a base image with an older CUDA, or upgrade the driver")
        )
    # What the frameworks really load may differ from what the image declares.
    have = major_minor(ctx.driver_cuda)
    for fw in facts.frameworks:
        need = major_minor(fw.cuda)
        if need is None or have is None:
            continue
        if need[0] > have[0]:
            findings.append(
                Finding(
                    FAIL,
                    "cuda",
                    f"{fw.name} {fw.version} is built for CUDA {fw.cuda}, a newer major version than"
                    f" the driver's CUDA {ctx.driver_cuda}: it will not see the GPU",
                    f"install a {fw.name} build for CUDA {_dotted(have)} or older, or upgrade the driver",
                )
            )
        elif need > have:
            findings.append(
                Finding(
                    WARN,
                    "cuda",
                    f"{fw.name} {fw.version} is built for CUDA {fw.cuda}, newer than the driver's"
                    f" CUDA {ctx.driver_cuda}: it runs only under CUDA minor-version compatibility"
                    " (no PTX JIT, no newer features)",
                    f"install a {fw.name} build for CUDA {_dotted(have)} or older",
                )
            )
    # The CUDA runtimes the image contains, by major.minor (libcudart.so.12 alone says too little).
    runtimes = sorted({major_minor(v) for _, v in found if "." in v and major_minor(v)})
    if declared and runtimes and major_minor(declared) not in runtimes:
        findings.append(
            Finding(
                WARN,
                "cuda",
                f"{summary}: the declared version is not what the image contains",
                f'LABEL gpuspawner.cuda="{_dotted(runtimes[-1])}" in the Dockerfile, so the hub checks the right CUDA',
            )
        )
    elif not declared and runtimes:
        findings.append(
            Finding(
                WARN,
                "cuda",
                f"{summary}: the hub cannot check this image against the driver",
                f'LABEL gpuspawner.cuda="{_dotted(runtimes[-1])}" in the Dockerfile',
            )
        )
    elif declared and not found:
        findings.append(
            Finding(
                WARN,
                "cuda",
                f"{summary}: the image declares a CUDA it does not seem to contain",
                "build on a CUDA base image that has the runtime, or install a framework built for this CUDA",
            )
        )
    if not any(f.level != OK for f in findings):
        findings.append(Finding(OK, "cuda", summary + driver))
    return findings


def image_findings(facts: ImageFacts, ctx: HubContext) -> list[Finding]:
    """Every finding about one image, in the order a teacher reads them."""
    if facts.probe_error:
        return [
            Finding(
                FAIL,
                "probe",
                f"the check could not run in the image: {facts.probe_error}",
                "the image needs /bin/sh and must start within the timeout (--timeout)",
            )
        ]
    findings = [_jupyterhub_finding(facts, ctx.jupyterhub_version)]
    findings += _user_finding(facts, ctx.allow_root)
    resource_variables = declared_resource_variables(facts.config)
    if resource_variables:
        findings.append(
            Finding(
                FAIL,
                "environment",
                f"sets {', '.join(resource_variables)}: the hub refuses it (on a Swarm GPU node the NVIDIA toolkit"
                " takes GPUs from such variables)",
                "remove that ENV line: Swarm sets the variable itself for the GPUs it assigns",
            )
        )
    if facts.python_version:
        findings.append(Finding(OK, "python", f"Python {facts.python_version} ({facts.python})"))
    else:
        findings.append(Finding(FAIL, "python", "no Python found in the image", "install Python and JupyterLab"))
    if facts.jupyterlab:
        findings.append(Finding(OK, "jupyterlab", f"JupyterLab {facts.jupyterlab}"))
    elif facts.singleuser:
        findings.append(
            Finding(
                WARN,
                "jupyterlab",
                "JupyterLab is not installed: students get the plain Jupyter server",
                "pip install jupyterlab in the image",
            )
        )
    if ctx.ssh_gateway:
        findings.append(sftp_finding(facts))
    findings += command_findings(server_command(facts.config, ctx.cmd, ctx.args))
    findings += _cuda_findings(facts, ctx)
    for fw in facts.frameworks:
        if fw.error:
            findings.append(
                Finding(
                    FAIL,
                    fw.name,
                    f"installed, but `import {fw.name}` fails: {fw.error}",
                    f"reinstall {fw.name} so that it imports, and check its CUDA libraries",
                )
            )
        else:
            cuda = f", built for CUDA {fw.cuda}" if fw.cuda else " (CPU build)"
            findings.append(Finding(OK, fw.name, f"{fw.name} {fw.version}{cuda}"))
    if not facts.frameworks:
        findings.append(Finding(OK, "frameworks", f"none of {', '.join(FRAMEWORKS)} installed"))
    findings.append(Finding(OK, "size", format_bytes(facts.size) if facts.size else "unknown"))
    return findings


def sftp_finding(facts: ImageFacts) -> Finding:
    """Whether scp and sftp work over the hub's SSH gateway: they run the image's own sftp-server."""
    if facts.sftp_server:
        return Finding(OK, "sftp", f"{facts.sftp_server}: scp and sftp work over the hub's SSH gateway")
    return Finding(
        WARN,
        "sftp",
        "no sftp-server in the image: over the hub's SSH gateway, ssh works but scp and sftp do not",
        f"gpuspawner image build --base {facts.image} --tag NAME:TAG --sftp (it installs OpenSSH's sftp-server)",
    )


def command_findings(command: ServerCommand) -> list[Finding]:
    """What the hub runs to start a server of the image, when it is missing or not a Jupyter server's."""
    fix = f"CMD {json.dumps(list(JUPYTER_COMMAND))} in the Dockerfile (or set c.Spawner.cmd)"
    if command.missing:
        return [Finding(FAIL, "command", f"{command.describe()}: the hub cannot start a server of it", fix)]
    if not command.looks_like_jupyter:
        return [Finding(WARN, "command", f"the hub runs {command.describe()}: not a Jupyter server's command", fix)]
    return []


def pin_finding(image: str, inspect: dict) -> Finding:
    """The reference to pin in a profile: ``repository@sha256:...`` from the registry, when it came from one."""
    repo = split_reference(image)[0]
    digests = inspect.get("RepoDigests") or []
    pinned = next((d for d in digests if d.partition("@")[0] == repo), digests[0] if digests else "")
    if pinned:
        return Finding(OK, "digest", f"pin it in the profile as image: {pinned}")
    return Finding(
        OK,
        "digest",
        f"none: {image} was built on this engine, never pulled from a registry (Id {inspect.get('Id', '?')[:19]});"
        " push it to the lab's registry and check the pushed name to get the digest to pin",
    )


def _dotted(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


# --- the command -----------------------------------------------------------------------------


def hub_context(hub: HubConfig, users: list[Profile] = ()) -> HubContext:
    """What an image must fit on this hub (for the profiles ``users``; none: as a GPU image)."""
    return HubContext(
        jupyterhub_version=jupyterhub.__version__,
        allow_root=root_allowed(users, hub.spawner.allow_root),
        driver_cuda=hub.driver_cuda,
        driver_version=hub.inventory.driver_version,
        for_gpu=not users or any(p.gpu_request.slots for p in users),
        cmd=tuple(hub.spawner.cmd or ()),
        args=tuple(hub.spawner.args or ()),
        ssh_gateway=runs_ssh_gateway(hub.spawner.config),
    )


class ImageCheckApp(LabCommand):
    name = "gpuspawner image check"
    description = """Check that an image will start under this hub, before the class does.

    Pulls the image when the hub's Docker engine lacks it (with the registry login
    of whoever runs the command; --no-pull: not), runs it once there with no GPU
    and no network, and reports: jupyterhub-singleuser and its version (same
    major.minor as the hub's), the user it runs as (root fails unless allowed:
    c.GPUSpawner.allow_root, or allow_root on every profile that uses it) and its
    home, Python, JupyterLab, the command the hub runs (c.Spawner.cmd, else the
    image's CMD), the CUDA it declares and contains against the driver's,
    torch/tensorflow/jax when installed, its size, and sftp-server when the hub runs
    the SSH gateway (scp and sftp need it). When nothing failed, it starts
    the server as the hub would (that command, user, JupyterHub's environment, the
    hub's limits and hardening, a new home volume; no GPU, no network) and passes
    only if it answers within c.Spawner.http_timeout; else the exit status and the
    server's last log lines. Then the registry digest to pin in a profile
    (repository@sha256:...). Exit status 0 when it will start (warnings allowed),
    1 when it will not, 2 when the check cannot run.
    """
    examples = dedent("""
    gpuspawner image check registry.example.edu/ml101-cuda:2026.1
    gpuspawner image check --profiles -f /srv/jupyterhub/jupyterhub_config.py
    gpuspawner image check lab:1 --GPUSpawner.driver_cuda_version=12.4
    """)

    profiles = Bool(False, help="Check the image of every profile in the hub's config.").tag(config=True)
    timeout = Float(
        60, help="Seconds the look inside one image may take (the server's start has c.Spawner.http_timeout)."
    ).tag(config=True)
    pull = Bool(True, help="Pull an image this engine lacks before checking it.").tag(config=True)

    aliases = {**LabCommand.aliases, "timeout": "ImageCheckApp.timeout"}
    flags = {
        **Application.flags,
        "profiles": ({"ImageCheckApp": {"profiles": True}}, "Check the image of every profile."),
        "no-pull": ({"ImageCheckApp": {"pull": False}}, "Check only images already on this engine."),
    }

    def start(self) -> int:
        if bool(self.profiles) == bool(self.extra_args) or len(self.extra_args) > 1:
            print("gpuspawner image check: give one IMAGE, or --profiles", file=sys.stderr)
            return 2
        hub = self.load_hub_config()
        images = by_image(profiles_of(hub)) if self.profiles else {self.extra_args[0]: []}
        client = hub.docker()
        out = output.console()
        statuses = []
        for image, users in images.items():
            statuses.append(check_one(client, hub, image, users, out, self.timeout, pull=self.pull))
        if len(statuses) > 1:
            failed = sum(statuses)
            out.print(f"{len(statuses)} images: {len(statuses) - failed} OK, {failed} FAIL")
        return max(statuses, default=0)


def check_one(
    client,
    hub: HubConfig,
    image: str,
    users: list[Profile],
    out,
    timeout: float,
    pull: bool = False,
) -> int:
    """Check ``image`` (pulled first when missing, if ``pull``) for the profiles ``users``: run the probe,
    then, when nothing failed, start its server as the hub would. Print the findings and the verdict;
    the exit status."""
    ctx, where = hub_context(hub, users), engine_where(hub.spawner)
    used_by = f" (profiles {', '.join(p.slug for p in users)})" if users else ""
    refused = ""
    if pull and probe.image_inspect(client, image) is None:
        out.print(f"{image}: not on this engine ({where}), pulling it...")
        refused = probe.pull(client, image)
    log: list[str] = []  # the server's last lines, when its start failed
    if refused:
        findings = [
            Finding(
                FAIL,
                "image",
                f"could not pull {image}: {refused}",
                "check the name, and that this host can reach its registry (docker login, if it needs one)",
            )
        ]
    else:
        out.print(f"{image}{used_by}: running the check with no GPU and no network...")
        try:
            facts = probe.run_probe(client, image, timeout)
        except docker.errors.ImageNotFound:
            findings = [
                Finding(
                    FAIL,
                    "image",
                    f"{image} is not on this engine ({where})",
                    f"docker pull {image}, or build it on this host",
                )
            ]
        else:
            findings = image_findings(facts, ctx)
            if not verdict(findings)[0]:  # worth starting: nothing read in it stops the server already
                findings.append(_start(client, hub, image, users, out, facts, log))
            if not verdict(findings)[0]:  # what to pin, once it may be pinned
                findings.append(pin_finding(image, client.inspect_image(image)))
    output.print_findings(out, findings, "  ")
    if log:
        out.print("  the last lines of the server's log:")
        for text in log:
            out.print(output.docker_text("    " + text))
    status, text = verdict(findings)
    will = "will not start under this hub" if status else "can start under this hub"
    out.print(output.verdict_line(status, text, f"{image} {will}"))
    return status


def _start(client, hub: HubConfig, image: str, users: list[Profile], out, facts: ImageFacts, log: list) -> Finding:
    """The ``start`` finding: the server started as the hub would start it; its log's last lines into ``log``."""
    plan = start_plan(hub, image, client.inspect_image(image), users[0] if users else None)
    if plan.environment_error:
        return Finding(
            FAIL,
            "start",
            f"the hub's environment for a server could not be computed, so it was not started:"
            f" {plan.environment_error}",
            "make c.Spawner.environment's callables work for any user (the check's stand-in user"
            f" {CHECK_USER!r} has a name, no groups, no auth state)",
        )
    out.print(f"{image}: starting its server as the hub would: {plan.command.describe()}...")
    result = start_server(client, plan, facts.python)
    log.extend(result.log if not result.answered else ())
    return start_finding(plan, result)
