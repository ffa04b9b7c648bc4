"""``gpuspawner doctor``'s judgements of datasets, shares and the config's environment, without Docker.

What the engine shows is given as ``MountsLooked`` (the look's output parsed by
``parse_look``); ``test_cli_e2e.py`` runs the look on real folders on the test bed's engine.
"""

from __future__ import annotations

import pytest

from gpuspawner.cli import doctor
from gpuspawner.cli.findings import FAIL, OK, WARN
from gpuspawner.cli.mount_access import (
    LOOK_SH,
    ImageLook,
    MountsLooked,
    MountUse,
    RunAs,
    SourceSeen,
    mount_uses,
    parse_look,
)
from gpuspawner.config import UnsetVariable
from gpuspawner.profiles import parse_profiles

JOVYAN = RunAs(1000, 100, "jovyan")
READABLE = SourceSeen(
    folder=True, readable=True, enterable=True, writable=False, has_entries=True, owner="0:0", mode="755"
)
SECRET = SourceSeen(
    folder=True, readable=False, enterable=False, writable=False, has_entries=False, owner="0:0", mode="700"
)
EMPTY = SourceSeen(
    folder=True, readable=True, enterable=True, writable=False, has_entries=False, owner="0:0", mode="755"
)
WRITABLE = SourceSeen(
    folder=True, readable=True, enterable=True, writable=True, has_entries=False, owner="1000:100", mode="755"
)

PROFILES = [
    {
        "slug": "a",
        "display_name": "A",
        "image": "lab:1",
        "datasets": [{"name": "mnist", "source": "/srv/data/mnist"}, {"name": "gone", "source": "/srv/data/gone"}],
        "shares": [{"name": "ml101", "source": "/srv/courses/ml101", "writable_by": ["teachers"]}],
    },
    {
        "slug": "b",
        "display_name": "B",
        "image": "lab:1",
        "datasets": [{"name": "mnist", "source": "/srv/data/mnist"}],
        "shares": [{"name": "ml101", "source": "/srv/courses/ml101", "writable_by": ["ta"]}],
    },
    {"slug": "c", "display_name": "C", "image": "lab:2", "datasets": [{"name": "mnist", "source": "/srv/data/mnist"}]},
]


def uses(profiles=PROFILES) -> list[MountUse]:
    return mount_uses(parse_profiles(profiles))


def test_mount_uses_are_one_per_source_and_image():
    found = uses()
    assert [(u.kind, u.source, u.image, u.profiles) for u in found] == [
        ("dataset", "/srv/data/mnist", "lab:1", ("a", "b")),
        ("dataset", "/srv/data/gone", "lab:1", ("a",)),
        ("share", "/srv/courses/ml101", "lab:1", ("a", "b")),
        ("dataset", "/srv/data/mnist", "lab:2", ("c",)),
    ]
    assert found[2].writers == ("ta", "teachers")  # either group writes it from that image
    assert found[0].writers == ()


def test_parse_look_reads_who_and_each_source_and_ignores_the_rest():
    out = (
        "Welcome to the lab!\n"
        "user 1000 100 jovyan\n"
        "source 0 folder=1 read=0 enter=0 write=0 entries=0 owner=0:0 mode=700\n"
        "source 1 folder=0 read=1 enter=0 write=1 entries=1 owner=- mode=-\n"
        "source 7 folder=1 read=1 enter=1 write=1 entries=1 owner=0:0 mode=755\n"  # no such source: ignored
    )
    run_as, seen = parse_look(out, ["/srv/data/secret", "/srv/data/file.csv"])
    assert run_as == JOVYAN and str(run_as) == "uid 1000 (jovyan)"
    assert seen["/srv/data/secret"] == SECRET
    file = seen["/srv/data/file.csv"]
    assert file.usable and not file.folder and file.describe() == ""  # a file needs no x; stat said nothing
    assert parse_look("sh: 1: id: not found\n", ["/x"]) == (None, {})


