"""CPU and memory caps: the pure totals, the ledger's refusals, the labels, and the promise under random sequences."""

from fractions import Fraction

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpuspawner.gpus import GPU, Caps, GPURequest, Ledger, NoCapacity, Policy, Requester, ServerResources, holder_key
from gpuspawner.gpus.resources import REASONS, Usage, oversized, refusal
from gpuspawner.labels import ServerRecord, adopt_containers, read_server, server_labels

GiB = 1024**3
ONE_GPU = [GPU(index=0, uuid="GPU-0000", name="NVIDIA L4", memory=24 * GiB)]
CPU_ONLY = GPURequest()
SMALL = ServerResources(1, 2 * GiB)  # a CPU profile
BIG = ServerResources(2, 4 * GiB)  # a deep learning profile


def caps(**kwargs):
    return Policy(resource_caps=Caps(**kwargs))


def start(ledger, holder, resources, requester=None, request=CPU_ONLY):
    return ledger.assign(holder, request, requester or Requester(holder.partition("/")[0]), resources=resources)


def test_memory_cap_across_named_servers_says_what_is_used_and_what_is_left():
    ledger = Ledger(ONE_GPU, caps(memory_per_user=8 * GiB))
    start(ledger, "mia/", BIG)
    start(ledger, "mia/notes", SMALL)
    with pytest.raises(NoCapacity) as e:
        start(ledger, "mia/train", BIG)
    assert e.value.reason == "user_memory_quota"
    assert e.value.message == (
        "Your servers use 6 GiB of your 8 GiB of memory, and this one needs 4 GiB (2 GiB left)."
        " Stop one of your servers, or choose a smaller profile."
    )
    assert ledger.resources_held("mia/train") == ServerResources()  # a refusal holds nothing
    assert ledger.usage.of_user("mia") == ServerResources(3, 6 * GiB)
    assert start(ledger, "mia/train", SMALL)  # what is left fits
    ledger.release("mia/")
    ledger.release("mia/train")
    assert start(ledger, "mia/train", BIG)
    assert start(ledger, "max/", BIG)  # per user


def test_cpu_cap_and_a_server_bigger_than_the_cap():
    ledger = Ledger(ONE_GPU, caps(cpus_per_user=2.5))
    start(ledger, "mia/", BIG)
    e = ledger.can_fit(CPU_ONLY, Requester("mia"), "mia/b", resources=SMALL)
    assert e.reason == "user_cpu_quota"
    assert e.message.startswith("Your servers use 2 of your 2.5 CPUs, and this one needs 1 CPU (0.5 CPUs left).")
    huge = ledger.can_fit(CPU_ONLY, Requester("max"), "max/", resources=ServerResources(4, GiB))
    assert (
        huge.message
        == "This server needs 4 CPUs, more than the 2.5 CPUs one user may have at once. Choose a smaller profile."
    )
    assert ledger.can_fit(CPU_ONLY, Requester("mia"), "mia/b", resources=ServerResources(0.5, GiB)) is None


def test_a_restarting_server_does_not_count_what_it_held():
    ledger = Ledger(ONE_GPU, caps(memory_per_user=4 * GiB, group_memory={"ml101": 4 * GiB}))
    mia = Requester("mia", frozenset({"ml101"}))
    start(ledger, "mia/", BIG, mia)
    assert ledger.can_fit(CPU_ONLY, mia, "mia/", resources=BIG) is None
    assert start(ledger, "mia/", BIG, mia)  # the same server again
    assert ledger.usage.of_user("mia") == BIG and ledger.usage.of_group("ml101") == BIG


