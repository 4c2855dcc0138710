"""Step caching: skip DiT forwards whose output the previous step already predicts well.

``--step_cache magcache|fbcache|taylorseer`` registers diffusers' own hooks (diffusers 0.42
``hooks/mag_cache.py``, ``hooks/first_block_cache.py``, ``hooks/taylorseer_cache.py``) on our ``DiTBlock``; this module only
gives them what they need for this model and this sampler:

- the block metadata (``TransformerBlockRegistry``): the hidden states are the first argument
  (``x``), the block returns one tensor;
- **one cache context per guidance pass** (``cond``, ``uncond_text``, ``uncond_pose``): the passes
  see different inputs, so each keeps its own residual and accumulated error. diffusers counts a
  context's steps by its own forwards; the negative-pose pass runs only inside the pose-CFG window
  (0.1 < idx/N < 0.4), so the step index of every context is set to the sampler's step before each
  forward, which keeps MagCache's ratio for step ``idx`` at ``idx``;
- a reset per video (the hooks are registered for one run and removed afterwards).

MagCache (Ma et al. 2025, github.com/Zehong-Ma/MagCache): from step ``retention_ratio * N`` on, a
forward is skipped while the accumulated error sum |1 - prod(ratio)| stays within the threshold and
at most ``max_skip_steps`` in a row; a skipped forward returns the block input plus the previous
step's residual of the whole block stack. The ratios are per checkpoint and schedule:
``steadydancer calibrate-cache`` measures them (diffusers' calibration formula: the mean over
tokens of |residual_t| / |residual_{t-1}|). First-block cache (ParaAttention's FBCache): the first
block always runs; the rest is skipped when its residual changed by at most the threshold
(relative mean absolute difference) since the last full forward.

TaylorSeer (Liu et al. 2025, diffusers ``hooks/taylorseer_cache.py``): a full forward on the first
3 steps and then every ``--cache_interval`` steps (diffusers' defaults 3 and 5); in between the
output is extrapolated from the last full forwards (first-order Taylor in the step index). Its hooks
count each context's own forwards, which is right for every pass here: each context sees one forward
per step on consecutive steps (the negative-pose pass too, inside its window), so the step distances
it extrapolates over are true ones. We use its "lite" layout (the output head extrapolated, the
blocks skipped): see :func:`_apply_taylorseer` for the memory reason.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from steadydancer.errors import InputError

log = logging.getLogger(__name__)

STEP_CACHE_KINDS = ("none", "magcache", "fbcache", "taylorseer")
# guidance passes in the order sample_dc_cfg runs them (run_passes' condition sets)
PASS_NAMES = ("cond", "uncond_text", "uncond_pose")
DEFAULT_THRESHOLDS = {"magcache": 0.06, "fbcache": 0.05}     # diffusers' defaults
MAGCACHE_MAX_SKIP_STEPS = 3                                  # diffusers' default (K in the paper)
MAGCACHE_RETENTION_RATIO = 0.2                               # diffusers' and MagCache's default
RATIOS_FORMAT = "steadydancer-magcache-ratios-v1"
# The published Wan 2.1 I2V 14B ratios (MagCache4Wan2.1/magcache_generate.py @ 1a66b6d, 40 UniPC
# steps, shift 5, cond/uncond interleaved there): a documented starting point, not SteadyDancer's own.
PUBLISHED_RATIOS = Path(__file__).resolve().parents[2] / "configs" / "magcache"
# TaylorSeer (diffusers hooks/taylorseer_cache.py, TaylorSeerCacheConfig defaults): a full forward
# every INTERVAL steps after WARMUP full ones, first-order extrapolation in between
TAYLORSEER_INTERVAL = 5
TAYLORSEER_WARMUP_STEPS = 3
TAYLORSEER_MAX_ORDER = 1


@dataclass
class StepCacheOptions:
    """What the ``--step_cache`` flags ask for (kind "none": nothing is registered)."""
    kind: str = "none"
    threshold: float | None = None            # None: the kind's default (DEFAULT_THRESHOLDS)
    ratios: dict[str, list[float]] | None = None   # MagCache: pass name -> one ratio per step
    calibrate: bool = False                   # MagCache: measure the ratios, skip nothing
    interval: int | None = None               # TaylorSeer: steps between full forwards (None: 5)

    @property
    def enabled(self) -> bool:
        return self.kind != "none" or self.calibrate

    def effective_threshold(self) -> float:
        return DEFAULT_THRESHOLDS.get(self.kind, 0.0) if self.threshold is None else float(self.threshold)


def check_step_cache_options(kind: str, threshold: float | None, ratios_file: str | os.PathLike | None,
                             flag_prefix: str = "--", interval: int | None = None) -> None:
    """One-line InputError for a bad combination of the step-cache flags (no file read yet)."""
    if kind not in STEP_CACHE_KINDS:
        raise InputError(f"{flag_prefix}step_cache: expected one of {', '.join(STEP_CACHE_KINDS)}, got {kind!r}")
    if threshold is not None and (threshold != threshold or threshold < 0):
        raise InputError(f"{flag_prefix}cache_threshold: expected a number >= 0, got {threshold}")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1):
        raise InputError(f"{flag_prefix}cache_interval: expected a whole number of steps >= 1, got {interval!r}")
    if kind == "none" and (threshold is not None or ratios_file is not None or interval is not None):
        given = (f"{flag_prefix}cache_threshold" if threshold is not None else
                 f"{flag_prefix}cache_ratios" if ratios_file is not None else f"{flag_prefix}cache_interval")
        raise InputError(f"{given} needs {flag_prefix}step_cache magcache, fbcache or taylorseer")
    if interval is not None and kind != "taylorseer":
        raise InputError(f"{flag_prefix}cache_interval is for {flag_prefix}step_cache taylorseer, not {kind}")
    if kind == "taylorseer" and (threshold is not None or ratios_file is not None):
        given = f"{flag_prefix}cache_threshold" if threshold is not None else f"{flag_prefix}cache_ratios"
        raise InputError(f"{given}: {flag_prefix}step_cache taylorseer has no threshold or ratios; it runs a full "
                         f"forward every {flag_prefix}cache_interval steps (default {TAYLORSEER_INTERVAL})")
    if kind == "magcache" and ratios_file is None:
        raise InputError(f"{flag_prefix}step_cache magcache needs {flag_prefix}cache_ratios FILE (from `steadydancer "
                         f"calibrate-cache`, or {PUBLISHED_RATIOS}/wan21_i2v_14b_480p.json as a starting point)")
    if kind == "fbcache" and ratios_file is not None:
        raise InputError(f"{flag_prefix}cache_ratios is for {flag_prefix}step_cache magcache, not fbcache")


def read_cache_ratios(path: str | os.PathLike) -> dict[str, list[float]]:
    """Pass name -> per-step ratios from a ratios file (``calibrate-cache``'s output, or the
    published ones). A file with one list under ``"ratios"`` uses it for every pass."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--cache_ratios: cannot read {path} as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RATIOS_FORMAT:
        raise InputError(f"--cache_ratios: {path} is not a ratios file (expected \"format\": \"{RATIOS_FORMAT}\")")
    per_pass = data.get("passes") or {name: data.get("ratios") for name in PASS_NAMES}
    out = {}
    for name in PASS_NAMES:
        values = per_pass.get(name) or per_pass.get("uncond_text" if name == "uncond_pose" else "cond")
        if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
            raise InputError(f"--cache_ratios: {path} has no list of numbers for the {name} pass")
        out[name] = [float(v) for v in values]
    return out


