import pytest

from gpuspawner.traits import format_bytes, parse_bytes

GiB = 1024**3


@pytest.mark.parametrize(
    "value, expected",
    [
        (1024, 1024),
        ("16G", 16 * GiB),
        ("16GB", 16 * GiB),
        ("16GiB", 16 * GiB),
        (" 512M ", 512 * 1024**2),
        ("1.5G", int(1.5 * GiB)),
        ("2T", 2 * 1024**4),
    ],
    ids=str,
)
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", ["", "G", "16X", "sixteen", True, None, "-1G", [1]], ids=repr)
def test_parse_bytes_rejects(value):
    with pytest.raises(ValueError, match="byte size"):
        parse_bytes(value)


@pytest.mark.parametrize(
    "size, text", [(80 * GiB, "80 GiB"), (int(1.5 * GiB), "1.5 GiB"), (512, "512 B"), (64 * 1024**2, "64 MiB")]
)
def test_format_bytes(size, text):
    assert format_bytes(size) == text


@pytest.mark.parametrize(
    "size, binary, decimal",
    [
        (17179869184, "16 GiB", "17.2 GB"),
        (100_000_000, "95.4 MiB", "100 MB"),
        (3_100_000_000, "2.9 GiB", "3.1 GB"),
        (512, "512 B", "512 B"),
    ],
    ids=["16GiB", "100MB", "3.1GB", "bytes"],
)
def test_one_byte_formatter_for_memory_and_downloads(size, binary, decimal):
    assert format_bytes(size) == binary
    assert format_bytes(size, decimal=True) == decimal
