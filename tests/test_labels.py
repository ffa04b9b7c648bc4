"""labels.py: what a container records, written and read back in one place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuspawner import labels as label
from gpuspawner.culler.policy import CullRules
from gpuspawner.gpus import GPU, GPURequest, Ledger, Policy, Requester

LDAP_GROUP = "cn=ml,ou=courses"


def record(**kw) -> label.ServerRecord:
    base = dict(
        user="alice",
        server="big",
        profile="gpu",
        unit_ids=("GPU-0", "GPU-1"),
        groups=frozenset({LDAP_GROUP, "ml101"}),
        image_digest="sha256:abc",
        rules=CullRules(1800, 14400, 600),
    )
    return label.ServerRecord(**{**base, **kw})


@pytest.mark.parametrize(
    "written",
    [record(), record(server="", unit_ids=(), rules=CullRules()), record(shared=True, unit_ids=("GPU-3",))],
    ids=["two-gpus", "cpu-only", "shared-slot"],
)
def test_a_record_reads_back_as_written(written):
    assert label.read_server(label.server_labels(written)) == written


def test_a_group_name_with_commas_survives():
    labels = label.server_labels(record(groups=frozenset({LDAP_GROUP})))
    assert label.read_server(labels).groups == {LDAP_GROUP}


@given(st.lists(st.text(min_size=1), max_size=5))
def test_any_list_survives_the_label(items):
    assert label.decode_list(label.encode_list(items)) == tuple(items)


def test_labels_written_by_the_previous_version_still_read():
    old = {label.USER: "bob", label.SERVER: "", label.GPUS: "GPU-0,GPU-1", label.GROUPS: "ml101,cv201"}
    read = label.read_server(old)
    assert read.unit_ids == ("GPU-0", "GPU-1") and read.groups == {"ml101", "cv201"}


def test_a_container_gpuspawner_did_not_start_is_no_record():
    assert label.read_server({"maintainer": "someone"}) is None
    assert label.read_server(None) is None


def test_without_known_units_the_rules_are_still_written():
    """Swarm picks the units: the service carries the culler's rules but no units label."""
    labels = label.server_labels(record(), units_known=False)
    assert label.GPUS not in labels
    assert labels[label.GPU_IDLE_TIMEOUT] == "1800"
    assert label.read_server(label.with_units(labels, ["GPU-7"])).unit_ids == ("GPU-7",)


def test_a_rebuilt_ledger_keeps_the_groups_for_group_quotas():
    units = [GPU(i, f"GPU-{i}", "NVIDIA A100", 80 * 2**30) for i in range(4)]
    policy = Policy(group_quotas={LDAP_GROUP: 1})
    ledger = Ledger(units, policy)
    containers = [{"Labels": label.server_labels(record(unit_ids=("GPU-0",), groups=frozenset({LDAP_GROUP})))}]
    assert label.adopt_containers(ledger, containers) == []
    refusal = ledger.can_fit(GPURequest(count=1), Requester("carol", frozenset({LDAP_GROUP})), "carol/")
    assert refusal is not None and refusal.reason == "group_quota"


def test_units_unknown_to_the_inventory_are_warned_about():
    ledger = Ledger([GPU(0, "GPU-0", "NVIDIA A100", 80 * 2**30)], Policy())
    warnings = label.adopt_containers(ledger, [{"Labels": label.server_labels(record(unit_ids=("GPU-9",)))}])
    assert warnings == ["server alice/big holds units not in this inventory: GPU-9"]


def test_the_ledger_check_frees_units_no_running_container_holds_keeps_starts_and_adopts():
    units = [GPU(i, f"GPU-{i}", "NVIDIA A100", 80 * 2**30) for i in range(4)]
    ledger = Ledger(units, Policy())
    for holder, unit in (("alice/", "GPU-0"), ("bob/", "GPU-1"), ("carol/", "GPU-2")):
        ledger.adopt(holder, [unit])
    running = [
        {"Labels": label.server_labels(record(user="alice", server="", unit_ids=("GPU-0",)))},
        {"Labels": label.server_labels(record(user="dave", server="x", unit_ids=("GPU-3",)))},  # not in the ledger
        {"Labels": label.server_labels(record(user="erin", server="", unit_ids=()))},  # a CPU server
    ]
    # bob's container is gone (stopped by the reconciler); carol is starting: no container yet.
    changes = label.reconcile_ledger(ledger, running, keep={"carol/"})
    assert [a.holder for a in changes.released] == ["bob/"]
    assert changes.adopted == ["dave/x"] and changes.warnings == []
    assert {a.holder: a.ids for a in ledger.assignments()} == {
        "alice/": ("GPU-0",),
        "carol/": ("GPU-2",),
        "dave/x": ("GPU-3",),
    }
    assert [u.id for u in ledger.free()] == ["GPU-1"]
