"""The tables of ``status`` and ``prepull`` at the widths people have: nothing they read is cut.

At 80 columns (a terminal with ``TERM=dumb``, or ``COLUMNS=80``), the table gives way to
short unit ids, then to one line per unit or image; ``test_cli_e2e.py`` runs the real
command piped with ``COLUMNS=80``.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from gpuspawner.cli import output
from gpuspawner.cli.prepull import FAILED, PRESENT, PULLED, PullResult, print_results
from gpuspawner.cli.status import print_status

GIB = 1024**3
DEMO = [f"GPU-51a11a7e-0000-4000-8000-00000000000{i}" for i in range(4)]  # the demo's simulated units
REAL = ["GPU-5a4d1f0b-9c2e-4b7a-8f3d-2e6c1a9b7d40", "MIG-0c7f3e21-6b5a-4d98-a1e2-7f4b3c2d1e0a"]


def row(unit_id, unit, holders=(), model="NVIDIA A100-SXM4-80GB", memory=80 * GIB, mig_profile=""):
    return {
        "id": unit_id,
        "unit": unit,
        "mig_profile": mig_profile,
        "model": model,
        "memory": memory,
        "holders": [
            {"user": user, "server": server, "profile": profile, "container": f"jupyter-{user}", "shared": shared}
            for user, server, profile, shared in holders
        ],
        "free": not holders,
    }


ROWS = [
    row(
        DEMO[0], "GPU 0", [("frederique", "exp", "pytorch-gpu", False)], model="SIMULATED GPU (no NVIDIA driver found)"
    ),
    row(DEMO[1], "GPU 1", [("carol", "", "shared", True), ("dave", "", "shared", True)]),
    row(DEMO[2], "GPU 2"),
]


def printed(width: int, show, *args) -> str:
    out = io.StringIO()
    show(Console(file=out, width=width, highlight=False, soft_wrap=True), *args)
    return out.getvalue()


def test_short_ids_keep_units_apart():
    assert output.short_ids(REAL) == {REAL[0]: "GPU-5a4d1f0b…7d40", REAL[1]: "MIG-0c7f3e21…1e0a"}
    assert set(output.short_ids(DEMO).values()) == {f"GPU-51a11a7e…000{i}" for i in range(4)}
    same_ends = ["GPU-aaaaaaaa-0000-4000-8000-000000000001", "GPU-aaaaaaaa-1111-4000-8000-000000000001"]
    assert output.short_ids(same_ends) == {i: i for i in same_ends}  # would be one: both stay whole
    assert output.short_ids(["GPU-aaaa", "0"]) == {"GPU-aaaa": "GPU-aaaa", "0": "0"}  # short already


@pytest.mark.parametrize("width", [80, 100, 120, 200])
def test_status_never_cuts_a_holder_a_profile_or_a_model(width):
    text = printed(width, print_status, ROWS, 4)
    for whole in ("frederique/exp", "pytorch-gpu", "carol", "dave", "SIMULATED GPU (no NVIDIA driver found)"):
        assert whole in text, f"{whole!r} cut at {width} columns:\n{text}"
    assert "…" not in text.replace("GPU-51a11a7e…", "")  # the only ellipsis is in the ids


def test_status_is_a_table_with_whole_ids_where_it_fits():
    text = printed(200, print_status, ROWS, 4)
    assert DEMO[0] in text and "Holder" in text and "ids shortened" not in text
    assert max(len(line) for line in text.splitlines()) <= 200


def test_status_shortens_the_ids_first():
    text = printed(120, print_status, ROWS, 4)
    lines = text.splitlines()
    assert "Holder" in lines[0] and DEMO[0] not in text and "GPU-51a11a7e…0000" in text
    assert max(len(line) for line in lines) <= 120
    assert lines[-1] == "(ids shortened: `gpuspawner status --json` prints them whole)"


def test_status_at_80_columns_is_a_line_per_unit():
    assert printed(80, print_status, ROWS, 4).splitlines() == [
        "GPU 0  GPU-51a11a7e…0000  SIMULATED GPU (no NVIDIA driver found)  80 GiB: frederique/exp (profile pytorch-gpu)",
        "GPU 1  GPU-51a11a7e…0001  NVIDIA A100-SXM4-80GB  80 GiB: carol (profile shared, shared 2/4),"
        " dave (profile shared, shared 2/4)",
        "GPU 2  GPU-51a11a7e…0002  NVIDIA A100-SXM4-80GB  80 GiB: free",
        "(ids shortened: `gpuspawner status --json` prints them whole)",
    ]


DIGEST = "registry.example.edu/courses/ml101-cuda@sha256:" + "0123456789abcdef" * 4
RESULTS = [
    PullResult(DIGEST, PULLED, 4 * GIB, 63.0, profiles=("ml101", "ml101-gpu")),
    PullResult("lab:1", PRESENT, GIB, 0.0, profiles=("cpu",)),
    PullResult("registry.example.edu/courses/gone:1", FAILED, 0, 1.2, error="not found", profiles=("old",)),
]


def test_prepull_at_80_columns_is_a_line_per_image_with_the_whole_name():
    assert printed(80, print_results, RESULTS).splitlines() == [
        f"pulled           {DIGEST}  (4 GiB, 63.0 s; profiles ml101, ml101-gpu)",
        "already present  lab:1  (1 GiB, 0.0 s; profiles cpu)",
        "failed           registry.example.edu/courses/gone:1  (1.2 s; profiles old)",
    ]


def test_prepull_is_a_table_where_it_fits():
    text = printed(200, print_results, RESULTS)
    assert text.splitlines()[0].split()[:3] == ["Image", "┃", "Profiles"]
    assert DIGEST in text and "…" not in text


def test_a_pipe_is_as_wide_as_columns_says(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert output.console(io.StringIO()).width == 80
    monkeypatch.delenv("COLUMNS")
    assert output.console(io.StringIO()).width == output.PLAIN_WIDTH
    monkeypatch.setenv("COLUMNS", "wide")
    assert output.console(io.StringIO()).width == output.PLAIN_WIDTH
