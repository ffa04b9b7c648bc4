"""The wait queue: who may wait, the order, what a freed unit does, positions and estimates."""

from datetime import datetime, timedelta, timezone
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gpuspawner.gpus import (
    GPU,
    GPURequest,
    Ledger,
    NoCapacity,
    NoFreeUnit,
    Policy,
    Requester,
    ServerResources,
    holder_key,
    split_holder,
)
from gpuspawner.gpus.allocation import Caps
from gpuspawner.gpus.queue import WaitQueue, ordinal
from gpuspawner.labels import ServerRecord, adopt_containers, server_labels
from gpuspawner.reservations import ReservationBook, parse_reservations

GiB = 1024**3
UTC = ZoneInfo("UTC")
T0 = datetime(2026, 4, 14, 8, 0, tzinfo=timezone.utc).timestamp()  # a Tuesday, 08:00 UTC
ONE = GPURequest(count=1)
TWO = GPURequest(count=2)
MIG = GPURequest(count=1, kind="mig", mig_profile="1g.10gb")
SHARED = GPURequest(count=1, shared=True)


def whole(i, name="NVIDIA A100", node=""):
    return GPU(i, f"GPU-{i}", name, 80 * GiB, node=node)


def mig(i):
    return GPU(9, f"MIG-{i}", "NVIDIA A100", 10 * GiB, mig_profile="1g.10gb", parent_uuid="GPU-9", mig_index=i)


def student(user, *groups, exempt=False):
    return Requester(user, frozenset(groups), exempt)


def ask(queue, ledger, user, request=ONE, now=T0, server="", **kw):
    kw.setdefault("label", "ML101")
    return queue.admit(ledger, f"{user}/{server}", request, kw.pop("requester", student(user)), now, **kw)


def held(ledger, holder):
    a = ledger.assignment(holder)
    return a.ids if a else ()


def full_lab(n=2, policy=None):
    """A lab of ``n`` A100s, all held by h0.. h(n-1)."""
    ledger, queue = Ledger([whole(i) for i in range(n)], policy), WaitQueue()
    for i in range(n):
        assert ask(queue, ledger, f"h{i}", requester=student(f"h{i}", exempt=True)).assignment is not None
    return ledger, queue


def test_a_free_unit_is_granted_at_once_and_nothing_waits():
    ledger, queue = Ledger([whole(0)]), WaitQueue()
    admission = ask(queue, ledger, "alice")
    assert admission.assignment.ids == ("GPU-0",) and admission.waiting is None and not admission.moved
    assert len(queue) == 0


def test_no_free_unit_waits_holding_nothing():
    ledger, queue = full_lab(policy=Policy(resource_caps=Caps(cpus_per_user=8)))
    admission = ask(queue, ledger, "carol", resources=ServerResources(cpus=4), timeout=600)
    assert admission.assignment is None
    entry = admission.waiting
    assert entry.holder == "carol/" and entry.since == T0 and entry.deadline == T0 + 600
    assert "carol/" in queue and queue.waiting() == (entry,)
    # waiting holds nothing: no unit, no CPUs
    assert ledger.assignment("carol/") is None
    assert ledger.resources_held("carol/").cpus == 0
    assert ledger.usage.held.get("carol/") is None


def test_without_wait_the_refusal_is_the_ledgers_and_says_so():
    ledger, queue = full_lab()
    admission = ask(queue, ledger, "carol", wait=False)
    assert admission.assignment is None and admission.waiting is None
    assert isinstance(admission.refusal, NoFreeUnit) and admission.refusal.reason == "no_gpu"
    assert "all 2 NVIDIA A100 GPUs are taken" in admission.refusal.message
    assert len(queue) == 0


@pytest.mark.parametrize(
    "request_, policy, requester, reason",
    [
        (ONE, Policy(max_gpus_per_user=0), student("carol"), "user_quota"),
        (ONE, Policy(group_quotas={"ml101": 0}), student("carol", "ml101"), "group_quota"),
        (ONE, Policy(resource_caps=Caps(cpus_per_user=1)), student("carol"), "user_cpu_quota"),
        (GPURequest(count=3), Policy(), student("carol"), "no_gpu"),  # the hub has 2
        (GPURequest(count=1, model="H100"), Policy(), student("carol"), "no_gpu"),  # none fits at all
    ],
    ids=["user-quota", "group-quota", "cpu-cap", "more-than-the-hub-has", "no-such-model"],
)
def test_only_a_lack_of_free_units_waits(request_, policy, requester, reason):
    ledger, queue = full_lab(policy=policy)
    refusal = ask(queue, ledger, "carol", request_, requester=requester, resources=ServerResources(cpus=2)).refusal
    assert isinstance(refusal, NoCapacity) and not isinstance(refusal, NoFreeUnit)
    assert refusal.reason == reason
    assert len(queue) == 0 and ledger.assignment("carol/") is None


def test_no_free_unit_is_its_own_type_in_the_ledger():
    ledger = Ledger([whole(0), whole(1, node="n2")])
    ledger.assign("a/", ONE, student("a"))
    ledger.assign("b/", ONE, student("b"))
    assert isinstance(ledger.can_fit(ONE, student("c")), NoFreeUnit)
    # two units, but never on one node: it could never be met
    refusal = Ledger([whole(0, node="n1"), whole(1, node="n2")]).can_fit(TWO, student("c"))
    assert type(refusal) is NoCapacity and refusal.reason == "no_gpu"
    assert type(ledger.can_fit(TWO, student("c"), node="n1")) is NoCapacity