def test_group_caps_and_admins_exempt_but_counted():
    ledger = Ledger(ONE_GPU, caps(group_cpus={"ml101": 3}, group_memory={"ml101": 6 * GiB}))
    teacher = Requester("tea", frozenset({"ml101"}), exempt=True)
    start(ledger, "tea/", BIG, teacher)
    start(ledger, "tea/more", BIG, teacher)  # exempt: past the group's caps
    student = Requester("stu", frozenset({"ml101", "cv"}))
    e = ledger.can_fit(CPU_ONLY, student, "stu/", resources=SMALL)
    assert e.reason == "group_memory_quota"
    assert e.message == (
        "Your group 'ml101' is using 8 GiB of its 6 GiB of memory, and this server needs 2 GiB (0 B left)."
        " Try again when a classmate stops a server, choose a smaller profile, or ask your teacher."
    )
    ledger.release("tea/more")
    cpu = ledger.can_fit(CPU_ONLY, student, "stu/", resources=ServerResources(2, GiB))
    assert (
        cpu.reason == "group_cpu_quota"
        and "is using 2 of its 3 CPUs, and this server needs 2 CPUs (1 CPU left)" in cpu.message
    )
    assert start(ledger, "stu/", SMALL, student)
    assert ledger.can_fit(CPU_ONLY, Requester("out"), "out/", resources=BIG) is None  # not in ml101


def test_caps_come_before_gpus_and_a_gpu_refusal_holds_no_memory():
    ledger = Ledger(ONE_GPU, caps(memory_per_user=8 * GiB))
    gpu = GPURequest(count=1)
    start(ledger, "mia/", BIG, request=gpu)
    with pytest.raises(NoCapacity) as e:
        start(ledger, "max/", BIG, request=gpu)
    assert e.value.reason == "no_gpu"
    assert ledger.resources_held("max/") == ServerResources() and ledger.usage.of_user("max") == ServerResources()
    refused = ledger.can_fit(gpu, Requester("mia"), "mia/b", resources=ServerResources(1, 6 * GiB))
    assert refused.reason == "user_memory_quota" and refused.request == gpu  # said before the GPU's refusal


def test_no_caps_and_no_resources_refuse_nothing():
    assert refusal(Usage(), "a/", BIG, Caps(), user="a") is None
    assert refusal(Usage(), "a/", ServerResources(), Caps(memory_per_user=0), user="a") is None
    assert not Caps() and Caps(group_cpus={"g": 1})


def test_a_profile_bigger_than_a_cap_is_named():
    limits = Caps(cpus_per_user=4, memory_per_user=8 * GiB, group_memory={"ml101": 6 * GiB})
    assert oversized(ServerResources(2, 4 * GiB), limits, {"ml101"}) == ""
    assert oversized(ServerResources(8, 7 * GiB), limits, {"ml101", "cv"}) == (
        "8 CPUs, over max_cpus_per_user; 7 GiB of memory, over group_memory_quotas['ml101']"
    )
    assert oversized(ServerResources(8, 7 * GiB), Caps()) == ""


def test_labels_keep_the_limits_and_a_restarted_hub_counts_them():
    record = ServerRecord("mia", "notes", groups=frozenset({"ml101"}), resources=ServerResources(0.5, 3 * GiB))
    labels = server_labels(record)
    assert labels["gpuspawner.cpu-limit"] == "0.5" and labels["gpuspawner.mem-limit"] == str(3 * GiB)
    assert read_server(labels).resources == ServerResources(0.5, 3 * GiB)
    assert read_server({"gpuspawner.user": "old"}).resources == ServerResources()  # started by 0.1: counts 0
    assert read_server({"gpuspawner.user": "x", "gpuspawner.mem-limit": "lots"}).resources == ServerResources()

    ledger = Ledger(ONE_GPU, caps(memory_per_user=4 * GiB, group_memory={"ml101": 4 * GiB}))
    gpu = ServerRecord("mia", unit_ids=("GPU-0000",), groups=frozenset({"ml101"}), resources=ServerResources(1, GiB))
    assert adopt_containers(ledger, [{"Labels": server_labels(gpu)}, {"Labels": labels}]) == []
    assert ledger.usage.of_user("mia") == ServerResources(1.5, 4 * GiB)
    assert ledger.usage.of_group("ml101") == ServerResources(1.5, 4 * GiB)
    assert ledger.assignment("mia/").ids == ("GPU-0000",) and ledger.assignment("mia/notes") is None
    assert ledger.can_fit(CPU_ONLY, Requester("mia"), "mia/x", resources=SMALL).reason == "user_memory_quota"
    ledger.release("mia/notes")
    assert ledger.can_fit(CPU_ONLY, Requester("mia"), "mia/x", resources=SMALL) is None


# --- the promise under random starts, stops, crashes and hub restarts

