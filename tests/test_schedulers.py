"""LightX2V's distilled sampler: its denoising_step_list, shifted, not diffusers' linear spacing."""
import pytest
import torch

from engine.errors import ConfigError
from engine.schedulers import DistillEulerScheduler, distill_scheduler


def shifted(sigmas, shift):
    return [shift * s / (1 + (shift - 1) * s) for s in sigmas]


def test_four_steps_follow_lightx2v_step_list_shifted():
    sched = distill_scheduler(5.0)
    sched.set_timesteps(4)
    want = shifted([1.0, 0.75, 0.5, 0.25], 5.0) + [0.0]  # [1, .9375, .833, .625], then 0
    torch.testing.assert_close(sched.sigmas, torch.tensor(want), atol=1e-6, rtol=0)
    torch.testing.assert_close(sched.timesteps, torch.tensor(want[:-1]) * 1000, atol=1e-3, rtol=0)


def test_a_custom_list_and_other_step_counts():
    sched = distill_scheduler(3.0, [1000, 500])
    sched.set_timesteps(2)
    torch.testing.assert_close(sched.sigmas, torch.tensor(shifted([1.0, 0.5], 3.0) + [0.0]), atol=1e-6, rtol=0)
    sched.set_timesteps(3)  # not the list's length: evenly spaced from 1, shifted
    torch.testing.assert_close(sched.sigmas, torch.tensor(shifted([1.0, 2 / 3, 1 / 3], 3.0) + [0.0]),
                               atol=1e-6, rtol=0)


def test_changing_the_shift_keeps_the_step_list():
    from types import SimpleNamespace

    from engine.generate import _set_shift

    pipe = SimpleNamespace(scheduler=distill_scheduler(5.0, [1000, 750, 500, 250]))
    _set_shift(pipe, 3.0)  # what generate() does with the request's shift
    assert isinstance(pipe.scheduler, DistillEulerScheduler) and pipe.scheduler.config.shift == 3.0
    pipe.scheduler.set_timesteps(4)
    torch.testing.assert_close(pipe.scheduler.sigmas[:4], torch.tensor(shifted([1.0, 0.75, 0.5, 0.25], 3.0)),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [[], [250, 500], [1000, 0], [2000, 500]])
def test_a_bad_step_list_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="denoising_step_list"):
        distill_scheduler(5.0, bad or [0])