def test_first_come_first_served_and_a_freed_unit_goes_to_the_first():
    ledger, queue = full_lab()
    for i, user in enumerate(["c", "d", "e"]):
        assert ask(queue, ledger, user, now=T0 + i).waiting
    assert [s.position for s in queue.standings(ledger, T0)] == [1, 2, 3]
    ledger.release("h1/")
    moved = queue.next_grants(ledger, T0 + 60)
    assert [g.entry.holder for g in moved.granted] == ["c/"] and not moved.refused
    assert moved.granted[0].assignment.ids == ("GPU-1",) and moved.granted[0].waited == 60
    assert held(ledger, "c/") == ("GPU-1",)
    assert [(s.entry.holder, s.position) for s in queue.standings(ledger, T0)] == [("d/", 1), ("e/", 2)]
    assert queue.next_grants(ledger, T0 + 61) == queue.next_grants(ledger, T0 + 62)  # nothing free: nothing moves


def test_who_holds_a_unit_of_the_kind_waits_behind_who_holds_none():
    ledger = Ledger([whole(0), whole(1), mig(0)])
    queue = WaitQueue()
    ask(queue, ledger, "h0")
    ask(queue, ledger, "alice", server="first")  # alice holds a whole GPU
    ask(queue, ledger, "bob", MIG)  # bob holds a MIG instance: another kind
    assert ask(queue, ledger, "alice", server="second", now=T0 + 1).waiting
    assert ask(queue, ledger, "bob", now=T0 + 2).waiting  # holds none of the whole GPUs
    assert ask(queue, ledger, "carol", now=T0 + 3).waiting
    assert [e.holder for e in queue.order(ledger)] == ["bob/", "carol/", "alice/second"]
    assert [s.position for s in queue.standings(ledger, T0)] == [1, 2, 3]
    ledger.release("h0/")
    assert [g.entry.holder for g in queue.next_grants(ledger, T0 + 9).granted] == ["bob/"]
    # alice's first server stops: she holds none now, and comes before carol again
    ledger.release("alice/first")
    assert [g.entry.holder for g in queue.next_grants(ledger, T0 + 9).granted] == ["alice/second"]
    assert [e.holder for e in queue.order(ledger)] == ["carol/"]


def test_two_servers_of_one_student_the_second_goes_behind_once_the_first_holds():
    ledger, queue = full_lab()
    ask(queue, ledger, "alice", server="a", now=T0 + 1)
    ask(queue, ledger, "alice", server="b", now=T0 + 2)
    ask(queue, ledger, "bob", now=T0 + 3)
    ledger.release("h0/")
    ledger.release("h1/")
    granted = queue.next_grants(ledger, T0 + 9).granted
    assert [g.entry.holder for g in granted] == ["alice/a", "bob/"]
    assert [e.holder for e in queue.order(ledger)] == ["alice/b"]


def test_a_new_request_never_takes_a_unit_a_waiting_request_fits():
    ledger, queue = full_lab(3)
    assert ask(queue, ledger, "team", TWO, now=T0 + 1).waiting
    ledger.release("h0/")  # one free: not enough for the team, and kept for it
    assert not queue.next_grants(ledger, T0 + 2)
    assert ledger.free() and ask(queue, ledger, "carol", now=T0 + 3).waiting
    standing = queue.standing("carol/", ledger, T0 + 3)
    assert standing.position == 2 and standing.in_use == 2
    assert standing.describe(T0 + 3, UTC) == (
        "Waiting for a GPU: 2nd in line for ML101 (3 NVIDIA A100 GPUs, 2 in use, 1 kept for those ahead)."
    )
    refusal = ask(queue, ledger, "dan", wait=False).refusal
    assert refusal.message == (
        "Needs 1 whole GPU: 1 of the 3 units that fit is free, but kept for requests waiting in line"
        " or for a course's reserved lab hours."
    )
    ledger.release("h1/")
    moved = queue.next_grants(ledger, T0 + 4)
    assert [(g.entry.holder, g.assignment.ids) for g in moved.granted] == [("team/", ("GPU-0", "GPU-1"))]
    ledger.release("h2/")
    assert [g.entry.holder for g in queue.next_grants(ledger, T0 + 5).granted] == ["carol/"]


def test_a_new_request_of_another_kind_takes_a_free_unit_of_its_kind():
    ledger = Ledger([whole(0), mig(0)])
    queue = WaitQueue()
    ask(queue, ledger, "h0")
    assert ask(queue, ledger, "carol").waiting
    assert ask(queue, ledger, "dan", MIG).assignment.ids == ("MIG-0",)


def test_who_holds_none_goes_before_a_waiting_holder_even_as_a_newcomer():
    ledger, queue = full_lab(3)
    ask(queue, ledger, "h0", server="second", request=TWO)  # h0 holds an A100 and waits for two more
    ledger.release("h1/")
    assert not queue.next_grants(ledger, T0)  # kept for h0's second server...
    assert ask(queue, ledger, "carol").assignment.ids == ("GPU-1",)  # ...but carol holds none: before it


