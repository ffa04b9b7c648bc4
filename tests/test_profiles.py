import logging
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from gpuspawner.profiles import (
    ADMIN_ONLY_FIELDS,
    PROFILE_FIELDS,
    FileLimits,
    MountPolicy,
    ProfileError,
    ProfilesFile,
    choose_profile,
    parse_profiles,
    root_allowed,
)


def profile(slug="ml101", **fields):
    return {"slug": slug, "display_name": "ML 101", "image": "lab:2026.1", **fields}


def test_profile_fields_are_parsed():
    (p,) = parse_profiles([profile(gpus=2, mem_limit="16G", cpu_limit=4, shm_size="2G", description=" PyTorch ")])
    assert (p.gpus, p.mem_limit, p.cpu_limit, p.shm_size) == (2, 16 * 1024**3, 4.0, 2 * 1024**3)
    assert p.description == "PyTorch"
    assert p.summary() == "2 whole GPUs, 4 CPUs, 16 GiB RAM"


def test_defaults_leave_limits_to_the_spawner():
    (p,) = parse_profiles([profile()])
    assert (p.gpus, p.mem_limit, p.cpu_limit, p.shm_size) == (0, None, None, None)
    assert p.summary() == "no GPU"


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"slug": "x"}, "must be a list"),
        (["x"], "profile #1: must be a dict"),
        ([profile(), {"slug": "b", "image": "i:1"}], "profile 'b': field 'display_name': is required"),
        ([{"display_name": "X", "image": "i:1"}], "profile #1: field 'slug': is required"),
        ([profile(slug="ML 101")], "field 'slug': must be 1-63 lowercase"),
        ([profile(image="")], "field 'image'"),
        ([profile(gpu=1)], "profile 'ml101': field 'gpu': is not a profile field"),
        ([profile(gpus=1.5)], "field 'gpus': must be a whole number"),
        ([profile(gpus=-1)], "field 'gpus'"),
        ([profile(gpus=True)], "field 'gpus'"),
        ([profile(mem_limit="lots")], "field 'mem_limit'"),
        ([profile(mem_limit=0)], "field 'mem_limit': must be more than 0"),
        ([profile(shm_size="1X")], "field 'shm_size'"),
        ([profile(cpu_limit=0)], "field 'cpu_limit'"),
        ([profile(cpu_limit="2")], "field 'cpu_limit'"),
        ([profile(description=3)], "field 'description'"),
        ([profile(), profile()], "profile 'ml101': field 'slug': two profiles share"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_errors_name_profile_and_field(entries, message):
    with pytest.raises(ProfileError, match=message):
        parse_profiles(entries)


def test_gpu_request_fields():
    mig, shared, any_ = parse_profiles(
        [
            profile("mig", gpus=1, mig_profile="1g.10gb"),
            profile("shared", shared_gpu=True, gpu_model="A100"),
            profile("any", gpus=1, gpu_kind="any", gpu_min_memory="20G"),
        ]
    )
    assert (mig.gpu_request.kind, mig.gpu_request.mig_profile) == ("mig", "1g.10gb")
    assert mig.summary() == "1 MIG 1g.10gb instance"
    assert (shared.gpu_request.shared, shared.gpu_request.slots) == (True, 1)
    assert shared.summary() == "a slot on a shared GPU (A100)"
    assert any_.gpu_request.min_memory == 20 * 1024**3


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"gpus": 2, "shared_gpu": True}, "field 'shared_gpu': is one slot"),
        ({"shared_gpu": "yes"}, "field 'shared_gpu': must be true or false"),
        ({"gpus": 1, "mig_profile": "big"}, "field 'mig_profile'"),
        ({"gpus": 1, "gpu_kind": "tpu"}, "field 'gpu_kind'"),
        ({"gpus": 1, "gpu_kind": "gpu", "mig_profile": "1g.10gb"}, "field 'gpu_kind': is 'gpu'"),
        ({"gpu_model": "A100"}, "field 'gpu_model': constrains GPUs, but this profile asks for none"),
        ({"gpus": 1, "gpu_min_memory": "lots"}, "field 'gpu_min_memory'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_gpu_request_errors(fields, message):
    with pytest.raises(ProfileError, match=message):
        parse_profiles([profile(**fields)])


def test_choose_profile():
    profiles = parse_profiles([profile("cpu"), profile("gpu", gpus=1)])
    assert choose_profile(profiles, None).slug == "cpu"
    assert choose_profile(profiles, "").slug == "cpu"
    assert choose_profile(profiles, "gpu").slug == "gpu"
    # The form's fields arrive as strings (options_from_form); a list, a number or an object is refused.
    for wrong in (["gpu"], 1, {"slug": "gpu"}, True):
        with pytest.raises(ProfileError, match="must be a profile's slug"):
            choose_profile(profiles, wrong)
    with pytest.raises(ProfileError, match="unknown profile 'tpu'; choose one of: cpu, gpu"):
        choose_profile(profiles, "tpu")
    with pytest.raises(ProfileError, match="no profiles"):
        choose_profile((), None)


# --- what a profile may mount: the admin's mount_roots and mount_volumes

POLICY = MountPolicy(roots=("/srv/datasets", "/srv/courses"), volumes=("course-*",))


def mounting(field, source):
    entry = {"name": "x", "source": source}
    return profile("ml101", **{field: [entry]})


@pytest.mark.parametrize("field", ["datasets", "shares"])
@pytest.mark.parametrize(
    "source, message",
    [
        ("/", "source '/' is not under the mount roots the admin allows"),
        ("/var/run", "source '/var/run' is not under the mount roots"),
        ("/var/run/docker.sock", "source '/var/run/docker.sock' is not under the mount roots"),
        ("/srv/datasets-evil", "source '/srv/datasets-evil' is not under the mount roots"),
        ("/srv", "source '/srv' is not under the mount roots"),  # above a root
        ("//srv/datasets/../../etc", "must be an absolute host path or a volume name"),  # '..': refused by parsing
        ("/srv/./datasets-evil/", "source '/srv/datasets-evil' is not under"),  # normalised first
        ("jupyterhub-data", "source 'jupyterhub-data' is not a volume the admin allows"),  # the hub's own
        ("jupyterhub-user-alice", "source 'jupyterhub-user-alice' is not a volume"),  # a student's home
        ("Course-ml101", "source 'Course-ml101' is not a volume"),  # patterns are case-sensitive
    ],
    ids=lambda v: v,
)
def test_a_mount_outside_the_admins_roots_is_refused_naming_profile_and_field(field, source, message):
    with pytest.raises(ProfileError) as e:
        parse_profiles([mounting(field, source)], mount_policy=POLICY)
    assert str(e.value).startswith(f"profile 'ml101': field '{field}': x: ")
    assert message in str(e.value)


def test_the_refusal_lists_what_the_admin_allows():
    with pytest.raises(ProfileError) as e:
        parse_profiles([mounting("datasets", "/")], mount_policy=POLICY)
    assert str(e.value) == (
        "profile 'ml101': field 'datasets': x: source '/' is not under the mount roots the admin allows"
        " (c.GPUSpawner.mount_roots: /srv/datasets, /srv/courses)"
    )
    with pytest.raises(ProfileError) as e:
        parse_profiles([mounting("shares", "jupyterhub-data")], mount_policy=POLICY)
    assert str(e.value) == (
        "profile 'ml101': field 'shares': x: source 'jupyterhub-data' is not a volume the admin allows"
        " (c.GPUSpawner.mount_volumes: course-*)"
    )


@pytest.mark.parametrize(
    "source",
    ["/srv/data", "data-vol"],
    ids=["host-path", "volume"],
)
def test_by_default_nothing_may_be_mounted(source):
    with pytest.raises(ProfileError, match="none, so no (host path|volume) may be mounted"):
        parse_profiles([mounting("datasets", source)], mount_policy=MountPolicy())


@pytest.mark.parametrize("field", ["datasets", "shares"])
@pytest.mark.parametrize(
    "source, mounted",
    [
        ("/srv/datasets", "/srv/datasets"),  # the root itself
        ("/srv/datasets/mnist", "/srv/datasets/mnist"),
        ("/srv/courses/ml101/week1/", "/srv/courses/ml101/week1"),
        ("//srv//datasets/./mnist", "/srv/datasets/mnist"),
        ("course-ml101", "course-ml101"),  # a volume matching a pattern
    ],
    ids=lambda v: v,
)
def test_a_mount_under_a_root_or_matching_a_pattern_is_accepted(field, source, mounted):
    (p,) = parse_profiles([mounting(field, source)], mount_policy=POLICY)
    assert [m.source for m in getattr(p, field)] == [mounted]


def test_the_root_of_the_host_is_a_root_only_when_the_admin_says_so():
    (p,) = parse_profiles([mounting("datasets", "/var/run")], mount_policy=MountPolicy(roots=("/",)))
    assert p.datasets[0].source == "/var/run"


def test_without_a_policy_mounts_are_not_checked():
    (p,) = parse_profiles([mounting("datasets", "/")])  # the pure tests of other things
    assert p.datasets[0].source == "/"


def test_a_profiles_file_edit_that_mounts_the_host_keeps_the_last_good(tmp_path, caplog):
    path = tmp_path / "profiles.yaml"
    path.write_text("- {slug: a, display_name: A, image: 'lab:1', datasets: [{name: d, source: /srv/datasets/d}]}\n")
    source = ProfilesFile(str(path), mount_policy=POLICY)
    assert [m.source for m in source.load()[0].datasets] == ["/srv/datasets/d"]
    path.write_text("- {slug: a, display_name: A, image: 'lab:1', shares: [{name: root, source: /}]}\n")
    with caplog.at_level(logging.ERROR, logger="gpuspawner"):
        (kept,) = source.load()
    assert [m.source for m in kept.datasets] == ["/srv/datasets/d"] and kept.shares == ()
    assert (
        f"Keeping the last good profiles: {path}: profile 'a': field 'shares': root: source '/' is not under"
        " the mount roots the admin allows (c.GPUSpawner.mount_roots: /srv/datasets, /srv/courses)"
    ) in caplog.text
    # The first read of a file that mounts the host fails: there is nothing good to keep.
    with pytest.raises(ProfileError, match="field 'shares': root: source '/' is not under"):
        ProfilesFile(str(path), mount_policy=POLICY).load()


# --- fields only the admin's config may set, and the profiles file's GPU cap

FILE = FileLimits(max_gpus=1)


def test_admin_only_fields_are_parsed_from_the_admins_config():
    (plain, trusted) = parse_profiles([profile("plain"), profile("trusted", allow_root=True, internet=True)])
    assert (plain.allow_root, plain.internet) == (False, False)  # the defaults: no root, no internet
    assert (trusted.allow_root, trusted.internet) == (True, True)
    (big,) = parse_profiles([profile(gpus=8)])  # the admin's config: no cap
    assert big.gpus == 8


@pytest.mark.parametrize("field", ["allow_root", "internet"])
def test_admin_only_fields_must_be_booleans(field):
    with pytest.raises(ProfileError, match=f"profile 'ml101': field '{field}': must be true or false, got 'yes'"):
        parse_profiles([profile(**{field: "yes"})])


@pytest.mark.parametrize("value", [True, False], ids=["true", "false"])
@pytest.mark.parametrize("field", ADMIN_ONLY_FIELDS)
def test_a_profiles_file_may_not_set_an_admin_only_field(field, value):
    """Whatever the value: the file's editors do not decide it, even to say 'no'."""
    with pytest.raises(ProfileError) as e:
        parse_profiles([profile(), profile("exam", **{field: value})], file_limits=FILE)
    assert str(e.value) == (
        f"profile 'exam': field '{field}': only the admin's config (c.GPUSpawner.profiles) may set it,"
        " not a profiles file"
    )


@pytest.mark.parametrize(
    "fields, max_gpus, refusal",
    [
        ({"gpus": 1}, 1, None),
        ({"gpus": 2}, 1, "field 'gpus': asks for 2 GPUs"),
        ({"gpus": 2, "mig_profile": "1g.10gb"}, 1, "field 'gpus': asks for 2 GPUs"),  # MIG instances are units too
        ({"shared_gpu": True}, 1, None),  # a shared slot counts 1
        ({"gpus": 4}, 4, None),
        ({"gpus": 1}, 0, "field 'gpus': asks for 1 GPU"),  # 0: CPU profiles only
        ({"shared_gpu": True}, 0, "field 'shared_gpu': asks for 1 GPU"),
        ({}, 0, None),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_a_profiles_file_may_ask_for_at_most_max_gpus(fields, max_gpus, refusal):
    entries = [profile(**fields)]
    if refusal is None:
        parse_profiles(entries, file_limits=FileLimits(max_gpus))
        return
    with pytest.raises(ProfileError) as e:
        parse_profiles(entries, file_limits=FileLimits(max_gpus))
    assert str(e.value) == (
        f"profile 'ml101': {refusal}; a profiles file may ask for at most {max_gpus}"
        " (c.GPUSpawner.profiles_file_max_gpus): only the admin's config may set more"
    )


def test_a_profiles_file_edit_that_sets_an_admin_only_field_keeps_the_last_good(tmp_path, caplog):
    path = tmp_path / "profiles.yaml"
    path.write_text("- {slug: exam, display_name: Exam, image: 'lab:1', gpus: 1}\n")
    source = ProfilesFile(str(path), mount_policy=POLICY)  # the default limits: max_gpus 1
    assert source.limits == FileLimits(max_gpus=1)
    (good,) = source.load()
    for edit, field in [("allow_root: true", "allow_root"), ("internet: true", "internet"), ("gpus: 2", "gpus")]:
        path.write_text(f"- {{slug: exam, display_name: Exam, image: 'lab:1', {edit}}}\n")
        with caplog.at_level(logging.ERROR, logger="gpuspawner"):
            assert source.load() == (good,)
        assert f"Keeping the last good profiles: {path}: profile 'exam': field '{field}': " in caplog.text
    # The first read of such a file fails: there is nothing good to keep.
    path.write_text("- {slug: exam, display_name: Exam, image: 'lab:1', allow_root: true}\n")
    with pytest.raises(ProfileError, match="profile 'exam': field 'allow_root': only the admin's config"):
        ProfilesFile(str(path)).load()
    path.write_text("- {slug: exam, display_name: Exam, image: 'lab:1', gpus: 3}\n")
    assert ProfilesFile(str(path), limits=FileLimits(max_gpus=4)).load()[0].gpus == 3  # the admin raised it


def test_root_is_allowed_hub_wide_or_by_every_profile_of_the_image():
    root, plain = parse_profiles([profile("root", allow_root=True), profile("plain")])
    assert root_allowed([root]) and not root_allowed([plain])
    assert not root_allowed([root, plain])  # plain's spawns would refuse it
    assert not root_allowed([])  # an image no profile names: only the hub-wide setting
    assert root_allowed([], hub_wide=True) and root_allowed([plain], hub_wide=True)


# --- The fields table of docs/how-to/profiles.md ------------------------------------------------

PROFILES_DOC = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "profiles.md"


def documented_fields(text: str, section: str = "Fields") -> list[str]:
    """The first column of the first table under the ``## <section>`` heading, read as MyST reads it.

    Each cell must be one field name in backticks; anything else is an error, so that a row
    the test cannot read does not pass unseen.
    """
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    heading = next(
        (
            i
            for i, t in enumerate(tokens)
            if t.type == "heading_open" and t.tag == "h2" and tokens[i + 1].content == section
        ),
        None,
    )
    assert heading is not None, f"no '## {section}' heading"
    start = next((i for i in range(heading, len(tokens)) if tokens[i].type == "table_open"), None)
    assert start is not None, f"no table under '## {section}'"
    fields, in_body, first_cell = [], False, False
    for t in tokens[start:]:
        if t.type == "table_close":
            break
        in_body = {"tbody_open": True, "tbody_close": False}.get(t.type, in_body)
        if in_body and t.type == "tr_open":
            first_cell = True
        elif in_body and first_cell and t.type == "inline":
            first_cell = False
            cell = t.children or []
            assert len(cell) == 1 and cell[0].type == "code_inline", (
                f"a row whose first cell is not `field`: {t.content!r}"
            )
            fields.append(cell[0].content)
    return fields


def test_the_docs_fields_table_has_one_row_for_each_field_the_parser_accepts():
    with pytest.raises(ProfileError, match="is not a profile field") as e:
        parse_profiles([profile(ram="16G")])
    accepted = set(re.search(r"known fields: (.*)$", str(e.value)).group(1).split(", "))
    assert accepted == PROFILE_FIELDS  # what the parser names is the constant
    rows = documented_fields(PROFILES_DOC.read_text())
    assert len(rows) == len(set(rows)), f"fields with two rows: {sorted({r for r in rows if rows.count(r) > 1})}"
    assert sorted(PROFILE_FIELDS - set(rows)) == [], (
        "fields the parser accepts, without a row in docs/how-to/profiles.md"
    )
    assert sorted(set(rows) - PROFILE_FIELDS) == [], "rows in docs/how-to/profiles.md for fields the parser refuses"


def test_the_fields_table_reader_reads_that_table_only_and_refuses_a_row_it_cannot_read():
    table = "## Fields\n\n| Field | Required | Meaning |\n|---|---|---|\n| `slug` | yes | id |\n| `image` | yes | x |\n"
    assert documented_fields(table) == ["slug", "image"]
    assert documented_fields("# Profiles\n\n" + table + "\n## Next\n\n| A |\n|---|\n| `later` |\n") == ["slug", "image"]
    with pytest.raises(AssertionError, match="not `field`"):
        documented_fields(table + "| slug, image | no | two in one |\n")
