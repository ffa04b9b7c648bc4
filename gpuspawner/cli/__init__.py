"""``gpuspawner``: the command for teachers and admins.

- ``gpuspawner image check IMAGE`` (or ``--profiles``): will this image start under this hub?
- ``gpuspawner image build --base IMAGE --tag NAME:TAG``: a class image from a pinned base, then checked.
- ``gpuspawner prepull``: pull every profile's image before class, with progress and a summary.
- ``gpuspawner doctor``: is this host ready (Docker, NVIDIA toolkit, driver, images, datasets)?
- ``gpuspawner status [--json]``: who holds which GPU now.

Each reads the hub's own ``jupyterhub_config.py`` (``-f``), so profiles are written
once. Thin glue: the decisions are in ``checks.py`` (pure), the Docker I/O in
``probe.py``, the printing in ``output.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from textwrap import dedent

import docker
import docker.errors
import jupyterhub
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text
from traitlets import Bool, Float, List, Unicode
from traitlets.config import Application, Config

from .. import labels as label
from ..config import ConfigError, HubConfig, engine_where, load_hub_config, load_service_config
from ..gpus import Inventory, Ledger, holder_key
from ..gpus.nvml import NVMLUnavailable, discover
from ..images import ImagePuller, split_reference
from ..profiles import Profile, ProfileError
from ..spawner import GPUSpawner
from . import checks, output, probe
from .checks import FAIL, FAILED, PRESENT, PULLED, WARN, BuildRefused, Finding, HubContext, PullResult

# The old names, for code written before gpuspawner.config.
CommandError = ConfigError
Lab = HubConfig
load_lab = load_hub_config
load_service_lab = load_service_config


# --- the commands ------------------------------------------------------------------------------


class LabCommand(Application):
    """What every subcommand shares: the hub's config file."""

    hub_config = Unicode(
        "jupyterhub_config.py",
        help="""The hub's config file, read as JupyterHub reads it (profiles, gpus, images...).""",
    ).tag(config=True)

    aliases = {
        **Application.aliases,
        ("f", "config"): ("LabCommand.hub_config", "The hub's config file (default: ./jupyterhub_config.py)"),
    }

    _own_sections = ("Application", "LabCommand")

    def load_lab(self) -> Lab:
        # Named with -f (traitlets files it under the most derived class), or the default?
        explicit = any(isinstance(v, dict) and "hub_config" in v for v in self.config.values())
        # --GPUSpawner.allow_root=True and the like on the command line apply over the file.
        overrides = Config(
            {k: v for k, v in self.config.items() if k not in self._own_sections + (type(self).__name__,)}
        )
        lab = load_lab(self.hub_config, explicit, overrides, self.log)
        for note in lab.notes:
            print(f"gpuspawner: {note}", file=sys.stderr)
        return lab

    def start(self) -> int:
        if self.subapp:
            return self.subapp.start()
        self.print_help()
        return 2


def hub_context(lab: Lab, users: list[Profile] = ()) -> HubContext:
    """What an image must fit on this hub (for the profiles ``users``; none: as a GPU image)."""
    return HubContext(
        jupyterhub_version=jupyterhub.__version__,
        allow_root=lab.spawner.allow_root,
        driver_cuda=lab.driver_cuda,
        driver_version=lab.inventory.driver_version,
        for_gpu=not users or any(p.gpu_request.slots for p in users),
        cmd=tuple(lab.spawner.cmd or ()),
    )


