"""Usage records: the arithmetic, the store and its migrations, the book, and the property that
the GPU-seconds recorded equal the ledger's occupancy over starts, stops, crashes and restarts."""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError

from gpuspawner.usage import STOP_REASONS, Running, UsageBook, UsageStore, UsageStoreError, next_to
from gpuspawner.usage.records import Record, share_of, to_us
from gpuspawner.usage.store import HEAD, VERSION_TABLE, Base

from .databases import new_database

T0 = datetime(2026, 4, 13, 8, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A new usage database: SQLite (the default) and a real PostgreSQL's (an admin's ``usage_db_url``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/usage.sqlite"
    return new_database(request.getfixturevalue("postgres"), f"usage_{secrets.token_hex(6)}")


@pytest.fixture
def book(url):
    with UsageStore(url) as store:
        yield UsageBook(store, clock=lambda: pytest.fail("every call here gives `at`"))


def recorded(store: UsageStore, now: datetime) -> Fraction:
    return sum((r.exact_gpu_seconds(now) for r in store.records()), Fraction(0))


# --- records


def test_gpu_seconds_are_exact_and_clipped():
    r = Record(1, "ana/", "ana", "", (), "p", "", ("GPU-0", "GPU-1"), 3, "", at(0), at(10))
    assert r.exact_gpu_seconds(at(99)) == Fraction(20, 3)
    assert r.exact_gpu_seconds(at(99), since=at(4), until=at(7)) == Fraction(6, 3)
    assert r.exact_gpu_seconds(at(99), since=at(20)) == 0
    still = r._replace(stopped_at=None)
    assert still.exact_gpu_seconds(at(5)) == Fraction(10, 3)
    tiny = r._replace(units=("GPU-0",), share_of=1, stopped_at=at(0) + timedelta(microseconds=7))
    assert tiny.exact_gpu_seconds(at(99)) == Fraction(7, 1_000_000)


@pytest.mark.parametrize(
    "share, k", [(1, 1), (Fraction(1, 4), 4), (0.5, 2), (Fraction(1, 3), 3)], ids=["whole", "1/4", "0.5", "1/3"]
)
def test_share_of(share, k):
    assert share_of(share) == k


@pytest.mark.parametrize("share", [0, 2, Fraction(2, 3), -1, 0.3, "1/4", True], ids=str)
def test_share_of_refuses_what_is_not_1_over_k(share):
    with pytest.raises(ValueError, match="share must be"):
        share_of(share)


# --- the store and its migrations


def test_an_empty_database_gets_the_schema_and_a_second_open_is_a_no_op(url):
    with UsageStore(url) as store:
        assert store.migrated and store.revision() == HEAD == "0001"
        tables = set(inspect(store.engine).get_table_names())
        assert tables == {"gpuspawner_usage", VERSION_TABLE}
        UsageBook(store).assigned("ana/", user="ana", units=["GPU-0"], at=at(0))

    statements = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    engine_class = type(create_engine(url))
    event.listen(engine_class, "before_cursor_execute", seen)
    try:
        with UsageStore(url) as again:
            assert not again.migrated and len(again.records()) == 1
    finally:
        event.remove(engine_class, "before_cursor_execute", seen)
    assert statements and set(statements) <= {"SELECT", "PRAGMA"}  # no CREATE, no ALTER, no write


def test_the_model_matches_the_migrations(url):
    with UsageStore(url) as store, store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []


def test_the_usage_tables_live_beside_the_hubs_own(tmp_path):
    """Sharing a database with JupyterHub: its alembic_version is not ours."""
    hub = f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    with create_engine(hub).begin() as c:
        c.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        c.execute(text("INSERT INTO alembic_version VALUES ('4621fec11365')"))
    with UsageStore(hub) as store:
        assert store.revision() == HEAD
    with create_engine(hub).connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == "4621fec11365"


def test_a_schema_from_a_newer_gpuspawner_is_refused_with_a_sentence(url):
    UsageStore(url).close()
    with create_engine(url).begin() as c:
        c.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    with pytest.raises(UsageStoreError, match=r"at schema revision 0099, which this gpuspawner does not know"):
        UsageStore(url)


def test_without_upgrade_a_database_without_the_schema_is_refused(url):
    with pytest.raises(UsageStoreError, match="has no usage tables yet: the hub makes them"):
        UsageStore(url, upgrade=False)


def test_a_reader_never_makes_the_database_and_read_only_never_writes(tmp_path):
    path = tmp_path / "a folder with # and %" / "usage.sqlite"
    url = f"sqlite:///{path}"
    with pytest.raises(UsageStoreError, match=f"no usage database at {re.escape(str(path))} yet"):
        UsageStore.open_existing(url, read_only=True)
    assert not path.exists() and not path.parent.exists()  # nothing made
    path.parent.mkdir()
    book = UsageBook(UsageStore(url))
    (opened,) = [book.assigned("ann/", user="ann", units=["GPU-0"], groups=["ml101"], at=T0)]
    reader = UsageStore.open_existing(url, read_only=True)
    assert [u.id for u in reader.uses()] == [opened.id]
    with pytest.raises(OperationalError, match="readonly"):
        reader.set_figures({opened.id: (50.0, 1024)})
    reader.close()


def test_the_figures_kept_while_a_server_runs_stay_at_its_close(book):
    opened = book.assigned("ann/", user="ann", units=["GPU-0"], at=T0)
    assert (opened.utilisation, opened.peak_memory) == (None, None)
    book.store.set_figures({opened.id: (37.5, 3 * 1024**3)})
    (use,) = book.store.uses()
    assert (use.utilisation, use.peak_memory) == (37.5, 3 * 1024**3)
    closed = book.released("ann/", "user", at=T0 + timedelta(hours=1))
    assert (closed.utilisation, closed.peak_memory) == (37.5, 3 * 1024**3)
    book.assigned("bob/", user="bob", units=["GPU-1"], at=T0)
    closed = book.released("bob/", "user", at=T0 + timedelta(hours=1))
    assert (closed.utilisation, closed.peak_memory) == (None, None)  # never measured: empty, never 0


def test_uses_of_any_of_some_users_or_groups(book):
    book.assigned("ann/", user="ann", units=["GPU-0"], groups=["ml101"], at=T0)
    book.assigned("bob/", user="bob", units=["GPU-1"], groups=["cv202"], at=T0)
    book.assigned("cat/", user="cat", units=["GPU-2"], groups=["ml101_x"], at=T0)  # '_' is no wildcard
    book.assigned("dan/", user="dan", units=["GPU-3"], at=T0)
    store = book.store

    def who(**reach):
        return sorted(u.user for u in store.uses(**reach))

    assert who(groups=["ml101"]) == ["ann"]
    assert who(groups=["ml101"], users=["dan"]) == ["ann", "dan"]
    assert who(users=["bob"]) == ["bob"]
    assert who(users=[], groups=[]) == []  # a reach of nobody: nothing
    assert who() == ["ann", "bob", "cat", "dan"]


def test_next_to_the_hubs_sqlite_file():
    assert next_to("sqlite:////srv/jupyterhub/jupyterhub.sqlite") == "sqlite:////srv/jupyterhub/gpuspawner-usage.sqlite"
    assert next_to("sqlite:///jupyterhub.sqlite") == "sqlite:///gpuspawner-usage.sqlite"
    assert next_to("sqlite://") is None
    assert next_to("postgresql://hub:secret@db/jupyterhub") is None


def test_purge_deletes_closed_records_only(book):
    book.assigned("ana/", user="ana", units=["GPU-0"], at=at(0))
    book.released("ana/", "user", at=at(100))
    book.assigned("ben/", user="ben", units=["GPU-1"], at=at(0))
    assert book.store.purge(at(50)) == 0
    assert book.store.purge(at(101)) == 1
    assert [r.holder for r in book.store.records()] == ["ben/"]


def test_records_in_a_window(book):
    for n, (start, stop) in enumerate([(0, 10), (5, 20), (30, None)]):
        book.assigned(f"u{n}/", user=f"u{n}", units=["GPU-0"], at=at(start))
        if stop is not None:
            book.released(f"u{n}/", "user", at=at(stop))
    ids = lambda **k: [r.holder for r in book.store.records(**k)]  # noqa: E731
    assert ids(since=at(10)) == ["u1/", "u2/"]  # the first ended as the window began
    assert ids(until=at(5)) == ["u0/"]
    assert ids(since=at(25), until=at(29)) == []
    assert ids(user="u2") == ids(open_only=True) == ["u2/"]


def test_uses_are_what_reports_read_of_records(book):
    book.assigned("ana/", user="ana", units=["GPU-0", "GPU-1"], groups=["ml_101", "cv"], profile="a100", at=at(0))
    book.assigned("ben/", user="ben", units=["MIG-2"], groups=["mlx101", "50%"], share=Fraction(1, 7), at=at(5))
    book.released("ben/", "user", at=at(12))
    ana, ben = book.store.uses()
    assert ana == (1, "ana", ("cv", "ml_101"), "a100", 2, 1, to_us(at(0)), None, None, None)
    assert ben.gpu_seconds(to_us(at(99))) == Fraction(1, 1) == book.store.records()[1].exact_gpu_seconds(at(99))
    # a group's records: by its name in the JSON list, where _ and % are letters like any other
    assert [u.user for u in book.store.uses(group="ml_101")] == ["ana"]
    assert [u.user for u in book.store.uses(group="50%")] == ["ben"]
    assert book.store.uses(group="ml") == book.store.uses(group="5") == []
    assert [u.user for u in book.store.uses(since=at(12))] == ["ana"]


# --- the book


def test_assigned_opens_once_for_the_same_units(book):
    first = book.assigned("ana/big", user="ana", units=["GPU-0"], groups=["ml101", "cv"], profile="a100", at=at(0))
    assert (first.user, first.server, first.groups, first.is_open) == ("ana", "big", ("cv", "ml101"), True)
    again = book.assigned("ana/big", user="ana", units=["GPU-0"], groups=["ml101"], profile="a100", at=at(60))
    assert again == first and len(book.store.records()) == 1


def test_assigned_other_units_closes_the_old_record(book):
    old = book.assigned("ana/", user="ana", units=["GPU-0"], at=at(0))
    new = book.assigned("ana/", user="ana", units=["GPU-1"], at=at(60))
    assert new.id != old.id
    (closed,) = [r for r in book.store.records() if not r.is_open]
    assert (closed.stop_reason, closed.stopped_at, closed.gpu_seconds) == ("reassigned", at(60), 60.0)


def test_a_server_without_units_is_not_recorded(book):
    assert book.assigned("ana/", user="ana", units=[], at=at(0)) is None
    assert book.store.records() == []


def test_released_closes_once_with_nvml_figures(book):
    book.assigned("ana/", user="ana", units=["MIG-1"], share=Fraction(1, 4), at=at(0))
    closed = book.released("ana/", "gpu_culler", at=at(400), utilisation=37.5, peak_memory=3 << 30)
    assert (closed.stop_reason, closed.gpu_seconds, closed.utilisation, closed.peak_memory) == (
        "gpu_culler",
        100.0,
        37.5,
        3 << 30,
    )
    assert book.released("ana/", "user", at=at(900)) is None
    assert book.store.records()[0].stop_reason == "gpu_culler"


def test_a_stop_before_the_start_closes_at_the_start(book):
    book.assigned("ana/", user="ana", units=["GPU-0"], at=at(100))
    assert book.released("ana/", "failed_start", at=at(99)).gpu_seconds == 0.0


@pytest.mark.parametrize("reason", sorted(STOP_REASONS))
def test_every_reason_of_the_vocabulary_is_accepted(book, reason):
    book.assigned("ana/", user="ana", units=["GPU-0"], at=at(0))
    assert book.released("ana/", reason, at=at(1)).stop_reason == reason


def test_an_unknown_reason_and_a_naive_time_are_refused(book):
    book.assigned("ana/", user="ana", units=["GPU-0"], at=at(0))
    with pytest.raises(ValueError, match="unknown stop reason 'bored': one of user, admin"):
        book.released("ana/", "bored", at=at(1))
    with pytest.raises(ValueError, match="has no time zone"):
        book.released("ana/", "user", at=datetime(2026, 4, 13, 9))
    assert book.store.records()[0].is_open


def test_the_clock_is_read_when_no_time_is_given(url):
    now = [at(0)]
    with UsageStore(url) as store:
        book = UsageBook(store, clock=lambda: now[0])
        book.assigned("ana/", user="ana", units=["GPU-0"])
        now[0] = at(90)
        assert book.released("ana/", "user").gpu_seconds == 90.0


def test_rebuilt_keeps_closes_and_adopts(book):
    book.assigned("ana/", user="ana", units=["GPU-0"], at=at(0))  # still runs
    book.assigned("ben/", user="ben", units=["GPU-1"], at=at(0))  # gone
    book.assigned("cem/", user="cem", units=["GPU-2"], at=at(0))  # gone; Docker knows when it ended
    book.assigned("dan/", user="dan", units=["GPU-3"], at=at(0))  # runs with other units (!)
    done = book.rebuilt(
        {
            "ana/": ["GPU-0"],
            "dan/": ["GPU-4"],
            "eve/x": Running(("GPU-5",), groups=("cv",), profile="a100", started_at=at(30)),
            "fay/": Running(("MIG-6",), share=Fraction(1, 2)),
            "gus/": Running(()),  # a CPU server
        },
        at=at(100),
        ended={"cem/": at(40)},
    )
    assert [r.holder for r in done.kept] == ["ana/"]
    assert {(r.holder, r.stop_reason, r.gpu_seconds) for r in done.closed} == {
        ("ben/", "hub_restart", 100.0),
        ("cem/", "hub_restart", 40.0),
        ("dan/", "hub_restart", 100.0),
    }
    adopted = {r.holder: r for r in done.adopted}
    assert adopted.keys() == {"dan/", "eve/x", "fay/"}
    assert (adopted["eve/x"].user, adopted["eve/x"].server, adopted["eve/x"].started_at) == ("eve", "x", at(30))
    assert (adopted["fay/"].started_at, adopted["fay/"].share_of, adopted["dan/"].started_at) == (at(100), 2, at(100))
    # a second rebuild with the same servers changes nothing
    again = book.rebuilt(
        {"ana/": ["GPU-0"], "dan/": ["GPU-4"], "eve/x": ["GPU-5"], "fay/": Running(("MIG-6",), share=0.5)}, at=at(200)
    )
    assert (len(again.kept), again.closed, again.adopted) == (4, (), ())


def test_an_adoption_never_starts_before_the_holders_last_record_closed(book):
    book.assigned("ana/", user="ana", units=["GPU-0"], at=at(0))
    book.released("ana/", "crash", at=at(50))
    (adopted,) = book.rebuilt({"ana/": Running(("GPU-0",), started_at=at(10))}, at=at(100)).adopted
    assert adopted.started_at == at(50)


# --- the property: GPU-seconds recorded == the integral of the ledger's occupancy

HOLDERS = ("ana/", "ben/", "ben/big", "cem/", "dan/")
HOLDINGS = st.tuples(
    st.lists(st.sampled_from(("GPU-0", "GPU-1", "GPU-2", "MIG-3")), min_size=1, max_size=3, unique=True).map(tuple),
    st.sampled_from((1, 1, 2, 4, 7)),  # K: each unit counts 1/K
)
WAIT = st.integers(0, 4 * 3600)


class UsageMachine(RuleBasedStateMachine):
    """A hub's ledger, the containers that run, and the usage book, under a fake clock.

    The model: ``ledger`` is what the hub's ledger holds (frozen while the hub is down: it still
    keeps the units out of reach); ``containers`` is what runs. A crash ends a container without
    telling anyone; a restart rebuilds the ledger from the containers. ``integral`` adds up the
    ledger's occupancy (units / K per second), which the records must equal exactly.
    """

    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="usage-")
        self.url = f"sqlite:///{self.folder}/usage.sqlite"
        self.t = 0
        self.ledger: dict[str, tuple[tuple[str, ...], int]] = {}
        self.containers: dict[str, tuple[tuple[str, ...], int, int]] = {}  # + when it started
        self.integral = Fraction(0)
        self.store = UsageStore(self.url)
        self.reader = UsageStore(self.url)
        self.book = UsageBook(self.store, clock=lambda: at(self.t))
        self.hub_up = True

    def teardown(self):
        self.store.close()
        self.reader.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def wait(self, seconds: int) -> None:
        self.integral += sum((Fraction(len(u) * seconds, k) for u, k in self.ledger.values()), Fraction(0))
        self.t += seconds

    @initialize(servers=st.dictionaries(st.sampled_from(HOLDERS), st.tuples(HOLDINGS, st.integers(0, 3600))))
    def accounting_begins_with_servers_running(self, servers):
        for holder, ((units, k), age) in servers.items():
            self.ledger[holder] = (units, k)
            self.containers[holder] = (units, k, -age)
            self.integral += Fraction(len(units) * age, k)
        self.book.rebuilt(self.running())

    def running(self) -> dict[str, Running]:
        return {h: Running(u, share=Fraction(1, k), started_at=at(s)) for h, (u, k, s) in self.containers.items()}

    @precondition(lambda self: self.hub_up)
    @rule(holder=st.sampled_from(HOLDERS), holding=HOLDINGS, wait=WAIT)
    def start(self, holder, holding, wait):
        self.wait(wait)
        units, k = holding
        self.ledger[holder] = holding
        self.containers[holder] = (units, k, self.t)
        user = holder.split("/")[0]
        self.book.assigned(holder, user=user, units=units, share=Fraction(1, k), groups=[f"g-{user}"])

    @precondition(lambda self: self.hub_up and self.ledger)
    @rule(data=st.data(), wait=WAIT)
    def the_glue_says_assigned_again(self, data, wait):
        self.wait(wait)
        holder = data.draw(st.sampled_from(sorted(self.ledger)))
        units, k = self.ledger[holder]
        before = self.reader.records()
        self.book.assigned(holder, user="x", units=tuple(reversed(units)), share=Fraction(1, k))
        assert self.reader.records() == before

    @precondition(lambda self: self.hub_up)
    @rule(holder=st.sampled_from(HOLDERS), reason=st.sampled_from(sorted(STOP_REASONS)), wait=WAIT)
    def stop(self, holder, reason, wait):
        """A stop, a culling, a failed start, the hub's poll seeing a crash; or a release twice."""
        self.wait(wait)
        held = self.ledger.pop(holder, None)
        self.containers.pop(holder, None)
        closed = self.book.released(holder, reason)
        assert (closed is not None) == (held is not None)

    @precondition(lambda self: self.containers)
    @rule(data=st.data(), wait=WAIT)
    def crash(self, data, wait):
        """A container ends and no one is told: the record stays open until a restart."""
        self.wait(wait)
        del self.containers[data.draw(st.sampled_from(sorted(self.containers)))]

    @precondition(lambda self: self.hub_up)
    @rule(wait=WAIT)
    def kill_the_hub(self, wait):
        self.wait(wait)
        self.store.close()
        self.hub_up = False

    @precondition(lambda self: not self.hub_up)
    @rule(wait=WAIT)
    def restart_the_hub(self, wait):
        self.wait(wait)
        self.store = UsageStore(self.url)
        self.book = UsageBook(self.store, clock=lambda: at(self.t))
        self.book.rebuilt(self.running())
        self.ledger = {h: (u, k) for h, (u, k, _) in self.containers.items()}
        self.hub_up = True

    @invariant()
    def recorded_equals_the_ledgers_occupancy(self):
        assert recorded(self.reader, at(self.t)) == self.integral

    @invariant()
    def a_running_hub_has_one_open_record_per_holding(self):
        if not self.hub_up:
            return
        open_ = {r.holder: (tuple(sorted(r.units)), r.share_of) for r in self.reader.records(open_only=True)}
        assert len(open_) == len(self.reader.records(open_only=True))
        assert open_ == {h: (tuple(sorted(u)), k) for h, (u, k) in self.ledger.items()}

    @invariant()
    def a_closed_records_gpu_seconds_are_its_exact_ones_rounded(self):
        for r in self.reader.records():
            if not r.is_open:
                assert r.gpu_seconds == pytest.approx(float(r.exact_gpu_seconds(r.stopped_at)), abs=1e-6)


UsageMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestUsageProperty = UsageMachine.TestCase
