"""The allocation core: decisions, messages, quotas, and the promise under random sequences."""

from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpuspawner.gpus import GPU, GPURequest, Ledger, NoCapacity, Policy, Requester, holder_key, split_holder
from gpuspawner.gpus.allocation import Occupancy, availability, decide, gpu_noun
from gpuspawner.labels import ServerRecord, adopt_containers, server_labels

GiB = 1024**3


def whole(i, name="NVIDIA A100-SXM4-80GB", memory=80 * GiB):
    return GPU(index=i, uuid=f"GPU-{i:04d}", name=name, memory=memory)


def mig(gpu, slot, profile="1g.10gb", memory=10 * GiB, name="NVIDIA A100-SXM4-80GB"):
    return GPU(
        index=gpu,
        uuid=f"MIG-{gpu}-{slot}",
        name=name,
        memory=memory,
        mig_profile=profile,
        parent_uuid=f"GPU-{gpu:04d}",
        mig_index=slot,
    )


def inventory(n):
    return [whole(i) for i in range(n)]


def ids(assignment):
    return [u.id for u in assignment.units]


def take(ledger, holder, request, requester=None, **where):
    """``ledger.assign``, with ``request`` a number of whole GPUs and the requester the holder's user by default."""
    if isinstance(request, int):
        request = GPURequest(count=request)
    return ledger.assign(holder, request, requester or Requester(split_holder(holder)[0]), **where)


def test_assign_lowest_free_and_release():
    ledger = Ledger(inventory(3))
    assert ids(take(ledger, "alice/", 1)) == ["GPU-0000"]
    assert ids(take(ledger, "bob/", 2)) == ["GPU-0001", "GPU-0002"]
    assert ledger.free() == ()
    with pytest.raises(NoCapacity) as e:
        take(ledger, "carol/", 1)
    assert e.value.reason == "no_gpu"
    assert e.value.message == "Needs 1 whole GPU: all 3 NVIDIA A100-SXM4-80GB GPUs are taken (3/3 in use)."
    assert ledger.assignment("carol/") is None
    ledger.release("alice/")
    assert ids(take(ledger, "carol/", 1)) == ["GPU-0000"]


def test_zero_gpus_holds_nothing():
    ledger = Ledger(inventory(1))
    assert take(ledger, "alice/", 0).units == ()
    assert ledger.assignments() == ()


@pytest.mark.parametrize(
    "units, request_, message",
    [
        ([], GPURequest(count=1), "This hub has no unit that fits 1 whole GPU."),
        (inventory(2), GPURequest(count=3), "Needs 3 whole GPUs, and this hub has only 2 that fit."),
        (inventory(2), GPURequest(count=1, model="H100"), "This hub has no unit that fits 1 whole GPU (H100)."),
        ([mig(0, 0)], GPURequest(count=1), "This hub has no unit that fits 1 whole GPU."),
    ],
    ids=["no-gpus", "too-many", "no-model", "mig-only-host"],
)
def test_impossible_requests_say_why(units, request_, message):
    with pytest.raises(NoCapacity, match=message.replace("(", r"\(").replace(")", r"\)")):
        take(Ledger(units), "alice/", request_)


def test_message_names_what_else_is_free():
    ledger = Ledger([whole(0), mig(1, 0), mig(1, 1)])
    take(ledger, "alice/", 1)
    with pytest.raises(NoCapacity) as e:
        take(ledger, "bob/", 1)
    assert (
        "all 1 NVIDIA A100-SXM4-80GB GPUs are taken (1/1 in use). Free now: 2 MIG 1g.10gb instances." in e.value.message
    )


def test_reassign_gives_up_the_old_units_first():
    ledger = Ledger(inventory(2))
    take(ledger, "alice/", 2)
    assert ids(take(ledger, "alice/", 1)) == ["GPU-0000"]
    assert [g.index for g in ledger.free()] == [1]


