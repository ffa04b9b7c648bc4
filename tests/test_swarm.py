"""The Swarm backend's pure parts, and the allocation core on units of several nodes.

The real Swarm is in test_swarm_e2e.py; here Swarm's answers are plain dicts
shaped as the Docker API returns them (seen on Docker 20.10).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyterhub.spawner import SpawnException

from gpuspawner.gpus import GPU, GPURequest, Ledger, NoCapacity, Policy, Requester, holder_key
from gpuspawner.gpus.inventory import InventoryError, parse_static_inventory
from gpuspawner.profiles import Profile
from gpuspawner.swarm import (
    SwarmGPUSpawner,
    assigned_ids,
    explain_refusal,
    home_nodes,
    home_record_name,
    not_usable_note,
    read_nodes,
    resource_request,
    running_servers,
    usable_units,
    withheld_kinds,
)

GiB = 1024**3


def take(ledger: Ledger, user: str, count: int, node: str | None = None):
    """``user``'s default server asks for ``count`` whole GPUs."""
    return ledger.assign(holder_key(user), GPURequest(count=count), Requester(user), node=node)


def unit(node: int, i: int, memory: int = 24 * GiB) -> GPU:
    return GPU(index=i, uuid=f"GPU-n{node}-{i}", name="NVIDIA L4", memory=memory, node=f"gpu-node-{node}")


def api_node(n: int, units=(), state="ready", availability="active", kind="NVIDIA-GPU", host=None) -> dict:
    return {
        "ID": f"id{n}",
        "Description": {
            "Hostname": host or f"gpu-node-{n}",
            "Resources": {
                "GenericResources": [{"NamedResourceSpec": {"Kind": kind, "Value": u}} for u in units]
                + [{"DiscreteResourceSpec": {"Kind": "SSD", "Value": 1}}]
            },
        },
        "Status": {"State": state, "Addr": f"10.0.0.{n}"},
        "Spec": {"Availability": availability, "Labels": {}},
    }


# --- the allocation core with nodes


def test_units_of_one_server_are_on_one_node():
    ledger = Ledger([unit(1, 0), unit(1, 1), unit(2, 0), unit(2, 1)], Policy(placement="spread"))
    take(ledger, "a", 1)  # spread: node 1, GPU 0
    both = take(ledger, "b", 2)
    assert {u.node for u in both.units} == {"gpu-node-2"}
    with pytest.raises(NoCapacity) as e:
        take(ledger, "c", 2)
    assert e.value.reason == "no_gpu"
    assert e.value.message == "Needs 2 whole GPUs: only 1 of 4 NVIDIA L4 GPUs are free."


def test_refusal_when_free_units_are_split_names_them_per_node():
    ledger = Ledger([unit(n, i) for n in (1, 2, 3) for i in (0, 1)], Policy(placement="spread"))
    for user in "abc":
        take(ledger, user, 1)
    assert sorted(a.units[0].node for a in ledger.assignments()) == ["gpu-node-1", "gpu-node-2", "gpu-node-3"]
    with pytest.raises(NoCapacity) as e:
        take(ledger, "d", 2)
    assert e.value.message == (
        "Needs 2 whole GPUs on one node, and no node has that many free. Free now:"
        " gpu-node-1: 1 NVIDIA L4 GPU; gpu-node-2: 1 NVIDIA L4 GPU; gpu-node-3: 1 NVIDIA L4 GPU."
    )


@pytest.mark.parametrize(
    "placement, expected",
    [("pack", ["gpu-node-1", "gpu-node-1", "gpu-node-2"]), ("spread", ["gpu-node-1", "gpu-node-2", "gpu-node-1"])],
    ids=["pack-fills-a-node", "spread-prefers-idle-nodes"],
)
def test_placement_over_nodes(placement, expected):
    ledger = Ledger([unit(n, i) for n in (1, 2) for i in (0, 1)], Policy(placement=placement))
    got = [take(ledger, u, 1).units[0].node for u in "abc"]
    assert got == expected


def test_one_host_inventories_are_unchanged_by_nodes():
    ledger = Ledger([GPU(0, "GPU-a", "A100", 80 * GiB), GPU(1, "GPU-b", "A100", 80 * GiB)])
    take(ledger, "a", 1)
    with pytest.raises(NoCapacity) as e:
        take(ledger, "b", 2)
    assert "on one node" not in e.value.message and "gpu-node" not in e.value.message


