"""The allocation core: decisions, messages, quotas, and the promise under random sequences."""

from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpuspawner.gpus import GPU, GPURequest, Ledger, NoCapacity, Policy, Requester, holder_key
from gpuspawner.gpus.allocation import decide

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


def test_assign_lowest_free_and_release():
    ledger = Ledger(inventory(3))
    assert ids(ledger.assign("alice/", 1)) == ["GPU-0000"]
    assert ids(ledger.assign("bob/", 2)) == ["GPU-0001", "GPU-0002"]
    assert ledger.free() == ()
    with pytest.raises(NoCapacity) as e:
        ledger.assign("carol/", 1)
    assert e.value.reason == "no_gpu"
    assert e.value.message == "Needs 1 whole GPU: all 3 NVIDIA A100-SXM4-80GB GPUs are taken (3/3 in use)."
    assert ledger.assignment("carol/") is None
    ledger.release("alice/")
    assert ids(ledger.assign("carol/", 1)) == ["GPU-0000"]


def test_zero_gpus_holds_nothing():
    ledger = Ledger(inventory(1))
    assert ledger.assign("alice/", 0).units == ()
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
        Ledger(units).assign("alice/", request_)


def test_message_names_what_else_is_free():
    ledger = Ledger([whole(0), mig(1, 0), mig(1, 1)])
    ledger.assign("alice/", 1)
    with pytest.raises(NoCapacity) as e:
        ledger.assign("bob/", 1)
    assert (
        "all 1 NVIDIA A100-SXM4-80GB GPUs are taken (1/1 in use). Free now: 2 MIG 1g.10gb instances." in e.value.message
    )


def test_reassign_gives_up_the_old_units_first():
    ledger = Ledger(inventory(2))
    ledger.assign("alice/", 2)
    assert ids(ledger.assign("alice/", 1)) == ["GPU-0000"]
    assert [g.index for g in ledger.free()] == [1]


def test_failed_assign_releases_the_previous_one():
    ledger = Ledger(inventory(1))
    ledger.assign("alice/", 1)
    with pytest.raises(NoCapacity):
        ledger.assign("alice/", 2)
    assert ledger.assignment("alice/") is None


def test_constraints_model_memory_and_mig_profile():
    units = [
        whole(0, "Tesla T4", 16 * GiB),
        whole(1, "NVIDIA A100-PCIE-40GB", 40 * GiB),
        mig(2, 0, "1g.10gb", 10 * GiB),
        mig(2, 1, "3g.40gb", 40 * GiB),
    ]
    ledger = Ledger(units)
    assert ids(ledger.assign("a/", GPURequest(count=1, model="a100"))) == ["GPU-0001"]
    ledger.release("a/")
    assert ids(ledger.assign("a/", GPURequest(count=1, min_memory=20 * GiB))) == ["GPU-0001"]
    assert ids(ledger.assign("b/", GPURequest(count=1, kind="mig", mig_profile="3g.40gb"))) == ["MIG-2-1"]
    assert ids(ledger.assign("c/", GPURequest(count=1, kind="mig"))) == ["MIG-2-0"]
    # 'any' takes the smallest unit that fits: the most room left for others
    ledger.release("c/")
    assert ids(ledger.assign("d/", GPURequest(count=1, kind="any"))) == ["MIG-2-0"]
    assert ids(ledger.assign("e/", GPURequest(count=1, kind="any", min_memory=12 * GiB))) == ["GPU-0000"]


def test_pack_fills_a_used_gpu_spread_prefers_an_idle_one():
    units = [mig(0, 0), mig(0, 1), mig(1, 0), mig(1, 1)]
    request = GPURequest(count=1, kind="mig")
    packed = Ledger(units, Policy(placement="pack"))
    packed.adopt("x/", ["MIG-1-0"])
    assert ids(packed.assign("a/", request)) == ["MIG-1-1"]
    spread = Ledger(units, Policy(placement="spread"))
    spread.adopt("x/", ["MIG-1-0"])
    assert ids(spread.assign("a/", request)) == ["MIG-0-0"]


