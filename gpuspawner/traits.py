"""Trait types of the lab's configuration: its quantities (``quantities.py``) as traitlets."""

from __future__ import annotations

from traitlets import TraitError, TraitType

from .quantities import (
    MIG_PROFILE,
    format_bytes,
    format_duration,
    is_mig_profile,
    parse_bytes,
    parse_duration,
)

__all__ = [
    "MIG_PROFILE",
    "Duration",
    "format_bytes",
    "format_duration",
    "is_mig_profile",
    "parse_bytes",
    "parse_duration",
]


class Duration(TraitType):
    """A trait holding seconds (float), written as 1800, "30m", "4h" or "1h30m"; 0 means off."""

    default_value = 0.0
    info_text = 'a duration: seconds, or a number with d, h, m or s such as "30m"'

    def validate(self, obj, value):
        try:
            return parse_duration(value)
        except ValueError as e:
            raise TraitError(f"{self.name}: {e}") from None