def write_cache_ratios(path: str | os.PathLike, ratios: dict[str, list[float]], **facts) -> Path:
    """Write ``ratios`` (pass name -> per-step list) with the run's facts (steps, solver, shift...),
    through a temporary name."""
    from steadydancer.fileio import atomic_path

    path = Path(path)
    body = {"format": RATIOS_FORMAT, **facts, "passes": {k: [round(v, 6) for v in vals] for k, vals in ratios.items()}}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(body, indent=1) + "\n")
    return path


def _register_block_metadata(block_class: type) -> None:
    """Tell diffusers' cache hooks how our DiTBlock (or FSDP's subclass of it) is called (once)."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    try:
        TransformerBlockRegistry.get(block_class)
        return
    except ValueError:
        pass
    metadata = TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None,
                                        hidden_states_argument_name="x")
    # first_block_cache.py asks for "hidden_states" by that name: both names are argument 0
    metadata._cached_parameter_indices = {"x": 0, "hidden_states": 0, "e": 1, "freqs": 2, "context": 3}
    TransformerBlockRegistry.register(block_class, metadata)


class StepCache:
    """diffusers' step-cache hooks on ``model.blocks`` for one sampling run of ``steps`` steps.

    Use :meth:`pass_context` around each DiT forward; :attr:`forwards` and :attr:`skipped` count
    them; :meth:`remove` unregisters the hooks (the model is then as before).
    """

    def __init__(self, model: nn.Module, options: StepCacheOptions, steps: int) -> None:
        from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, apply_first_block_cache, apply_mag_cache

        from diffusers.utils.torch_utils import unwrap_module

        for block_class in {type(unwrap_module(block)) for block in model.blocks}:
            _register_block_metadata(block_class)
        self.model, self.options, self.steps = model, options, steps
        self.forwards = self.skipped = 0
        self.per_pass_ratios: dict[str, list[float]] = {}
        kind = "magcache" if options.calibrate else options.kind
        self.kind = kind
        self._configs = {}
        if kind == "magcache":
            for name in PASS_NAMES:
                ratios = None if options.calibrate else options.ratios[name]
                # calibration: one step more than run, so that diffusers' end-of-run reset (which
                # clears the measured ratios) never fires and the ratios stay readable
                self._configs[name] = MagCacheConfig(
                    threshold=options.effective_threshold(), max_skip_steps=MAGCACHE_MAX_SKIP_STEPS,
                    retention_ratio=MAGCACHE_RETENTION_RATIO, num_inference_steps=steps + (1 if options.calibrate else 0),
                    mag_ratios=ratios, calibrate=options.calibrate)
            # diffusers keeps one config per hook set: one hook set serves all passes, the per-pass
            # ratios are swapped in with the context (the config object is shared by the hooks)
            apply_mag_cache(model, self._configs[PASS_NAMES[0]])
            self._head_hook_name, self._head_module = "mag_cache_leader_block_hook", model.blocks[0]
        elif kind == "fbcache":
            apply_first_block_cache(model, FirstBlockCacheConfig(threshold=options.effective_threshold()))
            self._head_hook_name, self._head_module = "fbc_leader_block_hook", model.blocks[0]
        elif kind == "taylorseer":
            self._head_hook_name, self._head_module = "taylorseer_cache", model.head
            _apply_taylorseer(model, options.interval or TAYLORSEER_INTERVAL)
        else:
            raise InputError(f"--step_cache: unknown kind {kind!r}")
        self._managers = self._state_managers()

    def _hooked_modules(self) -> list[nn.Module]:
        return [*self.model.blocks, self.model.head]

    def _state_managers(self) -> list:
        from diffusers.hooks.hooks import StateManager

        managers = []
        for block in self._hooked_modules():
            registry = getattr(block, "_diffusers_hook", None)
            for hook in (registry.hooks.values() if registry is not None else ()):
                for value in vars(hook).values():
                    if isinstance(value, StateManager) and all(value is not m for m in managers):
                        managers.append(value)
        return managers

    def _head_hook(self):
        return self._head_module._diffusers_hook.hooks[self._head_hook_name]

    @contextmanager
    def pass_context(self, pass_name: str, step_index: int, window: int = 0) -> Iterator[None]:
        """Run one DiT forward of guidance pass ``pass_name`` at sampler step ``step_index`` in its
        own cache context (per pass and per long-video ``window``)."""
        from diffusers.hooks.hooks import CacheContext

        context = CacheContext(f"{pass_name}@{window}", step_index=step_index, num_inference_steps=self.steps)
        for manager in self._managers:
            manager.set_context(context)
        head = self._head_hook()
        if self.kind == "magcache":
            config = self._configs[pass_name]
            for block in self.model.blocks:          # the hooks share one config object: swap its ratios in
                for hook in block._diffusers_hook.hooks.values():
                    hook.config = config
            state = head.state_manager.get_state()
            state.step_index = step_index             # the sampler's step, not this context's forward count
        try:
            yield
        finally:
            state = head.state_manager.get_state()
            self.forwards += 1
            if self.kind == "taylorseer":      # a full forward updates the factors at this step
                self.skipped += int(state.last_update_step != state.current_step)
            else:
                self.skipped += int(not state.should_compute)
            if self.kind == "magcache" and self.options.calibrate and state.calibration_ratios:
                # by sampler step: the negative-pose pass measures only inside its window, and a
                # step it does not run keeps ratio 1 (never read: it runs no forward there)
                ratios = self.per_pass_ratios.setdefault(pass_name, [1.0] * self.steps)
                ratios[step_index] = float(state.calibration_ratios[-1])
            for manager in self._managers:
                manager.set_context(None)

    def summary(self) -> str:
        """``step cache: N of M DiT forwards skipped`` (the run's last log line)."""
        return f"step cache: {self.skipped} of {self.forwards} DiT forwards skipped"

    def calibration_ratios(self) -> dict[str, list[float]]:
        """Pass name -> measured ratio per step (calibration runs only)."""
        return {name: list(values) for name, values in self.per_pass_ratios.items()}

    def remove(self) -> None:
        """Unregister the hooks (the blocks run as before)."""
        from diffusers.hooks import HookRegistry

        names = ("mag_cache_leader_block_hook", "mag_cache_block_hook", "fbc_leader_block_hook", "fbc_block_hook",
                 "taylorseer_cache")
        for block in self._hooked_modules():
            registry = HookRegistry.check_if_exists_or_initialize(block)
            for name in names:
                if registry.get_hook(name) is not None:
                    registry.remove_hook(name, recurse=False)


def _apply_taylorseer(model: nn.Module, interval: int) -> None:
    """diffusers' TaylorSeer hooks in its "lite" layout on our DiT: the output head is extrapolated
    (Taylor factors of its [B, L, 64] output, float32) and every block is skipped on the steps in
    between (it returns zeros of its recorded shape without running). The default layout would
    extrapolate every attention module's [B, L, 5120] output: (order + 1) x 80 modules x 3 passes
    of ~0.5 GB each at 81 frames 1024*576, more memory than the GPU has."""
    import re

    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    names = {id(module): name for name, module in model.named_modules()}
    exact = lambda module: re.escape(names[id(module)])          # noqa: E731 (patterns are fullmatched names)
    config = TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=TAYLORSEER_WARMUP_STEPS,
                                   max_order=TAYLORSEER_MAX_ORDER, taylor_factors_dtype=torch.float32,
                                   cache_identifiers=[exact(model.head)],
                                   skip_predict_identifiers=[exact(block) for block in model.blocks])
    apply_taylorseer_cache(model, config)


