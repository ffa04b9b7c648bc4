import pytest

from gpuspawner.gpus import InventoryError, parse_static_inventory


def gpu(index=0, uuid="GPU-aaaa", name="NVIDIA A100", memory="80G", **extra):
    return {"index": index, "uuid": uuid, "name": name, "memory": memory, **extra}


def test_static_inventory_sorted_by_index_with_uuid_prefix():
    gpus = parse_static_inventory([gpu(1, "bbbb"), gpu(0, "GPU-aaaa")])
    assert [g.index for g in gpus] == [0, 1]
    assert [g.id for g in gpus] == ["GPU-aaaa", "GPU-bbbb"]
    assert gpus[0].memory == 80 * 1024**3
    assert gpus[0].describe() == "GPU 0 (NVIDIA A100, 80 GiB)"


@pytest.mark.parametrize(
    "entries, message",
    [
        ("nvidia", "must be a list"),
        ([42], r"gpus\[0\]: must be a dict"),
        ([{"index": 0}], r"gpus\[0\]: missing field\(s\) \['memory', 'name', 'uuid'\]"),
        ([gpu(colour="green")], "unknown field"),
        ([gpu(index=-1)], "field 'index'"),
        ([gpu(index=True)], "field 'index'"),
        ([gpu(uuid="")], "field 'uuid'"),
        ([gpu(uuid="GPU-a,GPU-b")], "commas"),
        ([gpu(name=" ")], "field 'name'"),
        ([gpu(memory="lots")], "field 'memory'"),
        ([gpu(0, "a"), gpu(0, "b")], "share index 0"),
        ([gpu(0, "a"), gpu(1, "GPU-a")], "share uuid 'GPU-a'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_static_inventory_errors_name_the_entry_and_field(entries, message):
    with pytest.raises(InventoryError, match=message):
        parse_static_inventory(entries)
