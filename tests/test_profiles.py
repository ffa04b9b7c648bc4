import pytest

from gpuspawner.profiles import ProfileError, choose_profile, parse_profiles


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