def test_failed_assign_releases_the_previous_one():
    ledger = Ledger(inventory(1))
    take(ledger, "alice/", 1)
    with pytest.raises(NoCapacity):
        take(ledger, "alice/", 2)
    assert ledger.assignment("alice/") is None


def test_constraints_model_memory_and_mig_profile():
    units = [
        whole(0, "Tesla T4", 16 * GiB),
        whole(1, "NVIDIA A100-PCIE-40GB", 40 * GiB),
        mig(2, 0, "1g.10gb", 10 * GiB),
        mig(2, 1, "3g.40gb", 40 * GiB),
    ]
    ledger = Ledger(units)
    assert ids(take(ledger, "a/", GPURequest(count=1, model="a100"))) == ["GPU-0001"]
    ledger.release("a/")
    assert ids(take(ledger, "a/", GPURequest(count=1, min_memory=20 * GiB))) == ["GPU-0001"]
    assert ids(take(ledger, "b/", GPURequest(count=1, kind="mig", mig_profile="3g.40gb"))) == ["MIG-2-1"]
    assert ids(take(ledger, "c/", GPURequest(count=1, kind="mig"))) == ["MIG-2-0"]
    # 'any' takes the smallest unit that fits: the most room left for others
    ledger.release("c/")
    assert ids(take(ledger, "d/", GPURequest(count=1, kind="any"))) == ["MIG-2-0"]
    assert ids(take(ledger, "e/", GPURequest(count=1, kind="any", min_memory=12 * GiB))) == ["GPU-0000"]


def test_pack_fills_a_used_gpu_spread_prefers_an_idle_one():
    units = [mig(0, 0), mig(0, 1), mig(1, 0), mig(1, 1)]
    request = GPURequest(count=1, kind="mig")
    packed = Ledger(units, Policy(placement="pack"))
    packed.adopt("x/", ["MIG-1-0"])
    assert ids(take(packed, "a/", request)) == ["MIG-1-1"]
    spread = Ledger(units, Policy(placement="spread"))
    spread.adopt("x/", ["MIG-1-0"])
    assert ids(take(spread, "a/", request)) == ["MIG-0-0"]


def test_shared_slots_up_to_k_and_never_with_an_exclusive_holder():
    ledger = Ledger(inventory(2), Policy(share_limit=3))
    slot = GPURequest(shared=True)
    got = [ids(take(ledger, f"s{i}/", slot)) for i in range(3)]
    assert got == [["GPU-0000"]] * 3  # pack: join the fullest shared GPU
    assert ids(take(ledger, "s3/", slot)) == ["GPU-0001"]
    with pytest.raises(NoCapacity, match="Needs 1 whole GPU: all 2"):
        take(ledger, "whole/", 1)  # GPU 1 is shared now: not handed out whole
    ledger.release("s3/")
    assert ids(take(ledger, "whole/", 1)) == ["GPU-0001"]
    with pytest.raises(NoCapacity, match="full or held whole"):
        take(ledger, "s4/", slot)


def test_spread_shares_across_gpus():
    ledger = Ledger(inventory(2), Policy(placement="spread", share_limit=4))
    slot = GPURequest(shared=True)
    assert [ids(take(ledger, f"s{i}/", slot)) for i in range(3)] == [["GPU-0000"], ["GPU-0001"], ["GPU-0000"]]


def test_user_quota_counts_all_named_servers_and_exempts_admins():
    ledger = Ledger(inventory(4), Policy(max_gpus_per_user=2))
    alice = Requester("alice")
    take(ledger, holder_key("alice", "one"), 1, alice)
    take(ledger, holder_key("alice", "two"), 1, alice)
    with pytest.raises(NoCapacity) as e:
        take(ledger, holder_key("alice", "three"), 1, alice)
    assert e.value.reason == "user_quota"
    assert "You already hold 2 GPU(s) across your servers, and the limit is 2 per user" in e.value.message
    # restarting one of them is not more
    assert ids(take(ledger, holder_key("alice", "two"), 1, alice)) == ["GPU-0001"]
    take(ledger, holder_key("alice", "three"), 1, Requester("alice", exempt=True))


