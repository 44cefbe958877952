"""MXFP8, NVFP4 and MXFP4 on Blackwell (sm100, sm120): torch's native block-scaled GEMM, F.scaled_mm.

The operands, as torch's cuBLASLt path takes them (torch/_meta_registrations.py, its test helpers):
  A      the activation [M, K] row-major: float8_e4m3fn, or float4_e2m1fn_x2 [M, K/2] with element 2j
         in the low nibble (our packing);
  B      the weight [N, K] row-major, which is the column-major [K, N] operand: `weight.t()`;
  scales [rows, K/block] in the 128x4 tile layout of engine.formats.swizzle (SWIZZLE_32_4_4), rows
         padded to 128 and blocks to 4: e8m0 per 32 (BlockWise1x32) or e4m3 per 16 (BlockWise1x16).
NVFP4 adds one fp32 per operand (TensorWise) that torch multiplies into the product. Ours divides
(value = code * block_scale / global_scale), so each operand passes 1 / its global scale.

The activation is quantized by triton_mx.quantize_mx: one pass that writes the elements and the
swizzled scales, bit for bit the format's own quantizer (the one the reference uses), so the two
compute the same quantized product and differ only in accumulation order. Without Triton (or off
CUDA) the format's torch quantizer runs instead: the same values, several passes.

No Blackwell GPU was at hand when this was written, so each (format, GPU) is verified at first use: a
small GEMM against the reference. If it raises or disagrees, the kernel declines with the reason and a
warning, and the emulation (triton_mx) runs instead.
"""
from __future__ import annotations

import logging

import torch

from ..formats import FORMATS, get_format
from ..formats.swizzle import TILE_ROWS, roundup, swizzle
from . import triton_mx
from .base import Kernel, device_label, layer_class, register_kernel
from .eightbit import MAX_ROW, layer_cache, pad_rows
from .emulated import reference_linear

try:
    from torch.nn.functional import ScalingType, SwizzleType, scaled_mm
except ImportError:  # a torch without the public scaled-GEMM API
    ScalingType = SwizzleType = scaled_mm = None

log = logging.getLogger("engine.kernels")

# MXFP8, MXFP4, NVFP4: the block-scaled formats of the element types torch's scaled_mm takes
BLOCK_SCALED = frozenset(n for n, f in FORMATS.items() if f.block_scaled and f.element in ("e4m3", "e2m1"))
BLACKWELL_MAJORS = (10, 12)  # sm100/sm103 (B200, B300) and sm120 (RTX 50, RTX PRO): block-scaled MMA
CHECK_SHAPE = (200, 256, 256)  # M, K, N of the first-use check; M is not a multiple of 128 on purpose
CHECK_TOLERANCE = 1e-2  # same quantized product on both sides: only summation order and bf16 output differ
_verdicts: dict[tuple[str, int], str | None] = {}  # (format, device index) -> reason, or None when verified


def _missing_api(fmt: str) -> str | None:
    if scaled_mm is None:
        return f"torch {torch.__version__} has no torch.nn.functional.scaled_mm; a newer torch has it"
    f = get_format(fmt)
    need = ["float8_e8m0fnu"] if f.scale_kind == "e8m0" else []
    need += ["float4_e2m1fn_x2"] if f.element == "e2m1" else []
    missing = [f"torch.{d}" for d in need if not hasattr(torch, d)]
    recipe = f"BlockWise1x{f.act_block[1]}"
    if not hasattr(ScalingType, recipe) or not hasattr(SwizzleType, "SWIZZLE_32_4_4"):
        missing.append(f"ScalingType.{recipe} with SwizzleType.SWIZZLE_32_4_4")
    return f"torch {torch.__version__} lacks {', '.join(missing)}" if missing else None


def _recipe(fmt: str):
    """(scale recipe, swizzle) of one operand; NVFP4's second entry is the per-tensor fp32 scale."""
    f = get_format(fmt)
    block = getattr(ScalingType, f"BlockWise1x{f.act_block[1]}")
    if f.has_global_scale:
        return [block, ScalingType.TensorWise], [SwizzleType.SWIZZLE_32_4_4, SwizzleType.NO_SWIZZLE]
    return block, SwizzleType.SWIZZLE_32_4_4


def _operand(fmt: str, data: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor | None,
             swizzled: bool = False):
    """A quantized [rows, K] tensor as scaled_mm reads it: elements in the GEMM dtype, scales swizzled
    (here, unless they already are).

    The views also accept LightX2V's raw-byte storage (uint8 elements or scales)."""
    f = get_format(fmt)
    if f.element == "e4m3":
        data = data.view(torch.float8_e4m3fn)
    else:
        data = data.view(torch.uint8).view(torch.float4_e2m1fn_x2)
    scales = (scale if swizzled else swizzle(scale)).view(f.scale_dtype).reshape(-1)  # contiguous, as torch requires
    if f.has_global_scale:
        scales = [scales, global_scale.reshape(1).to(torch.float32).reciprocal()]
    return data, scales


