import logging

import pytest

from gpuspawner.profiles import MountPolicy, ProfileError, ProfilesFile, choose_profile, parse_profiles


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
