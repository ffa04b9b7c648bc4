"""The students' network: each server in its own namespace, reaching the hub's API and nothing else.

A lab has two Docker bridge networks, made by ``add_lab_network(c)`` in the hub's config:

- ``gpuspawner-lab`` (by default 10.213.0.0/24 on the bridge ``gpulab0``): servers of every
  profile. The host holds its gateway address, and the hub's API listens there
  (``JupyterHub.hub_ip``), so a server starts, reports activity and does OAuth as before.
- ``gpuspawner-lab-internet`` (10.213.1.0/24 on ``gpulab1``): servers of profiles the admin
  gave ``internet: true``; the same rules, and traffic out of the host is allowed (masqueraded).

Rules of this module's own, in chains named after the bridge, close everything else:

- to the host, from a server: only the hub's API port on the gateway (and what the admin's
  ``allow`` lists); every other port of every host address is refused at once;
- from a server to another server, on either network: refused;
- out of the host: refused on the closed network; on the internet network allowed, except
  into the lab's own networks;
- replies to connections the host opened (the proxy to a server) pass, as they must.

Docker's own rules (``enable_icc=false``, ``internal``) are not relied on: an engine run with
``--iptables=false`` installs none, and an engine that does may re-order its chains when it
restarts. The jumps to this module's chains go first in ``INPUT`` and in ``DOCKER-USER`` (the
chain Docker keeps for its users' rules, evaluated before its own) or ``FORWARD`` when there is
no ``DOCKER-USER``. Installing is idempotent: each chain is emptied and filled again, and a jump
is added only when missing. ``check`` (``gpuspawner doctor``) tells what is missing.

Everything up to ``LabNetwork.rules`` is pure; the rest runs ``iptables`` and the Docker API.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_NAME = "gpuspawner-lab"
# The defaults of LabNetwork, lab_network and add_lab_network: one place.
DEFAULT_SUBNET, DEFAULT_INTERFACE = "10.213.0.0/24", "gpulab0"
DEFAULT_INTERNET_SUBNET, DEFAULT_INTERNET_INTERFACE = "10.213.1.0/24", "gpulab1"
INTERNET_SUFFIX = "-internet"
LABEL = "gpuspawner.lab-network"  # on both networks: the lab's name

_INTERFACE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,11}$")  # a chain name has at most 28 characters
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


class LabNetworkError(Exception):
    """The lab network cannot be made or is not as the config says; the message says what to do."""


@dataclass(frozen=True)
class Allowed:
    """A destination every server may reach over TCP: an address or network, and a port."""

    network: ipaddress.IPv4Network
    port: int

    @classmethod
    def parse(cls, text: str) -> Allowed:
        """``"10.0.5.20:5432"`` or ``"10.0.5.0/24:5432"``."""
        address, sep, port = str(text).rpartition(":")
        try:
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("no port")
            return cls(ipaddress.IPv4Network(address, strict=False), int(port))
        except ValueError:
            raise LabNetworkError(
                f"allow: {text!r} is not ADDRESS:PORT or NETWORK/BITS:PORT (IPv4), e.g. '10.0.5.20:5432'"
            ) from None

    def __str__(self) -> str:
        return f"{self.network}:{self.port}"


@dataclass(frozen=True)
class Rule:
    """One ``iptables`` rule: ``iptables -t TABLE -A CHAIN *args``."""

    table: str
    chain: str
    args: tuple[str, ...]

    def command(self, action: str) -> list[str]:
        return ["-t", self.table, action, self.chain, *self.args]


@dataclass(frozen=True)
class LabNetwork:
    """One lab's two networks and the hub port servers may reach."""

    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    interface: str = DEFAULT_INTERFACE
    internet_subnet: str = DEFAULT_INTERNET_SUBNET
    internet_interface: str = DEFAULT_INTERNET_INTERFACE
    hub_port: int = 8081
    allow: tuple[Allowed, ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())  # more labels for both networks (tests)

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise LabNetworkError(f"name: {self.name!r} is not a Docker network name")
        for what in ("interface", "internet_interface"):
            if not _INTERFACE.match(getattr(self, what)):
                raise LabNetworkError(
                    f"{what}: {getattr(self, what)!r} must be 1-12 letters, digits, '_', '.' or '-',"
                    " starting with a letter (it names the bridge and this lab's iptables chains)"
                )
        if self.interface == self.internet_interface:
            raise LabNetworkError("interface and internet_interface must differ")
        nets = []
        for what in ("subnet", "internet_subnet"):
            try:
                net = ipaddress.IPv4Network(getattr(self, what))
            except ValueError as e:
                raise LabNetworkError(f"{what}: {getattr(self, what)!r} is not an IPv4 network: {e}") from None
            if not net.is_private or net.num_addresses < 8:
                raise LabNetworkError(f"{what}: {net} must be a private IPv4 network of at least 8 addresses")
            nets.append(net)
        if nets[0].overlaps(nets[1]):
            raise LabNetworkError(f"subnet {nets[0]} and internet_subnet {nets[1]} overlap")
        if not 0 < self.hub_port < 65536:
            raise LabNetworkError(f"hub_port: {self.hub_port} is not a port")

    # --- what the hub and Docker need

    @property
    def internet_name(self) -> str:
        return self.name + INTERNET_SUFFIX

    @property
    def gateway(self) -> str:
        """The host's address on the closed network, where the hub's API listens."""
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))

    @property
    def internet_gateway(self) -> str:
        return str(next(ipaddress.IPv4Network(self.internet_subnet).hosts()))

    def networks(self) -> list[dict]:
        """``docker network create`` arguments of the two networks (docker-py's ``create_network``)."""
        labels = {LABEL: self.name, **dict(self.labels)}
        return [
            {
                "name": name,
                "driver": "bridge",
                "subnet": subnet,
                "gateway": gateway,
                "options": {
                    "com.docker.network.bridge.name": interface,
                    # Enforced by an engine that manages iptables; this module's rules do it either way.
                    "com.docker.network.bridge.enable_icc": "false",
                    "com.docker.network.bridge.enable_ip_masquerade": str(internet).lower(),
                },
                "labels": labels,
            }
            for name, subnet, gateway, interface, internet in (
                (self.name, self.subnet, self.gateway, self.interface, False),
                (self.internet_name, self.internet_subnet, self.internet_gateway, self.internet_interface, True),
            )
        ]

    # --- the rules

    @property
    def input_chain(self) -> str:
        return f"GPUSPAWNER-{self.interface}-IN"

    @property
    def forward_chain(self) -> str:
        return f"GPUSPAWNER-{self.interface}-FWD"

    @property
    def nat_chain(self) -> str:
        return f"GPUSPAWNER-{self.interface}-NAT"

    @property
    def chains(self) -> tuple[tuple[str, str], ...]:
        """(table, chain) of this lab's own chains."""
        return (("filter", self.input_chain), ("filter", self.forward_chain), ("nat", self.nat_chain))

    def rules(self) -> list[Rule]:
        """The rules in this lab's own chains, in order."""
        interfaces = (self.interface, self.internet_interface)
        established = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
        refuse = [("-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"), ("-j", "REJECT")]
        allowed = [("-p", "tcp", "-d", str(a.network), "--dport", str(a.port), "-j", "ACCEPT") for a in self.allow]

        to_host = [
            established,
            ("-p", "tcp", "-d", f"{self.gateway}/32", "--dport", str(self.hub_port), "-j", "ACCEPT"),
            *allowed,
            *refuse,
        ]
        through = [
            established,
            # Nothing opens a connection to a server through the host: not another server, not the outside.
            *[("-o", i, *r) for i in interfaces for r in refuse],
            *[("-i", i, *a) for i in interfaces for a in allowed],
            ("-i", self.internet_interface, "-j", "ACCEPT"),
            *refuse,
        ]
        masquerade = [("-s", self.internet_subnet, "!", "-o", self.internet_interface, "-j", "MASQUERADE")]
        return (
            [Rule("filter", self.input_chain, r) for r in to_host]
            + [Rule("filter", self.forward_chain, r) for r in through]
            + [Rule("nat", self.nat_chain, r) for r in masquerade]
        )

    def jumps(self, forward_chain: str = "FORWARD") -> list[Rule]:
        """The rules in the built-in chains (``forward_chain``: ``DOCKER-USER`` where Docker has it)
        that send the lab's traffic into its own chains."""
        jumps = []
        for i in (self.interface, self.internet_interface):
            jumps.append(Rule("filter", "INPUT", ("-i", i, "-j", self.input_chain)))
            jumps.append(Rule("filter", forward_chain, ("-i", i, "-j", self.forward_chain)))
            jumps.append(Rule("filter", forward_chain, ("-o", i, "-j", self.forward_chain)))
        jumps.append(Rule("nat", "POSTROUTING", ("-s", self.internet_subnet, "-j", self.nat_chain)))
        return jumps


