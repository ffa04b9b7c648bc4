"""``gpuspawner network [check|up|down]``: the students' lab network and the host's rules that close it.

``check`` (also part of ``gpuspawner doctor``) says whether the networks and every rule and jump
are as the hub's config says; ``up`` makes them as the hub does when it starts; ``down`` takes
them away once no server uses the networks (the rules outlive the hub on purpose: servers keep
running across a hub restart and stay closed in).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from textwrap import dedent

import docker.errors

from ..lab_network import (
    LabNetwork,
    LabNetworkError,
    check_networks,
    check_rules,
    forwarding_on,
    lab_network,
    remove_networks,
    remove_rules,
    set_up,
)
from ..spawner import GPUSpawner
from . import output
from .command import LabCommand, profiles_of
from .findings import FAIL, OK, WARN, Finding, verdict


def network_findings(
    network_name: str, lab: str, problems: Iterable[str], internet_profiles: Iterable[str], forwarding: bool | None
) -> list[Finding]:
    """Where servers run, and whether the lab network (``lab``: its name, '' none) is as the config says."""
    problems = list(problems)
    if network_name == "host":
        return [
            Finding(
                WARN,
                "network",
                "servers run in the host's network: a student can reach every port of the host and of other"
                " students' servers, and take ports the hub needs (docs/topic/security.md)",
                "call gpuspawner.lab_network.add_lab_network(c) in the config",
            )
        ]
    if not lab:
        return [
            Finding(
                WARN,
                "network",
                f"servers run on {network_name!r}, which gpuspawner did not make: what they reach is up to its rules",
                "call gpuspawner.lab_network.add_lab_network(c) in the config instead",
            )
        ]
    findings = [
        Finding(
            FAIL, "network", problem, "gpuspawner network up (or restart the hub): both make the networks and rules"
        )
        for problem in problems
    ]
    if not problems:
        findings.append(
            Finding(OK, "network", f"servers run on {lab!r}: its networks and rules are in place (the hub's API only)")
        )
    internet = sorted(internet_profiles)
    if internet and forwarding is False:
        findings.append(
            Finding(
                WARN,
                "network",
                f"profiles {', '.join(internet)} allow the internet, but this host does not forward IPv4",
                "sysctl -w net.ipv4.ip_forward=1 (Docker sets it where it manages iptables)",
            )
        )
    return findings


def lab_network_findings(client, spawner: GPUSpawner, profiles) -> list[Finding]:
    """The lab network's Docker networks (``client``: None when Docker did not answer) and the host's rules."""
    problems: list[str] = []
    lab_name = ""
    if spawner.lab_network and spawner.network_name != "host":
        try:
            lab = lab_network(**spawner.lab_network)
            lab_name = lab.name
            if client is not None:
                problems += check_networks(client, lab)
            problems += check_rules(lab)
        except LabNetworkError as e:
            problems.append(str(e))
    internet = [p.slug for p in profiles if p.internet]
    return network_findings(spawner.network_name, lab_name, problems, internet, forwarding_on())


def servers_on(client, lab: LabNetwork) -> list[str]:
    """The containers attached to the lab's networks."""
    names = []
    for name in (lab.name, lab.internet_name):
        try:
            found = client.inspect_network(name)
        except docker.errors.NotFound:
            continue
        names += [c.get("Name", cid[:12]) for cid, c in (found.get("Containers") or {}).items()]
    return sorted(names)


class NetworkApp(LabCommand):
    name = "gpuspawner network"
    description = """The students' lab network: check it, make it, or take it away.

    `check` (the default): the networks and every iptables rule and jump, as in `gpuspawner doctor`.
    `up`: make the networks and install the rules, as the hub does when it starts (as root).
    `down`: remove the rules and the networks, once no server is attached to them.
    The settings are those of add_lab_network(c) in the hub's config (-f).
    """
    judges_the_hub = True
    examples = dedent("""
    gpuspawner network -f /etc/jupyterhub/jupyterhub_config.py
    gpuspawner network up -f /etc/jupyterhub/jupyterhub_config.py
    gpuspawner network down -f /etc/jupyterhub/jupyterhub_config.py
    """)

    def start(self) -> int:
        action = self.extra_args[0] if self.extra_args else "check"
        if action not in ("check", "up", "down") or len(self.extra_args) > 1:
            print(
                f"gpuspawner network: unknown action {' '.join(self.extra_args)!r}: check, up or down", file=sys.stderr
            )
            return 2
        hub = self.load_hub_config()
        spawner = hub.spawner
        out = output.console()
        if action == "check":
            findings = lab_network_findings(hub.docker(), spawner, profiles_of(hub))
            output.print_findings(out, findings)
            status, text = verdict(findings)
            out.print(output.verdict_line(status, text))
            return status
        if not spawner.lab_network:
            print(
                "gpuspawner network: the config calls no add_lab_network(c): nothing to make or remove", file=sys.stderr
            )
            return 2
        try:
            lab = lab_network(**spawner.lab_network)
            client = hub.docker()
            if action == "up":
                made = set_up(client, lab)
                out.print(f"networks made: {', '.join(made) or 'none (both were there)'}; rules installed")
                return 0
            attached = servers_on(client, lab)
            if attached:
                print(
                    f"gpuspawner network: servers still use the lab network: {', '.join(attached)}."
                    " Stop them first (their rules must stay while they run).",
                    file=sys.stderr,
                )
                return 1
            remove_rules(lab)
            remove_networks(client, lab)
        except LabNetworkError as e:
            print(f"gpuspawner network: {e}", file=sys.stderr)
            return 1
        out.print(f"removed the rules and the networks {lab.name}, {lab.internet_name}")
        return 0


__all__ = ["NetworkApp", "lab_network_findings", "network_findings"]