def test_the_look_only_reads():
    # It tests with test(1) (access(2)), lists with ls -A and stats: it never writes a source.
    for writes in (">", "touch", "mkdir", "rm ", "chmod", "chown", "cp ", "mv "):
        assert writes not in LOOK_SH.replace("2>/dev/null", "")


def looked(by_image: dict[str, dict[str, SourceSeen]], missing=(), run_as=JOVYAN) -> MountsLooked:
    there = {s for seen in by_image.values() for s in seen}
    return MountsLooked(
        missing=set(missing),
        there=there,
        by_image={image: ImageLook(image, run_as, dict(seen)) for image, seen in by_image.items()},
    )


def nowhere(source: str) -> bool:
    raise AssertionError(f"asked this machine about {source}: the engine knew")


def test_sources_fine_for_every_image_are_one_ok_line_each():
    seen = {"/srv/data/mnist": READABLE, "/srv/courses/ml101": WRITABLE}
    found = doctor.mount_findings(uses(), looked({"lab:1": seen, "lab:2": seen}, missing={"/srv/data/gone"}), nowhere)
    assert [(f.subject, f.level) for f in found] == [
        ("dataset mnist", OK),  # once, though three profiles and two images mount it
        ("dataset gone", FAIL),
        ("share ml101", OK),
    ]
    assert found[0].message == "host path /srv/data/mnist is there, not empty, readable by uid 1000 (jovyan)"
    assert found[1].message == "host path /srv/data/gone is missing: students would see an empty folder (profile a)"
    assert (
        found[1].fix
        == "mkdir -p /srv/data/gone && cp -a /path/to/the/data/. /srv/data/gone/ && chmod -R a+rX /srv/data/gone"
    )
    assert found[2].message == (
        "host path /srv/courses/ml101 is there, readable by uid 1000 (jovyan);"
        " writable by uid 1000 (jovyan) for writable_by ta, teachers"
    )


@pytest.mark.parametrize(
    ("seen", "subject", "says", "fix"),
    [
        (
            {"/srv/data/mnist": SECRET},
            "dataset mnist",
            "host path /srv/data/mnist is not readable by uid 1000 (jovyan) of image lab:1 (owned by 0:0, mode 700):"
            " its servers would get 'Permission denied'",
            "chmod -R a+rX /srv/data/mnist",
        ),
        (
            {"/srv/data/mnist": EMPTY},
            "dataset mnist",
            "host path /srv/data/mnist is empty: students would see an empty folder (profiles a, b)",
            "cp -a /path/to/the/data/. /srv/data/mnist/ && chmod -R a+rX /srv/data/mnist",
        ),
        (
            {"/srv/courses/ml101": READABLE},
            "share ml101",
            "host path /srv/courses/ml101 is not writable by uid 1000 (jovyan) of image lab:1 (owned by 0:0, mode 755),"
            " though writable_by lets ta, teachers write it (profiles a, b)",
            "chown -R 1000:100 /srv/courses/ml101",
        ),
        (
            {"/srv/courses/ml101": SourceSeen(True, True, True, False, True, owner="0:0", mode="555")},
            "share ml101",
            "(owned by 0:0, mode 555)",
            "chown -R 1000:100 /srv/courses/ml101 && chmod -R u+rwX /srv/courses/ml101",
        ),
        (
            {"/srv/courses/ml101": SourceSeen(True, True, True, False, True, owner="1000:100", mode="555")},
            "share ml101",
            "(owned by 1000:100, mode 555)",
            "chmod -R u+rwX /srv/courses/ml101",
        ),
    ],
    ids=["root-700-dataset", "empty-dataset", "root-share", "read-only-share", "own-read-only-share"],
)
def test_what_the_servers_user_cannot_do_fails_with_the_command_that_fixes_it(seen, subject, says, fix):
    base = {"/srv/data/mnist": READABLE, "/srv/courses/ml101": WRITABLE}
    found = doctor.mount_findings(uses(PROFILES[:2]), looked({"lab:1": {**base, **seen}}, {"/srv/data/gone"}), nowhere)
    (problem,) = [f for f in found if f.subject == subject]
    assert problem.level == FAIL and says in problem.message and problem.fix == fix, problem