class TorchMXKernel(Kernel):
    name = "torch_mx"
    formats = BLOCK_SCALED
    priority = 20  # above triton_mx (5): on Blackwell the native GEMM replaces the emulation
    checked_at_first_use = True  # see `verify`: no Blackwell GPU was at hand when it was written

    def can_implement(self, fmt, capability, shape=None):
        if fmt not in self.formats:
            return f"does not implement {fmt}"
        if capability is None:
            return "needs a CUDA GPU; this is the CPU"
        if capability[0] not in BLACKWELL_MAJORS:
            return (f"native block-scaled GEMMs need a Blackwell GPU (compute capability 10.x or 12.x); "
                    f"this GPU is {capability[0]}.{capability[1]}")
        why = _missing_api(fmt)
        if why:
            return why
        if shape is not None and (shape[0] % 32 or shape[1] % 16):
            # K: 16-byte rows for the packed fp4 operand, and whole MX blocks; N: cuBLAS's alignment
            return (f"the native GEMM needs in_features a multiple of 32 and out_features a multiple of 16; "
                    f"this layer is {shape[0]}->{shape[1]}")
        return None

    def unavailable(self, fmt, device, layer=None):
        why = super().unavailable(fmt, device, layer)
        if why:
            return why
        key = (fmt, device.index if device.index is not None else torch.cuda.current_device())
        if key not in _verdicts:
            _verdicts[key] = verify(self, fmt, device)
        return _verdicts[key]

    def prepare(self, layer):
        cache = layer_cache(layer)
        w, w_scales = _operand(layer.fmt, layer.weight, layer.weight_scale,
                               getattr(layer, "weight_global_scale", None))
        cache["w"], cache["w_scales"] = w.t(), w_scales  # [K, N] column-major: no copy
        cache["bias"] = layer.bias.detach().to(torch.bfloat16) if layer.bias is not None else None

    def forward(self, layer, x):
        fmt, m = layer.fmt, x.shape[0]
        cache = layer_cache(layer)
        if m == 0:
            return x.new_zeros((0, layer.out_features))
        # The swizzled scales cover whole 128-row tiles; padding A to match keeps every tile whole
        # (torch's check only asks it of the scales, but no sm100/sm120 run has confirmed a partial tile)
        if _fused_quantizer(x):
            q = triton_mx.quantize_mx(x, fmt, layer.static_input_scale(), pad_rows=TILE_ROWS, swizzled=True)
            a, a_scales = _operand(fmt, q.data, q.scale, q.global_scale, swizzled=True)
        else:
            q = get_format(fmt).quantize_activation(x, layer.static_input_scale())
            a, a_scales = _operand(fmt, pad_rows(q.data, roundup(m, TILE_ROWS)), q.scale, q.global_scale)
        recipe, swz = _recipe(fmt)
        y = scaled_mm(a, cache["w"], a_scales, recipe, cache["w_scales"], recipe,
                      swizzle_a=swz, swizzle_b=swz, output_dtype=torch.bfloat16)[:m]
        if cache["bias"] is not None:
            # added here rather than in cuBLAS's epilogue: one path, whatever the scaling mode accepts
            y = y + cache["bias"]
        return y.to(x.dtype)


def _fused_quantizer(x: torch.Tensor) -> bool:
    # rows longer than MAX_ROW would not fit one program's registers
    return triton_mx.triton is not None and x.is_cuda and x.shape[1] <= MAX_ROW


@torch.compiler.disable  # a one-off eager check, even when the first call is under torch.compile
def verify(kernel: TorchMXKernel, fmt: str, device: torch.device) -> str | None:
    """Run a small native GEMM on `device` and compare it with the reference: None when they agree,
    else the reason the kernel must not be used there."""
    from torch import nn

    m, k, n = CHECK_SHAPE
    gen = torch.Generator().manual_seed(20250)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) / k ** 0.5)
        lin.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    x = torch.randn(m, k, generator=gen)
    x[:, :3] *= 30  # outlier channels, as real activations have
    where = device_label(device)
    try:
        layer = layer_class().from_linear(lin, fmt, kernel=kernel.name).to(device)
        x = x.to(device, torch.bfloat16)
        with torch.no_grad():
            want = reference_linear(layer, x).float()
            kernel.prepare(layer)
            got = kernel.forward(layer, x).float()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        err = ((got - want).norm() / want.norm()).item()
    except NotImplementedError as e:  # torch says this build or GPU has no such GEMM: expected, not a bug
        why = (f"torch {torch.__version__} has no native {fmt.upper()} GEMM on {where} ({_first_line(e)}); "
               "running the emulation instead")
        log.info("torch_mx: %s", why)
        return why
    except Exception as e:  # noqa: BLE001  (any failure means: do not use it here)
        why = (f"the native {fmt.upper()} GEMM failed on {where} ({type(e).__name__}: {_first_line(e)}); "
               "running the emulation instead. Please report this")
        log.warning("torch_mx: %s", why)
        return why
    if not err <= CHECK_TOLERANCE:  # also catches NaN
        why = (f"the native {fmt.upper()} GEMM disagreed with the reference on {where} (rel. error {err:.3g}); "
               "running the emulation instead. Please report this")
        log.warning("torch_mx: %s", why)
        return why
    log.info("torch_mx: native %s GEMM verified against the reference on %s (rel. error %.2g)",
             fmt.upper(), where, err)
    return None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


register_kernel(TorchMXKernel())