def test_a_newcomer_who_holds_the_kind_comes_after_those_waiting_who_hold_it_too():
    ledger, queue = full_lab(4)
    ledger.release("h0/")
    ask(queue, ledger, "alice", server="first")  # alice holds an A100...
    assert ask(queue, ledger, "alice", TWO, server="second").waiting  # ...and waits for two more
    ledger.release("h1/")
    assert not queue.next_grants(ledger, T0)  # GPU-1 kept for alice's second server
    ask(queue, ledger, "bob", server="first", requester=student("bob", exempt=True), now=T0 + 1)
    assert held(ledger, "bob/first") == ("GPU-1",)  # bob held none: before alice's wait
    ledger.release("h2/")
    assert not queue.next_grants(ledger, T0 + 2)
    assert ask(queue, ledger, "bob", server="second", now=T0 + 3).waiting  # now bob holds one: after alice


def test_leaving_the_line_lets_the_next_have_what_it_kept():
    ledger, queue = full_lab(2)
    ask(queue, ledger, "team", TWO, now=T0 + 1)
    ask(queue, ledger, "carol", now=T0 + 2)
    ledger.release("h0/")
    assert not queue.next_grants(ledger, T0 + 3)
    assert queue.leave("team/").holder == "team/" and queue.leave("team/") is None
    assert [g.entry.holder for g in queue.next_grants(ledger, T0 + 4).granted] == ["carol/"]


def test_queue_timeout_runs_out():
    ledger, queue = full_lab(1)
    ask(queue, ledger, "carol", timeout=600, label="ML101 - PyTorch")
    ask(queue, ledger, "dan", now=T0 + 10, timeout=None)
    assert queue.next_deadline() == T0 + 600
    assert queue.expired(T0 + 599) == ()
    (gone,) = queue.expired(T0 + 600)
    assert gone.entry.holder == "carol/" and gone.reason == "queue_timeout"
    assert gone.message == (
        "ML101 - PyTorch: waited 10 minutes in line and no unit freed in time (the profile's queue_timeout)."
        " Try again later, or choose another profile."
    )
    assert [e.holder for e in queue.waiting()] == ["dan/"] and queue.next_deadline() is None


def test_a_waiting_request_refused_for_another_reason_leaves_the_line():
    ledger = Ledger([whole(0), mig(0), mig(1)], Policy(group_quotas={"ml101": 1}))
    queue = WaitQueue()
    ask(queue, ledger, "h0")
    ask(queue, ledger, "carol", requester=student("carol", "ml101"))
    assert "carol/" in queue
    # a classmate's MIG instance fills the group's quota while carol waits
    ask(queue, ledger, "dan", MIG, requester=student("dan", "ml101"))
    ledger.release("h0/")
    moved = queue.next_grants(ledger, T0 + 5)
    assert not moved.granted
    (refusal,) = moved.refused
    assert refusal.entry.holder == "carol/" and refusal.reason == "group_quota"
    assert refusal.message.startswith("ML101: Your group 'ml101' is using 1 of its 1 GPU(s).")
    assert len(queue) == 0 and ledger.free() == (whole(0), mig(1))


def test_a_waiter_for_several_units_whose_quota_is_gone_keeps_nothing():
    ledger = Ledger([whole(0), whole(1), whole(2), mig(0)], Policy(max_gpus_per_user=2))
    queue = WaitQueue()
    for i in range(3):
        ask(queue, ledger, f"h{i}", requester=student(f"h{i}", exempt=True))
    ask(queue, ledger, "team", TWO, now=T0 + 1)
    ask(queue, ledger, "carol", now=T0 + 2)
    ledger.release("h0/")
    assert not queue.next_grants(ledger, T0 + 3)  # GPU-0 kept for the team
    # the team's other server takes a MIG instance: 1 + 2 GPUs would pass its quota
    admission = ask(queue, ledger, "team", MIG, server="small", now=T0 + 4)
    assert admission.assignment.ids == ("MIG-0",)
    moved = admission.moved
    assert [r.entry.holder for r in moved.refused] == ["team/"] and moved.refused[0].reason == "user_quota"
    assert [g.entry.holder for g in moved.granted] == ["carol/"]  # GPU-0 is kept no longer


def test_admission_reports_what_it_moved_for_others():
    ledger, queue = full_lab(1)
    ask(queue, ledger, "carol")
    ledger.release("h0/")  # the glue forgot next_grants: the next admission moves the line first
    admission = ask(queue, ledger, "dan", now=T0 + 7)
    assert [g.entry.holder for g in admission.moved.granted] == ["carol/"]
    assert admission.waiting.holder == "dan/"


def test_asking_again_replaces_the_wait_and_what_was_held():
    ledger, queue = full_lab(1)
    first = ask(queue, ledger, "carol").waiting
    second = ask(queue, ledger, "carol", now=T0 + 5).waiting
    assert queue.waiting() == (second,) and second.seq > first.seq
    # h0's server starts again: it gives up GPU-0, which goes to carol, and waits behind her
    again = ask(queue, ledger, "h0", now=T0 + 6)
    assert again.waiting and [g.entry.holder for g in again.moved.granted] == ["carol/"]