def cache_runner(cache: StepCache) -> Callable[..., list[torch.Tensor]]:
    """A pass runner for :class:`~steadydancer.sampling.batched.GuidancePasses` that runs each
    guidance pass as its own forward in its cache context (per pass name and window).

    The step index is the number of distinct timesteps seen so far (the sampler calls its
    ``passes`` once per step and window, with this step's timestep, even on a CFG rank that has
    no pass to run). Batched guidance does not combine with it: one batched forward would share
    one skip decision between the passes.
    """
    seen: list[float] = []

    def run(model, latent: torch.Tensor, timestep: torch.Tensor, conditions: Sequence, out_device,
            indices: Sequence[int], window: int = 0) -> list[torch.Tensor]:
        value = float(timestep.reshape(-1)[0])
        if not seen or seen[-1] != value:
            seen.append(value)
        step = len(seen) - 1
        outputs = []
        for index, cond in zip(indices, conditions):
            with cache.pass_context(PASS_NAMES[index], step, window):   # as sampling's run_passes, one pass
                outputs.append(model(latent[None], timestep, **cond.as_kwargs())[0].to(device=out_device))
        return outputs

    return run


# The ratios of the last calibration run in this process (calibrate-cache reads them after the
# generation: the sampler owns the StepCache, the command only sees the finished video).
_last_calibration: dict[str, list[float]] = {}


