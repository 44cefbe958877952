"""Each number format against the independent float64 model in tests/reference.py."""
import pytest
import torch

from engine.errors import FormatError
from engine.formats import FORMATS, get_format
from engine.formats.elements import pack_e2m1, unpack_e2m1
from reference import reference_dequant, round_e4m3

CHECKED = ["int8", "fp8", "fp8_tensor", "fp8_block128", "mxfp8", "nvfp4"]


def test_every_format_is_registered():
    assert set(CHECKED) <= set(FORMATS)


def test_e2m1_packing_round_trips_every_byte():
    every_byte = torch.arange(256, dtype=torch.uint8).view(16, 16)
    assert torch.equal(pack_e2m1(unpack_e2m1(every_byte)), every_byte)


def test_e2m1_low_nibble_holds_the_even_element():
    packed = pack_e2m1(torch.tensor([[0.5, -6.0]]))
    assert packed.item() == (0x1 | (0xF << 4))  # 0.5 = code 1; -6 = sign 8 | code 7


def test_e2m1_rounds_to_nearest_ties_to_even():
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.75])
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -1.0])
    assert torch.equal(unpack_e2m1(pack_e2m1(ties.view(1, -1)[:, :8]))[0], want[:8])
    assert unpack_e2m1(pack_e2m1(torch.tensor([[-0.75, 0.0]])))[0, 0] == -1.0


def test_fp8_element_round_trip_is_exact_for_every_finite_code():
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)
    finite = codes[torch.isfinite(codes)]
    assert torch.equal(finite.to(torch.float8_e4m3fn).to(torch.float32), finite)
    assert torch.equal(round_e4m3(finite.double()).float(), finite)


@pytest.mark.parametrize("fmt", CHECKED)
@pytest.mark.parametrize("role", ["weight", "activation"])
def test_dequantized_values_match_float64_model(fmt, role, rng):
    f = get_format(fmt)
    t = torch.randn(130, 320, generator=rng) * torch.rand(1, 320, generator=rng) * 4
    t[:, 7] *= 30  # an outlier channel
    q = f.quantize_weight(t) if role == "weight" else f.quantize_activation(t)
    got = (f.dequantize_weight if role == "weight" else f.dequantize_activation)(q).double()
    want = reference_dequant(fmt, t, role)
    # The engine divides in float32, the model in float64: a value within float32 rounding of a tie
    # between two grid points may round the other way. Allow such flips, rarely, and only at ties.
    close = torch.isclose(got, want, rtol=1e-5, atol=1e-6)
    flips = ~close
    assert flips.float().mean() <= 1e-3, f"{int(flips.sum())} mismatches"
    dist = (want - t.double()).abs()
    assert ((got - want).abs()[flips] <= 2 * dist[flips] * (1 + 1e-4) + 1e-6).all()


# Per-element error bound of each format relative to its block amax (half a step of the element grid,
# plus the e4m3 rounding of NVFP4's block scale).
REL_BOUND = {"int8": 0.5 / 127, "fp8": 2 ** -4, "fp8_tensor": 2 ** -4, "fp8_block128": 2 ** -4,
             "mxfp8": 2 ** -4, "nvfp4": 0.5 / 6 * 2 + 2 ** -4}


@pytest.mark.parametrize("fmt", CHECKED)
def test_dequantization_error_within_rounding_bound(fmt, rng):
    f = get_format(fmt)
    w = torch.randn(256, 256, dtype=torch.float64, generator=rng)
    err = (f.dequantize_weight(f.quantize_weight(w.float())).double() - w).abs()
    if fmt in ("fp8", "fp8_tensor", "fp8_block128", "mxfp8"):
        # relative to each value: 3 mantissa bits, plus the subnormal floor of the scaled value
        amax = w.abs().max()
        bound = w.abs() * 2 ** -4 + amax * 2 ** -9 / 448 * 2
    else:
        br, bc = f.weight_block
        amax = w.abs().max() if fmt == "nvfp4" else w.abs().amax(1, keepdim=True)
        # plus float32's own rounding of w, the scale and the product (a tie lands 1.3e-7 past half a step
        # at amax 3.5, seed 3786514672)
        bound = amax * (REL_BOUND[fmt] + 2 ** -21)
    assert (err <= bound).all()


def test_mxfp8_scales_are_powers_of_two_rounded_up():
    f = get_format("mxfp8")
    w = torch.randn(4, 64) * 10
    q = f.quantize_weight(w)
    s = q.scale.to(torch.float32)
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)
    amax = w.abs().view(4, 2, 32).amax(-1)
    assert (s * 448 >= amax).all() and (s * 448 < 2 * amax).all()


def test_nvfp4_global_scale_and_static_activation_scale():
    f = get_format("nvfp4")
    w = torch.randn(8, 32)
    q = f.quantize_weight(w)
    assert torch.allclose(q.global_scale, 2688 / w.abs().max())
    x = torch.randn(3, 32)
    static = torch.tensor([2688 / 10.0])  # calibrated for a larger range than this batch
    qa = f.quantize_activation(x, static)
    assert torch.equal(qa.global_scale, static)
    assert (f.dequantize_activation(qa) - x).abs().max() < 10 / 6 * 0.5 * 2


def test_block_fp8_partial_blocks_have_ceil_scales():
    f = get_format("fp8_block128")
    q = f.quantize_weight(torch.randn(200, 300))
    assert q.scale.shape == (2, 3)


@pytest.mark.parametrize("fmt,cols", [("mxfp8", 48), ("nvfp4", 24)])
def test_shape_the_format_cannot_take_is_refused(fmt, cols):
    with pytest.raises(FormatError, match="multiple of"):
        get_format(fmt).quantize_weight(torch.randn(4, cols))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(bad):
    w = torch.randn(4, 32)
    w[1, 3] = bad
    with pytest.raises(FormatError, match="NaN or Inf"):
        get_format("int8").quantize_weight(w)


def test_unknown_format_lists_known_ones():
    with pytest.raises(FormatError, match="known: .*int8"):
        get_format("int3")


@pytest.mark.parametrize("fmt", CHECKED)
def test_empty_activation(fmt):
    """diffusers can pass an empty context (e.g. no image tokens); quantizing it must not fail."""
    f = get_format(fmt)
    assert f.dequantize_activation(f.quantize_activation(torch.zeros(0, 64))).shape == (0, 64)