def test_group_quota_is_the_course_cap():
    ledger = Ledger(inventory(4), Policy(group_quotas={"ml101": 2}, share_limit=4))
    student = lambda name: Requester(name, frozenset({"ml101", "students"}))  # noqa: E731
    take(ledger, "a/", 1, student("a"))
    take(ledger, "b/", GPURequest(shared=True), student("b"))  # a shared slot counts 1/4
    take(ledger, "c/", GPURequest(shared=True), student("c"))
    with pytest.raises(NoCapacity) as e:
        take(ledger, "d/", 1, student("d"))
    assert e.value.reason == "group_quota"
    assert "Your group 'ml101' is using 1.5 of its 2 GPU(s)" in e.value.message
    take(ledger, "d/", GPURequest(shared=True), student("d"))
    take(ledger, "e/", 1, Requester("e", frozenset({"research"})))  # other groups are not capped


def test_adopt_after_restart_and_unknown_ids():
    ledger = Ledger(inventory(2))
    assert ledger.adopt("alice/", ["GPU-0001", "GPU-9999"]) == ("GPU-9999",)
    assert [g.index for g in ledger.free()] == [0]
    assert ids(take(ledger, "bob/", 1)) == ["GPU-0000"]


def test_adopted_double_holding_stays_out_of_the_pool():
    ledger = Ledger(inventory(2))
    ledger.adopt("alice/", ["GPU-0000"])
    ledger.adopt("bob/", ["GPU-0000"])
    ledger.release("alice/")
    assert ids(take(ledger, "carol/", 1)) == ["GPU-0001"]


def test_can_fit_reports_without_recording():
    ledger = Ledger(inventory(1))
    assert ledger.can_fit(GPURequest(count=1), Requester("a")) is None
    take(ledger, "a/", 1)
    assert ledger.can_fit(GPURequest(count=1), Requester("b")).reason == "no_gpu"
    assert ledger.can_fit(GPURequest(count=1), Requester("a"), holder="a/") is None


def test_negative_count_is_a_bug():
    with pytest.raises(ValueError):
        GPURequest(count=-1)


def test_holder_key():
    assert holder_key("alice") == "alice/"
    assert holder_key("alice", "big") == "alice/big"
    assert split_holder("alice/") == ("alice", "")
    assert split_holder("alice/big/er") == ("alice", "big/er")


# --- decisions limited to a node: a Swarm server goes where its home is


def on(node, unit):
    return replace(unit, node=node)


TWO_NODES = [on("n1", whole(0)), on("n1", whole(1)), on("n2", whole(2)), on("n2", whole(3))]


def ml101(user, exempt=False):
    return Requester(user, frozenset({"ml101"}), exempt)


def test_a_decision_on_a_node_takes_units_of_that_node_only():
    ledger = Ledger(TWO_NODES, Policy(placement="pack"))
    assert ids(take(ledger, "a/", 1)) == ["GPU-0000"]
    assert ids(take(ledger, "b/", 1, node="n2")) == ["GPU-0002"]  # pack alone would fill n1
    assert ledger.availability(GPURequest(count=1), node="n1") == (1, 2)
    assert ledger.availability(GPURequest(count=1)) == (2, 4)
    with pytest.raises(NoCapacity) as e:
        take(ledger, "c/", 2, node="n1")
    assert e.value.message == "Needs 2 whole GPUs: only 1 of 2 NVIDIA A100-SXM4-80GB GPUs are free."
    assert [u.id for u in e.value.free] == ["GPU-0001"]  # the node's: what this server could have had
    assert ids(take(ledger, "c/", 0, node="n1")) == []  # a CPU-only server holds nothing, on any node


