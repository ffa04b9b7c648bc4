"""The spawn page: one card per profile a user may choose, with what is free now.

Rendered into JupyterHub's own ``spawn.html`` form (Bootstrap 5), autoescaped,
and usable without JavaScript: a plain radio choice and JupyterHub's Start button.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import jinja2

from .gpus import Ledger, NoCapacity
from .gpus.allocation import gpu_noun
from .profiles import Profile

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
)


def render_profile_cards(
    profiles: tuple[Profile, ...],
    ledger: Ledger,
    can_fit: Callable[[Profile], NoCapacity | None],
    chosen: str | None,
    *,
    node: str | None = None,
    stopped: str = "",
    limits: Mapping[str, str] | None = None,
    waits: Mapping[str, str] | None = None,
) -> str:
    """The cards, each with its availability or why it cannot start now.

    ``can_fit``: why this user's server cannot start a profile now (its GPUs, or the
    CPU and memory caps), or None (the spawner's answer); ``node``: count only that node's units (a Swarm home's).
    Pre-selects the user's last choice, else the default, among those that can start now.
    ``stopped``: why the GPU culler stopped this server last time, told above the cards;
    ``limits``: each profile's culling rules in words, by slug; ``waits``: by slug, the profiles whose
    start would wait in line now (every unit it fits in use, and it has a ``queue_timeout``), in words:
    their cards stay selectable.
    """
    choices = []
    for p in profiles:
        free, total = ledger.availability(p.gpu_request, node=node)
        refusal = can_fit(p)
        wait = (waits or {}).get(p.slug, "")
        if wait:
            refusal = None
        fitting = [u for u in ledger.inventory if p.gpu_request.matches(u)]
        if p.shared_gpu:  # counted in slots, as students take them: "3 free slots on 2 shared Tesla T4"
            free = free_slots(ledger, [u for u in fitting if node is None or u.node == node])
        choices.append(
            {
                "profile": p,
                "free": free,
                "total": total,
                "unavailable": refusal.message if refusal else "",
                "noun": _availability_noun(p, fitting),
                "limits": (limits or {}).get(p.slug, ""),
                "waits": wait,
            }
        )
    startable = [c for c in choices if not c["unavailable"]]
    for wanted in (chosen, next((p.slug for p in profiles if p.default), None)):
        preselect = next((c for c in startable if c["profile"].slug == wanted), None)
        if preselect:
            break
    else:
        preselect = startable[0] if startable else None
    for c in choices:
        c["checked"] = c is preselect
    return _templates.get_template("profile_form.html").render(choices=choices, stopped=stopped)


def free_slots(ledger: Ledger, units: list) -> int:
    """Slots free on ``units`` for a shared server: ``share_limit`` on a unit nobody holds, the rest of
    them on one shared by fewer, none on a unit held whole or set aside."""
    limit = ledger.policy.share_limit
    free = 0
    for unit in units:
        if unit.id in ledger.quarantined:
            continue
        holders = ledger.holders_of(unit.id)
        if all(a.shared for a in holders):
            free += max(limit - len(holders), 0)
    return free


def _availability_noun(profile: Profile, fitting: list) -> str:
    """What '3 of 4 ...' counts on the spawn page: '3 of 4 NVIDIA A100 free now'."""
    names = {unit.name for unit in fitting}
    model = names.pop() if len(names) == 1 else ""
    if model.lower().endswith(" gpu"):  # "3 of 4 simulated GPUs", not "3 of 4 simulated GPU"
        model = gpu_noun(model, plural=len(fitting) != 1)
    if profile.shared_gpu:
        return model or ("GPU" if len(fitting) == 1 else "GPUs")  # "3 free slots now on 2 shared Tesla T4"
    if profile.gpu_kind == "mig" or (fitting and all(u.is_mig for u in fitting)):
        kinds = {u.mig_profile for u in fitting}
        return f"MIG {kinds.pop()} instances" if len(kinds) == 1 else "MIG instances"
    return model or ("GPUs" if profile.gpu_kind == "gpu" else "units")
