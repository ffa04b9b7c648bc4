"""The NVML seam: a stand-in module here; the real driver where there is one."""

from types import SimpleNamespace

import pytest

from gpuspawner.gpus.nvml import NVMLUnavailable, read_gpus, read_gpus_as_config


class FakeNVML:
    class NVMLError(Exception):
        pass

    def __init__(self, devices=(), fail_init=False):
        self.devices = devices
        self.fail_init = fail_init
        self.shut_down = False

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetName(self, h):
        return h["name"]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h["memory"], used=0, free=h["memory"])


def test_reads_whole_gpus_and_shuts_down():
    fake = FakeNVML(
        [
            {"uuid": "GPU-aaa", "name": b"NVIDIA H100 80GB HBM3", "memory": 80 * 1024**3},
            {"uuid": b"GPU-bbb", "name": "NVIDIA H100 80GB HBM3", "memory": 80 * 1024**3},
        ]
    )
    gpus = read_gpus(fake)
    assert [(g.index, g.uuid, g.name) for g in gpus] == [
        (0, "GPU-aaa", "NVIDIA H100 80GB HBM3"),
        (1, "GPU-bbb", "NVIDIA H100 80GB HBM3"),
    ]
    assert fake.shut_down
    assert read_gpus_as_config(fake)[1]["memory"] == 80 * 1024**3


def test_no_driver_is_a_clear_error():
    with pytest.raises(NVMLUnavailable, match="Driver Not Loaded"):
        read_gpus(FakeNVML(fail_init=True))


def _nvml_answers() -> bool:
    try:
        read_gpus()
    except NVMLUnavailable:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _nvml_answers(), reason="no NVIDIA driver answers NVML on this machine")
def test_real_driver_inventory():
    gpus = read_gpus()
    assert gpus, "NVML initialised but reported no GPU"
    for gpu in gpus:
        assert gpu.uuid.startswith("GPU-") and gpu.memory > 0 and gpu.name