def test_each_uid_is_judged_once_and_named_with_its_image():
    root = RunAs(0, 0, "root")
    found = doctor.mount_findings(
        uses(),
        MountsLooked(
            missing={"/srv/data/gone"},
            there={"/srv/data/mnist", "/srv/courses/ml101"},
            by_image={
                "lab:1": ImageLook("lab:1", JOVYAN, {"/srv/data/mnist": READABLE, "/srv/courses/ml101": WRITABLE}),
                "lab:2": ImageLook("lab:2", root, {"/srv/data/mnist": SECRET}),  # root without capabilities
            },
        ),
        nowhere,
    )
    (mnist,) = [f for f in found if f.subject == "dataset mnist"]
    assert mnist.level == FAIL and "not readable by uid 0 (root) of image lab:2" in mnist.message


def test_a_missing_share_that_teachers_write_fails_with_the_owner_they_need():
    found = doctor.mount_findings(
        uses(PROFILES[:1]),
        looked({"lab:1": {"/srv/data/mnist": READABLE}}, missing={"/srv/data/gone", "/srv/courses/ml101"}),
        nowhere,
    )
    (share,) = [f for f in found if f.subject == "share ml101"]
    assert share.level == FAIL
    assert share.message == (
        "host path /srv/courses/ml101 is missing: Docker would create it empty and owned by root, and uid 1000 (jovyan)"
        " could not write it (writable_by teachers, profile a)"
    )
    assert share.fix == "mkdir -p /srv/courses/ml101 && chown 1000:100 /srv/courses/ml101"


def test_a_missing_volume_share_nobody_writes_only_warns():
    profiles = [
        {"slug": "a", "display_name": "A", "image": "lab:1", "shares": [{"name": "notes", "source": "notes-vol"}]}
    ]
    (share,) = doctor.mount_findings(uses(profiles), looked({"lab:1": {}}, missing={"notes-vol"}), nowhere)
    assert (share.level, share.message) == (WARN, "volume notes-vol is missing: Docker creates it empty on first use")


def test_volumes_get_their_fix_through_docker():
    profiles = [
        {
            "slug": "a",
            "display_name": "A",
            "image": "lab:1",
            "shares": [{"name": "ml101", "source": "ml101-share", "writable_by": ["teachers"]}],
        }
    ]
    (share,) = doctor.mount_findings(uses(profiles), looked({"lab:1": {"ml101-share": READABLE}}), nowhere)
    assert share.level == FAIL and share.message.startswith("volume ml101-share is not writable by uid 1000")
    assert share.fix == (
        "docker run --rm -u 0 -v ml101-share:/share lab:1 sh -c 'chown -R 1000:100 /share && chmod -R u+rwX /share'"
    )


def test_without_the_engine_this_machine_is_asked_and_says_so():
    here = {"/srv/data/mnist", "/srv/courses/ml101"}.__contains__
    found = doctor.mount_findings(uses(PROFILES[:1]), None, here)
    assert [(f.subject, f.level) for f in found] == [("dataset mnist", OK), ("dataset gone", FAIL), ("share ml101", OK)]
    assert "(as this machine sees it: the engine could not tell)" in found[0].message
    # An image not on the engine yet: the source is there, its user's access is not known.
    found = doctor.mount_findings(uses(PROFILES[2:]), MountsLooked(there={"/srv/data/mnist"}), nowhere)
    assert found[0].message == (
        "host path /srv/data/mnist is there; not looked at as the user of lab:2, which is not on this engine yet"
    )


