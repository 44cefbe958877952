"""The GPU's energy counter, power limit and SM clock through NVML (libnvidia-ml, which every NVIDIA driver
installs), called with ctypes so that the benches need no extra package. On an H200 the forward runs at its
power limit (docs/benchmarks.md, bench_attention_context.py), so joules per forward say what a faster kernel
can still buy there.

    gpu = Nvml(torch.cuda.current_device())
    if gpu.why is None:
        j0 = gpu.energy_j(); ...; joules = gpu.energy_j() - j0
"""
from __future__ import annotations

import ctypes


class Nvml:
    def __init__(self, cuda_index: int = 0):
        self.why: str | None = None
        self.note = ""
        self._lib = self._dev = None
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError as e:
            self.why = f"libnvidia-ml.so.1 not loadable ({e})"
            return
        try:
            if lib.nvmlInit_v2() != 0:
                self.why = "nvmlInit_v2 failed"
                return
            dev = ctypes.c_void_p()
            bus = _pci_bus_id(cuda_index)
            found = bus is not None and lib.nvmlDeviceGetHandleByPciBusId_v2(bus.encode(), ctypes.byref(dev)) == 0
            if not found:
                if lib.nvmlDeviceGetHandleByIndex_v2(cuda_index, ctypes.byref(dev)) != 0:
                    self.why = f"no NVML device for CUDA device {cuda_index}"
                    return
                # right unless CUDA_VISIBLE_DEVICES reorders the GPUs
                self.note = f"NVML device {cuda_index} taken by index (no PCI bus id from torch)"
        except AttributeError as e:  # a driver library without these entry points
            self.why = f"libnvidia-ml.so.1 lacks {e}"
            return
        self._lib, self._dev = lib, dev

    def _read(self, fn: str, ctype, *args):
        if self._lib is None or not hasattr(self._lib, fn):
            return None
        out = ctype()
        return out.value if getattr(self._lib, fn)(self._dev, *args, ctypes.byref(out)) == 0 else None

    def energy_j(self) -> float | None:
        """Joules since the driver loaded (NVML counts millijoules; Volta and later)."""
        mj = self._read("nvmlDeviceGetTotalEnergyConsumption", ctypes.c_ulonglong)
        return None if mj is None else mj / 1000.0

    def power_limit_w(self) -> float | None:
        mw = self._read("nvmlDeviceGetEnforcedPowerLimit", ctypes.c_uint)
        return None if mw is None else mw / 1000.0


def _pci_bus_id(cuda_index: int) -> str | None:
    """The PCI bus id torch reports for a CUDA device (CUDA and NVML number devices differently when
    CUDA_VISIBLE_DEVICES reorders them)."""
    try:
        import torch
        p = torch.cuda.get_device_properties(cuda_index)
        return f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0"
    except Exception:  # an older torch without the fields, or no GPU: fall back to the index
        return None