def take_calibration() -> dict[str, list[float]]:
    """Pass name -> ratios measured by the last calibration run (emptied by reading)."""
    ratios = dict(_last_calibration)
    _last_calibration.clear()
    return ratios


@dataclass
class StepCacheReport:
    """The DiT forwards run and skipped by the cached runs of one :func:`recording_step_cache`
    block (a chain long video runs one cache per segment: their counts add up)."""
    runs: int = 0
    forwards: int = 0
    skipped: int = 0

    def add(self, cache: "StepCache") -> None:
        self.runs += 1
        self.forwards += cache.forwards
        self.skipped += cache.skipped

    def summary(self) -> str | None:
        """``step cache: N of M DiT forwards skipped``, or None when no cache ran."""
        return f"step cache: {self.skipped} of {self.forwards} DiT forwards skipped" if self.runs else None


# The report of the innermost recording_step_cache block of the running thread / task. A ContextVar,
# not a module global: every thread (each UI job runs in a worker thread) and asyncio task sees only
# the report it set, so two users' counts never mix.
_report: ContextVar[StepCacheReport | None] = ContextVar("steadydancer_step_cache_report", default=None)


@contextmanager
def recording_step_cache() -> Iterator[StepCacheReport]:
    """Collect the counts of every step-cache run inside the block (same thread or task), for a
    caller that does not read the log: ``with recording_step_cache() as report: pipe(...)``, then
    ``report.summary()``."""
    report = StepCacheReport()
    token = _report.set(report)
    try:
        yield report
    finally:
        _report.reset(token)


