import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuspawner.gpus import GPU, Ledger, NoGPUAvailable, holder_key


def inventory(n):
    return [GPU(index=i, uuid=f"GPU-{i:04d}", name="A100", memory=80 * 1024**3) for i in range(n)]


def test_assign_lowest_free_and_release():
    ledger = Ledger(inventory(3))
    a = ledger.assign("alice/", 1)
    b = ledger.assign("bob/", 2)
    assert [g.index for g in a.gpus] == [0]
    assert [g.index for g in b.gpus] == [1, 2]
    assert ledger.free() == ()
    with pytest.raises(NoGPUAvailable) as e:
        ledger.assign("carol/", 1)
    assert e.value.message == "No GPU free: this profile needs 1 GPU(s), and 0 of 3 are free now."
    assert ledger.assignment("carol/") is None
    ledger.release("alice/")
    assert [g.index for g in ledger.assign("carol/", 1).gpus] == [0]


def test_zero_gpus_holds_nothing():
    ledger = Ledger(inventory(1))
    assert ledger.assign("alice/", 0).gpus == ()
    assert ledger.assignments() == ()


def test_no_gpus_at_all_says_so():
    with pytest.raises(NoGPUAvailable, match="this hub has no GPUs"):
        Ledger([]).assign("alice/", 1)
    with pytest.raises(NoGPUAvailable, match="needs 3 GPU\\(s\\), and this hub has only 2"):
        Ledger(inventory(2)).assign("alice/", 3)


def test_reassign_gives_up_the_old_gpus_first():
    ledger = Ledger(inventory(2))
    ledger.assign("alice/", 2)
    assert [g.index for g in ledger.assign("alice/", 1).gpus] == [0]
    assert [g.index for g in ledger.free()] == [1]


def test_failed_assign_releases_the_previous_one():
    ledger = Ledger(inventory(1))
    ledger.assign("alice/", 1)
    with pytest.raises(NoGPUAvailable):
        ledger.assign("alice/", 2)
    assert ledger.assignment("alice/") is None


def test_adopt_after_restart_and_unknown_ids():
    ledger = Ledger(inventory(2))
    assert ledger.adopt("alice/", ["GPU-0001", "GPU-9999"]) == ("GPU-9999",)
    assert [g.index for g in ledger.free()] == [0]
    assert [g.index for g in ledger.assign("bob/", 1).gpus] == [0]


def test_negative_count_is_a_bug():
    with pytest.raises(ValueError):
        Ledger(inventory(1)).assign("alice/", -1)


def test_holder_key():
    assert holder_key("alice") == "alice/"
    assert holder_key("alice", "big") == "alice/big"


# Any sequence of assigns and releases: no GPU is ever held twice, and
# free + held is always the whole inventory.
actions = st.lists(
    st.tuples(st.sampled_from(["assign", "release"]), st.integers(0, 5), st.integers(0, 4)),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(n_gpus=st.integers(0, 6), steps=actions)
def test_never_double_assigned(n_gpus, steps):
    ledger = Ledger(inventory(n_gpus))
    for action, user, count in steps:
        holder = holder_key(f"user{user}")
        if action == "assign":
            free_before = len(ledger.free()) + len(
                ledger.assignment(holder).gpus if ledger.assignment(holder) else ()
            )
            try:
                got = ledger.assign(holder, count)
                assert len(got.gpus) == count
            except NoGPUAvailable as e:
                assert count > free_before
                assert len(e.free) == free_before
        else:
            ledger.release(holder)
        held = [g.id for a in ledger.assignments() for g in a.gpus]
        assert len(held) == len(set(held))
        assert len(held) + len(ledger.free()) == n_gpus