def test_static_inventory_indices_repeat_across_nodes_only():
    entries = [
        {"index": 0, "uuid": "GPU-a", "name": "L4", "memory": "24G", "node": "n1"},
        {"index": 0, "uuid": "GPU-b", "name": "L4", "memory": "24G", "node": "n2"},
    ]
    assert [u.node for u in parse_static_inventory(entries)] == ["n1", "n2"]
    entries[1]["node"] = "n1"
    with pytest.raises(InventoryError, match="share index 0 on node n1"):
        parse_static_inventory(entries)
    with pytest.raises(InventoryError, match="field 'node'"):
        parse_static_inventory([{"index": 0, "uuid": "GPU-a", "name": "L4", "memory": "24G", "node": 3}])


def test_update_inventory_keeps_holders_and_takes_units_out_of_the_pool():
    ledger = Ledger([unit(1, 0), unit(2, 0)])
    take(ledger, "a", 1)
    ledger.update_inventory([unit(2, 0)])  # node 1 drained
    assert ledger.assignment(holder_key("a")).ids == ("GPU-n1-0",)
    assert [u.id for u in ledger.free()] == ["GPU-n2-0"]
    ledger.release(holder_key("a"))
    assert [u.id for u in ledger.free()] == ["GPU-n2-0"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 3)), max_size=25), st.sampled_from(["pack", "spread"])
)
def test_never_a_unit_twice_never_across_nodes(steps, placement):
    ledger = Ledger([unit(n, i) for n in (1, 2, 3) for i in (0, 1)], Policy(placement=placement))
    for user, count in steps:
        try:
            if count == 3:
                ledger.release(holder_key(user))
            else:
                take(ledger, user, count)
        except NoCapacity:
            pass
        ids = [i for a in ledger.assignments() for i in a.ids]
        assert len(ids) == len(set(ids))
        assert all(len({u.node for u in a.units}) == 1 for a in ledger.assignments())


# --- Swarm's answers


def test_read_nodes_units_kinds_and_usability():
    described = {
        u.uuid: u
        for u in parse_static_inventory([{"index": 3, "uuid": "GPU-x1", "name": "NVIDIA A100", "memory": "80G"}])
    }
    nodes = read_nodes(
        [
            api_node(2, ["GPU-y1"], availability="drain"),
            api_node(1, ["GPU-x1", "GPU-x2"]),
            api_node(3, ["MIG-z1"], kind="NVIDIA-MIG-1g.10gb", state="down"),
        ],
        described,
    )
    assert [n.name for n in nodes] == ["gpu-node-1", "gpu-node-2", "gpu-node-3"]
    one, two, three = nodes
    assert one.units[0] == GPU(3, "GPU-x1", "NVIDIA A100", described["GPU-x1"].memory, node="gpu-node-1")
    assert (one.units[1].name, one.units[1].memory) == ("NVIDIA-GPU", 0)  # not described: the kind, no memory
    assert one.kinds == {"GPU-x1": "NVIDIA-GPU", "GPU-x2": "NVIDIA-GPU"}
    assert three.units[0].mig_profile == "1g.10gb" and three.units[0].is_mig
    assert [(n.usable, n.condition) for n in nodes] == [(True, ""), (False, "drained"), (False, "down")]
    assert [u.id for u in usable_units(nodes)] == ["GPU-x1", "GPU-x2"]
    assert not_usable_note(nodes) == " Not in use: gpu-node-2 (drained), gpu-node-3 (down)."


def test_duplicate_hostnames_are_told_apart():
    nodes = read_nodes([api_node(1, ["GPU-a"], host="gpu"), api_node(2, ["GPU-b"], host="gpu")], {})
    assert [n.name for n in nodes] == ["gpu-id1", "gpu-id2"]


def test_resource_request_counts_each_kind():
    nodes = read_nodes([api_node(1, ["GPU-a", "GPU-b"])], {})
    assert resource_request(nodes[0].units, nodes[0].kinds) == {"NVIDIA-GPU": 2}


@pytest.mark.parametrize(
    "wanted, blank",
    [
        ({}, ("NVIDIA-GPU", "NVIDIA-MIG-1g.10gb")),
        ({"NVIDIA-GPU": 1}, ("NVIDIA-MIG-1g.10gb",)),
        ({"NVIDIA-MIG-1G.10GB": 1}, ("NVIDIA-GPU",)),  # Swarm's variable names the kind in upper case
    ],
    ids=["cpu-server", "gpu-server", "mig-server"],
)
def test_every_kind_a_server_was_not_given_is_withheld(wanted, blank):
    # The down node's kind counts too: it may come back while this server runs.
    nodes = read_nodes(
        [
            api_node(1, ["GPU-a"]),
            api_node(2, ["GPU-b"]),
            api_node(3, ["MIG-c"], kind="NVIDIA-MIG-1g.10gb", state="down"),
        ],
        {},
    )
    assert withheld_kinds(nodes, wanted) == blank


