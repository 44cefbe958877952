"""Streamed offload through diffusers' own group-offloading hooks, with QuantLinear layers.

Without a GPU, group offloading onto "cpu" moves nothing, so these tests prove three separate things:
1. the hooks move QuantLinear's quantized buffers (codes and scales) with their group: diffusers' onload
   hands every one of them to its transfer function;
2. on the tiny pipeline, offloaded generation gives the same frames as without offload, every
   QuantLinear buffer belongs to an offload group, and each block's hook wraps the fused forward
   (installed first), not diffusers' own;
3. the kernel caches that would pin a GPU copy are dropped: by `_apply` on a move, and after each
   streamed forward by engine.builder's hooks.
"""
import numpy as np
import torch
from diffusers.hooks import apply_group_offloading
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING
from torch import nn

from engine.builder import build_tiny, stream_module
from engine.config import load_config
from engine.fused import install_fused_wan
from engine.presets import load_preset
from engine.linear import QuantLinear

PROMPT = "a fox in the snow"


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = QuantLinear.from_linear(nn.Linear(64, 64), "int8")

    def forward(self, x):
        return x


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_group_offloading_moves_quantized_buffers_with_the_block(monkeypatch):
    """Onloading to the CPU moves nothing, so the test records what diffusers' onload hands to its
    transfer function (the same traversal builds the pinned copies when streams are used)."""
    from diffusers.hooks.group_offloading import ModuleGroup

    moved = []
    transfer = ModuleGroup._transfer_tensor_to_device

    def spy(self, tensor, source, stream):
        moved.append((id(tensor), tensor.dtype))
        return transfer(self, tensor, source, stream)

    monkeypatch.setattr(ModuleGroup, "_transfer_tensor_to_device", spy)
    model = Stack()
    apply_group_offloading(model, onload_device=torch.device("cpu"), offload_type="block_level",
                           num_blocks_per_group=1)
    model(torch.zeros(2, 64))
    for block in model.blocks:
        assert {(id(t), t.dtype) for t in block.proj.buffers()} | {(id(block.proj.bias), block.proj.bias.dtype)} \
            <= set(moved)
        assert block.proj.weight.dtype == torch.int8 and block.proj.weight_scale.dtype == torch.float32


def test_apply_drops_both_kernel_caches():
    layer = QuantLinear.from_linear(nn.Linear(64, 64), "int8")
    layer(torch.randn(3, 64))
    layer.__dict__["_kernel_cache"] = {"w": layer.weight.t()}  # what a Blackwell kernel keeps
    layer.to("meta")
    assert layer._kernels == {} and "_kernel_cache" not in layer.__dict__


def _frames(pipe):
    out = pipe(prompt=PROMPT, height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=1.0,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np", max_sequence_length=64)
    return out.frames[0]


def test_offloaded_tiny_pipeline_gives_the_same_frames_and_manages_every_buffer():
    cfg = load_config(load_preset("cpu-demo"))
    reference = _frames(build_tiny("t2v", cfg).pipe)
    pipe = build_tiny("t2v", cfg).pipe
    install_fused_wan(pipe.transformer)  # first, as engine.builder.place_pipeline does
    stream_module(pipe.transformer, "cpu", "block_level", use_stream=False)
    stream_module(pipe.text_encoder, "cpu", "leaf_level", use_stream=False)
    for block in pipe.transformer.blocks:
        hook = block._diffusers_hook.get_hook(_GROUP_OFFLOADING)
        assert hook.fn_ref.forward.__func__ is type(block).forward
        assert type(block).__qualname__.startswith("fused.")  # the fused subclass's forward was captured

    managed = set()
    for module in list(pipe.transformer.modules()) + list(pipe.text_encoder.modules()):
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry else None
        if hook is not None:
            for m in hook.group.modules:
                managed |= {id(t) for t in m.buffers()}
            managed |= {id(t) for t in hook.group.buffers}
    layers = [m for comp in (pipe.transformer, pipe.text_encoder) for m in comp.modules()
              if isinstance(m, QuantLinear)]
    assert layers and all(id(t) in managed for layer in layers for t in layer.buffers())

    for layer in layers:
        layer.__dict__["_kernel_cache"] = {"stale": torch.zeros(1)}
    frames = _frames(pipe)
    np.testing.assert_array_equal(frames, reference)
    assert all("_kernel_cache" not in layer.__dict__ and not layer._kernels for layer in layers)
