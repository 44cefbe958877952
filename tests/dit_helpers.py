"""Shared by the DiT checkpoint tests: a tiny i2v transformer, its Wan-named weights, a forward."""
import torch

from engine.tiny import tiny_transformer
from tests.wan_names import diffusers_to_wan_table


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return tiny_transformer(i2v=True)


def wan_state_dict(model):
    """Wan (LightX2V) names from the hand-written table in tests/wan_names.py, not from the engine."""
    table = diffusers_to_wan_table(num_layers=len(model.blocks), i2v=True)
    return {table[k]: v.detach().clone() for k, v in model.state_dict().items()}


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 36, 2, 8, 8, generator=g), torch.tensor([500]),
            torch.randn(1, 512, 32, generator=g), torch.randn(1, 5, 32, generator=g))


@torch.no_grad()
def run(model, dtype=torch.float32):
    x, t, text, img = inputs()
    out = model(x.to(dtype), t, text.to(dtype), encoder_hidden_states_image=img.to(dtype)).sample
    return out.float()


def rel_err(a, b):
    return float((a - b).norm() / b.norm())