class ImageCheckApp(LabCommand):
    name = "gpuspawner image check"
    description = """Check that an image will start under this hub, before the class does.

    Runs the image once on the hub's Docker engine with no GPU and no network, and
    reports: jupyterhub-singleuser and its version (same major.minor as the hub's),
    the user it runs as (root fails unless c.GPUSpawner.allow_root) and its home,
    Python, JupyterLab, the CUDA it declares and contains against the driver's,
    torch/tensorflow/jax when installed, and its size. Exit status 0 when it will
    start (warnings allowed), 1 when it will not, 2 when the check cannot run.
    """
    examples = dedent("""
    gpuspawner image check course/ml101:2026.1
    gpuspawner image check --profiles -f /srv/jupyterhub/jupyterhub_config.py
    gpuspawner image check lab:1 --GPUSpawner.driver_cuda_version=12.4
    """)

    profiles = Bool(False, help="Check the image of every profile in the hub's config.").tag(config=True)
    timeout = Float(60, help="Seconds the check may take in one image.").tag(config=True)

    aliases = {**LabCommand.aliases, "timeout": "ImageCheckApp.timeout"}
    flags = {
        **Application.flags,
        "profiles": ({"ImageCheckApp": {"profiles": True}}, "Check the image of every profile."),
    }

    def start(self) -> int:
        if bool(self.profiles) == bool(self.extra_args) or len(self.extra_args) > 1:
            print("gpuspawner image check: give one IMAGE, or --profiles", file=sys.stderr)
            return 2
        lab = self.load_lab()
        if self.profiles:
            try:
                profiles = lab.profiles
            except ProfileError as e:
                raise CommandError(f"{lab.config_file or 'config'}: {e}") from None
            images = {}
            for p in profiles:
                images.setdefault(p.image, []).append(p)
        else:
            images = {self.extra_args[0]: []}
        client = lab.docker()
        out = output.console()
        statuses = []
        for image, users in images.items():
            ctx = hub_context(lab, users)
            statuses.append(self.check_one(client, image, users, ctx, out, engine_where(lab.spawner)))
        if len(statuses) > 1:
            failed = sum(statuses)
            out.print(f"{len(statuses)} images: {len(statuses) - failed} OK, {failed} FAIL")
        return max(statuses, default=0)

    def check_one(self, client, image: str, users: list[Profile], ctx: HubContext, out, where: str) -> int:
        used_by = f" (profiles {', '.join(p.slug for p in users)})" if users else ""
        out.print(f"{image}{used_by}: running the check with no GPU and no network...")
        try:
            facts = probe.run_probe(client, image, self.timeout)
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
            findings = checks.image_findings(facts, ctx)
        output.print_findings(out, findings, "  ")
        status, text = checks.verdict(findings)
        will = "will not start under this hub" if status else "can start under this hub"
        out.print(output.verdict_line(status, text, f"{image} {will}"))
        return status