def test_running_servers_from_services_and_tasks():
    services = [
        {
            "ID": "s1",
            "Spec": {"Labels": {"gpuspawner.user": "ann", "gpuspawner.server": "", "gpuspawner.groups": "ml101"}},
        },
        {"ID": "s2", "Spec": {"Labels": {"gpuspawner.user": "bob", "gpuspawner.server": "x"}}},
        {"ID": "s3", "Spec": {"Labels": {"other": "1"}}},
    ]
    gpu = [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-a"}}]
    tasks = [
        {
            "ServiceID": "s1",
            "NodeID": "id1",
            "DesiredState": "running",
            "Status": {"State": "running"},
            "GenericResources": gpu,
        },
        {"ServiceID": "s2", "NodeID": "id2", "DesiredState": "running", "Status": {"State": "pending"}},
        {
            "ServiceID": "s3",
            "NodeID": "id2",
            "DesiredState": "running",
            "Status": {"State": "running"},
            "GenericResources": gpu,
        },
    ]
    (ann,) = running_servers(services, tasks)
    assert (ann.holder, ann.node_id, ann.unit_ids, ann.groups) == ("ann/", "id1", ("GPU-a",), ("ml101",))
    assert assigned_ids({}) == ()


def test_home_records():
    configs = [
        {"CreatedAt": "2", "Spec": {"Labels": {"gpuspawner.home": "v1", "gpuspawner.node": "late"}}},
        {"CreatedAt": "1", "Spec": {"Labels": {"gpuspawner.home": "v1", "gpuspawner.node": "id1"}}},
        {"CreatedAt": "1", "Spec": {"Labels": {"gpuspawner.home": "v2"}}},
    ]
    assert home_nodes(configs) == {"v1": "id1"}
    assert home_record_name("jupyterhub-user-ann") == "gpuspawner-home.jupyterhub-user-ann"
    long = home_record_name("x" * 80)
    assert len(long) <= 64 and long.startswith("gpuspawner-home.")


def test_decisions_on_the_home_node_and_the_refusal_says_so():
    units = [unit(1, 0), unit(2, 0), unit(2, 1)]
    nodes = read_nodes([api_node(1, ["GPU-n1-0"]), api_node(2, ["GPU-n2-0", "GPU-n2-1"])], {})
    ledger = Ledger(units, Policy(placement="spread"))
    take(ledger, "x", 1)  # spread: node 1's only unit
    refusal = ledger.can_fit(GPURequest(count=1), Requester("ann"), holder_key("ann"), node=nodes[0].name)
    assert refusal is not None
    refusal = explain_refusal(refusal, nodes, nodes[0], ledger.free())
    assert refusal.message.startswith("Your home is on gpu-node-1.")
    assert "Other nodes have 2 free" in refusal.message
    got = take(ledger, "ann", 1)  # no home yet: any node
    assert got.units[0].node == "gpu-node-2" and ledger.assignment(holder_key("ann")).ids == got.ids


def test_a_refusal_names_the_nodes_not_in_use_and_leaves_quotas_alone():
    nodes = read_nodes([api_node(1, ["GPU-n1-0"]), api_node(2, ["GPU-n2-0"], availability="drain")], {})
    ledger = Ledger(usable_units(nodes), Policy(max_gpus_per_user=1))
    take(ledger, "x", 1)
    no_gpu = ledger.can_fit(GPURequest(count=1), Requester("ann"), holder_key("ann"))
    explained = explain_refusal(no_gpu, nodes, None, ledger.free())
    assert explained.message == no_gpu.message + " Not in use: gpu-node-2 (drained)."
    quota = ledger.can_fit(GPURequest(count=1), Requester("x"), holder_key("x", "big"))
    assert explain_refusal(quota, nodes, nodes[0], ledger.free()) is quota


def test_shared_slots_are_refused_before_anything_is_assigned():
    from .fakes import FakeDocker, make_spawner

    ledger = Ledger([unit(1, 0)])
    take(ledger, "bob", 1)
    spawner = make_spawner(SwarmGPUSpawner, FakeDocker(), user="bob")
    shared = Profile("s", "Shared", "lab:1", shared_gpu=True)
    admission, ticket = spawner._admit(ledger, shared)
    assert ticket is None and "Shared GPU slots are not offered" in admission.refusal.message
    assert ledger.assignment(holder_key("bob")).ids == ("GPU-n1-0",)  # what it held stays held


def test_the_spawner_class_defaults():
    spawner = SwarmGPUSpawner()
    assert spawner.remove is True and spawner.pull_policy == "skip" and spawner.network_name == "gpuspawner-lab"
    assert spawner.on_lab_network and not SwarmGPUSpawner(network_name="host").on_lab_network
    for name in ("gpu_resource_prefix", "nodes_refresh", "task_pending_timeout", "server_port"):
        assert SwarmGPUSpawner.class_traits()[name].help


def test_unit_metrics_carry_the_node():
    from datetime import datetime, timezone

    from prometheus_client.parser import text_string_to_metric_families

    from gpuspawner.dashboard.metrics import render_metrics
    from gpuspawner.dashboard.model import build_view
    from gpuspawner.gpus import Inventory

    # GPU 0 on two nodes: the same index, told apart by the node.
    units = (unit(1, 0), unit(2, 0))
    held = {"Id": "s1", "Labels": {"gpuspawner.user": "ann", "gpuspawner.server": "", "gpuspawner.gpus": "GPU-n2-0"}}
    view = build_view(Inventory(units=units, source="swarm"), Policy(), [held], now=datetime.now(timezone.utc))
    text = render_metrics(view).decode()
    samples = [
        s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "gpuspawner_unit_assigned"
    ]
    assert {(s.labels["node"], s.labels["gpu_index"], s.labels["user"], s.value) for s in samples} == {
        ("gpu-node-1", "0", "", 0),
        ("gpu-node-2", "0", "ann", 1),
    }
    # One host: the label is there, empty.
    one = build_view(
        Inventory(units=(GPU(index=0, uuid="GPU-x", name="L4", memory=GiB),), source="static"),
        Policy(),
        [],
        now=datetime.now(timezone.utc),
    )
    assert 'node=""' in render_metrics(one).decode()


def test_check_config_reads_the_swarm_hubs_own_section():
    from traitlets.config import Config

    from gpuspawner.checks import ConfigInvalid, check_config

    c = Config()
    c.JupyterHub.spawner_class = "gpuspawner.swarm.SwarmGPUSpawner"
    c.SwarmGPUSpawner.profiles = [{"slug": "x", "display_name": "X", "image": "i:1", "gpus": "one"}]
    with pytest.raises(ConfigInvalid, match="profile 'x': field 'gpus'"):
        check_config(c, prepull=False)


@pytest.mark.parametrize(
    "tasks, outcome",
    [
        # The orchestrator had not made the task yet: that is pending, not a failure.
        ([None, None, {"Status": {"State": "pending"}}, {"Status": {"State": "running"}}], "running"),
        ([None, {"Status": {"State": "rejected", "Err": "no suitable node"}}], "no suitable node"),
        ([None] * 50, "within 1 s: Swarm made no task"),
    ],
)
def test_start_object_waits_for_the_task(monkeypatch, tasks, outcome):
    import asyncio

    spawner = SwarmGPUSpawner(task_pending_timeout=1 if outcome.startswith("within") else 60)
    spawner.node = type("Node", (), {"name": "gpu-node-1"})()
    answers = iter(tasks)
    recorded = []

    async def get_task():
        return next(answers)

    async def record(task):
        recorded.append(task)

    async def no_sleep(_):
        return None

    monkeypatch.setattr(spawner, "get_task", get_task)
    monkeypatch.setattr(spawner, "_record_assigned", record)
    monkeypatch.setattr("gpuspawner.swarm.asyncio.sleep", no_sleep)
    if outcome == "running":
        asyncio.run(spawner.start_object())
        assert recorded == [{"Status": {"State": "running"}}]
    else:
        if outcome.startswith("within"):
            clock = iter(range(0, 10_000))
            monkeypatch.setattr("gpuspawner.swarm.time.monotonic", lambda: next(clock))
        with pytest.raises(SpawnException, match=outcome):
            asyncio.run(spawner.start_object())
        assert recorded == []


@pytest.mark.parametrize("network", ["host", "gpuspawner-lab"])
def test_where_a_server_listens_and_where_the_hub_reaches_it(network):
    """On the node's network: the node's address and the hub's port. On a lab network: the server's own
    port in its own namespace, and the hub's port published on its node."""
    import asyncio

    from .fakes import FakeDocker, make_spawner

    spawner = make_spawner(SwarmGPUSpawner, FakeDocker(), network_name=network, server_port=8888)
    spawner.shared.nodes = read_nodes([api_node(1, ["GPU-a"]), api_node(2, ["GPU-b"])], {})
    listen = spawner.port = spawner._choose_port()  # as GPUSpawner.start does
    hub_port = spawner.shared.ports[spawner.holder]
    reached = asyncio.run(spawner.get_ip_and_port())
    if network == "host":
        assert (spawner.ip, listen) == (spawner.node.addr, hub_port) and reached == (spawner.node.addr, hub_port)
    else:
        assert (spawner.ip, listen) == ("0.0.0.0", 8888)
        assert reached == (spawner.node.addr, hub_port) and spawner.published_port == hub_port


def test_a_lab_network_that_is_not_the_swarms_is_a_clear_refusal(monkeypatch):
    import asyncio

    import docker.errors

    from .fakes import FakeDocker, make_spawner

    spawner = make_spawner(SwarmGPUSpawner, FakeDocker(), network_name="gpuspawner-lab")
    answers = {"gpuspawner-lab": {"Scope": "local"}}

    async def docker_call(method, name):
        assert method == "inspect_network"
        if name not in answers:
            raise docker.errors.NotFound("no such network")
        return answers[name]

    monkeypatch.setattr(spawner, "docker", docker_call)
    for present in ({"Scope": "local"}, None):
        answers.clear()
        if present:
            answers["gpuspawner-lab"] = present
        with pytest.raises(SpawnException, match="The lab network gpuspawner-lab is not a network of the Swarm"):
            asyncio.run(spawner._check_lab_network())
    answers["gpuspawner-lab"] = {"Scope": "swarm"}
    asyncio.run(spawner._check_lab_network())


def test_internal_ssl_certificates_travel_as_swarm_secrets(tmp_path, monkeypatch):
    """The key, certificate and CA bundle become Swarm secrets the server reads in /run/secrets; a
    new start's are kept while an old service is removed; the certificate names every node."""
    import asyncio

    from .fakes import FakeDocker, make_spawner

    spawner = make_spawner(SwarmGPUSpawner, FakeDocker(), user="ann", internal_ssl=True)
    store: dict[str, dict] = {"old": {"ID": "old", "Spec": {"Name": "old", "Labels": {}}}}

    async def docker_call(method, *args, **kwargs):
        if method == "create_secret":
            name, data = args
            store[name] = {"ID": name, "Spec": {"Name": name, "Labels": kwargs["labels"]}, "data": data}
            return {"ID": name}
        if method == "secrets":
            return list(store.values())  # (the label filter is the engine's)
        if method == "remove_secret":
            store.pop(args[0])
            return None
        raise AssertionError(method)

    monkeypatch.setattr(spawner, "docker", docker_call)
    paths = {}
    for key in ("keyfile", "certfile", "cafile"):
        paths[key] = str(tmp_path / key)
        (tmp_path / key).write_text(key)
    in_container = asyncio.run(spawner.move_certs(paths))
    assert in_container == {k: f"/run/secrets/jupyterhub-{k}" for k in paths}
    assert "old" not in store and len(store) == 3  # a previous start's went first
    assert {s["data"] for s in store.values()} == {b"keyfile", b"certfile", b"cafile"}
    assert all(s["Spec"]["Labels"]["gpuspawner.user"] == "ann" for s in store.values())
    assert all(len(name) <= 64 for name in store)
    assert sorted(ref["File"]["Name"] for ref in spawner._ssl_secrets) == sorted(f"jupyterhub-{k}" for k in paths)
    store["stale"] = {"ID": "stale", "Spec": {"Name": "stale", "Labels": {}}}
    asyncio.run(spawner._remove_ssl_secrets(keep=spawner._ssl_secrets))  # an old service removed at start
    assert len(store) == 3 and "stale" not in store
    asyncio.run(spawner._forget_ssl_secrets())  # stopped, or the start failed
    assert store == {} and spawner._ssl_secrets == []

    spawner.shared.nodes = read_nodes([api_node(1, ["GPU-a"]), api_node(2, ["GPU-b"])], {})
    spawner.trusted_alt_names = ["IP:10.9.9.9"]
    monkeypatch.setattr(spawner, "swarm_nodes", lambda fresh=False: _done(spawner.shared.nodes))
    assert asyncio.run(spawner.ssl_alt_names(spawner)) == ["IP:10.9.9.9", "IP:10.0.0.1", "IP:10.0.0.2"]


async def _done(value):
    return value
