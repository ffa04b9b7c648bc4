"""The labels on every gpuspawner container: the record a restarted hub, the
``gpuspawner status`` command and the dashboard all read the GPU ledger from."""

from __future__ import annotations

from collections.abc import Iterable

from .gpus.allocation import Ledger, holder_key

USER = "gpuspawner.user"
SERVER = "gpuspawner.server"
PROFILE = "gpuspawner.profile"
GPUS = "gpuspawner.gpus"  # comma-separated unit ids (GPU-... or MIG-...); '' when none
SHARED = "gpuspawner.shared"  # "1" when the units are shared slots
GROUPS = "gpuspawner.groups"  # the user's groups at spawn time, for group quotas
IMAGE_DIGEST = "gpuspawner.image-digest"  # the sha256 of the image actually run
# The culling rules the server started with, in seconds ('' or 0: off), for the GPU culler.
GPU_IDLE_TIMEOUT = "gpuspawner.gpu-idle-timeout"
MAX_RUNTIME = "gpuspawner.max-runtime"
JUPYTER_ACTIVITY_GRACE = "gpuspawner.jupyter-activity-grace"


def _split(value: str) -> list[str]:
    return [item for item in (value or "").split(",") if item]


def adopt_containers(ledger: Ledger, containers: Iterable[dict]) -> list[str]:
    """Record in ``ledger`` what running containers hold, from their labels.

    ``containers`` are docker-py ``APIClient.containers()`` entries (each with
    ``Labels``). Returns one warning per container holding units this inventory
    does not know.
    """
    warnings = []
    for container in containers:
        labels = container.get("Labels") or {}
        unit_ids = _split(labels.get(GPUS, ""))
        if not unit_ids or USER not in labels:
            continue
        holder = holder_key(labels[USER], labels.get(SERVER, ""))
        unknown = ledger.adopt(
            holder,
            unit_ids,
            user=labels[USER],
            shared=labels.get(SHARED) == "1",
            groups=_split(labels.get(GROUPS, "")),
        )
        if unknown:
            warnings.append(f"server {holder} holds units not in this inventory: {','.join(unknown)}")
    return warnings
