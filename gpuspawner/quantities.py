"""The lab's quantities as people write them, parsed once: byte sizes, durations, MIG profile names.

A byte size ("16G", "80GiB", 17179869184) and a duration ("30m", "1h30m", 90)
are written by admins in many ways; everything past this module sees plain
numbers. Pure: importing it imports no JupyterHub, Docker or traitlets, so the
NVML seam, the allocation core and the culler's rules that use it stay light.
"""

from __future__ import annotations

import re


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
    # JupyterHub's own parser of mem_limit, so that a profile reads sizes as the hub does.
    from jupyterhub.traitlets import ByteSpecification
    from traitlets import TraitError

    try:
        size = ByteSpecification().validate(None, value)
    except (TraitError, TypeError) as e:
        raise ValueError(
            f"{value!r} is not a byte size: use a number of bytes or a number with K, M, G or T, such as '16G'"
        ) from e
    if size < 0:
        raise ValueError(f"{value!r} is not a byte size: it is negative")
    return size


def format_bytes(size: int, *, decimal: bool = False) -> str:
    """Format a byte size for people: 17179869184 -> '16 GiB'.

    ``decimal``: powers of 1000, as ``docker pull`` counts (3100000000 -> '3.1 GB').
    """
    base, units = (1000, ("TB", "GB", "MB", "kB")) if decimal else (1024, ("TiB", "GiB", "MiB", "KiB"))
    for power, unit in zip((4, 3, 2, 1), units):
        scale = base**power
        if size >= scale:
            number = size / scale
            return f"{number:.0f} {unit}" if number == int(number) else f"{number:.1f} {unit}"
    return f"{size} B"


#: A MIG profile as NVML names it: "1g.10gb", "3g.40gb", "1c.3g.20gb", "1g.10gb+me".
MIG_PROFILE = re.compile(r"(\d+c\.)?\d+g\.\d+gb([+-][a-z.]+)?")


def is_mig_profile(value: object) -> bool:
    return isinstance(value, str) and MIG_PROFILE.fullmatch(value) is not None


# --- durations: "30m", "4h", "1h30m", 90 (seconds) ---------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: int | float | str) -> float:
    """Parse a duration into seconds: a number of seconds, or ``"30m"``, ``"4h"``, ``"1h30m"``, ``"2d"``.

    0 means "never" wherever a duration switches something on. Raises ``ValueError``
    with the accepted forms when the value is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and _DURATION_PART.sub("", text) == "" and _DURATION_PART.match(text):
            seconds = sum(float(n) * _SECONDS[u.lower()] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"{value!r} is not a duration: use seconds, or a number with d, h, m or s, such as '30m'")
    else:
        raise ValueError(f"{value!r} is not a duration: use seconds, or a number with d, h, m or s, such as '30m'")
    if seconds < 0:
        raise ValueError(f"{value!r} is not a duration: it is negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Say a duration as people do: 1800 -> '30 minutes', 5400 -> '1 hour 30 minutes'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} second{'s' * (seconds != 1)}"
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {name}{'s' * (count != 1)}")
    return " ".join(parts[:2])
