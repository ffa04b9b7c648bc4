"""``gpuspawner doctor``: is this host ready for the hub? One line per finding, with the fix.

The command gathers the facts (the config and the environment it reads, the engine and
its GPU path, NVML, the images, the dataset and share sources as each image's user finds
them through the engine (``mount_access``), the hub's TLS certificate); the checks here
(pure functions) judge them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from textwrap import dedent
from urllib.parse import urlparse

import docker
import docker.errors
from jupyterhub.utils import subdomain_hook_idna, subdomain_hook_legacy

from ..config import CONFIG_VARIABLE, ConfigError, HubConfig, NoConfigFile, UnsetVariable, engine_where
from ..disk_quota import HomesRootFacts, engine_storage, home_quota_refusal, writable_layer_refusal
from ..gpus import GPU, Inventory, Ledger
from ..gpus.nvml import NVMLUnavailable, discover
from ..images import cuda_refusal, declared_cuda, declared_resource_variables, runs_as_root
from ..profiles import Profile, ProfileError, root_allowed
from ..spawner import GPUSpawner
from ..traits import format_bytes
from . import output, probe
from .command import LabCommand, by_image
from .findings import FAIL, OK, WARN, Finding, verdict
from .mount_access import DATASET, MountsLooked, MountUse, RunAs, SourceSeen, look_at_mounts, mount_uses
from .network import lab_network_findings


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
    """One profile image on the engine: present, not root, its CUDA within the driver's (for GPU profiles).

    Root passes with ``allow_root`` (``c.GPUSpawner.allow_root``) or when every profile in ``users`` allows it.
    """
    slugs = ", ".join(p.slug for p in users)
    if inspect is None:
        if pull_policy.lower() == "never":
            return [
                Finding(
                    FAIL,
                    "image",
                    f"{image} is not on this engine, and pull_policy is 'never' (profiles {slugs})",
                    "gpuspawner prepull on this host (it pulls whatever the pull_policy), or docker load the image",
                )
            ]
        return [
            Finding(
                WARN,
                "image",
                f"{image} is not on this engine yet: the first spawn of {slugs} will pull it, and wait",
                "gpuspawner prepull before class",
            )
        ]
    findings = []
    config = inspect.get("Config") or {}
    if runs_as_root(config) and not root_allowed(users, allow_root):
        findings.append(
            Finding(
                FAIL,
                "image",
                f"{image} runs as root: the hub refuses it",
                "USER 1000 in its Dockerfile (or allow_root on its profiles in c.GPUSpawner.profiles)",
            )
        )
    resource_variables = declared_resource_variables(config)
    if resource_variables:
        findings.append(
            Finding(
                FAIL,
                "image",
                f"{image} sets {', '.join(resource_variables)} in its environment: the hub refuses it",
                "remove that ENV line (Swarm sets DOCKER_RESOURCE_* itself for the GPUs it assigns)",
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


def mount_findings(
    uses: Iterable[MountUse], looked: MountsLooked | None, exists_here: Callable[[str], bool]
) -> list[Finding]:
    """Datasets and shares: is each source there; readable by the user of each image that mounts it
    (a dataset: and not empty); writable by that user where a share's ``writable_by`` lets groups write?

    ``looked``: what the engine showed (None: no engine answered); a source it could not tell about
    is looked for on this machine with ``exists_here`` (a host path, or a volume's name).
    """
    by_source: dict[tuple[str, str], list[MountUse]] = {}
    for u in uses:
        by_source.setdefault((u.kind, u.source), []).append(u)
    findings = []
    for (kind, source), its in by_source.items():
        first = its[0]
        subject, what = f"{kind} {first.name}", first.what
        writers = sorted({g for u in its for g in u.writers})
        slugs = tuple(dict.fromkeys(p for u in its for p in u.profiles))
        looks = [(u, looked.by_image.get(u.image)) if looked else (u, None) for u in its]
        known = looked is not None and looked.knows(source)
        if not (source in looked.there if known else exists_here(source)):
            findings.append(_missing_source(kind, first, what, writers, slugs, [look for _, look in looks if look]))
            continue
        here = "" if known else " (as this machine sees it: the engine could not tell)"
        problems, fine, unlooked = _source_access(kind, what, subject, looks, writers, slugs)
        if problems:
            findings += problems
            continue
        fine_text = "; ".join(fine)
        message = f"{what} is there{here}" + (f", {fine_text}" if fine_text else "")
        if unlooked:
            message += f"; not looked at as the user of {', '.join(unlooked)}, which is not on this engine yet"
        findings.append(Finding(OK, subject, message))
    return findings


def _profiles(slugs: Iterable[str]) -> str:
    """'profile cpu', 'profiles cpu, gpu'."""
    slugs = list(dict.fromkeys(slugs))
    return f"profile{'s' if len(slugs) != 1 else ''} {', '.join(slugs)}"


def _missing_source(kind: str, use: MountUse, what: str, writers, slugs: tuple[str, ...], looks) -> Finding:
    subject, source = f"{kind} {use.name}", use.source
    if kind == DATASET:
        fix = (
            f"mkdir -p {source} && cp -a /path/to/the/data/. {source}/ && chmod -R a+rX {source}"
            if use.host_path
            else f"docker volume create {source}, then copy the data in"
        )
        return Finding(
            FAIL, subject, f"{what} is missing: students would see an empty folder ({_profiles(slugs)})", fix
        )
    if not writers:
        return Finding(
            WARN,
            subject,
            f"{what} is missing: Docker creates it empty on first use",
            f"create {source} with the course's files"
            + (f" (mkdir -p {source} && chmod a+rX {source})" if use.host_path else ""),
        )
    run_as = next((look.run_as for look in looks if look.run_as), None)
    who = str(run_as) if run_as else "the servers' users"
    if run_as and use.host_path:
        fix = f"mkdir -p {source} && chown {run_as.uid}:{run_as.gid} {source}"
    elif run_as:
        fix = (
            f"docker volume create {source} && docker run --rm -u 0 -v {source}:/share {use.image}"
            f" chown {run_as.uid}:{run_as.gid} /share"
        )
    else:
        fix = f"create {source}, owned by the uid the servers run as (gpuspawner image check shows it)"
    return Finding(
        FAIL,
        subject,
        f"{what} is missing: Docker would create it empty and owned by root, and {who} could not write it"
        f" (writable_by {', '.join(writers)}, {_profiles(slugs)})",
        fix,
    )


def _source_access(kind: str, what: str, subject: str, looks, writers, slugs: tuple[str, ...]):
    """(problem findings, what is fine, images not looked with) for one source, from each image's look."""
    problems, fine, unlooked, said = [], [], [], set()
    readers, writers_ok = [], []
    for use, look in looks:
        if look is None:
            unlooked.append(use.image)
            continue
        seen = look.seen.get(use.source)
        if look.error or look.run_as is None or seen is None:
            problems.append(
                Finding(
                    WARN,
                    subject,
                    f"{what}: could not look at it as the user of {use.image}: {look.error or 'no answer'}",
                    "gpuspawner image check " + use.image,
                )
            )
            continue
        run_as = look.run_as
        who = f"{run_as} of image {use.image}"
        owned = f" ({seen.describe()})" if seen.describe() else ""
        if use.writers and not seen.writable and ("write", run_as) not in said:
            said.add(("write", run_as))
            problems.append(
                Finding(
                    FAIL,
                    subject,
                    f"{what} is not writable by {who}{owned}, though writable_by lets {', '.join(use.writers)}"
                    f" write it ({_profiles(use.profiles)})",
                    _writable_fix(use, run_as, seen),
                )
            )
        elif not seen.usable and ("read", run_as) not in said:
            said.add(("read", run_as))
            problems.append(
                Finding(
                    FAIL,
                    subject,
                    f"{what} is not readable by {who}{owned}: its servers would get 'Permission denied'",
                    f"chmod -R a+rX {use.source}"
                    if use.host_path
                    else f"docker run --rm -u 0 -v {use.source}:/data {use.image} chmod -R a+rX /data",
                )
            )
        elif kind == DATASET and not seen.has_entries and "empty" not in said:
            said.add("empty")
            problems.append(
                Finding(
                    FAIL,
                    subject,
                    f"{what} is empty: students would see an empty folder ({_profiles(slugs)})",
                    f"cp -a /path/to/the/data/. {use.source}/ && chmod -R a+rX {use.source}"
                    if use.host_path
                    else "copy the data into the volume",
                )
            )
        else:
            readers.append(str(run_as))
            if use.writers:
                writers_ok.append(str(run_as))
    if readers:
        fine.append(("not empty, " if kind == DATASET else "") + f"readable by {', '.join(dict.fromkeys(readers))}")
    if writers_ok:
        fine.append(f"writable by {', '.join(dict.fromkeys(writers_ok))} for writable_by {', '.join(writers)}")
    return problems, fine, unlooked


def _writable_fix(use: MountUse, run_as: RunAs, seen: SourceSeen) -> str:
    """The command that makes a share writable by ``run_as``: its owner, with rwx for the owner."""
    if not use.host_path:
        return (
            f"docker run --rm -u 0 -v {use.source}:/share {use.image}"
            f" sh -c 'chown -R {run_as.uid}:{run_as.gid} /share && chmod -R u+rwX /share'"
        )
    owner_bits = int(seen.mode[-3]) if len(seen.mode) >= 3 and seen.mode[-3].isdigit() else 0
    chmod = f"chmod -R u+rwX {use.source}"
    if seen.owner_uid == run_as.uid:
        return chmod
    chown = f"chown -R {run_as.uid}:{run_as.gid} {use.source}"
    return chown if owner_bits & 3 == 3 else f"{chown} && {chmod}"


def environment_findings(variables: Iterable[UnsetVariable], profiles: tuple[Profile, ...]) -> list[Finding]:
    """The environment variables the config read that are not set here: where the hub has them,
    it may run another set-up (another image) than the one doctor checks."""
    findings, others = [], []
    fix = (
        "export {name}=<the hub's value> (as the hub's env_file has it), or run doctor where the hub runs:"
        " docker compose exec hub gpuspawner doctor"
    )
    for v in variables:
        if not v.decides_the_lab:
            others.append(v)
            continue
        decides_profiles = any(s.endswith(".profiles") for s in v.settings)
        users = [p for p in profiles if decides_profiles and len(v.default or "") >= 4 and v.default in p.image]
        if users:
            images = ", ".join(dict.fromkeys(p.image for p in users))
            message = (
                f"{_profiles(p.slug for p in users)} run{'s' if len(users) == 1 else ''} {images}, from the default"
                f" the config gives {v.name}, which is not set here: the hub, where it is set, may run another image,"
                " so doctor may be checking another image than the hub"
            )
        else:
            message = v.note().replace("than this command", "than doctor checks")
        findings.append(Finding(WARN, "environment", message, fix.format(name=v.name)))
    if others:
        settings = sorted({f"c.{s}" for v in others for s in v.settings})
        findings.append(
            Finding(
                OK,
                "environment",
                f"the config reads {', '.join(v.name for v in others)}, not set here"
                + (
                    f": {'it decides' if len(others) == 1 else 'they decide'} only {', '.join(settings)},"
                    " which doctor does not check"
                    if settings
                    else ""
                ),
            )
        )
    return findings


def config_findings(
    path: str, profiles: tuple[Profile, ...] | None, error: str, spawner_problem: str = ""
) -> list[Finding]:
    """Does the hub config load, name gpuspawner, and give valid profiles with pinned images?

    ``path`` is '' when no config file was found (the hub's defaults are checked).
    """
    if not path:
        findings = [
            Finding(
                WARN,
                "config",
                "no config file: checking the hub's defaults (--defaults)",
                f"name the hub's config with -f or {CONFIG_VARIABLE}",
            )
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


#: ``c.JupyterHub.subdomain_hook``'s short names, as the hub reads them.
SUBDOMAIN_HOOKS = {"idna": subdomain_hook_idna, "legacy": subdomain_hook_legacy}


def subdomain_findings(
    subdomain_host: str,
    *,
    ssl_cert: str = "",
    cert_names: Iterable[str] | None = None,
    cert_error: str = "",
    dashboard: str = "",
    hook: Callable[[str, str, str], str] = subdomain_hook_idna,
) -> list[Finding]:
    """Per-user subdomains (``c.JupyterHub.subdomain_host``): where the servers and the dashboard
    are, and whether the hub's own certificate covers those names.

    ``cert_names``: the DNS names of the hub's ``ssl_cert`` (None, with ``cert_error``, when it
    could not be read); ``dashboard``: the GPU dashboard's service name ('' when the hub runs
    none); ``hook``: the hub's ``subdomain_hook``. Nothing to say when ``subdomain_host`` is ''.
    """
    if not subdomain_host:
        return []
    # As JupyterHub reads it: no scheme means https.
    where = urlparse(subdomain_host if "://" in subdomain_host else f"https://{subdomain_host}")
    domain, scheme = (where.hostname or "").lower(), where.scheme
    port = f":{where.port}" if where.port else ""
    local = domain == "localhost" or domain.endswith(".localhost")  # names a browser keeps on loopback
    hosts = [domain, hook("alice", domain, "user")]
    message = f"each user's server on a host of its own ({scheme}://{hosts[1]}{port}/user/alice/)"
    if not local:
        message += f", which needs a wildcard DNS record *.{domain} for this host"
    if dashboard:
        hosts.append(hook(dashboard, domain, "service"))
        message += f"; the GPU dashboard is at {scheme}://{hosts[2]}{port}/services/{dashboard}/"
    findings = [Finding(OK, "subdomains", message)]
    if scheme != "https" and not local:
        findings.append(
            Finding(
                WARN,
                "subdomains",
                f"{subdomain_host} is plain http: logins, cookies and tokens cross the network in clear",
                f'c.JupyterHub.subdomain_host = "https://{domain}{port}"',
            )
        )
    certbot = f"a certificate for both names, e.g. certbot certonly --dns-<provider> -d {domain} -d '*.{domain}'"
    if ssl_cert and cert_names is None:
        findings.append(Finding(FAIL, "tls", f"cannot read the hub's certificate {ssl_cert}: {cert_error}", certbot))
    elif ssl_cert:
        names = sorted(set(cert_names))
        missing = [host for host in hosts if not _certificate_covers(names, host)]
        if missing:
            findings.append(
                Finding(
                    FAIL,
                    "tls",
                    f"the hub's certificate {ssl_cert} is for {', '.join(names) or 'no DNS name'},"
                    f" not {', '.join(missing)}: browsers refuse those hosts",
                    certbot,
                )
            )
        else:
            findings.append(Finding(OK, "tls", f"the hub's certificate covers {domain} and *.{domain}"))
    elif scheme == "https":
        findings.append(
            Finding(
                OK, "tls", f"TLS ends in front of the hub: that proxy's certificate must cover {domain} and *.{domain}"
            )
        )
    return findings


HOME_QUOTA_HOWTO = (
    "homes on btrfs: mkfs.btrfs /dev/<disk>; mount /dev/<disk> /srv/homes; btrfs quota enable /srv/homes;"
    ' then c.GPUSpawner.homes_root = "/srv/homes" and c.GPUSpawner.home_quota = "10G" (docs/how-to/homes.md)'
)
LAYER_QUOTA_HOWTO = (
    "put the engine's data root on XFS mounted with pquota (mkfs.xfs /dev/<disk>; mount -o pquota /dev/<disk>"
    " /var/lib/docker, or prjquota in /etc/fstab), or on btrfs with the btrfs storage driver"
    ' ({"storage-driver": "btrfs"} in daemon.json); then c.GPUSpawner.container_quota = "20G"'
)


def disk_quota_findings(
    homes: HomesRootFacts | None,
    home_quota: int | None,
    docker_info: dict | None,
    container_quota: int | None,
) -> list[Finding]:
    """Can the lab's filesystems enforce the homes' and the writable layers' quotas, and how to get there?

    ``homes``: what was found at ``homes_root`` (None when it is not set); ``home_quota``,
    ``container_quota``: the largest asked for (None: none); ``docker_info``: ``docker info``, None
    when the engine did not answer.
    """
    findings = []
    if homes is None and not home_quota:
        findings.append(
            Finding(
                WARN, "home quota", "homes have no size limit: one student can fill the engine's disk", HOME_QUOTA_HOWTO
            )
        )
    else:
        refusal = home_quota_refusal(homes or HomesRootFacts(""), home_quota)
        if refusal:  # the refusal says what to run
            findings.append(Finding(FAIL, "home quota", refusal, "then run gpuspawner doctor again"))
        else:
            limit = f"limited to {format_bytes(home_quota)} (or their profile's)" if home_quota else "without a limit"
            findings.append(
                Finding(OK, "home quota", f"homes are btrfs subvolumes under {homes.path}, quotas enabled, {limit}")
            )
    if docker_info is None:
        return findings
    driver, backing = engine_storage(docker_info)
    on = f"{driver} on {backing}" if backing else driver
    refusal = writable_layer_refusal(docker_info, container_quota)
    if refusal:
        if container_quota:
            findings.append(Finding(FAIL, "container quota", refusal, LAYER_QUOTA_HOWTO.split("; then")[0]))
        else:
            message = f"the engine stores containers with {on}: it cannot limit their writable layers"
            findings.append(Finding(WARN, "container quota", message, LAYER_QUOTA_HOWTO))
    elif container_quota:
        note = " (XFS must be mounted with pquota, or Docker refuses each server)" if driver == "overlay2" else ""
        findings.append(
            Finding(OK, "container quota", f"writable layers limited to {format_bytes(container_quota)}, {on}{note}")
        )
    else:
        findings.append(
            Finding(
                OK, "container quota", f"the engine ({on}) can limit writable layers: set c.GPUSpawner.container_quota"
            )
        )
    return findings


def _certificate_covers(names: Iterable[str], host: str) -> bool:
    """Whether a certificate for ``names`` is valid for ``host`` (a wildcard covers one label)."""
    host = host.lower()
    parent = host.partition(".")[2]
    return any(n.lower() == host or (n.startswith("*.") and n[2:].lower() == parent) for n in names)


# --- the command -----------------------------------------------------------------------------


class DoctorApp(LabCommand):
    name = "gpuspawner doctor"
    description = """Check that this host is ready for the hub: one line per finding, with the fix.

    The hub config loads, names gpuspawner, and its profiles validate with pinned
    images; Docker answers; the NVIDIA container toolkit (the engine accepts GPU
    requests); the driver through NVML (version, GPUs, MIG, highest CUDA); every GPU
    profile fits the inventory; each profile's image is present, not root, and
    within the driver's CUDA; datasets are there, not empty and readable, and shares
    writable by their writable_by users, as each image's user finds them (one short
    container per image, through the engine: the same on the host and in the hub's
    container); the lab network and its rules are in place; with per-user subdomains,
    where servers and the dashboard are and that the hub's TLS certificate covers them
    (a wildcard); environment variables the config reads that are unset here. Exit
    status 1 when anything fails (warnings do not); 2 when no config file is found
    (--defaults: check the hub's defaults).
    """
    judges_the_hub = True
    reports_unset_variables = True
    examples = dedent("""
    gpuspawner doctor
    gpuspawner doctor -f /srv/jupyterhub/jupyterhub_config.py
    docker compose exec hub gpuspawner doctor     # the hub's image sets GPUSPAWNER_CONFIG
    """)

    def start(self) -> int:
        findings: list[Finding] = []
        hub, profiles = self.check_config(findings)
        spawner = hub.spawner if hub else GPUSpawner(log=self.log)
        client = self.check_engine(spawner, profiles, findings)
        inventory = self.check_gpus(hub, spawner, profiles, findings)
        if client is not None:
            self.check_images(client, spawner, profiles, inventory, findings)
        findings += lab_network_findings(client, spawner, profiles)
        findings += self.check_mounts(client, spawner, profiles)
        findings += self.check_disk_quotas(client, spawner, profiles)
        if hub is not None:
            findings += self.check_subdomains(hub)

        out = output.console()
        output.print_findings(out, findings)
        status, text = verdict(findings)
        out.print(output.verdict_line(status, text))
        if any(f.subject == "image" for f in findings):
            out.print("(the full check of each image: gpuspawner image check --profiles)")
        return status

    def check_config(self, findings: list[Finding]) -> tuple[HubConfig | None, tuple[Profile, ...]]:
        try:
            hub = self.load_hub_config()
        except NoConfigFile:
            raise  # nothing to judge: said, exit status 2
        except ConfigError as e:
            findings.append(
                Finding(FAIL, "config", str(e), "fix the config file (jupyterhub -f ... fails the same way)")
            )
            return None, ()
        try:
            profiles, error = hub.profiles, ""
        except ProfileError as e:
            profiles, error = None, str(e)
        findings += config_findings(hub.config_file, profiles, error, hub.spawner_problem)
        findings += environment_findings(hub.unset_variables, profiles or ())
        return hub, profiles or ()

    def check_engine(self, spawner: GPUSpawner, profiles, findings: list[Finding]) -> docker.APIClient | None:
        """Docker answers, and gives GPUs: a container asking for GPU capabilities starts."""
        where = engine_where(spawner)
        try:
            client = spawner.new_docker_client()
            findings.append(docker_finding(client.version(), where=where))
            runtimes = list((client.info().get("Runtimes") or {}).keys())
        except (docker.errors.DockerException, OSError) as e:
            findings.append(docker_finding(None, str(e), where))
            return None
        present = next((p.image for p in profiles if probe.image_inspect(client, p.image)), None)
        refusal = probe.gpu_request_refusal(client, present) if present else None
        findings.append(toolkit_finding(probe.toolkit_on_path(), runtimes, refusal))
        return client

    def check_gpus(self, hub: HubConfig | None, spawner: GPUSpawner, profiles, findings: list[Finding]) -> Inventory:
        """The driver (NVML), the units the hub hands out, and whether each GPU profile fits them."""
        try:
            nvml, nvml_error = discover(), ""
        except NVMLUnavailable as e:
            nvml, nvml_error = None, str(e)
        except Exception as e:  # noqa: BLE001 - a GPU fallen off the bus: report it, check the rest
            nvml, nvml_error = None, f"NVML failed: {e}"
        inventory = Inventory(source="none")
        if hub is not None:
            try:
                inventory = hub.inventory
            except Exception as e:  # noqa: BLE001 - the same, through the hub's own rule
                findings.append(Finding(FAIL, "gpus", f"the hub cannot read its GPUs: {e}", "run nvidia-smi"))
        findings += nvml_findings(nvml, nvml_error, spawner.gpus, inventory.units)
        findings.append(inventory_finding(inventory, sum(bool(p.gpu_request.slots) for p in profiles)))
        findings += profile_findings(profiles, inventory, Ledger(inventory.units))
        return inventory

    def check_disk_quotas(self, client, spawner: GPUSpawner, profiles) -> list[Finding]:
        homes = [q for q in (spawner.home_quota, *(spawner.home_quota_of(p) for p in profiles)) if q]
        layers = [q for q in (spawner.container_quota, *(spawner.container_quota_of(p) for p in profiles)) if q]
        quotas = spawner.home_quotas()
        try:
            info = client.info() if client is not None else None
        except (docker.errors.DockerException, OSError):
            info = None
        return disk_quota_findings(
            quotas.facts() if quotas else None, max(homes, default=None), info, max(layers, default=None)
        )

    def check_subdomains(self, hub: HubConfig) -> list[Finding]:
        """With ``c.JupyterHub.subdomain_host``: the hosts it makes, and the hub's certificate for them."""
        section = hub.spawner.config.get("JupyterHub", {})
        subdomain_host = section.get("subdomain_host", "")
        if not subdomain_host:
            return []
        hook = section.get("subdomain_hook", "idna")
        ssl_cert = section.get("ssl_cert", "")
        names, error = None, ""
        if ssl_cert:
            try:
                names = _certificate_names(ssl_cert)
            except (OSError, ValueError) as e:
                error = str(e)
        return subdomain_findings(
            subdomain_host,
            ssl_cert=ssl_cert,
            cert_names=names,
            cert_error=error,
            dashboard=_dashboard_service(section.get("services", [])),
            hook=SUBDOMAIN_HOOKS.get(hook, hook) if isinstance(hook, str) else hook,
        )

    def check_mounts(self, client, spawner: GPUSpawner, profiles) -> list[Finding]:
        """Datasets and shares as each image's user finds them, through the engine (one container per image)."""
        uses = mount_uses(profiles)
        looked = None
        if client is not None and uses:
            create = spawner.extra_create_kwargs if isinstance(spawner.extra_create_kwargs, dict) else {}
            host = spawner.extra_host_config if isinstance(spawner.extra_host_config, dict) else {}
            looked = look_at_mounts(
                client,
                uses,
                user=str(create.get("user") or ""),
                group_add=host.get("group_add") or (),
                cap_drop=spawner.cap_drop,
                no_new_privileges=spawner.no_new_privileges,
            )
        return mount_findings(uses, looked, _source_here)

    def check_images(self, client, spawner: GPUSpawner, profiles, inventory: Inventory, findings: list[Finding]):
        for image, its_profiles in by_image(profiles).items():
            findings += profile_image_findings(
                image,
                probe.image_inspect(client, image),
                tuple(its_profiles),
                pull_policy=spawner.pull_policy,
                allow_root=spawner.allow_root,
                driver_cuda=inventory.cuda_version or spawner.driver_cuda_version,
                driver_version=inventory.driver_version,
            )


def _source_here(source: str) -> bool:
    """Whether a source is there as this machine sees it: only for when the engine cannot say
    (in the hub's container the mount roots may not be mounted at all)."""
    return source.startswith("/") and os.path.exists(source)


def _certificate_names(path: str) -> list[str]:
    """The DNS names of a PEM certificate file (its first certificate: the server's own in a chain)."""
    from cryptography import x509  # JupyterHub's own dependency (through certipy)

    with open(path, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []  # browsers ignore the common name
    return names.get_values_for_type(x509.DNSName)


def _dashboard_service(services) -> str:
    """The name of the hub's GPU dashboard service (``services.add_dashboard``), '' when none."""
    if hasattr(services, "get_value"):  # c.JupyterHub.services.append(...) with nothing set before
        services = services.get_value([])
    for service in services or ():
        if "gpuspawner.dashboard" in (service.get("command") or ()) and service.get("url"):
            return service.get("name", "")
    return ""