def test_quotas_and_holdings_on_a_node_are_the_whole_hubs():
    ledger = Ledger(TWO_NODES, Policy(max_gpus_per_user=1, group_quotas={"ml101": 2}))
    take(ledger, "ann/", 1, ml101("ann"), node="n1")
    assert ledger.can_fit(GPURequest(count=1), ml101("ann"), "ann/big", node="n2").reason == "user_quota"
    take(ledger, "bob/", 1, ml101("bob"), node="n2")
    assert ledger.can_fit(GPURequest(count=1), ml101("cid"), "cid/", node="n2").reason == "group_quota"
    # bob's own unit counts as given up when his server starts again, on whichever node
    assert ledger.can_fit(GPURequest(count=1), ml101("bob"), "bob/", node="n1") is None


def test_can_fit_counts_the_holders_own_units_as_given_up_and_changes_nothing():
    ledger = Ledger(inventory(2), Policy(share_limit=2))
    slot = GPURequest(shared=True)
    take(ledger, "a/", slot)
    take(ledger, "b/", slot)  # GPU 0: shared by a and b, full
    take(ledger, "c/", 1)  # GPU 1: c's
    before = {u.id: [a.holder for a in ledger.holders_of(u.id)] for u in ledger.inventory}
    assert ledger.can_fit(GPURequest(count=1), Requester("c"), "c/") is None
    assert ledger.can_fit(slot, Requester("a"), "a/") is None
    assert ledger.can_fit(slot, Requester("d"), "d/").free == ()
    refusal = ledger.can_fit(GPURequest(count=2), Requester("c"), "c/")
    assert refusal.message == "Needs 2 whole GPUs: only 1 of 2 NVIDIA A100-SXM4-80GB GPUs are free."
    assert [u.id for u in refusal.free] == ["GPU-0001"]  # made when read: still with c's unit given up
    assert {u.id: [a.holder for a in ledger.holders_of(u.id)] for u in ledger.inventory} == before
    fresh = Occupancy.of(ledger.assignments(), 2)
    assert (ledger._occupancy.user_load, ledger._occupancy.gpu_busy) == (fresh.user_load, fresh.gpu_busy)


def containers(records):
    """What ``docker ps`` would list for these servers: their labels, as the spawner writes them."""
    return [{"Labels": server_labels(r)} for r in records] + [{"Labels": {"com.example.other": "1"}}]


def record_of(assignment):
    user, server = split_holder(assignment.holder)
    return ServerRecord(user, server, unit_ids=assignment.ids, shared=assignment.shared, groups=assignment.groups)


def test_quotas_hold_after_a_restart_through_the_labels():
    policy = Policy(share_limit=4, max_gpus_per_user=1, group_quotas={"ml101": 1.25})
    ledger = Ledger(inventory(4), policy)
    take(ledger, "ann/", 1, ml101("ann"))
    take(ledger, "bob/", GPURequest(shared=True), ml101("bob"))  # ml101: 1.25 of its 1.25
    restarted = Ledger(inventory(4), policy)
    assert adopt_containers(restarted, containers(record_of(a) for a in ledger.assignments())) == []
    refusal = restarted.can_fit(GPURequest(shared=True), ml101("cid"), "cid/")
    assert refusal.reason == "group_quota"
    assert "Your group 'ml101' is using 1.25 of its 1.25 GPU(s)" in refusal.message
    assert restarted.can_fit(GPURequest(shared=True), ml101("ann"), "ann/big").reason == "user_quota"
    assert restarted.can_fit(GPURequest(count=1), Requester("dan"), "dan/") is None  # not in ml101


