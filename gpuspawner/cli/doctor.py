"""``gpuspawner doctor``: is this host ready for the hub? One line per finding, with the fix.

The command gathers the facts (the config, the engine and its GPU path, NVML, the
images, the dataset and share sources, the hub's TLS certificate); the checks here
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

from ..config import CONFIG_VARIABLE, ConfigError, HubConfig, NoConfigFile, engine_where
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
    within the driver's CUDA; dataset and share sources exist; the lab network and its
    rules are in place; with per-user subdomains, where servers and the dashboard are
    and that the hub's TLS certificate covers them (a wildcard). Exit status 1 when
    anything fails (warnings do not). Run it on the hub's host: host paths are checked here.
    """
    judges_the_hub = True
    reports_unset_variables = True
    examples = dedent("""
    gpuspawner doctor
    gpuspawner doctor -f /srv/jupyterhub/jupyterhub_config.py
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
        findings += mount_findings(profiles, lambda source: _source_exists(client, source))
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