def lab_network(
    name: str = DEFAULT_NAME,
    subnet: str = DEFAULT_SUBNET,
    internet_subnet: str = DEFAULT_INTERNET_SUBNET,
    interface: str = DEFAULT_INTERFACE,
    internet_interface: str = DEFAULT_INTERNET_INTERFACE,
    hub_port: int = 8081,
    allow: Iterable[str] = (),
    labels: dict[str, str] | None = None,
) -> LabNetwork:
    """A ``LabNetwork`` from config values; raises ``LabNetworkError`` naming the bad one."""
    return LabNetwork(
        name=name,
        subnet=subnet,
        interface=interface,
        internet_subnet=internet_subnet,
        internet_interface=internet_interface,
        hub_port=int(hub_port),
        allow=tuple(Allowed.parse(a) for a in allow),
        labels=tuple(sorted((labels or {}).items())),
    )


# --- iptables


def _iptables() -> str:
    path = shutil.which("iptables")
    if path is None:
        raise LabNetworkError(
            "iptables is not installed: the lab network's rules need it (Debian: apt-get install iptables)"
        )
    return path


def _run(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([_iptables(), "-w", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabNetworkError(f"iptables {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
    return done


def _has(rule: Rule) -> bool:
    return _run(rule.command("-C"), check=False).returncode == 0


def _chain_exists(table: str, chain: str) -> bool:
    return _run(["-t", table, "-S", chain], check=False).returncode == 0


def forward_entry() -> str:
    """Where the lab's forwarding jumps go: Docker's ``DOCKER-USER`` when the engine made it."""
    return "DOCKER-USER" if _chain_exists("filter", "DOCKER-USER") else "FORWARD"


def install_rules(lab: LabNetwork) -> None:
    """Make the lab's chains hold exactly ``lab.rules()``, and jump to them first; idempotent."""
    for table, chain in lab.chains:
        if not _chain_exists(table, chain):
            _run(["-t", table, "-N", chain])
        _run(["-t", table, "-F", chain])
    for rule in lab.rules():
        _run(rule.command("-A"))
    for jump in lab.jumps(forward_entry()):
        if not _has(jump):
            _run(jump.command("-I")[:4] + ["1"] + list(jump.args))


def check_rules(lab: LabNetwork) -> list[str]:
    """What is missing or extra in the host's rules for ``lab`` (empty: all in place)."""
    problems = []
    for table, chain in lab.chains:
        if not _chain_exists(table, chain):
            problems.append(f"chain {chain} ({table}) is missing")
    if problems:
        return problems
    expected = lab.rules()
    for rule in expected:
        if not _has(rule):
            problems.append(f"rule missing: iptables {' '.join(rule.command('-A'))}")
    for table, chain in lab.chains:
        listed = [line for line in _run(["-t", table, "-S", chain]).stdout.splitlines() if line.startswith("-A ")]
        wanted = sum(1 for r in expected if r.chain == chain)
        if len(listed) != wanted:
            problems.append(f"chain {chain} holds {len(listed)} rules, not the {wanted} of this lab")
    for jump in lab.jumps(forward_entry()):
        if not _has(jump):
            problems.append(f"jump missing: iptables {' '.join(jump.command('-I'))}")
    return problems


def remove_rules(lab: LabNetwork) -> None:
    """Take the lab's jumps and chains out of the host's rules (servers are then no longer closed in)."""
    for entry in ("FORWARD", "DOCKER-USER"):
        for jump in lab.jumps(entry):
            while _chain_exists(jump.table, jump.chain) and _has(jump):
                _run(jump.command("-D"))
    for table, chain in lab.chains:
        if _chain_exists(table, chain):
            _run(["-t", table, "-F", chain])
            _run(["-t", table, "-X", chain])


# --- Docker


def _differences(found: dict, wanted: dict) -> list[str]:
    ipam = (found.get("IPAM") or {}).get("Config") or [{}]
    options = found.get("Options") or {}
    differ = []
    if found.get("Driver") != "bridge":
        differ.append(f"driver {found.get('Driver')!r}, not 'bridge'")
    if ipam[0].get("Subnet") != wanted["subnet"]:
        differ.append(f"subnet {ipam[0].get('Subnet')!r}, not {wanted['subnet']!r}")
    interface = wanted["options"]["com.docker.network.bridge.name"]
    if options.get("com.docker.network.bridge.name") != interface:
        differ.append(f"bridge {options.get('com.docker.network.bridge.name')!r}, not {interface!r}")
    return differ


def ensure_networks(client, lab: LabNetwork) -> list[str]:
    """Make the lab's networks where missing; check those there. Returns the names made.

    ``client``: a docker-py ``APIClient``. Raises ``LabNetworkError`` when a network of the
    lab's name exists with another subnet or bridge (the message says how to fix it).
    """
    import docker.errors
    import docker.types

    made = []
    for wanted in lab.networks():
        try:
            found = client.inspect_network(wanted["name"])
        except docker.errors.NotFound:
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=wanted["subnet"], gateway=wanted["gateway"])]
            )
            try:
                client.create_network(
                    wanted["name"],
                    driver="bridge",
                    options=wanted["options"],
                    ipam=ipam,
                    labels=wanted["labels"],
                    check_duplicate=True,
                )
            except docker.errors.APIError as e:
                raise LabNetworkError(
                    f"could not create the lab network {wanted['name']!r} ({wanted['subnet']}):"
                    f" {e.explanation or e}. Choose a free subnet in add_lab_network(c, subnet=...)."
                ) from None
            made.append(wanted["name"])
            continue
        differ = _differences(found, wanted)
        if differ:
            raise LabNetworkError(
                f"the Docker network {wanted['name']!r} exists with {'; '.join(differ)}."
                f" Remove it (`docker network rm {wanted['name']}`, once no server uses it) or change"
                " add_lab_network's settings to match it."
            )
    return made


def check_networks(client, lab: LabNetwork) -> list[str]:
    """What is missing or different in the engine's networks for ``lab`` (empty: as the config says)."""
    import docker.errors

    problems = []
    for wanted in lab.networks():
        try:
            found = client.inspect_network(wanted["name"])
        except docker.errors.NotFound:
            problems.append(f"network {wanted['name']} is missing")
            continue
        problems += [f"network {wanted['name']}: {d}" for d in _differences(found, wanted)]
    return problems


def forwarding_on() -> bool | None:
    """Whether the host forwards IPv4 (servers of ``internet`` profiles need it); None: unknown."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def remove_networks(client, lab: LabNetwork) -> None:
    import docker.errors

    for name in (lab.name, lab.internet_name):
        try:
            client.remove_network(name)
        except docker.errors.NotFound:
            pass


def set_up(client, lab: LabNetwork) -> list[str]:
    """Networks and rules, as the hub makes them when it starts; returns the networks made."""
    made = ensure_networks(client, lab)
    install_rules(lab)
    return made


def settings(lab: LabNetwork) -> dict:
    """``lab`` as ``c.GPUSpawner.lab_network`` holds it (``lab_network(**settings)`` makes it again)."""
    return {
        "name": lab.name,
        "subnet": lab.subnet,
        "internet_subnet": lab.internet_subnet,
        "interface": lab.interface,
        "internet_interface": lab.internet_interface,
        "hub_port": lab.hub_port,
        "allow": [str(a) for a in lab.allow],
        "labels": dict(lab.labels),
    }


def in_the_hub() -> bool:
    """Whether this process is the hub reading its config (not a command or a service reading the same file).

    Not ``JupyterHub.initialized()``: any traitlets Application's ``instance()`` (the
    ``gpuspawner`` command's subcommands) sets the ``_instance`` that JupyterHub inherits.
    """
    from jupyterhub.app import JupyterHub

    return isinstance(getattr(JupyterHub, "_instance", None), JupyterHub)


def add_lab_network(
    c,
    name: str = DEFAULT_NAME,
    subnet: str = DEFAULT_SUBNET,
    internet_subnet: str = DEFAULT_INTERNET_SUBNET,
    interface: str = DEFAULT_INTERFACE,
    internet_interface: str = DEFAULT_INTERNET_INTERFACE,
    allow: Iterable[str] = (),
    labels: dict[str, str] | None = None,
) -> LabNetwork:
    """Put the students' servers on a lab network of their own; call it in ``jupyterhub_config.py``.

    Sets ``c.JupyterHub.hub_ip`` to the network's gateway (the hub's API is what servers
    reach; set ``c.JupyterHub.hub_port`` before this call if it is not 8081), and
    ``c.GPUSpawner.lab_network``, which names the network every server joins. In the
    hub itself (not in ``gpuspawner`` commands or services reading the same file), it
    also makes the two networks on the hub's engine (``DOCKER_HOST``) and installs the
    rules that close them; the hub refuses to start, saying why, when that fails.

    ``allow``: more destinations every server may reach, as ``"ADDRESS:PORT"`` or
    ``"NETWORK/BITS:PORT"`` (a course's database, say). Profiles with ``internet: true``
    join ``<name>-internet``, from which servers reach outside the host too.
    """
    hub = c.JupyterHub
    try:
        lab = lab_network(
            name=name,
            subnet=subnet,
            internet_subnet=internet_subnet,
            interface=interface,
            internet_interface=internet_interface,
            hub_port=hub.hub_port if "hub_port" in hub else 8081,
            allow=allow,
            labels=labels,
        )
    except LabNetworkError as e:
        raise SystemExit(f"gpuspawner: add_lab_network: {e}") from None
    hub.hub_ip = lab.gateway
    c.GPUSpawner.lab_network = settings(lab)

    if in_the_hub():  # the hub itself is starting, as root
        import docker
        from docker.utils import kwargs_from_env

        try:
            set_up(docker.APIClient(version="auto", **kwargs_from_env()), lab)
        except (LabNetworkError, docker.errors.DockerException) as e:
            raise SystemExit(f"gpuspawner: the lab network {lab.name!r} could not be set up: {e}") from None
    return lab


__all__ = [
    "DEFAULT_NAME",
    "add_lab_network",
    "INTERNET_SUFFIX",
    "Allowed",
    "LabNetwork",
    "LabNetworkError",
    "Rule",
    "check_networks",
    "check_rules",
    "ensure_networks",
    "forwarding_on",
    "in_the_hub",
    "install_rules",
    "lab_network",
    "remove_networks",
    "remove_rules",
    "set_up",
    "settings",
]