@contextmanager
def step_cache_session(model: nn.Module, options: StepCacheOptions | None, steps: int,
                       passes: Callable[..., list[torch.Tensor]]) -> Iterator[tuple[Callable, "StepCache | None"]]:
    """(the ``passes`` to give sample_dc_cfg, the StepCache or None) for one video: ``passes``
    unchanged without a cache, else ``passes`` (a :class:`~steadydancer.sampling.batched.GuidancePasses`:
    its negative-text skip and CFG split are kept) with each pass run in its cache context; hooks
    removed and the summary logged afterwards (and counted in the :func:`recording_step_cache`
    report of this thread, if one is open)."""
    if options is None or not options.enabled:
        yield passes, None
        return
    target = getattr(model, "module", model)       # FSDP/compile wrappers keep the blocks inside
    cache = StepCache(target, options, steps)
    try:
        yield passes.with_runner(cache_runner(cache)), cache
        split = getattr(passes, "split", None)
        if split is not None:   # CFG parallelism: the line counts the passes of every CFG rank
            cache.forwards, cache.skipped = split.sum_counts([cache.forwards, cache.skipped])
    finally:
        cache.remove()
        if options.calibrate:
            _last_calibration.clear()
            _last_calibration.update(cache.calibration_ratios())
        report = _report.get()
        if report is not None:
            report.add(cache)
        log.info(cache.summary())
