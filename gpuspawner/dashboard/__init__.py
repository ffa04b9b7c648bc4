"""The GPU dashboard: a hub-managed JupyterHub service with a page, a JSON API and Prometheus metrics.

``model`` builds the view (pure), ``sources`` reads Docker, NVML, the hub and
the denials file, ``page`` and ``metrics`` render the view, ``app`` serves it.
"""

from .app import READ_SCOPE, STOP_SCOPE, GPUDashboard, main
from .model import DashboardView, build_view

__all__ = ["READ_SCOPE", "STOP_SCOPE", "DashboardView", "GPUDashboard", "build_view", "main"]
