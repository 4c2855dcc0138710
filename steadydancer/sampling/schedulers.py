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

Few-step solvers for step-distillation LoRAs (lightx2v), both first order, x0 = x - sigma v:

* euler: x_next = x0 + sigma_next v (deterministic flow-matching Euler);
* lcm:   x_next = (1 - sigma_next) x0 + sigma_next noise (fresh noise every step but the last).

Their sigmas are the DPM++ ones, or, with explicit ``sample_timesteps`` t_i on the 0..T scale,
sigma_i = shift s / (1 + (shift - 1) s) with s = t_i / T (lightx2v's denoising_step_list:
1000,750,500,250 at shift 5 -> 1, 0.9375, 0.8333, 0.625). The model is given sigma * T as a
float timestep (937.5, not a truncated 937), as lightx2v does.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

Solver = Literal["unipc", "dpm++", "euler", "lcm"]
SOLVERS: tuple[str, ...] = ("unipc", "dpm++", "euler", "lcm")
FEW_STEP_SOLVERS: tuple[str, ...] = ("euler", "lcm")


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


def few_step_sigmas(steps: int, shift: float, sample_timesteps: Sequence[float] | None = None,
                    num_train_timesteps: int = 1000) -> np.ndarray:
    """Sigmas [steps] (float64, before the final 0) of the euler/lcm solvers.

    ``sample_timesteps``: explicit t_i on the 0..T scale, sigma_i = shift(t_i / T); else the
    DPM++ schedule of ``steps`` steps.
    """
    if sample_timesteps is None:
        return dpm_sigmas(steps, shift)
    return shift_sigmas(np.asarray(sample_timesteps, dtype=np.float64) / num_train_timesteps, shift)


def lcm_noise_seed(seed: int) -> int:
    """Seed of the lcm solver's fresh noise for a run seeded ``seed``: derived from it, but not
    equal (the same seed on the same device would redraw the initial noise)."""
    return (seed + 1) % (2 ** 63)


class FewStepFlowScheduler:
    """First-order flow-matching steps on a fixed sigma list: ``euler`` or ``lcm`` (see the module doc).

    Same calling convention as the diffusers schedulers here: ``step(v, t, x, return_dict=False)``
    returns ``(x_next,)``; steps are taken in order. ``seed``: the lcm noise (a generator made on
    the sample's device at the first step); ``make_noise(sample)`` may be replaced (FreeNoise).
    """

    def __init__(self, kind: str, sigmas: np.ndarray, num_train_timesteps: int = 1000,
                 device: torch.device | str | None = None, seed: int = 0) -> None:
        if kind not in FEW_STEP_SOLVERS:
            raise ValueError(f"unknown few-step solver {kind!r}")
        self.kind = kind
        self.sigmas = [float(s) for s in sigmas] + [0.0]
        self.timesteps = torch.tensor([s * num_train_timesteps for s in self.sigmas[:-1]],
                                      dtype=torch.float32, device=device)
        self.seed = seed
        self.step_index = 0
        self._generator: torch.Generator | None = None

    def make_noise(self, sample: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``sample`` (float32), from the seeded generator."""
        if self._generator is None:
            self._generator = torch.Generator(device=sample.device).manual_seed(self.seed)
        return torch.randn(sample.shape, generator=self._generator, device=sample.device, dtype=torch.float32)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = False):
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        velocity = model_output.to(torch.float32)
        x0 = sample.to(torch.float32) - sigma * velocity
        if self.kind == "euler":
            out = x0 + sigma_next * velocity
        elif sigma_next > 0:
            out = (1 - sigma_next) * x0 + sigma_next * self.make_noise(x0)
        else:
            out = x0
        self.step_index += 1
        return (out,)


def make_scheduler(solver: str, steps: int, shift: float, num_train_timesteps: int = 1000,
                   device: torch.device | str | None = None, sample_timesteps: Sequence[float] | None = None,
                   seed: int = 0):
    """A fresh flow-matching scheduler and its timesteps ([steps], 0..1000 scale).

    ``solver``: "unipc" (Wan's default), "dpm++" (both int64 timesteps), "euler" or "lcm"
    (float32 timesteps; ``sample_timesteps`` gives their list explicitly, ``seed`` lcm's noise).
    The scheduler's ``step(v, t, x)`` takes the model's flow prediction ``v`` and the sample ``x``
    (both with a leading batch dim).
    """
    if solver in FEW_STEP_SOLVERS:
        if sample_timesteps is None and steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {steps}")
        sigmas = few_step_sigmas(steps, shift, sample_timesteps, num_train_timesteps)
        scheduler = FewStepFlowScheduler(solver, sigmas, num_train_timesteps, device=device, seed=seed)
        return scheduler, scheduler.timesteps
    if sample_timesteps is not None:
        raise ValueError(f"explicit sample timesteps need the euler or lcm solver, not {solver!r}")
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