class ImageBuildApp(LabCommand):
    name = "gpuspawner image build"
    description = """Build a class image from a pinned base, then check it as `image check` does.

    FROM the base (pinned: a tag other than latest, or a digest), as root: the
    requirements file (pip install -r, with the Python that runs the base's
    jupyterhub-singleuser), JupyterHub at the hub's exact version when the base
    has no jupyterhub-singleuser or one of another major.minor (found by one short
    run of the base, no network), each --data dir copied to /opt/datasets/<name>
    (over 500 MB: a warning, mount it instead); then the base's USER again, and
    labels naming the base, the JupyterHub version, the requirements' sha256 and
    the datasets. The output --tag must be pinned. Built by the engine's classic
    builder (RUN steps on the host's network, so pip reaches PyPI or the host's
    mirror as configured in the base image). Exit status: the check's verdict
    (0 OK, 1 FAIL), 1 when the build fails, 2 when it cannot start.
    """
    examples = dedent("""
    gpuspawner image build --base pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime --tag ml101-cuda:2026.1 \\
        --requirements requirements.txt --data ./mnist
    gpuspawner image build --base lab:1 --tag lab:2 --requirements req.txt --wheels ./wheels  # offline
    """)

    base = Unicode("", help="The pinned image to build FROM (NAME:TAG or NAME@sha256:...).").tag(config=True)
    tag = Unicode("", help="The name of the image built: NAME:TAG, never latest.").tag(config=True)
    requirements = Unicode("", help="A pip requirements file to install in the image.").tag(config=True)
    wheels = Unicode(
        "",
        help="""A dir of wheels copied into the build and given to pip as --find-links
        (put --no-index in the requirements file to install from it alone).""",
    ).tag(config=True)
    data = List(Unicode(), help="Small dataset dirs baked into the image at /opt/datasets/<name>.").tag(config=True)
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

    def validate(self) -> list[str]:
        """Refuse what cannot be built, before Docker is asked anything; the dataset names."""
        if self.extra_args:
            raise BuildRefused(f"unexpected arguments {' '.join(self.extra_args)}: use --base and --tag")
        checks.check_build_tags(self.base, self.tag)
        if self.requirements and not os.path.isfile(self.requirements):
            raise BuildRefused(f"--requirements {self.requirements}: no such file")
        if self.wheels and not os.path.isdir(self.wheels):
            raise BuildRefused(f"--wheels {self.wheels}: no such dir")
        for d in self.data:
            if not os.path.isdir(d):
                raise BuildRefused(f"--data {d}: no such dir")
        return checks.dataset_names(self.data)

    def start(self) -> int:
        try:
            names = self.validate()
        except BuildRefused as e:
            print(f"gpuspawner image build: {e}", file=sys.stderr)
            return 2
        lab = self.load_lab()
        client = lab.docker()
        out = output.console()

        if not _image_inspect(client, self.base):
            out.print(f"{self.base} is not on this engine: pulling it...")
            repo, tag, digest = split_reference(self.base)
            try:
                for event in client.pull(repo, tag=digest or tag, stream=True, decode=True):
                    if "error" in event:
                        raise CommandError(f"cannot pull the base {self.base}: {event['error']}")
            except docker.errors.APIError as e:
                raise CommandError(f"cannot pull the base {self.base}: {e.explanation or e}") from None
        out.print(f"{self.base}: looking at the base (one short run, no network)...")
        facts = probe.run_probe(client, self.base, self.timeout)
        findings = checks.base_findings(facts)
        hub = jupyterhub.__version__
        datasets = tuple(
            checks.Dataset(name, os.path.abspath(d), probe.dir_size(d)) for name, d in zip(names, self.data)
        )
        findings += [checks.dataset_finding(d) for d in datasets]
        install, step = checks.jupyterhub_step(facts, hub)
        if not facts.probe_error:
            findings.insert(0, step)
        output.print_findings(out, findings, "  ")
        if checks.verdict(findings)[0]:
            out.print(output.verdict_line(1, "FAIL", f"nothing built from {self.base}"))
            return 1

        plan = checks.BuildPlan(
            base=self.base,
            tag=self.tag,
            jupyterhub=hub if install else facts.jupyterhub,
            install_jupyterhub=install,
            python=facts.python,
            user=(facts.config or {}).get("User") or "",
            requirements_sha256=_sha256(self.requirements) if self.requirements else "",
            wheels=bool(self.wheels),
            datasets=datasets,
        )
        self.log.debug("Dockerfile:\n%s", checks.dockerfile(plan))
        out.print(f"building {self.tag} (classic builder, RUN on the {self.network!r} network)...")
        started = time.monotonic()
        with probe.build_context(plan, self.requirements, self.wheels, {d.name: d.source for d in datasets}) as ctx:
            try:
                image_id = probe.build_image(
                    client, ctx, self.tag, self.network, show=lambda text: out.print(Text("  " + text))
                )
            except docker.errors.BuildError as e:
                out.print(output.verdict_line(1, "FAIL", f"the build of {self.tag} failed: {e.msg}"))
                return 1
            except docker.errors.APIError as e:
                out.print(output.verdict_line(1, "FAIL", f"the engine refused the build: {e.explanation or e}"))
                return 1
        out.print(f"built {self.tag} ({image_id[:19]}) in {time.monotonic() - started:.0f} s; checking it:")
        return ImageCheckApp.check_one(self, client, self.tag, [], hub_context(lab), out, engine_where(lab.spawner))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ImageApp(LabCommand):
    name = "gpuspawner image"
    description = "Class images: build one from a pinned base, check that one will start under this hub."
    subcommands = {
        "check": (ImageCheckApp, ImageCheckApp.description.splitlines()[0]),
        "build": (ImageBuildApp, ImageBuildApp.description.splitlines()[0]),
    }


