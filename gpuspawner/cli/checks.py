"""What the ``gpuspawner`` command concludes: findings from facts, and the verdict.

Pure: no Docker, no NVML, no files. The commands gather facts (``probe.py``
runs the image, the engine and NVML answer), and the functions here turn them
into findings, each ``ok``, ``warn`` or ``fail`` with what to do about it.
A warning never fails a check; one failure does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..gpus import GPU, Inventory, Ledger
from ..images import ImageError, check_pinned, cuda_refusal, declared_cuda, split_reference
from ..profiles import Profile
from ..traits import format_bytes

OK, WARN, FAIL = "ok", "warn", "fail"

#: The frameworks whose versions ``image check`` reports, when installed in the image.
FRAMEWORKS = ("torch", "tensorflow", "jax")


@dataclass(frozen=True)
class Finding:
    """One line of a report: its level, what it is about, what was found, and the fix."""

    level: str  # OK, WARN or FAIL
    subject: str  # "user", "docker", "image lab:1", ...
    message: str
    fix: str = ""


def verdict(findings: Iterable[Finding]) -> tuple[int, str]:
    """(exit status, verdict line): 1 when anything failed, else 0; warnings do not fail."""
    findings = list(findings)
    fails = sum(f.level == FAIL for f in findings)
    warns = sum(f.level == WARN for f in findings)

    def n(count: int, what: str) -> str:
        return f"{count} {what}{'s' if count != 1 else ''}"

    if fails:
        return 1, f"FAIL ({n(fails, 'failure')}, {n(warns, 'warning')})"
    return 0, f"OK ({n(warns, 'warning')})" if warns else "OK"


def _version_tuple(version: str) -> tuple[int, ...]:
    m = re.match(r"^v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(p) for p in m.group(1).split(".")) if m else ()


def _major_minor(version: str) -> str:
    parts = _version_tuple(version)
    return ".".join(map(str, parts[:2])) if parts else ""


# --- image check: facts from one run of the probe in the image ----------------------------


@dataclass(frozen=True)
class Framework:
    """A deep-learning framework found in the image: its version and the CUDA it was built for."""

    name: str
    version: str = ""
    cuda: str = ""  # "" for a CPU-only build (or when it cannot say)
    error: str = ""  # installed, but ``import`` failed: the last line of the error


@dataclass(frozen=True)
class ImageFacts:
    """What ``image check`` learnt about one image: from ``inspect_image`` and one probe run."""

    image: str
    size: int = 0  # bytes, as the engine reports it
    config: dict = field(default_factory=dict, hash=False)  # inspect_image()["Config"]
    probe_error: str = ""  # the probe did not run (or not to the end): why
    uid: int | None = None
    user: str = ""
    home: str = ""
    home_writable: bool | None = None
    singleuser: str = ""  # path of jupyterhub-singleuser, '' when not on PATH
    python: str = ""  # the interpreter that runs jupyterhub-singleuser (else python3 on PATH)
    python_version: str = ""
    jupyterhub: str = ""  # the version ``import jupyterhub`` gives
    jupyterhub_error: str = ""
    jupyter_server: str = ""
    jupyterlab: str = ""
    notebook: str = ""
    libcudart: tuple[str, ...] = ()  # CUDA runtime versions from libcudart.so.<version> files
    nvcc: str = ""  # "12.4" from nvcc --version
    frameworks: tuple[Framework, ...] = ()  # only those installed


@dataclass(frozen=True)
class HubContext:
    """What the hub's config and host say an image must fit."""

    jupyterhub_version: str  # the hub's own, e.g. "6.1.1"
    allow_root: bool = False
    driver_cuda: str = ""  # the highest CUDA the driver supports; '' when unknown
    driver_version: str = ""
    driver_source: str = ""  # where driver_cuda came from, for messages
    for_gpu: bool = True  # False: only CPU profiles use the image, so CUDA does not matter
    cmd: tuple[str, ...] = ()  # c.DockerSpawner.cmd, when set


_PROBE_LINE = re.compile(r"^([a-z_]+)=(.*)$")


