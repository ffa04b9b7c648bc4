"""GPU-aware culling: stop servers whose GPUs stay idle, or that ran past their limit.

``policy`` holds the rules (pure), ``usage`` reads NVML and places GPU processes in
containers, ``records`` is the stops file, ``clocks`` what each server's rules say now (for
the dashboard's "My GPU" page), ``app`` the hub-managed service built on jupyterhub-idle-culler.
"""

from .policy import GPU_IDLE, MAX_RUNTIME, CullRules, GPUServer, IdleClocks, UnitReading, Verdict

__all__ = ["GPU_IDLE", "MAX_RUNTIME", "CullRules", "GPUServer", "IdleClocks", "UnitReading", "Verdict"]