class PrepullApp(LabCommand):
    name = "gpuspawner prepull"
    description = """Pull every profile's image on the hub's engine before class, with progress.

    The same images and the same puller the hub uses (one pull per image, at most
    c.GPUSpawner.max_concurrent_pulls at once), whatever c.GPUSpawner.pull_policy
    says. Then a table: each image, its size, the seconds until it was present, and
    whether it was already present, pulled, or failed (with the registry's message).
    Exit status 1 when any pull failed.
    """
    examples = dedent("""
    gpuspawner prepull
    gpuspawner prepull -f /srv/jupyterhub/jupyterhub_config.py
    """)

    def start(self) -> int:
        if self.extra_args:
            print("gpuspawner prepull: takes no IMAGE; it pulls the profiles' images", file=sys.stderr)
            return 2
        lab = self.load_lab()
        try:
            profiles = lab.profiles
        except ProfileError as e:
            raise CommandError(f"{lab.config_file or 'config'}: {e}") from None
        users: dict[str, list[str]] = {}
        for p in profiles:
            users.setdefault(p.image, []).append(p.slug)
        client = lab.docker()
        out = output.console()
        if not users:
            out.print("No profile names an image: nothing to pull.")
            return 0
        if lab.spawner.pull_policy.lower() != "ifnotpresent":
            out.print(
                f"note: c.GPUSpawner.pull_policy is {lab.spawner.pull_policy!r}: the hub does not pull at spawn;"
                " pulling now as asked"
            )
        puller = ImagePuller(lab.spawner.new_docker_client, lab.spawner.max_concurrent_pulls)
        try:
            results = asyncio.run(self.pull_all(puller, users, out))
        finally:
            puller.close()
        results = [
            r if r.state == FAILED else PullResult(**{**r.__dict__, "size": _image_size(client, r.image)})
            for r in results
        ]
        out.print(output.prepull_table(results))
        output.print_findings(
            out,
            [
                Finding(FAIL, r.image, r.error, "check the name and the registry's login (docker login)")
                for r in results
                if r.error
            ],
        )
        status, text = checks.prepull_summary(results)
        out.print(output.verdict_line(status, text))
        return status

    @staticmethod
    async def pull_all(puller: ImagePuller, users: dict[str, list[str]], out) -> list[PullResult]:
        started = time.monotonic()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=out) as progress:
            tasks = await puller.prepull(users)
            bars = [progress.add_task(escape(t.image), total=100) for t in tasks]

            async def follow(task, bar) -> PullResult:
                present = task.done and not task.error
                async for percent, _ in task.updates():
                    progress.update(bar, completed=percent)
                seconds = time.monotonic() - started
                slugs = tuple(users[task.image])
                if task.error:
                    progress.update(bar, description=escape(f"{task.image}: {FAILED}"))
                    return PullResult(task.image, FAILED, seconds=seconds, error=task.error, profiles=slugs)
                return PullResult(task.image, PRESENT if present else PULLED, seconds=seconds, profiles=slugs)

            return list(await asyncio.gather(*(follow(t, b) for t, b in zip(tasks, bars))))