def test_shared_slots_up_to_k_and_never_with_an_exclusive_holder():
    ledger = Ledger(inventory(2), Policy(share_limit=3))
    slot = GPURequest(shared=True)
    got = [ids(ledger.assign(f"s{i}/", slot)) for i in range(3)]
    assert got == [["GPU-0000"]] * 3  # pack: join the fullest shared GPU
    assert ids(ledger.assign("s3/", slot)) == ["GPU-0001"]
    with pytest.raises(NoCapacity, match="Needs 1 whole GPU: all 2"):
        ledger.assign("whole/", 1)  # GPU 1 is shared now: not handed out whole
    ledger.release("s3/")
    assert ids(ledger.assign("whole/", 1)) == ["GPU-0001"]
    with pytest.raises(NoCapacity, match="full or held whole"):
        ledger.assign("s4/", slot)


def test_spread_shares_across_gpus():
    ledger = Ledger(inventory(2), Policy(placement="spread", share_limit=4))
    slot = GPURequest(shared=True)
    assert [ids(ledger.assign(f"s{i}/", slot)) for i in range(3)] == [["GPU-0000"], ["GPU-0001"], ["GPU-0000"]]


def test_user_quota_counts_all_named_servers_and_exempts_admins():
    ledger = Ledger(inventory(4), Policy(max_gpus_per_user=2))
    alice = Requester("alice")
    ledger.assign(holder_key("alice", "one"), 1, alice)
    ledger.assign(holder_key("alice", "two"), 1, alice)
    with pytest.raises(NoCapacity) as e:
        ledger.assign(holder_key("alice", "three"), 1, alice)
    assert e.value.reason == "user_quota"
    assert "You already hold 2 GPU(s) across your servers, and the limit is 2 per user" in e.value.message
    # restarting one of them is not more
    assert ids(ledger.assign(holder_key("alice", "two"), 1, alice)) == ["GPU-0001"]
    ledger.assign(holder_key("alice", "three"), 1, Requester("alice", exempt=True))


def test_group_quota_is_the_course_cap():
    ledger = Ledger(inventory(4), Policy(group_quotas={"ml101": 2}, share_limit=4))
    student = lambda name: Requester(name, frozenset({"ml101", "students"}))  # noqa: E731
    ledger.assign("a/", 1, student("a"))
    ledger.assign("b/", GPURequest(shared=True), student("b"))  # a shared slot counts 1/4
    ledger.assign("c/", GPURequest(shared=True), student("c"))
    with pytest.raises(NoCapacity) as e:
        ledger.assign("d/", 1, student("d"))
    assert e.value.reason == "group_quota"
    assert "Your group 'ml101' is using 1.5 of its 2 GPU(s)" in e.value.message
    ledger.assign("d/", GPURequest(shared=True), student("d"))
    ledger.assign("e/", 1, Requester("e", frozenset({"research"})))  # other groups are not capped


def test_adopt_after_restart_and_unknown_ids():
    ledger = Ledger(inventory(2))
    assert ledger.adopt("alice/", ["GPU-0001", "GPU-9999"]) == ("GPU-9999",)
    assert [g.index for g in ledger.free()] == [0]
    assert ids(ledger.assign("bob/", 1)) == ["GPU-0000"]


def test_adopted_double_holding_stays_out_of_the_pool():
    ledger = Ledger(inventory(2))
    ledger.adopt("alice/", ["GPU-0000"])
    ledger.adopt("bob/", ["GPU-0000"])
    ledger.release("alice/")
    assert ids(ledger.assign("carol/", 1)) == ["GPU-0001"]


def test_can_fit_reports_without_recording():
    ledger = Ledger(inventory(1))
    assert ledger.can_fit(GPURequest(count=1), Requester("a")) is None
    ledger.assign("a/", 1)
    assert ledger.can_fit(GPURequest(count=1), Requester("b")).reason == "no_gpu"
    assert ledger.can_fit(GPURequest(count=1), Requester("a"), holder="a/") is None


def test_negative_count_is_a_bug():
    with pytest.raises(ValueError):
        Ledger(inventory(1)).assign("alice/", -1)


def test_holder_key():
    assert holder_key("alice") == "alice/"
    assert holder_key("alice", "big") == "alice/big"


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


