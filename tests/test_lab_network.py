"""The lab network's pure parts: its settings, the Docker networks and the rules it asks for.

The rules at work (probes from inside real servers) are in test_network_e2e.py.
"""

from __future__ import annotations

import pytest
from traitlets.config import Config

from gpuspawner.cli.network import network_findings
from gpuspawner.lab_network import Allowed, LabNetwork, LabNetworkError, add_lab_network, lab_network, settings


def args(rules, chain):
    return [" ".join(r.args) for r in rules if r.chain == chain]


def test_the_default_lab():
    lab = LabNetwork()
    assert (lab.name, lab.internet_name) == ("gpuspawner-lab", "gpuspawner-lab-internet")
    assert (lab.gateway, lab.internet_gateway) == ("10.213.0.1", "10.213.1.1")
    closed, internet = lab.networks()
    assert closed["options"]["com.docker.network.bridge.name"] == "gpulab0"
    assert closed["options"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    assert internet["options"]["com.docker.network.bridge.enable_ip_masquerade"] == "true"
    assert closed["labels"] == {"gpuspawner.lab-network": "gpuspawner-lab"}
    assert lab_network(**settings(lab)) == lab


def test_to_the_host_only_the_hubs_api_on_the_gateway():
    lab = lab_network(hub_port=8081, allow=["10.0.5.20:5432"])
    assert args(lab.rules(), lab.input_chain) == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",  # replies to the proxy's connections
        "-p tcp -d 10.213.0.1/32 --dport 8081 -j ACCEPT",
        "-p tcp -d 10.0.5.20/32 --dport 5432 -j ACCEPT",  # the admin's allow list
        "-p tcp -j REJECT --reject-with tcp-reset",
        "-j REJECT",
    ]


def test_through_the_host_no_server_to_server_and_internet_only_from_its_network():
    lab = LabNetwork()
    assert args(lab.rules(), lab.forward_chain) == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-o gpulab0 -p tcp -j REJECT --reject-with tcp-reset",
        "-o gpulab0 -j REJECT",
        "-o gpulab1 -p tcp -j REJECT --reject-with tcp-reset",
        "-o gpulab1 -j REJECT",
        "-i gpulab1 -j ACCEPT",
        "-p tcp -j REJECT --reject-with tcp-reset",
        "-j REJECT",
    ]
    assert args(lab.rules(), lab.nat_chain) == ["-s 10.213.1.0/24 ! -o gpulab1 -j MASQUERADE"]


def test_jumps_go_where_docker_keeps_its_users_rules():
    jumps = LabNetwork().jumps("DOCKER-USER")
    assert {(j.table, j.chain) for j in jumps} == {
        ("filter", "INPUT"),
        ("filter", "DOCKER-USER"),
        ("nat", "POSTROUTING"),
    }
    assert ("-o", "gpulab0", "-j", "GPUSPAWNER-gpulab0-FWD") in [j.args for j in jumps]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"interface": "a-bridge-name-too-long"}, "interface: 'a-bridge-name-too-long' must be 1-12"),
        ({"internet_interface": "gpulab0"}, "interface and internet_interface must differ"),
        ({"subnet": "8.8.8.0/24"}, "subnet: 8.8.8.0/24 must be a private IPv4 network"),
        ({"subnet": "10.213.0.0/16"}, "overlap"),
        ({"subnet": "not-a-net"}, "subnet: 'not-a-net' is not an IPv4 network"),
        ({"allow": ["db.example.edu"]}, "allow: 'db.example.edu' is not ADDRESS:PORT"),
        ({"allow": ["10.0.0.1:0"]}, "allow: '10.0.0.1:0' is not ADDRESS:PORT"),
        ({"name": "lab net"}, "name: 'lab net' is not a Docker network name"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(LabNetworkError, match=message):
        lab_network(**settings)


def test_allowed_destinations():
    assert str(Allowed.parse("10.0.5.0/24:5432")) == "10.0.5.0/24:5432"
    assert str(Allowed.parse("10.0.5.7:443")) == "10.0.5.7/32:443"


def test_add_lab_network_in_a_config_read_outside_the_hub_only_sets_values():
    c = Config()
    c.JupyterHub.hub_port = 18081
    lab = add_lab_network(c, subnet="10.99.0.0/24", internet_subnet="10.99.1.0/24")
    assert c.JupyterHub.hub_ip == "10.99.0.1" and lab.hub_port == 18081
    assert c.GPUSpawner.lab_network == settings(lab)

    from gpuspawner.spawner import GPUSpawner

    assert GPUSpawner(config=c).network_name == "gpuspawner-lab"
    with pytest.raises(SystemExit, match="add_lab_network: subnet: '10.300.0.0/24' is not an IPv4 network"):
        add_lab_network(Config(), subnet="10.300.0.0/24")


def test_doctor_findings():
    (host,) = network_findings("host", "", [], [], True)
    assert host.level == "warn" and "every port of the host" in host.message
    (ok,) = network_findings("gpuspawner-lab", "gpuspawner-lab", [], ["pip"], True)
    assert ok.level == "ok"
    missing, forwarding = network_findings("gpuspawner-lab", "gpuspawner-lab", ["chain X is missing"], ["pip"], False)
    assert (missing.level, missing.message) == ("fail", "chain X is missing")
    assert forwarding.level == "warn" and "pip" in forwarding.message
    (other,) = network_findings("campus-net", "", [], [], True)
    assert other.level == "warn" and "gpuspawner did not make" in other.message


def test_only_the_hub_itself_sets_the_lab_up(monkeypatch):
    """A command's traitlets Application instance must not pass for the hub (JupyterHub inherits ``_instance``)."""
    from jupyterhub.app import JupyterHub

    from gpuspawner.cli.network import NetworkApp
    from gpuspawner.lab_network import in_the_hub

    assert not in_the_hub()
    NetworkApp.instance()
    try:
        assert JupyterHub.initialized()  # traitlets' own test is fooled ...
        assert not in_the_hub()  # ... this one is not
    finally:
        NetworkApp.clear_instance()
