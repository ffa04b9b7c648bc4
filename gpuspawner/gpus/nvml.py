"""Reading the host's whole GPUs through NVML (NVIDIA's ``nvidia-ml-py``).

The one seam to the driver: everything above takes the ``GPU`` values it
returns. MIG instances and the driver's CUDA version come with full discovery.
"""

from __future__ import annotations

from types import ModuleType

from .inventory import GPU


class NVMLUnavailable(RuntimeError):
    """No NVIDIA driver answered (no GPU, no driver, or no libnvidia-ml)."""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_gpus(nvml: ModuleType | None = None) -> tuple[GPU, ...]:
    """The host's GPUs by index, uuid, name and memory; raises ``NVMLUnavailable``.

    ``nvml`` is the ``pynvml`` module, or a stand-in with the same functions in tests.
    """
    if nvml is None:
        import pynvml as nvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise NVMLUnavailable(f"NVML did not initialise: {e}") from None
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                GPU(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        return tuple(gpus)
    finally:
        nvml.nvmlShutdown()


def read_gpus_as_config(nvml: ModuleType | None = None) -> list[dict]:
    """``read_gpus`` in the shape of ``c.GPUSpawner.gpus``."""
    return [
        {"index": g.index, "uuid": g.uuid, "name": g.name, "memory": g.memory}
        for g in read_gpus(nvml)
    ]