USERS = {"u0": {"ml101"}, "u1": {"ml101"}, "u2": {"ml101", "cv"}, "u3": {"cv"}, "u4": set()}
SIZES = [ServerResources(1, 2 * GiB), ServerResources(2, 4 * GiB), ServerResources(0.5, GiB), ServerResources(4, 0)]
REQUESTS = [CPU_ONLY, GPURequest(count=1), GPURequest(shared=True)]
UNITS = [GPU(index=i, uuid=f"GPU-{i:04d}", name="NVIDIA L4", memory=24 * GiB) for i in range(2)]


class CapsMachine(RuleBasedStateMachine):
    """Random starts (with GPUs or none), stops and restarts rebuilt from the labels; after every step,
    every user's and group's totals, counted afresh from the containers, stay within the caps."""

    POLICY = Policy(
        share_limit=2,
        max_gpus_per_user=1,
        resource_caps=Caps(
            cpus_per_user=4,
            memory_per_user=6 * GiB,
            group_cpus={"ml101": 6.5, "cv": 3},
            group_memory={"ml101": 9 * GiB},
        ),
    )

    def __init__(self):
        super().__init__()
        self.ledger = Ledger(UNITS, self.POLICY)
        self.running: dict[str, ServerRecord] = {}  # holder -> its container's labels

    @rule(
        user=st.sampled_from(sorted(USERS)),
        server=st.sampled_from(["", "a", "b"]),
        size=st.sampled_from(SIZES),
        request=st.sampled_from(REQUESTS),
    )
    def start(self, user, server, size, request):
        holder = holder_key(user, server)
        requester = Requester(user, frozenset(USERS[user]))
        asked = self.ledger.can_fit(request, requester, holder, resources=size)
        before = {h: self.ledger.resources_held(h) for h in self.running if h != holder}
        try:
            got = self.ledger.assign(holder, request, requester, resources=size)
        except NoCapacity as e:
            assert asked is not None and (asked.reason, asked.message) == (e.reason, e.message)
            assert e.reason in REASONS + ("no_gpu", "user_quota", "group_quota") and e.message
            event(f"refused: {e.reason}")
            self.running.pop(holder, None)  # a refused start holds nothing, not even what it held
            assert self.ledger.resources_held(holder) == ServerResources()
            assert self.ledger.assignment(holder) is None
        else:
            assert asked is None
            self.running[holder] = ServerRecord(
                user, server, unit_ids=got.ids, shared=got.shared, groups=frozenset(USERS[user]), resources=size
            )
        assert {h: self.ledger.resources_held(h) for h in self.running if h != holder} == before

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def stop_or_crash(self, data):
        holder = data.draw(st.sampled_from(sorted(self.running)))
        del self.running[holder]
        self.ledger.release(holder)

    @rule()
    def restart_hub(self):
        rebuilt = Ledger(UNITS, self.POLICY)
        adopt_containers(rebuilt, [{"Labels": server_labels(r)} for r in self.running.values()])
        assert rebuilt.usage.held == self.ledger.usage.held
        self.ledger = rebuilt

    @invariant()
    def ledger_counts_what_runs(self):
        assert {h: self.ledger.resources_held(h) for h in self.running} == {
            h: r.resources for h, r in self.running.items()
        }
        assert set(self.ledger.usage.held) == set(self.running)

    @invariant()
    def totals_within_the_caps(self):
        caps = self.POLICY.resource_caps

        def total(records):
            records = list(records)
            return sum(Fraction(repr(r.resources.cpus)) for r in records), sum(r.resources.memory for r in records)

        for user in USERS:
            cpus, memory = total(r for r in self.running.values() if r.user == user)
            assert cpus <= Fraction(repr(caps.cpus_per_user)) and memory <= caps.memory_per_user
            assert self.ledger.usage.of_user(user) == ServerResources(float(cpus), memory)
        for group in {g for gs in USERS.values() for g in gs}:
            cpus, memory = total(r for r in self.running.values() if group in r.groups)
            assert cpus <= Fraction(repr(caps.group_cpus.get(group, float("inf"))))
            assert memory <= caps.group_memory.get(group, float("inf"))


CapsMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestCapsPromise = CapsMachine.TestCase