class LedgerMachine(RuleBasedStateMachine):
    """Random allocate/release/crash/restart; the invariants are checked after every step."""

    def __init__(self):
        super().__init__()
        self.policy = Policy(placement="pack", share_limit=3, max_gpus_per_user=2, group_quotas={"ml101": 3})
        self.ledger = Ledger(UNITS, self.policy)
        self.running: dict[str, tuple[str, ...]] = {}  # holder -> unit ids: "the containers"

    def requester(self, user, exempt=False):
        return Requester(user, frozenset(GROUPS[user]), exempt)

    @rule(
        user=st.sampled_from(USERS),
        server=st.sampled_from(["", "a", "b"]),
        request=st.sampled_from(REQUESTS),
        exempt=st.booleans(),
    )
    def start(self, user, server, request, exempt):
        holder = holder_key(user, server)
        requester = self.requester(user, exempt and user == "u4")
        # The ledger's running totals decide as the pure function does from the holdings.
        try:
            expected = decide(UNITS, self.ledger.assignments(), request, requester, self.policy, holder)
        except NoCapacity as e:
            expected = (e.reason, e.message)
        try:
            got = self.ledger.assign(holder, request, requester)
        except NoCapacity as e:
            assert expected == (e.reason, e.message)
            assert e.reason in ("no_gpu", "user_quota", "group_quota") and e.message
            self.running.pop(holder, None)  # a refused start holds nothing
            assert self.ledger.assignment(holder) is None
            return
        assert got.units == expected
        assert len(got.units) == request.slots
        assert all(request.matches(u) for u in got.units)
        if got.units:
            self.running[holder] = got.ids
        else:
            self.running.pop(holder, None)

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
        rebuilt = Ledger(UNITS, self.policy)
        for a in self.ledger.assignments():
            rebuilt.adopt(a.holder, a.ids, user=a.user, shared=a.shared, groups=a.groups)
        assert {a.holder: (a.ids, a.shared, a.groups) for a in rebuilt.assignments()} == before
        self.ledger = rebuilt

    @invariant()
    def no_unit_held_twice_unless_shared(self):
        for unit in UNITS:
            holders = self.ledger.holders_of(unit.id)
            if len(holders) > 1:
                assert all(a.shared for a in holders)
                assert len(holders) <= self.policy.share_limit

    @invariant()
    def ledger_matches_the_containers(self):
        assert {a.holder: a.ids for a in self.ledger.assignments()} == self.running
        held = self.ledger.held_ids()
        assert set(u.id for u in self.ledger.free()) == {u.id for u in UNITS} - held

    @invariant()
    def running_totals_match_the_holdings(self):
        from gpuspawner.gpus.allocation import Occupancy

        fresh = Occupancy.of(self.ledger.assignments(), self.policy.share_limit)
        kept = self.ledger._occupancy
        assert {u: sorted(a.holder for a in h) for u, h in kept.holders_of.items()} == {
            u: sorted(a.holder for a in h) for u, h in fresh.holders_of.items()
        }
        for name in ("user_load", "group_load", "gpu_busy", "node_busy"):
            assert {k: v for k, v in getattr(kept, name).items() if v} == getattr(fresh, name)

    @invariant()
    def quotas_hold_for_the_not_exempt(self):
        def gpus_held(a, share_limit):  # counted here afresh: 1 per unit, 1/K per shared slot
            return Fraction(len(a.units), share_limit) if a.shared else Fraction(len(a.units))

        for user in USERS[:4]:
            mine = [a for a in self.ledger.assignments() if a.user == user]
            assert sum(gpus_held(a, 3) for a in mine) <= 2
        ml101 = [a for a in self.ledger.assignments() if "ml101" in a.groups and a.user != "u4"]
        assert sum(gpus_held(a, 3) for a in ml101) <= 3


LedgerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestLedgerPromise = LedgerMachine.TestCase


def test_adopting_more_units_after_one_left_the_inventory():
    """A node drained under a running server: its unit leaves the inventory, the holding stays."""
    ledger = Ledger(UNITS, Policy())
    first, second = UNITS[0], UNITS[1]
    ledger.adopt("ana/", [first.id], user="ana")
    ledger.update_inventory(UNITS[1:])
    assert ledger.adopt("ana/", [second.id], user="ana") == ()
    assert set(ledger.assignment("ana/").ids) == {first.id, second.id}
    assert first.id not in {u.id for u in ledger.free()}