def test_a_look_that_failed_warns_and_points_at_image_check():
    broken = MountsLooked(there={"/srv/data/mnist"}, by_image={"lab:2": ImageLook("lab:2", error="exec: no /bin/sh")})
    (found,) = doctor.mount_findings(uses(PROFILES[2:]), broken, nowhere)
    assert found.level == WARN and "could not look at it as the user of lab:2: exec: no /bin/sh" in found.message
    assert found.fix == "gpuspawner image check lab:2"


# --- the config's environment


def test_an_image_from_an_unset_variable_warns_that_doctor_may_check_another_image():
    profiles = parse_profiles([{"slug": "cpu", "display_name": "CPU", "image": "gpuspawner-lab:demo"}])
    variables = [
        UnsetVariable("LAB_IMAGE", "gpuspawner-lab:demo", ("GPUSpawner.profiles",)),
        UnsetVariable("OAUTH_CLIENT_ID", "", ("GenericOAuthenticator.client_id",)),
        UnsetVariable("OAUTH_CLIENT_SECRET", "", ("GenericOAuthenticator.client_secret",)),
    ]
    image, others = doctor.environment_findings(variables, profiles)
    assert image.level == WARN and image.subject == "environment"
    assert image.message == (
        "profile cpu runs gpuspawner-lab:demo, from the default the config gives LAB_IMAGE, which is not set here:"
        " the hub, where it is set, may run another image, so doctor may be checking another image than the hub"
    )
    assert image.fix.startswith("export LAB_IMAGE=<the hub's value>")
    assert "docker compose exec hub gpuspawner doctor" in image.fix
    assert others.level == OK and others.message == (
        "the config reads OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, not set here: they decide only"
        " c.GenericOAuthenticator.client_id, c.GenericOAuthenticator.client_secret, which doctor does not check"
    )


def test_other_unset_variables_that_change_the_lab_warn_with_what_they_decide():
    (found,) = doctor.environment_findings(
        [UnsetVariable("MOUNT_ROOT", "/srv", ("GPUSpawner.mount_roots",))],
        parse_profiles([{"slug": "cpu", "display_name": "CPU", "image": "lab:1"}]),
    )
    assert found.level == WARN and found.message == (
        "the config reads MOUNT_ROOT, which is not set here ('/srv' used instead): it decides c.GPUSpawner.mount_roots,"
        " so the hub, where it is set, may see another set-up than doctor checks"
    )
    (found,) = doctor.environment_findings([UnsetVariable("N", "2", unknown="with it set, the config fails")], ())
    assert found.level == WARN and "what it decides cannot be told (with it set, the config fails)" in found.message
    assert doctor.environment_findings([], ()) == []


# --- advice in the project's own words


def test_a_missing_image_is_fetched_with_prepull():
    users = tuple(parse_profiles([{"slug": "cpu", "display_name": "CPU", "image": "lab:1"}]))
    for policy in ("ifnotpresent", "never"):
        (missing,) = doctor.profile_image_findings(
            "lab:1", None, users, pull_policy=policy, allow_root=False, driver_cuda="12.4"
        )
        assert missing.fix.startswith("gpuspawner prepull") and "docker pull" not in missing.fix


def test_a_short_default_in_the_profiles_is_not_taken_for_the_image():
    profiles = parse_profiles([{"slug": "cpu", "display_name": "CPU", "image": "lab:1"}])
    (found,) = doctor.environment_findings([UnsetVariable("CPUS", "1", ("GPUSpawner.profiles",))], profiles)
    assert found.level == WARN and found.message.startswith("the config reads CPUS, which is not set here")
    (found,) = doctor.environment_findings([UnsetVariable("TAG", "lab:1", ("GPUSpawner.mount_roots",))], profiles)
    assert "runs lab:1" not in found.message  # it decides no profile


def test_one_variable_the_lab_does_not_judge_is_said_in_the_singular():
    (found,) = doctor.environment_findings([UnsetVariable("PASSWORD", "x", ("DummyAuthenticator.password",))], ())
    assert found.message == (
        "the config reads PASSWORD, not set here: it decides only c.DummyAuthenticator.password,"
        " which doctor does not check"
    )
