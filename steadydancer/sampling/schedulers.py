"""Flow-matching multistep solvers with Wan 2.1's noise schedules.

The update rules are diffusers' ``UniPCMultistepScheduler`` (bh2, order 2) and
``DPMSolverMultistepScheduler`` (dpmsolver++, midpoint, order 2) in their flow-matching mode
(``x0 = x_t - sigma * v``; alpha = 1 - sigma). Only the schedules are Wan's own, so we set them
ourselves:

* UniPC: sigmas = shift(linspace(sigma_max, 0, N + 1)[:-1]) with sigma_max = float32(1 - 1/T),
  the first entry of Wan's 1000-step training table. (diffusers' own flow schedule starts at
  linspace(1, 1/T, ...) instead, which gives other timesteps.)
* DPM++: sigmas = shift(linspace(1, 0, N + 1)[:N]) (Wan's ``get_sampling_sigmas``), which starts
  at exactly 1.0 (timestep 1000). diffusers' DPM solver takes no custom sigmas, so we write them
  into the scheduler after its own ``set_timesteps``.

Both end with sigma 0; timesteps are ``int64(sigma * T)`` (truncated, as Wan does). Checked
bit-for-bit against Wan's ``FlowUniPCMultistepScheduler`` / ``FlowDPMSolverMultistepScheduler``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

Solver = Literal["unipc", "dpm++"]
SOLVERS: tuple[str, ...] = ("unipc", "dpm++")


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Flow-matching time shift: s -> shift * s / (1 + (shift - 1) * s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _unipc_base_sigmas(steps: int, num_train_timesteps: int) -> np.ndarray:
    """Wan's UniPC sigmas before the shift [steps] (float64)."""
    # Wan builds its training table in float32 and reads its first entry back as sigma_max.
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    return np.linspace(sigma_max, 0.0, steps + 1)[:-1]


def unipc_sigmas(steps: int, shift: float, num_train_timesteps: int = 1000) -> np.ndarray:
    """Wan's UniPC sampling sigmas [steps] (float64, before the final 0)."""
    return shift_sigmas(_unipc_base_sigmas(steps, num_train_timesteps), shift)


def dpm_sigmas(steps: int, shift: float) -> np.ndarray:
    """Wan's DPM++ sampling sigmas [steps] (float64, before the final 0); the first is 1.0."""
    return shift_sigmas(np.linspace(1.0, 0.0, steps + 1)[:steps], shift)


def _reset_dpm_schedule(scheduler: DPMSolverMultistepScheduler, sigmas: np.ndarray,
                        num_train_timesteps: int, device: torch.device | str | None) -> None:
    """Reset the solver state (via set_timesteps) and install our own sigmas and timesteps."""
    scheduler.set_timesteps(len(sigmas), device=device)
    scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    scheduler.timesteps = torch.from_numpy(sigmas * num_train_timesteps).to(device=device, dtype=torch.int64)
    scheduler.num_inference_steps = len(sigmas)


def make_scheduler(solver: str, steps: int, shift: float, num_train_timesteps: int = 1000,
                   device: torch.device | str | None = None):
    """A fresh flow-matching scheduler and its timesteps (int64 [steps], 0..1000 scale).

    ``solver``: "unipc" (Wan's default) or "dpm++". The scheduler's ``step(v, t, x)`` takes the
    model's flow prediction ``v`` and the sample ``x`` (both with a leading batch dim).
    """
    if steps < 1:
        raise ValueError(f"sampling steps must be >= 1, got {steps}")
    if solver == "unipc":
        scheduler = UniPCMultistepScheduler(
            num_train_timesteps=num_train_timesteps, solver_order=2, prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=shift, solver_type="bh2", lower_order_final=True,
            final_sigmas_type="zero")
        # the shift is applied inside set_timesteps (flow_shift), so pass the unshifted base
        scheduler.set_timesteps(sigmas=_unipc_base_sigmas(steps, num_train_timesteps), device=device)
    elif solver == "dpm++":
        scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=num_train_timesteps, solver_order=2, prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=1.0, algorithm_type="dpmsolver++", solver_type="midpoint",
            lower_order_final=True, final_sigmas_type="zero")
        _reset_dpm_schedule(scheduler, dpm_sigmas(steps, shift), num_train_timesteps, device)
    else:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    return scheduler, scheduler.timesteps