def test_a_profile_without_gpus_never_waits():
    ledger, queue = full_lab(1)
    ask(queue, ledger, "carol")
    admission = ask(queue, ledger, "dan", GPURequest(count=0))
    assert admission.assignment.units == () and admission.waiting is None


def test_shared_slots_wait_for_a_slot():
    ledger = Ledger([whole(0)], Policy(share_limit=2))
    queue = WaitQueue()
    ask(queue, ledger, "a", SHARED)
    ask(queue, ledger, "b", SHARED)
    assert ask(queue, ledger, "c", SHARED).waiting
    standing = queue.standing("c/", ledger, T0, ends={"a/": T0 + 3600, "b/": T0 + 1800})
    assert standing.kind.describe() == "shared slots on 1 NVIDIA A100 GPU"
    assert standing.estimate == T0 + 1800
    assert standing.describe(T0, UTC).startswith("Waiting for a slot on a shared GPU: 1st in line for ML101")
    ledger.release("a/")
    assert [g.assignment.shared for g in queue.next_grants(ledger, T0).granted] == [True]


def test_an_exclusive_waiter_waits_until_every_shared_holder_is_gone():
    ledger = Ledger([whole(0)], Policy(share_limit=2))
    queue = WaitQueue()
    ask(queue, ledger, "a", SHARED)
    assert ask(queue, ledger, "c").waiting
    assert ask(queue, ledger, "d", SHARED).waiting  # a free slot, but the unit is wanted whole first
    ledger.release("a/")
    assert [g.entry.holder for g in queue.next_grants(ledger, T0).granted] == ["c/"]


def test_an_exclusive_waiter_drains_only_the_shared_units_it_lacks():
    ledger = Ledger([whole(0), whole(1)], Policy(share_limit=3))
    queue = WaitQueue()
    for user in "abce":
        ask(queue, ledger, user, SHARED)
    assert [held(ledger, f"{user}/") for user in "abce"] == [("GPU-0",)] * 3 + [("GPU-1",)]
    assert ask(queue, ledger, "w").waiting  # a whole GPU: GPU-1, with one holder, drains to it
    assert ask(queue, ledger, "f", SHARED).waiting  # GPU-0 is full, GPU-1 kept for w
    ledger.release("a/")  # a slot frees on GPU-0: not kept for w, which lacks only one unit
    assert [g.entry.holder for g in queue.next_grants(ledger, T0).granted] == ["f/"]
    ledger.release("e/")
    assert [g.entry.holder for g in queue.next_grants(ledger, T0).granted] == ["w/"]


def test_estimates_are_the_ends_of_the_holders_in_line_order_and_none_without_them():
    ledger, queue = full_lab(3)
    for i, user in enumerate("cde"):
        ask(queue, ledger, user, now=T0 + i)
    ask(queue, ledger, "f", TWO, now=T0 + 3)
    ends = {"h0/": T0 + 3600, "h1/": T0 + 7200, "h2/": T0 + 5400}
    standings = queue.standings(ledger, T0 + 10, ends)
    assert [s.estimate for s in standings] == [T0 + 3600, T0 + 5400, T0 + 7200, None]  # f needs 5 units: 3 exist
    assert standings[0].describe(T0 + 10, UTC) == (
        "Waiting for a GPU: 1st in line for ML101 (3 NVIDIA A100 GPUs, all in use)."
        " Expected by about 09:00, when running servers reach their time limits."
    )
    del ends["h2/"]  # no time limit: that unit may never free
    assert [s.estimate for s in queue.standings(ledger, T0 + 10, ends)] == [T0 + 3600, T0 + 7200, None, None]
    assert [s.estimate for s in queue.standings(ledger, T0 + 10)] == [None] * 4
    # past its end (the culler is late): as good as now
    assert queue.standings(ledger, T0 + 4000, {"h0/": T0 + 3600})[0].estimate == T0 + 4000


def test_an_estimate_is_not_given_when_those_ahead_take_units_another_way():
    ledger = Ledger([whole(0)], Policy(share_limit=2))
    queue = WaitQueue()
    ask(queue, ledger, "h0")
    ask(queue, ledger, "a", SHARED)
    ask(queue, ledger, "b")
    standings = queue.standings(ledger, T0, {"h0/": T0 + 60})
    assert [(s.entry.holder, s.estimate) for s in standings] == [("a/", T0 + 60), ("b/", None)]


def test_kinds_lines_and_what_is_waited_for():
    ledger = Ledger([whole(0), whole(1, "NVIDIA L4"), mig(0), mig(1)])
    queue = WaitQueue()
    for user, request in [("h0", ONE), ("h1", GPURequest(count=1, model="L4")), ("h2", MIG), ("h3", MIG)]:
        ask(queue, ledger, user, request)
    ask(queue, ledger, "a", GPURequest(count=1, model="A100"))
    ask(queue, ledger, "b", GPURequest(count=1, kind="any"))  # any unit: in everyone's line
    ask(queue, ledger, "c", MIG)
    assert queue.lengths(ledger) == {
        "1 NVIDIA A100 GPU": 1,
        "2 MIG 1g.10gb instances, 1 NVIDIA A100 GPU, 1 NVIDIA L4 GPU": 1,
        "2 MIG 1g.10gb instances": 1,
    }
    standings = {s.entry.holder: s for s in queue.standings(ledger, T0)}
    assert {h: (s.position, s.in_line) for h, s in standings.items()} == {"a/": (1, 2), "b/": (2, 3), "c/": (2, 2)}
    assert queue.waiting_for(ledger) == {"GPU-0", "GPU-1", "MIG-0", "MIG-1"}
    ledger.release("h2/")  # a MIG instance frees: b (any) came before c
    assert [g.entry.holder for g in queue.next_grants(ledger, T0).granted] == ["b/"]


