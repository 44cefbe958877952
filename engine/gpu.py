"""Read the GPU: its name, compute capability and free memory (`detect_gpu`), or ZeroGPU's (`zerogpu_gpu`).

Every other module takes the GPU as an input (`GpuInfo`, or None for no GPU), so choices made for a GPU
can be tested for every GPU class on a CPU machine. What runs on a capability is the kernels' answer
(engine.kernels), not a table here; GENERATIONS only names the GPUs of each generation for sentences.
"""
from __future__ import annotations

from dataclasses import dataclass

from .kernels import formats_for

GB = 1024**3

# GPU generations by the lowest compute capability of each (names only: what runs where is the kernels')
GENERATIONS = (((12, 0), "blackwell", "RTX 50, RTX PRO"), ((10, 0), "blackwell", "B200, B300"),
               ((9, 0), "hopper", "H100/H200"), ((8, 9), "ada", "RTX 40, L40S"),
               ((8, 0), "ampere", "A100, RTX 30"), ((7, 5), "turing", "T4, RTX 20"), ((7, 0), "volta", "V100"))


@dataclass(frozen=True)
class GpuInfo:
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int

    @property
    def label(self) -> str:
        major, minor = self.capability
        return f"{self.name} (sm{major}{minor}, {self.free_bytes / GB:.0f} of {self.total_bytes / GB:.0f} GB free)"

    @property
    def has_fp8(self) -> bool:
        """Some kernel runs FP8 on tensor cores made for it here (engine.kernels' registry)."""
        return "fp8" in formats_for(self.capability, native=True)

    @property
    def family(self) -> str:
        for low, family, _ in GENERATIONS:
            if self.capability >= low:
                return family if low >= (8, 0) else "pre-ampere"
        return "pre-ampere"


def detect_gpu(index: int = 0) -> GpuInfo | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(index)
    return GpuInfo(torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)), total, free)


def zerogpu_gpu() -> GpuInfo | None:
    """On a ZeroGPU Space the GPU is attached only inside `spaces.GPU` calls, so at start-up CUDA looks
    absent. The platform says so in SPACES_ZERO_GPU; its GPUs are H200 slices (Hopper, about 70 GB)."""
    import os

    if not os.environ.get("SPACES_ZERO_GPU"):
        return None
    return GpuInfo("ZeroGPU (H200 slice)", (9, 0), 70 * GB, 70 * GB)
