"""Recipe variants of the 8-bit attention (reference.Variant / sage_variant): the defaults are the
kernel's recipe, the exactness claims of the smoothing knobs hold, and INT8 P·V lowers the error."""
import pytest
import torch

from engine.attention.reference import (Recipe, Variant, attention_f64, rel_error, sage_reference,
                                        sage_variant, wan_like_qkv)


@pytest.fixture(scope="module")
def qkv():
    return wan_like_qkv(1, 1024, 2, seed=3)


@pytest.fixture(scope="module")
def ref(qkv):
    return attention_f64(*qkv)


def test_defaults_are_the_kernel_recipe(qkv):
    a = sage_reference(*qkv, recipe=Recipe(block_n=128))
    assert rel_error(sage_variant(*qkv), a) < 1e-12


def test_smoothing_exact_without_rounding(qkv, ref):
    # with every rounding off, Q, K and V smoothing change nothing in real arithmetic (scores go
    # through FP32 as in the kernel, hence 1e-7 rather than 1e-12 for the Q bias)
    exact = dict(qk="exact", p="exact", v="exact")
    plain = sage_variant(*qkv, var=Variant(**exact, smooth_k=False))
    assert rel_error(plain, ref) < 1e-6
    assert rel_error(sage_variant(*qkv, var=Variant(**exact, smooth_v=True, smooth_k=False)), plain) < 1e-12
    assert rel_error(sage_variant(*qkv, var=Variant(**exact, smooth_q=True)), plain) < 1e-6


def test_v_smoothing_helps_a_v_with_an_offset(qkv, ref):
    q, k, v = qkv
    v2 = (v.double() + 3.0).bfloat16()
    ref2 = attention_f64(q, k, v2)
    base = rel_error(sage_variant(q, k, v2), ref2)
    assert rel_error(sage_variant(q, k, v2, var=Variant(smooth_v=True)), ref2) < base


def test_int8_pv_with_row_scale_beats_fp8(qkv, ref):
    base = rel_error(sage_variant(*qkv), ref)
    best = rel_error(sage_variant(*qkv, var=Variant(p="int8", p_row_scale=True, v="int8")), ref)
    assert 0.02 < base < 0.05
    assert best < 0.03 and best < 0.85 * base


def test_two_term_p_is_closer_to_exact_p(qkv, ref):
    # P split in p8 + FP8 residual: the P part of the error nearly vanishes
    one = rel_error(sage_variant(*qkv, var=Variant(qk="exact", v="exact")), ref)
    two = rel_error(sage_variant(*qkv, var=Variant(qk="exact", v="exact", p="e4m3x2")), ref)
    assert two < 0.2 * one