def test_a_swarm_request_waits_for_its_nodes_units_only():
    ledger = Ledger([whole(0, node="n1"), whole(1, node="n2")])
    queue = WaitQueue()
    ask(queue, ledger, "h0", node="n1")
    ask(queue, ledger, "h1", node="n2")
    ask(queue, ledger, "a", node="n1")
    ask(queue, ledger, "b", node="n2")
    assert queue.standing("b/", ledger, T0).position == 1  # not in a's line
    assert queue.standing("b/", ledger, T0).kind.describe() == "n2: 1 NVIDIA A100 GPU"
    ledger.release("h1/")
    assert [g.entry.holder for g in queue.next_grants(ledger, T0).granted] == ["b/"]


def test_quarantined_units_are_said_in_the_standing():
    ledger, queue = full_lab(2)
    ledger.quarantined = frozenset({"GPU-1"})
    ledger.release("h1/")
    ask(queue, ledger, "carol")
    assert queue.standing("carol/", ledger, T0).describe(T0, UTC) == (
        "Waiting for a GPU: 1st in line for ML101 (2 NVIDIA A100 GPUs, 1 in use, 1 set aside after failed starts)."
    )


@pytest.mark.parametrize(
    "n, text",
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"), (21, "21st")]
    + [(22, "22nd"), (101, "101st"), (111, "111th"), (112, "112th")],
)
def test_ordinal(n, text):
    assert ordinal(n) == text


# --- with lab hours

LAB = {
    "name": "ML101 lab",
    "groups": ["ml101"],
    "units": ["GPU-1"],
    "profiles": ["ml101"],
    "time_zone": "UTC",
    "dates": [{"day": "2026-04-14", "start": "14:00", "end": "16:00"}],
}
LAB_START = datetime(2026, 4, 14, 14, 0, tzinfo=timezone.utc).timestamp()
LAB_END = LAB_START + 7200


def lab_queue(n=2):
    units = [whole(i) for i in range(n)]
    return Ledger(units), WaitQueue(ReservationBook.place(parse_reservations([LAB]), units))


def member(user):
    return {"requester": student(user, "ml101"), "profile": "ml101"}


def test_in_a_window_reserved_units_go_only_to_those_it_serves():
    ledger, queue = lab_queue()
    ask(queue, ledger, "h0", now=LAB_START)
    assert ask(queue, ledger, "out", now=LAB_START, profile="cs").waiting  # GPU-1 is free, but not for them
    standing = queue.standing("out/", ledger, LAB_START)
    assert standing.reserved == ("ML101 lab",)
    assert "(2 NVIDIA A100 GPUs, 1 in use, 1 reserved for ML101 lab)" in standing.describe(LAB_START, UTC)
    # a member with another profile is not served either
    assert ask(queue, ledger, "m1", now=LAB_START, requester=student("m1", "ml101"), profile="cs").waiting
    assert ask(queue, ledger, "m2", now=LAB_START + 1, **member("m2")).assignment.ids == ("GPU-1",)
    # the window ends: the line moves to those it did not serve
    ledger.release("m2/")
    assert not queue.next_grants(ledger, LAB_END - 1)
    assert [g.entry.holder for g in queue.next_grants(ledger, LAB_END).granted] == ["out/"]


def test_a_waiting_member_gets_the_reserved_unit_at_the_windows_start():
    ledger, queue = lab_queue()
    ask(queue, ledger, "h0", now=LAB_START - 600)
    ask(queue, ledger, "out", now=LAB_START - 600, profile="cs")  # takes GPU-1 until the window
    assert ask(queue, ledger, "m", now=LAB_START - 300, **member("m")).waiting
    stops = queue.reservations.must_stop(ledger.assignments(), LAB_START, lambda holder: "cs")
    assert [s.holder for s in stops] == ["out/"]
    ledger.release("out/")
    assert [g.entry.holder for g in queue.next_grants(ledger, LAB_START).granted] == ["m/"]


def test_before_a_window_others_get_unreserved_units_first_and_are_told_the_end_otherwise():
    ledger, queue = lab_queue()
    before = LAB_START - 3600
    first = ask(queue, ledger, "out", now=before, profile="cs", runtime=4 * 3600)
    assert first.assignment.ids == ("GPU-0",) and first.until is None  # not the unit the lab takes
    second = ask(queue, ledger, "late", now=before, profile="cs", runtime=4 * 3600)
    assert second.assignment.ids == ("GPU-1",)
    assert second.until.window.start == LAB_START
    assert second.until.free_until(before) == "this GPU is free until 14:00, when ML101 lab starts"
    # a member is served by the lab: no end to tell
    ledger.release("late/")
    assert ask(queue, ledger, "m", now=before, **member("m")).until is None


