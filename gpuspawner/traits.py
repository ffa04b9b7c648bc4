"""Value types of the lab's configuration, parsed once.

A byte size ("16G", "80GiB", 17179869184) and a CPU count are written by
admins in many ways; everything past this module sees plain numbers.
"""

from __future__ import annotations

import re

from jupyterhub.traitlets import ByteSpecification
from traitlets import TraitError

_BYTES = ByteSpecification()


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte size: an int (bytes) or a number with K, M, G or T (powers of 1024).

    ``"16G"``, ``"16GB"`` and ``"16GiB"`` all mean 16 x 1024**3 bytes.
    Raises ``ValueError`` with the accepted forms when the value is not a size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a byte size")
    if isinstance(value, str):
        text = value.strip()
        for unit_suffix in ("iB", "B"):
            if text.endswith(unit_suffix) and len(text) > len(unit_suffix):
                text = text[: -len(unit_suffix)]
                break
        value = text
    try:
        size = _BYTES.validate(None, value)
    except (TraitError, TypeError) as e:
        raise ValueError(
            f"{value!r} is not a byte size: use a number of bytes"
            " or a number with K, M, G or T, such as '16G'"
        ) from e
    if size < 0:
        raise ValueError(f"{value!r} is not a byte size: it is negative")
    return size


def format_bytes(size: int) -> str:
    """Format a byte size for people: 17179869184 -> '16 GiB'."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = 1024 ** ("KMGT".index(unit[0]) + 1)
        if size >= scale:
            number = size / scale
            return f"{number:.0f} {unit}" if number == int(number) else f"{number:.1f} {unit}"
    return f"{size} B"


#: A MIG profile as NVML names it: "1g.10gb", "3g.40gb", "1c.3g.20gb", "1g.10gb+me".
MIG_PROFILE = re.compile(r"(\d+c\.)?\d+g\.\d+gb([+-][a-z.]+)?")


def is_mig_profile(value: object) -> bool:
    return isinstance(value, str) and MIG_PROFILE.fullmatch(value) is not None