class DoctorApp(LabCommand):
    name = "gpuspawner doctor"
    description = """Check that this host is ready for the hub: one line per finding, with the fix.

    The hub config loads, names gpuspawner, and its profiles validate with pinned
    images; Docker answers; the NVIDIA container toolkit (the engine accepts GPU
    requests); the driver through NVML (version, GPUs, MIG, highest CUDA); every GPU
    profile fits the inventory; each profile's image is present, not root, and
    within the driver's CUDA; dataset and share sources exist. Exit status 1 when
    anything fails (warnings do not). Run it on the hub's host: host paths are checked here.
    """
    examples = dedent("""
    gpuspawner doctor
    gpuspawner doctor -f /srv/jupyterhub/jupyterhub_config.py
    """)

    def start(self) -> int:
        findings: list[Finding] = []
        lab, profiles = self.check_config(findings)
        spawner = lab.spawner if lab else GPUSpawner(log=self.log)
        client = self.check_engine(spawner, profiles, findings)
        inventory = self.check_gpus(lab, spawner, profiles, findings)
        if client is not None:
            self.check_images(client, spawner, profiles, inventory, findings)
        findings += checks.mount_findings(profiles, lambda source: _source_exists(client, source))

        out = output.console()
        output.print_findings(out, findings)
        status, text = checks.verdict(findings)
        out.print(output.verdict_line(status, text))
        if any(f.subject == "image" for f in findings):
            out.print("(the full check of each image: gpuspawner image check --profiles)")
        return status

    def check_config(self, findings: list[Finding]) -> tuple[Lab | None, tuple[Profile, ...]]:
        try:
            lab = self.load_lab()
        except CommandError as e:
            findings.append(
                Finding(FAIL, "config", str(e), "fix the config file (jupyterhub -f ... fails the same way)")
            )
            return None, ()
        try:
            profiles, error = lab.profiles, ""
        except ProfileError as e:
            profiles, error = None, str(e)
        findings += checks.config_findings(lab.config_file, profiles, error, lab.spawner_problem)
        return lab, profiles or ()

    def check_engine(self, spawner: GPUSpawner, profiles, findings: list[Finding]) -> docker.APIClient | None:
        """Docker answers, and gives GPUs: a container asking for GPU capabilities starts."""
        where = engine_where(spawner)
        try:
            client = spawner.new_docker_client()
            findings.append(checks.docker_finding(client.version(), where=where))
            runtimes = list((client.info().get("Runtimes") or {}).keys())
        except (docker.errors.DockerException, OSError) as e:
            findings.append(checks.docker_finding(None, str(e), where))
            return None
        present = next((p.image for p in profiles if _image_inspect(client, p.image)), None)
        refusal = probe.gpu_request_refusal(client, present) if present else None
        findings.append(checks.toolkit_finding(probe.toolkit_on_path(), runtimes, refusal))
        return client

    def check_gpus(self, lab: Lab | None, spawner: GPUSpawner, profiles, findings: list[Finding]) -> Inventory:
        """The driver (NVML), the units the hub hands out, and whether each GPU profile fits them."""
        try:
            nvml, nvml_error = discover(), ""
        except NVMLUnavailable as e:
            nvml, nvml_error = None, str(e)
        except Exception as e:  # noqa: BLE001 - a GPU fallen off the bus: report it, check the rest
            nvml, nvml_error = None, f"NVML failed: {e}"
        inventory = Inventory(source="none")
        if lab is not None:
            try:
                inventory = lab.inventory
            except Exception as e:  # noqa: BLE001 - the same, through the hub's own rule
                findings.append(Finding(FAIL, "gpus", f"the hub cannot read its GPUs: {e}", "run nvidia-smi"))
        findings += checks.nvml_findings(nvml, nvml_error, spawner.gpus, inventory.units)
        findings.append(checks.inventory_finding(inventory, sum(bool(p.gpu_request.slots) for p in profiles)))
        findings += checks.profile_findings(profiles, inventory, Ledger(inventory.units))
        return inventory

    def check_images(self, client, spawner: GPUSpawner, profiles, inventory: Inventory, findings: list[Finding]):
        users: dict[str, list[Profile]] = {}
        for p in profiles:
            users.setdefault(p.image, []).append(p)
        for image, its_profiles in users.items():
            findings += checks.profile_image_findings(
                image,
                _image_inspect(client, image),
                tuple(its_profiles),
                pull_policy=spawner.pull_policy,
                allow_root=spawner.allow_root,
                driver_cuda=inventory.cuda_version or spawner.driver_cuda_version,
                driver_version=inventory.driver_version,
            )


def _image_size(client, image: str) -> int:
    return int((_image_inspect(client, image) or {}).get("Size") or 0)


def _image_inspect(client, image: str) -> dict | None:
    try:
        return client.inspect_image(image)
    except docker.errors.NotFound:
        return None


