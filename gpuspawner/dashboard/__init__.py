"""The GPU dashboard: a hub-managed JupyterHub service with a page, a JSON API and Prometheus metrics.

``model`` builds the view (pure), ``sources`` reads Docker, NVML, the hub and
the denials file, ``page`` and ``metrics`` render the view, ``app`` serves it.
"""

from .app import READ_GROUPS_SCOPE, READ_SCOPE, STOP_SCOPE, GPUDashboard, main
from .model import DashboardView, Reach, build_view, reach_from_scopes, restrict

__all__ = [
    "READ_GROUPS_SCOPE",
    "READ_SCOPE",
    "STOP_SCOPE",
    "DashboardView",
    "GPUDashboard",
    "Reach",
    "build_view",
    "main",
    "reach_from_scopes",
    "restrict",
]
