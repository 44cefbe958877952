"""Element codecs: float32 values already divided by their scale -> stored elements, and back."""
import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
E2M1_MAX = 6.0
# Magnitudes of the eight e2m1 codes; the code's low bit is its mantissa bit.
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_MIDPOINTS = (E2M1_VALUES[1:] + E2M1_VALUES[:-1]) / 2


def encode_int8(t: torch.Tensor) -> torch.Tensor:
    # torch.round rounds half to even; symmetric range keeps -128 unused.
    return torch.round(t).clamp_(-127, 127).to(torch.int8)


def decode_int8(q: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32)


def encode_e4m3(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def decode_e4m3(q: torch.Tensor) -> torch.Tensor:
    if q.dtype == torch.uint8:  # LightX2V stores MX elements as raw bytes
        q = q.view(torch.float8_e4m3fn)
    return q.to(torch.float32)


def e2m1_codes(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest e2m1 value (ties to even mantissa) and return 4-bit codes as uint8."""
    mag = t.abs().clamp(max=E2M1_MAX)
    mids = _E2M1_MIDPOINTS.to(t.device)
    idx = torch.bucketize(mag, mids)  # a value on a midpoint lands on the lower code
    on_mid = (mag == mids[(idx).clamp(max=len(mids) - 1)]) & (idx % 2 == 1)
    idx = idx + on_mid.to(idx.dtype)  # the lower code was odd: the even neighbour is above
    sign = torch.signbit(t)  # keeps -0 as code 8, so every byte round-trips
    return (idx | (sign.to(idx.dtype) << 3)).to(torch.uint8)


def pack_e2m1(t: torch.Tensor) -> torch.Tensor:
    """[..., K] values -> [..., K/2] bytes; element 2j in the low nibble, 2j+1 in the high one."""
    codes = e2m1_codes(t)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] bytes -> [..., K] float32 values."""
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2).to(torch.int64)
    mag = E2M1_VALUES.to(packed.device)[codes & 7]
    return torch.where(codes & 8 != 0, -mag, mag)