def test_an_exempt_admin_in_a_quota_group_may_exceed_and_counts_in_the_group():
    """The group's load is every holding recorded with the group, an exempt admin's too.

    The admin may go past both the per-user cap and the group's quota; while the
    admin's units are held, the group's students are refused as the course's
    GPUs are in use; when the admin stops, they are not.
    """
    ledger = Ledger(inventory(4), Policy(max_gpus_per_user=1, group_quotas={"ml101": 2}))
    take(ledger, "ann/", 1, ml101("ann"))
    assert len(take(ledger, "teacher/", 2, ml101("teacher", exempt=True)).units) == 2  # 3 of the group's 2
    with pytest.raises(NoCapacity) as e:
        take(ledger, "bob/", 1, ml101("bob"))
    assert e.value.reason == "group_quota"
    assert "Your group 'ml101' is using 3 of its 2 GPU(s)" in e.value.message
    assert ledger.can_fit(GPURequest(count=1), ml101("teacher", exempt=True), "teacher/more") is None
    assert ledger.can_fit(GPURequest(count=1), ml101("teacher"), "teacher/more").reason == "user_quota"
    ledger.release("teacher/")
    assert len(take(ledger, "bob/", 1, ml101("bob")).units) == 1


@pytest.mark.parametrize("kind", ["user", "group"])
@pytest.mark.parametrize(
    "quota, slots",  # slots of 1/4 GPU (K = 4) that the quota allows
    [(0.25, 1), (0.3, 1), (0.5, 2), (0.6, 2), (0.99, 3), (1.5, 6), (1.75, 7)],
    ids=str,
)
def test_fractional_quotas_are_never_rounded_up(quota, slots, kind):
    if kind == "user":
        policy = Policy(share_limit=4, max_gpus_per_user=quota)
    else:
        policy = Policy(share_limit=4, group_quotas={"ml101": quota})
    ledger = Ledger(inventory(2), policy)  # 8 slots
    granted = []
    for n in range(8):
        requester = ml101("ann" if kind == "user" else f"s{n}")
        try:
            granted.append(take(ledger, holder_key(requester.user, str(n)), GPURequest(shared=True), requester))
        except NoCapacity as e:
            assert e.reason == f"{kind}_quota"
            break
    assert len(granted) == slots


def test_a_whole_gpu_under_a_fractional_quota():
    ledger = Ledger(inventory(3), Policy(share_limit=4, max_gpus_per_user=1.5))
    ann = Requester("ann")
    take(ledger, "ann/one", 1, ann)
    take(ledger, "ann/two", GPURequest(shared=True), ann)
    take(ledger, "ann/three", GPURequest(shared=True), ann)  # 1.5 of 1.5
    with pytest.raises(NoCapacity, match=r"You already hold 1\.5 GPU\(s\) .* the limit is 1\.5 per user"):
        take(ledger, "ann/four", GPURequest(shared=True), ann)
    with pytest.raises(NoCapacity, match="user_quota|You already hold 1.25"):
        take(ledger, "ann/two", 1, ann)  # 1 + 0.25 + 1 > 1.5
    refusal = Ledger(inventory(1), Policy(max_gpus_per_user=0.75)).can_fit(GPURequest(count=1), ann)
    assert refusal.reason == "user_quota" and "the limit is 0.75 per user" in refusal.message


# --- the promise, over long random sequences of allocate, release, crash and restart

UNITS = [whole(0), whole(1, "Tesla T4", 16 * GiB), whole(2), mig(3, 0), mig(3, 1), mig(3, 2, "3g.40gb", 40 * GiB)]
REQUESTS = [
    GPURequest(count=1),
    GPURequest(count=2),
    GPURequest(count=1, model="T4"),
    GPURequest(count=1, min_memory=40 * GiB, kind="any"),
    GPURequest(count=1, kind="mig"),
    GPURequest(count=1, kind="mig", mig_profile="3g.40gb"),
    GPURequest(shared=True),
    GPURequest(shared=True, kind="any"),
    GPURequest(count=0),
]
USERS = [f"u{i}" for i in range(6)]
GROUPS = {"u0": {"ml101"}, "u1": {"ml101"}, "u2": {"ml101", "cv"}, "u3": {"cv"}, "u4": set(), "u5": {"ml101"}}