def parse_probe_output(image: str, text: str, size: int = 0, config: dict | None = None) -> ImageFacts:
    """Facts from the probe's stdout: ``key=value`` lines, ``python=<json>`` and ``framework=<json>``.

    Unknown lines are ignored (an image's shell profile may print things).
    """
    values: dict = {"libcudart": [], "frameworks": []}
    for line in text.splitlines():
        m = _PROBE_LINE.match(line.strip())
        if not m:
            continue
        key, value = m.groups()
        if key == "libcudart":
            version = value.split(".so.", 1)[1] if ".so." in value else ""
            if version and version not in values["libcudart"]:
                values["libcudart"].append(version)
        elif key in ("python", "framework"):
            try:
                data = json.loads(value)
            except ValueError:
                continue
            if key == "python" and isinstance(data, dict):
                for name in (
                    "python",
                    "python_version",
                    "jupyterhub",
                    "jupyterhub_error",
                    "jupyter_server",
                    "jupyterlab",
                    "notebook",
                ):
                    values[name] = str(data.get(name) or "")
            elif isinstance(data, dict) and data.get("name"):
                values["frameworks"].append(
                    Framework(
                        str(data["name"]),
                        str(data.get("version") or ""),
                        str(data.get("cuda") or ""),
                        str(data.get("error") or ""),
                    )
                )
        elif key == "uid":
            values["uid"] = int(value) if value.isdigit() else None
        elif key == "home_writable":
            values["home_writable"] = value == "1"
        elif key in ("user", "home", "singleuser", "nvcc"):
            values[key] = value.strip()
    values["libcudart"] = tuple(values["libcudart"])
    values["frameworks"] = tuple(values["frameworks"])
    return ImageFacts(image=image, size=size, config=config or {}, **values)


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
    mine, hubs = _version_tuple(facts.jupyterhub), _version_tuple(hub)
    if mine[:1] != hubs[:1]:
        return Finding(
            FAIL,
            subject,
            f"{where}: a different major version, which the hub does not support",
            f"pin jupyterhub=={hub} in the image",
        )
    if mine[:2] != hubs[:2]:
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
    root = facts.uid == 0 or (facts.config.get("User") or "").split(":")[0] in ("", "root", "0")
    who = f"{facts.user or '?'} (uid {facts.uid if facts.uid is not None else '?'})"
    if root:
        if allow_root:
            return [Finding(WARN, "user", "runs as root; allowed by c.GPUSpawner.allow_root")]
        return [
            Finding(
                FAIL,
                "user",
                "runs as root: the hub refuses root images",
                "add a non-root user and end the Dockerfile with USER 1000 (or set c.GPUSpawner.allow_root = True)",
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
    for fw in facts.frameworks:
        if not fw.cuda or not ctx.driver_cuda:
            continue
        need, have = _version_tuple(fw.cuda)[:2], _version_tuple(ctx.driver_cuda)[:2]
        if need[:1] > have[:1]:
            findings.append(
                Finding(
                    FAIL,
                    "cuda",
                    f"{fw.name} {fw.version} is built for CUDA {fw.cuda}, a newer major version than"
                    f" the driver's CUDA {ctx.driver_cuda}: it will not see the GPU",
                    f"install a {fw.name} build for CUDA {_major_minor(ctx.driver_cuda)} or older, or upgrade the driver",
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
                    f"install a {fw.name} build for CUDA {_major_minor(ctx.driver_cuda)} or older",
                )
            )
    runtimes = sorted({_major_minor(v) for _, v in found if _major_minor(v).count(".")}, key=_version_tuple)
    if declared and runtimes and _major_minor(declared) not in runtimes:
        findings.append(
            Finding(
                WARN,
                "cuda",
                f"{summary}: the declared version is not what the image contains",
                f'LABEL gpuspawner.cuda="{runtimes[-1]}" in the Dockerfile, so the hub checks the right CUDA',
            )
        )
    elif not declared and runtimes:
        findings.append(
            Finding(
                WARN,
                "cuda",
                f"{summary}: the hub cannot check this image against the driver",
                f'LABEL gpuspawner.cuda="{runtimes[-1]}" in the Dockerfile',
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
    # What DockerSpawner runs: the image's entrypoint, with c.Spawner.cmd or else the image's CMD.
    command = [*(facts.config.get("Entrypoint") or []), *(ctx.cmd or facts.config.get("Cmd") or [])]
    if not any(word in part for part in command for word in ("jupyter", "singleuser", "start-")):
        findings.append(
            Finding(
                WARN,
                "command",
                f"the image's command is {command or 'empty'}: the hub runs it to start the server",
                'CMD ["jupyterhub-singleuser"] in the Dockerfile (or set c.DockerSpawner.cmd)',
            )
        )
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


# --- doctor -----------------------------------------------------------------------------------


def docker_finding(version: dict | None, error: str = "", where: str = "") -> Finding:
    """Is the hub's engine reachable? ``version`` is ``APIClient.version()``."""
    if version is None:
        return Finding(
            FAIL,
            "docker",
            f"no Docker engine answers{f' at {where}' if where else ''}: {error}",
            "start dockerd, set DOCKER_HOST as the hub has it, or add this user to the docker group",
        )
    return Finding(
        OK,
        "docker",
        f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) at {where or 'the default socket'}",
    )


def toolkit_finding(on_path: Iterable[str], runtimes: Iterable[str], gpu_request: str | None) -> Finding:
    """Can the engine give containers GPUs?

    ``on_path``: NVIDIA toolkit programs found on this host's PATH; ``runtimes``: the
    engine's runtimes (``docker info``); ``gpu_request``: '' when a test container
    asking for GPU capabilities (and no GPU) started, the engine's error when it was
    refused, None when it was not tried. What the engine does wins over the rest.
    """
    on_path, runtimes = list(on_path), list(runtimes)
    evidence = [*on_path, *(f"runtime {r}" for r in runtimes if "nvidia" in r)]
    fix = (
        "install the NVIDIA Container Toolkit (nvidia-container-toolkit) and restart dockerd;"
        " until then only CPU profiles can start"
    )
    if gpu_request == "":
        found = f" ({', '.join(evidence)})" if evidence else ""
        return Finding(OK, "toolkit", f"the engine accepts GPU requests: the NVIDIA hook is on its PATH{found}")
    if gpu_request is not None:
        if evidence:
            return Finding(
                FAIL,
                "toolkit",
                f"{', '.join(evidence)} found, but the engine refuses GPU requests: {gpu_request}",
                "restart dockerd, so that it finds nvidia-container-runtime-hook on its PATH",
            )
        return Finding(
            WARN, "toolkit", f"no NVIDIA container toolkit: the engine refuses GPU requests ({gpu_request})", fix
        )
    if evidence:
        return Finding(OK, "toolkit", f"NVIDIA container toolkit found: {', '.join(evidence)}")
    return Finding(WARN, "toolkit", "no NVIDIA container toolkit found: no GPU can be given to a server", fix)


def nvml_findings(
    nvml: Inventory | None, error: str, gpus_setting: object, hub_units: Iterable[GPU] = ()
) -> list[Finding]:
    """The driver as NVML sees it (``nvml``, or None and ``error``), against the config's ``gpus``."""
    if nvml is None:
        level = FAIL if gpus_setting == "nvml" else WARN
        uses = "c.GPUSpawner.gpus = 'nvml' needs it" if gpus_setting == "nvml" else "no GPU can be discovered"
        return [
            Finding(
                level,
                "nvml",
                f"{error or 'NVML is not available'}: {uses}",
                "install the NVIDIA driver (nvidia-smi must work on this host)",
            )
        ]
    whole = [u for u in nvml.units if not u.is_mig]
    mig_gpus = sorted({u.index for u in nvml.units if u.is_mig})
    mig = f"MIG on GPU {', '.join(map(str, mig_gpus))}" if mig_gpus else "MIG off"
    findings = [
        Finding(
            OK,
            "nvml",
            f"driver {nvml.driver_version or '?'}, CUDA up to {nvml.cuda_version or '?'},"
            f" {len(whole)} whole GPU(s), {len(nvml.units) - len(whole)} MIG instance(s), {mig}",
        )
    ]
    if isinstance(gpus_setting, list):  # a static list: is each of its units really there?
        known = {u.uuid for u in nvml.units}
        missing = [u.uuid for u in hub_units if u.uuid not in known]
        if missing:
            findings.append(
                Finding(
                    FAIL,
                    "gpus",
                    f"c.GPUSpawner.gpus lists {', '.join(missing)}, which the driver does not report",
                    "fix the list from `nvidia-smi -L`, or set c.GPUSpawner.gpus = 'nvml'",
                )
            )
    return findings


def profile_findings(profiles: tuple[Profile, ...], inventory: Inventory, ledger: Ledger) -> list[Finding]:
    """Each GPU profile against the units the hub hands out: can it ever start?"""
    findings = []
    for p in profiles:
        request = p.gpu_request
        if not request.slots:
            continue
        _free, total = ledger.availability(request)
        if total == 0:
            findings.append(
                Finding(
                    FAIL,
                    f"profile {p.slug}",
                    f"asks for {request.describe()}, and the hub's inventory"
                    f" ({inventory.source}, {len(inventory.units)} unit(s)) has none that fits",
                    "change the profile's GPU fields, or c.GPUSpawner.gpus",
                )
            )
        elif not request.shared and total < request.count:
            findings.append(
                Finding(
                    FAIL,
                    f"profile {p.slug}",
                    f"asks for {request.describe()}, and only {total} fit",
                    "lower its 'gpus'",
                )
            )
        else:
            findings.append(Finding(OK, f"profile {p.slug}", f"{request.describe()}: {total} unit(s) fit"))
    return findings


def profile_image_findings(
    image: str,
    inspect: dict | None,
    users: tuple[Profile, ...],
    *,
    pull_policy: str,
    allow_root: bool,
    driver_cuda: str,
    driver_version: str = "",
) -> list[Finding]:
    """One profile image on the engine: present, not root, its CUDA within the driver's (for GPU profiles)."""
    slugs = ", ".join(p.slug for p in users)
    if inspect is None:
        if pull_policy.lower() == "never":
            return [
                Finding(
                    FAIL,
                    "image",
                    f"{image} is not on this engine, and pull_policy is 'never' (profiles {slugs})",
                    f"docker pull {image} (or load it) on this host",
                )
            ]
        return [
            Finding(
                WARN,
                "image",
                f"{image} is not on this engine yet: the first spawn of {slugs} will pull it, and wait",
                f"docker pull {image} before class",
            )
        ]
    findings = []
    config = inspect.get("Config") or {}
    if (config.get("User") or "").split(":")[0] in ("", "root", "0") and not allow_root:
        findings.append(
            Finding(
                FAIL,
                "image",
                f"{image} runs as root: the hub refuses it",
                "USER 1000 in its Dockerfile (or c.GPUSpawner.allow_root = True)",
            )
        )
    cuda = declared_cuda(config) or ""
    refusal = cuda_refusal(image, cuda, driver_cuda, driver_version)
    if refusal and any(p.gpu_request.slots for p in users):
        findings.append(
            Finding(FAIL, "image", refusal, "rebuild it on an older CUDA base image, or upgrade the driver")
        )
    if not findings:
        size = format_bytes(int(inspect.get("Size") or 0))
        findings.append(
            Finding(OK, "image", f"{image} is present ({size}, CUDA {cuda or 'not declared'}), for {slugs}")
        )
    return findings


def mount_findings(profiles: tuple[Profile, ...], exists: Callable[[str], bool]) -> list[Finding]:
    """Datasets and shares: is each source there? ``exists`` answers for a host path or a volume name."""
    findings = []
    seen: set[tuple[str, str]] = set()
    for p in profiles:
        for kind, mounts in (("dataset", p.datasets), ("share", p.shares)):
            for m in mounts:
                if (kind, m.source) in seen:
                    continue
                seen.add((kind, m.source))
                what = "host path" if m.source.startswith("/") else "volume"
                subject = f"{kind} {m.name}"
                if exists(m.source):
                    findings.append(Finding(OK, subject, f"{what} {m.source} is there"))
                elif kind == "dataset":
                    findings.append(
                        Finding(
                            FAIL,
                            subject,
                            f"{what} {m.source} is missing: students would see an empty folder",
                            f"create {m.source} and copy the data in (profile {p.slug})",
                        )
                    )
                else:
                    findings.append(
                        Finding(
                            WARN,
                            subject,
                            f"{what} {m.source} is missing: Docker creates it empty on first use",
                            f"create {m.source} with the course's files, writable by the teachers",
                        )
                    )
    return findings


# --- status -----------------------------------------------------------------------------------


def status_rows(ledger: Ledger, labels_by_holder: dict[str, dict]) -> list[dict]:
    """One entry per unit of the inventory, with who holds it (several, when shared).

    ``labels_by_holder``: the labels of each running server's container, by holder
    (``"user/server"``), for the profile and container name.
    """
    rows = []
    for unit in ledger.inventory:
        holders = []
        for a in ledger.holders_of(unit.id):
            labels = labels_by_holder.get(a.holder, {})
            holders.append(
                {
                    "user": a.user,
                    "server": a.holder.split("/", 1)[1] if "/" in a.holder else "",
                    "profile": labels.get("gpuspawner.profile", ""),
                    "container": labels.get("_container", ""),
                    "shared": a.shared,
                }
            )
        rows.append(
            {
                "id": unit.id,
                "index": unit.index,
                "mig_profile": unit.mig_profile,
                "mig_index": unit.mig_index,
                "parent": unit.parent_uuid,
                "model": unit.name,
                "memory": unit.memory,
                "unit": unit.describe().split(" (")[0],
                "holders": holders,
                "free": not holders,
            }
        )
    return rows


# --- doctor: the config and the inventory -------------------------------------------------------


def config_findings(
    path: str, profiles: tuple[Profile, ...] | None, error: str, spawner_problem: str = ""
) -> list[Finding]:
    """Does the hub config load, name gpuspawner, and give valid profiles with pinned images?

    ``path`` is '' when no config file was found (the hub's defaults are checked).
    """
    if not path:
        findings = [
            Finding(WARN, "config", "no config file: checking the hub's defaults", "name the hub's config with -f")
        ]
    elif spawner_problem:
        findings = [
            Finding(FAIL, "config", f"{path} loads, but {spawner_problem}", 'c.JupyterHub.spawner_class = "gpu"')
        ]
    else:
        findings = [Finding(OK, "config", f"{path} loads; the hub's spawner is gpuspawner")]
    if profiles is None:
        findings.append(Finding(FAIL, "profiles", error, f"fix the profile named above in {path}"))
    else:
        slugs = ", ".join(p.slug for p in profiles)
        findings.append(Finding(OK, "profiles", f"{len(profiles)} profile(s) valid, images pinned: {slugs}"))
    return findings


def inventory_finding(inventory: Inventory, gpu_profiles: int) -> Finding:
    """The units the hub will hand out, from config or NVML."""
    where = {"static": "the list in c.GPUSpawner.gpus", "nvml": "NVML", "none": "no source"}.get(
        inventory.source, inventory.source
    )
    if not inventory.units:
        level = WARN if gpu_profiles else OK
        note = f": {inventory.note}" if inventory.note else ""
        fix = "set c.GPUSpawner.gpus ('nvml' on a GPU host, or a list)" if gpu_profiles else ""
        return Finding(level, "gpus", f"the hub hands out no GPU ({where}{note})", fix)
    mig = sum(u.is_mig for u in inventory.units)
    return Finding(
        OK,
        "gpus",
        f"{len(inventory.units)} unit(s) from {where}: {len(inventory.units) - mig} whole GPU(s),"
        f" {mig} MIG instance(s)",
    )


# --- image build: the plan and the Dockerfile (pure) -------------------------------------------

#: Where ``image build`` puts the datasets baked into an image, one folder per ``--data`` dir.
DATASETS_DIR = "/opt/datasets"
#: Over this, a dataset belongs in a mount (a profile's ``datasets``), not in the image.
DATASET_WARN_BYTES = 500 * 1000**2
#: Where the build's own files (requirements, wheels) go inside the image; removed in the same step.
BUILD_DIR = "/tmp/gpuspawner-build"

#: The labels ``image build`` sets on what it builds.
LABEL_BASE = "org.opencontainers.image.base.name"
LABEL_JUPYTERHUB = "gpuspawner.jupyterhub"
LABEL_REQUIREMENTS = "gpuspawner.requirements"
LABEL_DATASETS = "gpuspawner.datasets"

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
    return _major_minor(facts.jupyterhub) != _major_minor(hub_version)


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
    if plan.user and plan.user.split(":")[0] not in ("root", "0"):
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


# --- prepull: the summary ------------------------------------------------------------------------

PRESENT, PULLED, FAILED = "already present", "pulled", "failed"


@dataclass(frozen=True)
class PullResult:
    """One image of ``prepull``: what happened to it."""

    image: str
    state: str  # PRESENT, PULLED or FAILED
    size: int = 0  # bytes, once present
    seconds: float = 0.0
    error: str = ""
    profiles: tuple[str, ...] = ()


def prepull_summary(results: Iterable[PullResult]) -> tuple[int, str]:
    """(exit status, summary line): 1 when any pull failed."""
    results = list(results)
    counts = {s: sum(r.state == s for r in results) for s in (PRESENT, PULLED, FAILED)}
    text = f"{len(results)} image(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
    return (1 if counts[FAILED] else 0), text
