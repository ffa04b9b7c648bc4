"""Fixtures shared by the test modules, and Hypothesis's profiles."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys

import pytest

try:
    from hypothesis import settings
except ImportError:  # a GPU machine with only pytest, nvidia-ml-py and PyTorch (tests/test_real_gpu.py)
    settings = None

if settings is not None:
    # "ci" (the default under tests/run.sh and CI): the same examples every run, and a failing
    # example printed as a blob to reproduce it. "dev": random, for hunting new failures.
    settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
    settings.register_profile("dev", print_blob=True, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def no_config_named_by_the_environment(monkeypatch):
    """The ``gpuspawner`` command reads the file GPUSPAWNER_CONFIG names (the hub's container image
    sets it): a test names its config itself."""
    monkeypatch.delenv("GPUSPAWNER_CONFIG", raising=False)


@pytest.fixture(autouse=True)
def fresh_hub():
    """Each test starts as a hub that has just started: no ledger, Docker pool, puller or profiles
    files left by another (``gpuspawner.hub_state``); a test may call ``reset_hub_state()``
    itself to restart the hub while its containers keep running."""
    _reset_hub_state()
    yield
    _reset_hub_state()


def _reset_hub_state() -> None:
    # Where nothing imported the spawner's side (the pure and real-GPU tests), there is no state to forget.
    hub_state = sys.modules.get("gpuspawner.hub_state")
    if hub_state is not None:
        hub_state.reset_hub_state()


@contextlib.contextmanager
def chromium(*args: str):
    """Debian's headless Chromium driven by Playwright (never `playwright install`), with more ``args``."""
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is not installed: run tests/run.sh"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                *args,
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module", autouse=True)
def one_e2e_module_at_a_time(request):
    """The end-to-end modules of two test runs on one test bed take turns, a module at a time.

    Their hubs share the test bed's engine and simulated GPU ids: a hub of one run would adopt the
    other's containers (and its reconciler stop them). A module holds the test bed's lock file
    while it runs; the unit tests take no lock.
    """
    mine = (item for item in request.session.items if item.module is request.module)
    if not any(item.get_closest_marker("docker") for item in mine):
        yield
        return
    from .realhub import TESTBED

    TESTBED.mkdir(parents=True, exist_ok=True)
    with open(TESTBED / "e2e-module.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"\n[e2e] {request.node.name} waits for another test run's module", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def lab_registry(tmp_path_factory):
    """``("127.0.0.1:<port>", an HTTP session)`` of the one loopback registry every pushing test shares.

    Its blobs are kept beside the test bed (``registry.CACHE``) and it asks for the same port each run:
    the engine then pushes the test bed image's layers once per run at most, not once per module.
    """
    from .registry import CACHE, SHARED_PORT, local_registry

    with local_registry(tmp_path_factory.mktemp("registry"), storage=CACHE, port=SHARED_PORT) as registry:
        yield registry


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="session")
def postgres():
    """The URL of a real PostgreSQL server (Debian's, on loopback) that the session's tests share."""
    from .databases import postgres_server

    with postgres_server() as url:
        yield url
