"""The dashboard's view as Prometheus metrics, in a registry of its own (not the process default).

Series that depend on a source are left out while that source cannot be read:
``gpuspawner_dashboard_source_up`` says which, so an alert fires instead of a
graph showing old numbers as current.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..usage.budgets import Standing
from .model import DashboardView

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# ``node``: the Swarm node a unit is on ('' on one host), so that per-node graphs
# and sums work, and ``gpu_index`` (which repeats from node to node) stays unambiguous.
_UNIT = ["unit", "gpu_index", "model", "mig_profile", "node"]


def _unit_labels(u) -> list[str]:
    return [u.id, str(u.index), u.model, u.mig_profile, u.node or ""]


class _ViewCollector:
    def __init__(self, view: DashboardView):
        self.view = view

    def collect(self):
        v = self.view
        up = GaugeMetricFamily(
            "gpuspawner_dashboard_source_up", "1 when the dashboard could read the source now", labels=["source"]
        )
        for source, error in (
            ("docker", v.docker_error),
            ("nvml", v.nvml_error),
            ("hub", v.hub_error),
            ("denials", v.denials_error),
            ("stops", v.stops_error),
        ):
            up.add_metric([source], 0 if error else 1)
        yield up
        yield GaugeMetricFamily(
            "gpuspawner_units", "GPU units (whole GPUs and MIG instances) the hub hands out", value=v.totals.units
        )
        yield GaugeMetricFamily(
            "gpuspawner_units_quarantined",
            "Units set aside after failed starts, until an admin puts them back",
            value=v.totals.quarantined,
        )
        if v.totals.free is not None:
            yield GaugeMetricFamily("gpuspawner_units_free", "Units no server holds", value=v.totals.free)
            yield GaugeMetricFamily(
                "gpuspawner_units_assigned", "Units held by at least one server", value=v.totals.used + v.totals.shared
            )
            yield GaugeMetricFamily("gpuspawner_units_shared", "Units held as shared slots", value=v.totals.shared)
            assigned = GaugeMetricFamily(
                "gpuspawner_unit_assigned",
                "1 per server holding the unit (user, server, profile); 0 with empty user for a free unit",
                labels=_UNIT + ["user", "server", "profile"],
            )
            for u in v.units:
                for h in u.holders:
                    assigned.add_metric(_unit_labels(u) + [h.user, h.server, h.profile], 1)
                if not u.holders:
                    assigned.add_metric(_unit_labels(u) + ["", "", ""], 0)
            yield assigned
        measured = [u for u in v.units if u.usage is not None]
        if measured:
            util = GaugeMetricFamily(
                "gpuspawner_unit_utilization_percent", "NVML GPU utilisation (absent for MIG instances)", labels=_UNIT
            )
            used = GaugeMetricFamily("gpuspawner_unit_memory_used_bytes", "NVML memory used", labels=_UNIT)
            total = GaugeMetricFamily("gpuspawner_unit_memory_total_bytes", "NVML memory total", labels=_UNIT)
            temp = GaugeMetricFamily(
                "gpuspawner_unit_temperature_celsius", "NVML temperature of the unit's GPU", labels=_UNIT
            )
            for u in measured:
                if u.usage.utilization_gpu is not None:
                    util.add_metric(_unit_labels(u), u.usage.utilization_gpu)
                used.add_metric(_unit_labels(u), u.usage.memory_used)
                total.add_metric(_unit_labels(u), u.usage.memory_total)
                if u.usage.temperature is not None:
                    temp.add_metric(_unit_labels(u), u.usage.temperature)
            yield from (util, used, total, temp)
        if not v.denials_error:
            denials = CounterMetricFamily(
                "gpuspawner_denials", "GPU spawns refused, by reason (from denials_file)", labels=["reason"]
            )
            for reason, count in sorted(v.denials_by_reason.items()):
                denials.add_metric([reason], count)
            yield denials
        if not v.stops_error:
            stops = CounterMetricFamily(
                "gpuspawner_culled",
                "GPU servers stopped by the GPU culler, by reason (gpu_idle, max_runtime, orphan; from stops_file)",
                labels=["reason"],
            )
            for reason, count in sorted(v.stops_by_reason.items()):
                stops.add_metric([reason], count)
            yield stops


#: A budget's series: whose (``kind`` user, group or each user of an every-user budget, and
#: ``subject``), on which profile ('' for all GPU profiles), per week or term.
_BUDGET = ["kind", "subject", "profile", "period"]


class _BudgetCollector:
    """Where each GPU-hour budget stands (``usage.budgets.budget_use``): its hours and those used."""

    def __init__(self, budgets: Sequence[tuple[str, Standing]]):
        self.budgets = budgets

    def collect(self):
        limit = GaugeMetricFamily(
            "gpuspawner_budget_gpu_hours", "A GPU-hour budget's hours in its current period", labels=_BUDGET
        )
        used = GaugeMetricFamily(
            "gpuspawner_budget_used_gpu_hours", "GPU-hours used of a budget in its current period", labels=_BUDGET
        )
        for subject, standing in self.budgets:
            b = standing.budget
            kind = "user" if b.user is not None else "group" if b.group is not None else "each_user"
            labels = [kind, subject, b.profile or "", "week" if b.per() == "this week" else "term"]
            limit.add_metric(labels, float(b.gpu_hours))
            used.add_metric(labels, float(standing.used) / 3600)
        yield from (limit, used)


def render_metrics(view: DashboardView, budgets: Sequence[tuple[str, Standing]] | None = None) -> bytes:
    """The Prometheus text exposition of ``view``, and of where the GPU-hour budgets stand (``budgets``;
    None: not read, left out)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ViewCollector(view))
    if budgets is not None:
        registry.register(_BudgetCollector(budgets))
    return generate_latest(registry)
