"""LightX2V's sampler for its 4-step distilled Wan DiTs, as a diffusers scheduler.

LightX2V samples with first-order flow-matching Euler steps at the timesteps of `denoising_step_list`
(default [1000, 750, 500, 250]): sigmas t/1000, shifted by `shift` (5) -> [1, 0.9375, 0.833, 0.625],
then 0. diffusers' FlowMatchEulerDiscreteScheduler would instead space its sigmas from 1 to ~0 before
shifting, which is not the schedule the distilled DiTs were trained for.
"""
from __future__ import annotations

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import register_to_config

from .errors import ConfigError

DEFAULT_STEP_LIST = (1000, 750, 500, 250)


class DistillEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """Euler flow matching that honours LightX2V's `denoising_step_list` when the number of steps equals
    its length; otherwise sigmas evenly spaced from 1 down to (not including) 0, shifted the same way
    (for 4 steps that is the default list)."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 5.0,
                 denoising_step_list: tuple[int, ...] | list[int] = DEFAULT_STEP_LIST):
        steps = list(denoising_step_list or ())
        if not steps or any(not 0 < t <= num_train_timesteps for t in steps) or steps != sorted(steps, reverse=True):
            raise ConfigError(f"denoising_step_list must be decreasing timesteps in (0, {num_train_timesteps}], "
                              f"e.g. {list(DEFAULT_STEP_LIST)}; got {denoising_step_list!r}")
        super().__init__(num_train_timesteps=num_train_timesteps, shift=shift)

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None and num_inference_steps:
            steps = list(self.config.denoising_step_list)
            total = self.config.num_train_timesteps
            if num_inference_steps == len(steps):
                sigmas = [t / total for t in steps]
            else:
                sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()
        return super().set_timesteps(num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps)


def distill_scheduler(shift: float = 5.0, denoising_step_list=None) -> DistillEulerScheduler:
    return DistillEulerScheduler(shift=float(shift), denoising_step_list=tuple(denoising_step_list or DEFAULT_STEP_LIST))