def exactly(amount):
    """A quota as the exact fraction it is written as: 0.3 is 3/10, never rounded."""
    return Fraction(repr(amount))


class LedgerMachine(RuleBasedStateMachine):
    """Random allocate/release/crash/restart; the invariants are checked after every step.

    The machine keeps its own record of the running servers (``running``: the
    containers and what their labels say), and checks the ledger against it.
    """

    UNITS = UNITS
    REQUESTS = REQUESTS
    GROUPS = GROUPS
    ADMINS = ("u4", "u5")  # may start exempt from quotas; u5 is in a quota group
    NODES = (None,)  # what a decision may be limited to
    POLICY = Policy(placement="pack", share_limit=3, max_gpus_per_user=2, group_quotas={"ml101": 3})

    def __init__(self):
        super().__init__()
        self.policy = self.POLICY
        self.ledger = Ledger(self.UNITS, self.policy)
        self.running: dict[str, ServerRecord] = {}  # holder -> its container's record
        self.exempt: set[str] = set()  # holders started exempt from quotas

    def requester(self, user, exempt=False):
        return Requester(user, frozenset(self.GROUPS[user]), exempt)

    def draw(self, data, exempt=True):
        user = data.draw(st.sampled_from(sorted(self.GROUPS)), "user")
        holder = holder_key(user, data.draw(st.sampled_from(["", "a", "b"]), "server"))
        request = data.draw(st.sampled_from(self.REQUESTS), "request")
        node = data.draw(st.sampled_from(self.NODES), "node")
        exempt = exempt and user in self.ADMINS and data.draw(st.booleans(), "exempt")
        return holder, request, self.requester(user, exempt), node

    def expected(self, holder, request, requester, node):
        """What the pure function decides from all holdings: units, or (reason, message, free)."""
        try:
            return decide(self.UNITS, self.ledger.assignments(), request, requester, self.policy, holder, node)
        except NoCapacity as e:
            return (e.reason, e.message, e.free)

    @rule(data=st.data())
    def start(self, data):
        holder, request, requester, node = self.draw(data)
        # The ledger's running totals decide as the pure function does from the holdings.
        expected = self.expected(holder, request, requester, node)
        try:
            got = self.ledger.assign(holder, request, requester, node=node)
        except NoCapacity as e:
            assert expected == (e.reason, e.message, e.free)
            assert e.reason in ("no_gpu", "user_quota", "group_quota") and e.message
            assert e.reason == "no_gpu" or not requester.exempt
            self.running.pop(holder, None)  # a refused start holds nothing
            assert self.ledger.assignment(holder) is None
            return
        assert got.units == expected
        assert len(got.units) == request.slots
        assert all(request.matches(u) for u in got.units)
        assert node is None or all(u.node == node for u in got.units)
        self.exempt.discard(holder)
        if got.units:
            user, server = split_holder(holder)
            groups = frozenset(self.GROUPS[user])
            self.running[holder] = ServerRecord(user, server, unit_ids=got.ids, shared=request.shared, groups=groups)
            if requester.exempt:
                self.exempt.add(holder)
        else:
            self.running.pop(holder, None)

    @rule(data=st.data())
    def ask(self, data):
        """The spawn page's question, for a holder that may hold units: as the pure function says, and no change."""
        holder, request, requester, node = self.draw(data)
        expected = self.expected(holder, request, requester, node)
        refusal = self.ledger.can_fit(request, requester, holder, node=node)
        if refusal is None:
            assert isinstance(expected, tuple) and (not expected or isinstance(expected[0], GPU))
        else:
            assert expected == (refusal.reason, refusal.message, refusal.free)
        units = self.UNITS if node is None else [u for u in self.UNITS if u.node == node]
        pure = availability(units, self.ledger.assignments(), request, self.policy)
        assert self.ledger.availability(request, node=node) == pure

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def stop_or_crash(self, data):
        holder = data.draw(st.sampled_from(sorted(self.running)))
        del self.running[holder]  # the container is gone, by stop or crash
        self.ledger.release(holder)

    @rule()
    def restart_hub(self):
        """A new ledger rebuilt from the running containers' labels holds the same."""
        before = {a.holder: (a.ids, a.shared, a.groups) for a in self.ledger.assignments()}
        rebuilt = Ledger(self.UNITS, self.policy)
        assert adopt_containers(rebuilt, containers(self.running.values())) == []
        assert {a.holder: (a.ids, a.shared, a.groups) for a in rebuilt.assignments()} == before
        self.ledger = rebuilt

    @invariant()
    def no_unit_held_twice_unless_shared(self):
        for unit in self.UNITS:
            holders = self.ledger.holders_of(unit.id)
            if len(holders) > 1:
                assert all(a.shared for a in holders)
                assert len(holders) <= self.policy.share_limit

    @invariant()
    def ledger_matches_the_containers(self):
        assert {a.holder: a.ids for a in self.ledger.assignments()} == {h: r.unit_ids for h, r in self.running.items()}
        assert {a.holder: (a.user, a.shared, a.groups) for a in self.ledger.assignments()} == {
            h: (r.user, r.shared, r.groups) for h, r in self.running.items()
        }
        held = {u.id for u in self.UNITS if self.ledger.holders_of(u.id)}
        assert set(u.id for u in self.ledger.free()) == {u.id for u in self.UNITS} - held

    @invariant()
    def running_totals_match_the_holdings(self):
        fresh = Occupancy.of(self.ledger.assignments(), self.policy.share_limit)
        kept = self.ledger._occupancy
        assert {u: sorted(a.holder for a in h) for u, h in kept.holders_of.items()} == {
            u: sorted(a.holder for a in h) for u, h in fresh.holders_of.items()
        }
        for name in ("user_load", "group_load", "gpu_busy", "node_busy"):
            assert {k: v for k, v in getattr(kept, name).items() if v} == getattr(fresh, name)

    @invariant()
    def quotas_hold_for_the_not_exempt(self):
        """For every user and every quota group, counted afresh from the containers (not the ledger).

        A server started exempt is left out; the group's students are still held to the
        quota with it counted in, so what they hold stays within the quota.
        """
        k = self.policy.share_limit

        def gpus_held(servers):  # 1 per unit, 1/K per shared slot
            return sum(Fraction(len(r.unit_ids), k) if r.shared else len(r.unit_ids) for r in servers)

        bounded = [r for h, r in self.running.items() if h not in self.exempt]
        for user in self.GROUPS:
            assert gpus_held(r for r in bounded if r.user == user) <= exactly(self.policy.max_gpus_per_user)
        for group, quota in self.policy.group_quotas.items():
            assert gpus_held(r for r in bounded if group in self.GROUPS[r.user]) <= exactly(quota)


LedgerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestLedgerPromise = LedgerMachine.TestCase


class FractionalNodeMachine(LedgerMachine):
    """The same promise with fractional quotas (K = 4) and units on two nodes, decisions limited to either."""

    UNITS = [on("n1", u) for u in UNITS[:3]] + [on("n2", u) for u in UNITS[3:]] + [on("n2", whole(4))]
    REQUESTS = [r for r in REQUESTS if r.count != 2] + [GPURequest(count=2, kind="any")]
    GROUPS = {"u0": {"ml101"}, "u1": {"ml101", "cv"}, "u2": {"cv"}, "u3": {"nlp"}, "u4": set(), "u5": {"ml101"}}
    NODES = (None, "n1", "n2")
    POLICY = Policy(
        placement="spread",
        share_limit=4,
        max_gpus_per_user=1.5,
        group_quotas={"ml101": 2.25, "cv": 0.25, "nlp": 0.3},
    )


FractionalNodeMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
TestFractionalNodePromise = FractionalNodeMachine.TestCase


def test_adopting_more_units_after_one_left_the_inventory():
    """A node drained under a running server: its unit leaves the inventory, the holding stays."""
    ledger = Ledger(UNITS, Policy())
    first, second = UNITS[0], UNITS[1]
    ledger.adopt("ana/", [first.id], user="ana")
    ledger.update_inventory(UNITS[1:])
    assert ledger.adopt("ana/", [second.id], user="ana") == ()
    assert set(ledger.assignment("ana/").ids) == {first.id, second.id}
    assert first.id not in {u.id for u in ledger.free()}