def _source_exists(client, source: str) -> bool:
    if source.startswith("/"):
        return os.path.exists(source)
    if client is None:
        return False
    try:
        client.inspect_volume(source)
    except docker.errors.NotFound:
        return False
    return True


class StatusApp(LabCommand):
    name = "gpuspawner status"
    description = """Who holds which GPU now, from the labels of the running servers' containers.

    The same record a restarted hub reads its ledger from: every unit of the hub's
    inventory, its holder (user/server), profile and whether it is shared.
    """
    examples = dedent("""
    gpuspawner status
    gpuspawner status --json | jq '.units[] | select(.free)'
    """)

    json = Bool(False, help="Print JSON for scripts instead of a table.").tag(config=True)
    flags = {**Application.flags, "json": ({"StatusApp": {"json": True}}, "Print JSON instead of a table.")}

    def start(self) -> int:
        lab = self.load_lab()
        try:
            inventory = lab.inventory
        except Exception as e:  # noqa: BLE001 - NVML errors other than "no driver"
            raise CommandError(f"the hub's GPUs cannot be read: {e}") from None
        ledger = Ledger(inventory.units, lab.spawner.policy)
        containers = lab.docker().containers(filters={"label": label.GPUS})
        warnings = label.adopt_containers(ledger, containers)
        by_holder, cpu_servers = {}, 0
        for c in containers:
            labels = c.get("Labels") or {}
            if label.USER not in labels:
                continue
            name = (c.get("Names") or [c.get("Id", "")[:12]])[0].lstrip("/")
            by_holder[holder_key(labels[label.USER], labels.get(label.SERVER, ""))] = {**labels, "_container": name}
            cpu_servers += not labels.get(label.GPUS)
        rows = checks.status_rows(ledger, by_holder)
        if self.json:
            output.print_json(
                {
                    "inventory": {
                        "source": inventory.source,
                        "driver_version": inventory.driver_version,
                        "cuda_version": inventory.cuda_version,
                        "note": inventory.note,
                    },
                    "share_limit": lab.spawner.shared_gpu_users,
                    "units": rows,
                    "servers_without_gpu": cpu_servers,
                    "warnings": warnings,
                }
            )
            return 0
        out = output.console()
        if rows:
            out.print(output.status_table(rows, lab.spawner.shared_gpu_users))
        else:
            out.print(
                f"The hub hands out no GPU ({inventory.source}{': ' + inventory.note if inventory.note else ''})."
            )
        out.print(output.status_summary(rows, cpu_servers))
        for warning in warnings:
            out.print(output.finding_lines([Finding(WARN, "labels", warning)])[0])
        return 0


class GPUSpawnerApp(LabCommand):
    name = "gpuspawner"
    description = """gpuspawner's command for teachers and admins: check images, check the host, see GPU use.

    Every subcommand reads the hub's jupyterhub_config.py (-f), so profiles are written once.
    `gpuspawner SUBCOMMAND --help` for each.
    """
    subcommands = {
        "image": (ImageApp, "Class images: `gpuspawner image build --base B --tag T`, `image check IMAGE`."),
        "prepull": (PrepullApp, "Pull every profile's image before class, with progress and a summary."),
        "doctor": (DoctorApp, "Check this host: Docker, NVIDIA toolkit and driver, images, datasets."),
        "status": (StatusApp, "Who holds which GPU now (a table, or --json)."),
    }


_APPS = (GPUSpawnerApp, ImageApp, ImageCheckApp, ImageBuildApp, PrepullApp, DoctorApp, StatusApp)


def main(argv: list[str] | None = None) -> int:
    """The ``gpuspawner`` console script; returns the exit status."""
    app = GPUSpawnerApp()
    try:
        app.initialize(argv)
        return int(app.start() or 0)
    except CommandError as e:
        print(f"gpuspawner: {e}", file=sys.stderr)
        return 2
    finally:
        for cls in _APPS:  # subcommands are singletons: the next main() starts afresh
            cls.clear_instance()


__all__ = ["CommandError", "Lab", "load_lab", "main"]