def test_a_waiter_granted_before_a_window_is_told_its_end():
    ledger, queue = lab_queue(2)
    ask(queue, ledger, "h0", now=LAB_START - 7200)
    ask(queue, ledger, "h1", now=LAB_START - 7200, **member("h1"))
    ask(queue, ledger, "out", now=LAB_START - 7000, profile="cs")
    ledger.release("h1/")
    (grant,) = queue.next_grants(ledger, LAB_START - 3600).granted
    assert grant.assignment.ids == ("GPU-1",) and grant.until.window.start == LAB_START


# --- the rules under random arrivals, departures, lab hours and time

ORDER_UNITS = [whole(0), whole(1), whole(2, "NVIDIA L4"), mig(0), mig(1)]
ORDER_REQUESTS = [ONE, GPURequest(count=1, model="A100"), GPURequest(count=1, kind="any"), MIG, TWO]


@settings(max_examples=300, deadline=None)
@given(
    holders=st.lists(st.sampled_from(["u0", "u1", "u2", "x"]), min_size=5, max_size=5),
    waiters=st.lists(st.tuples(st.sampled_from(["u0", "u1", "u2", "u3", "u4"]), st.sampled_from(ORDER_REQUESTS))),
    freed=st.integers(0, 4),
)
def test_a_freed_unit_goes_to_the_first_in_line_it_fits(holders, waiters, freed):
    """A full lab, a line of random requests (some from students who hold a unit), one unit frees: it goes
    to the first in line it fits, in arrival order with those who hold a unit of their kind last; and to
    nobody if that one needs more units than are free."""
    ledger, queue = Ledger(ORDER_UNITS), WaitQueue()
    for n, (user, unit) in enumerate(zip(holders, ORDER_UNITS)):
        holder = holder_key(user if user != "x" else f"x{n}", f"held{n}")
        ledger.adopt(holder, [unit.id])
    line = []
    for n, (user, request) in enumerate(waiters):
        admission = ask(queue, ledger, user, request, server=f"s{n}", now=T0 + n)
        assert admission.assignment is None
        if admission.waiting:
            line.append(admission.waiting)
    unit = ORDER_UNITS[freed]
    (gone,) = ledger.holders_of(unit.id)
    ledger.release(gone.holder)

    def holds_kind(e):
        return any(e.request.matches(u) for a in ledger.assignments() if a.user == e.user for u in a.units)

    order = sorted(line, key=lambda e: (holds_kind(e), e.seq))
    assert list(queue.order(ledger)) == order
    first = next((e for e in order if e.request.matches(unit)), None)
    granted = queue.next_grants(ledger, T0 + 100).granted
    if first is None or first.request.slots > 1:
        assert granted == () and ledger.free() == (unit,)
    else:
        assert [(g.entry.holder, g.assignment.ids) for g in granted] == [(first.holder, (unit.id,))]


def test_the_line_moves_until_it_stands_still():
    """A grant in a walk fills a student's quota: their other request, passed over and keeping a unit,
    is refused in the next walk of the same decision, and the unit it kept goes on."""
    ledger = Ledger([whole(0), whole(1), whole(2), mig(0)], Policy(max_gpus_per_user=2))
    queue = WaitQueue()
    for i in range(4):
        ask(queue, ledger, f"h{i}", MIG if i == 3 else ONE, requester=student(f"h{i}", exempt=True))
    ask(queue, ledger, "team", TWO, now=T0 + 1)
    ask(queue, ledger, "team", MIG, server="small", now=T0 + 2)
    ask(queue, ledger, "carol", now=T0 + 3)
    ledger.release("h0/")
    ledger.release("h3/")
    moved = queue.next_grants(ledger, T0 + 4)
    assert [(g.entry.holder, g.assignment.ids) for g in moved.granted] == [
        ("team/small", ("MIG-0",)),
        ("carol/", ("GPU-0",)),
    ]
    assert [(r.entry.holder, r.reason) for r in moved.refused] == [("team/", "user_quota")]


MACHINE_UNITS = [whole(0), whole(1), whole(2, "NVIDIA L4"), mig(0), mig(1)]
MACHINE_REQUESTS = [
    ONE,
    ONE,
    GPURequest(count=1, model="A100"),
    TWO,
    MIG,
    SHARED,
    GPURequest(count=1, kind="any"),
    GPURequest(count=0),
]
MACHINE_GROUPS = {"u0": {"ml101"}, "u1": {"ml101"}, "u2": {"ml101", "cs"}, "u3": {"cs"}, "u4": set(), "u5": {"cs"}}
MACHINE_PROFILES = ("ml101", "cs")