def test_what_a_decision_could_take_now_and_what_a_student_holds():
    ledger = Ledger(inventory(4), Policy(share_limit=2))
    take(ledger, "alice/", 1)  # GPU-0 whole
    take(ledger, "bob/", GPURequest(count=1, shared=True))  # GPU-1, one of two slots
    take(ledger, "bob/b", GPURequest(count=1, shared=True))  # GPU-1 full
    take(ledger, "carol/", GPURequest(count=1, shared=True))  # GPU-2, one slot
    ledger.quarantined = frozenset({"GPU-0003"})
    assert ledger.room() == (frozenset(), frozenset({"GPU-0002"}))
    ledger.quarantined = frozenset()
    assert ledger.room() == (frozenset({"GPU-0003"}), frozenset({"GPU-0002", "GPU-0003"}))
    assert ledger.units_of_user("bob") == {"GPU-0001"} and ledger.units_of_user("dan") == frozenset()
    ledger.release("bob/")
    ledger.release("bob/b")
    assert ledger.units_of_user("bob") == frozenset()


def test_units_set_aside_are_not_taken_and_the_refusal_says_why():
    ledger = Ledger(inventory(3))
    take(ledger, "alice/", 1)
    assert ids(ledger.assign("bob/", GPURequest(count=1), Requester("bob"), set_aside={"GPU-0001"})) == ["GPU-0002"]
    ledger.release("bob/")
    refusal = ledger.can_fit(GPURequest(count=2), Requester("bob"), set_aside=frozenset({"GPU-0001"}))
    assert refusal.reason == "no_gpu" and type(refusal).__name__ == "NoFreeUnit"
    assert refusal.message == (
        "Needs 2 whole GPUs: 2 of the 3 units that fit are free, but kept for requests waiting in line"
        " or for a course's reserved lab hours."
    )
    assert refusal.free == (whole(2),)  # a unit kept for others is not offered as free
    take(ledger, "carol/", 1)  # GPU-1: now one free, kept
    refusal = ledger.can_fit(GPURequest(count=1), Requester("bob"), set_aside=frozenset({"GPU-0002"}))
    assert refusal.message == (
        "Needs 1 whole GPU: 1 of the 3 units that fit is free, but kept for requests waiting in line"
        " or for a course's reserved lab hours."
    )
    refusal = ledger.can_fit(GPURequest(count=2), Requester("bob"), set_aside=frozenset({"GPU-0002"}))
    assert refusal.message == (
        "Needs 2 whole GPUs: only 1 of 3 NVIDIA A100-SXM4-80GB GPUs are free."
        " 1 of them is kept for requests waiting in line or for a course's reserved lab hours."
    )
    # a request the hub could never meet is not a NoFreeUnit: it could not wait for one
    never = ledger.can_fit(GPURequest(count=4), Requester("bob"))
    assert never.reason == "no_gpu" and type(never).__name__ == "NoCapacity"


def test_a_model_named_gpu_is_not_said_twice_in_a_refusal():
    ledger = Ledger([replace(whole(i), name="simulated GPU") for i in range(2)])
    take(ledger, "alice/", 2)
    with pytest.raises(NoCapacity) as e:
        take(ledger, "carol/", 1)
    assert e.value.message == "Needs 1 whole GPU: all 2 simulated GPUs are taken (2/2 in use)."
    assert gpu_noun("NVIDIA L4", plural=False) == "NVIDIA L4 GPU" and gpu_noun("") == "GPUs"