class QueueMachine(RuleBasedStateMachine):
    """Random arrivals (waiting or not), stops, leaving the line, lab windows and clock advances.

    The model keeps what runs (``running``) and what the line's order was before each step; after
    each step, the rules are checked from their definitions, not from the queue's own bookkeeping.
    """

    POLICY = Policy(share_limit=2, max_gpus_per_user=2, group_quotas={"ml101": 4})

    def __init__(self):
        super().__init__()
        self.now = T0
        self.ledger = Ledger(MACHINE_UNITS, self.POLICY)
        self.queue = WaitQueue()
        self.running: dict[str, str] = {}  # holder -> its profile

    @initialize(data=st.data())
    def lab_hours(self, data):
        ids = data.draw(st.permutations([u.id for u in MACHINE_UNITS]), "units")
        entries = []
        for n, pool in enumerate((ids[:3], ids[3:])):
            if not data.draw(st.booleans(), f"lab{n}"):
                continue
            dates = []
            for _ in range(data.draw(st.integers(1, 3), "windows")):
                start = datetime.fromtimestamp(T0 + 300 * data.draw(st.integers(0, 36)), timezone.utc)
                minutes = data.draw(st.integers(10, 120))
                dates.append({"start": start, "end": start + timedelta(minutes=minutes)})
            entries.append(
                {
                    "name": f"lab{n}",
                    "groups": data.draw(st.lists(st.sampled_from(["ml101", "cs"]), min_size=1, unique=True)),
                    "units": data.draw(st.lists(st.sampled_from(pool), min_size=1, unique=True)),
                    "profiles": data.draw(st.lists(st.sampled_from(MACHINE_PROFILES), unique=True)),
                    "time_zone": "UTC",
                    "dates": dates,
                }
            )
        self.queue.reservations = ReservationBook.place(parse_reservations(entries), MACHINE_UNITS)

    # --- helpers: the rules from their definitions

    def requester(self, user):
        return Requester(user, frozenset(MACHINE_GROUPS[user]))

    def kept_from(self, e):
        return self.queue.reservations.kept_from(e.requester, e.profile, self.now)

    def fits(self, e, unit):
        """Could ``e`` use ``unit`` now, were it free?"""
        return (
            e.request.slots > 0
            and e.request.matches(unit)
            and (e.node is None or unit.node == e.node)
            and unit.id not in self.ledger.quarantined
            and unit.id not in self.kept_from(e)
        )

    def holds_kind(self, e):
        mine = {u for a in self.ledger.assignments() if a.user == e.user for u in a.units}
        return any(e.request.matches(u) and (e.node is None or u.node == e.node) for u in mine)

    def keys(self):
        return {e.holder: (self.holds_kind(e), e.seq) for e in self.queue.waiting()}

    def free_units(self):
        return [u for u in MACHINE_UNITS if not self.ledger.holders_of(u.id)]

    def apply(self, moved, before, was_free, newcomer=None, newcomer_key=(False, float("inf"))):
        """Record what a decision moved, and check that no freed unit went past a waiter it fits."""
        after = self.keys()
        for refusal in moved.refused:
            assert refusal.reason != "no_gpu" and refusal.message
            assert refusal.entry.holder not in self.queue and self.ledger.assignment(refusal.entry.holder) is None
        granted = [(g.entry.holder, g.assignment, before[g.entry.holder]) for g in moved.granted]
        if newcomer is not None:
            granted.append((newcomer.holder, newcomer, newcomer_key))
        for holder, assignment, key in granted:
            assert self.ledger.assignment(holder) == assignment
            self.running[holder] = self.profile_of.pop(holder)
            for e in self.queue.waiting():
                if e.holder in before and max(before[e.holder], after[e.holder]) < key:
                    for unit in assignment.units:
                        assert not (unit.id in was_free and self.fits(e, unit)), (holder, e.holder, unit.id)

    profile_of: dict

    # --- rules

    @rule(data=st.data())
    def arrive(self, data):
        user = data.draw(st.sampled_from(sorted(MACHINE_GROUPS)), "user")
        holder = holder_key(user, data.draw(st.sampled_from(["", "a"]), "server"))
        self._arrive(data, user, holder, data.draw(st.sampled_from(MACHINE_REQUESTS), "request"))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def a_holder_asks_for_more(self, data):
        """A student who holds a unit starts their other server: the fairness rule's case."""
        user, server = split_holder(data.draw(st.sampled_from(sorted(self.running)), "holder"))
        self._arrive(
            data, user, holder_key(user, "a" if server == "" else ""), data.draw(st.sampled_from([ONE, SHARED]))
        )

    def _arrive(self, data, user, holder, request):
        profile = data.draw(st.sampled_from(MACHINE_PROFILES), "profile")
        wait = data.draw(st.sampled_from([True, True, True, False]), "wait")
        timeout = data.draw(st.sampled_from([None, None, 1800, 60]), "timeout")
        self.running.pop(holder, None)  # a server that starts gives up what it held
        self.profile_of = {e.holder: e.profile for e in self.queue.waiting()} | {holder: profile}
        before, was_free = self.keys(), {u.id for u in self.free_units()}
        # the newcomer's place at its decision is at least this: what its student held before, less this server
        held_before = [u for a in self.ledger.assignments() if a.user == user and a.holder != holder for u in a.units]
        newcomer_key = (any(request.matches(u) for u in held_before), float("inf"))
        admission = self.queue.admit(
            self.ledger, holder, request, self.requester(user), self.now, profile=profile, wait=wait, timeout=timeout
        )
        assert [admission.assignment, admission.waiting, admission.refusal].count(None) == 2
        if admission.refusal is not None:
            assert not isinstance(admission.refusal, NoFreeUnit) or not wait
            assert holder not in self.queue and self.ledger.assignment(holder) is None
        if admission.waiting is not None:
            assert wait and admission.waiting.holder == holder and holder in self.queue
            assert isinstance(self.ledger.can_fit(request, self.requester(user), holder), (NoFreeUnit, type(None)))
        newcomer = admission.assignment if admission.assignment is not None and admission.assignment.units else None
        self.apply(admission.moved, before, was_free, newcomer, newcomer_key)
        if admission.assignment is not None and not admission.assignment.units:
            self.running.pop(holder, None)
            self.ledger.release(holder)  # a server without GPUs: out of the way of the model

    def _move(self):
        self.profile_of = {e.holder: e.profile for e in self.queue.waiting()}
        before, was_free = self.keys(), {u.id for u in self.free_units()}
        self.apply(self.queue.next_grants(self.ledger, self.now), before, was_free)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def stop(self, data):
        holder = data.draw(st.sampled_from(sorted(self.running)))
        del self.running[holder]
        self.ledger.release(holder)
        self._move()

    @precondition(lambda self: len(self.queue))
    @rule(data=st.data())
    def leave(self, data):
        holder = data.draw(st.sampled_from([e.holder for e in self.queue.waiting()]))
        assert self.queue.leave(holder).holder == holder and holder not in self.queue
        self._move()

    @rule(minutes=st.sampled_from([1, 5, 17, 45]))
    def time_passes(self, minutes):
        self.now += 60 * minutes
        for gone in self.queue.expired(self.now):
            assert gone.entry.deadline <= self.now and gone.entry.holder not in self.queue
        assert all(e.deadline is None or e.deadline > self.now for e in self.queue.waiting())
        # the culler at a window's start: others on reserved units stop
        for stop in self.queue.reservations.must_stop(self.ledger.assignments(), self.now, self.running.get):
            del self.running[stop.holder]
            self.ledger.release(stop.holder)
        self._move()

    @rule()
    def restart_hub(self):
        """The hub restarts: its ledger is rebuilt from the containers' labels, its line is gone (JupyterHub
        fails the pending spawns). Those who waited hold nothing, and are in no line: nothing is left held."""
        records = [
            ServerRecord(a.user, split_holder(a.holder)[1], self.running[a.holder], a.ids, a.shared, a.groups)
            for a in self.ledger.assignments()
        ]
        waited = [e.holder for e in self.queue.waiting()]
        self.ledger = Ledger(MACHINE_UNITS, self.POLICY)
        assert adopt_containers(self.ledger, [{"Labels": server_labels(r)} for r in records]) == []
        self.queue = WaitQueue(self.queue.reservations)
        assert all(self.ledger.assignment(holder) is None and holder not in self.queue for holder in waited)
        assert {r.holder: r.profile for r in records} == self.running

    # --- invariants

    @invariant()
    def no_unit_held_twice_beyond_sharing(self):
        for unit in MACHINE_UNITS:
            holders = self.ledger.holders_of(unit.id)
            if len(holders) > 1:
                assert all(a.shared for a in holders) and len(holders) <= self.POLICY.share_limit

    @invariant()
    def waiting_holds_nothing_and_the_ledger_is_what_runs(self):
        for e in self.queue.waiting():
            assert e.holder not in self.running
            assert self.ledger.assignment(e.holder) is None and e.holder not in self.ledger.usage.held
        assert {a.holder for a in self.ledger.assignments()} == set(self.running)

    @invariant()
    def no_reserved_unit_held_by_others_inside_a_window(self):
        for unit, booking in self.queue.reservations.reserved_at(self.now).items():
            for a in self.ledger.holders_of(unit):
                assert booking.reservation.serves(Requester(a.user, a.groups), self.running[a.holder])

    @invariant()
    def the_order_is_first_come_first_served_those_holding_none_first(self):
        order = self.queue.order(self.ledger)
        keys = [(self.holds_kind(e), e.seq) for e in order]
        assert keys == sorted(keys) and len({e.seq for e in order}) == len(order)
        standings = self.queue.standings(self.ledger, self.now)
        assert [s.entry for s in standings] == list(order)
        for i, s in enumerate(standings):
            ahead = [o for o in order[:i] if self.queue.kind(self.ledger, o.request, o.node).units & s.kind.units]
            assert s.position == len(ahead) + 1

    @invariant()
    def a_free_unit_is_only_ever_kept_for_the_first_waiter_it_fits_who_needs_more(self):
        order = self.queue.order(self.ledger)
        free = self.free_units()
        for unit in free:
            first = next((i for i, e in enumerate(order) if self.fits(e, unit)), None)
            if first is None:
                continue
            e = order[first]
            kept = {u.id for u in free for o in order[:first] if self.fits(o, u)} | self.kept_from(e)
            refusal = self.ledger.can_fit(e.request, e.requester, e.holder, node=e.node, set_aside=frozenset(kept))
            assert isinstance(refusal, NoFreeUnit), (unit.id, e.holder, refusal)
            assert not e.request.shared and e.request.slots > 1

    @invariant()
    def quotas_hold(self):
        k = self.POLICY.share_limit
        for user in MACHINE_GROUPS:
            load = sum(
                Fraction(len(a.units), k) if a.shared else len(a.units)
                for a in self.ledger.assignments()
                if a.user == user
            )
            assert load <= self.POLICY.max_gpus_per_user


QueueMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestQueueRules = QueueMachine.TestCase
