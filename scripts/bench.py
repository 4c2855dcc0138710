#!/usr/bin/env python
"""Benchmark the SteadyDancer DiT forward in each memory mode (random weights, no checkpoint).

For one shape (default: the released 14B DiT, 81 frames at 1024*576) and each mode it reports
seconds per forward (B=1) and per denoising step, achieved TFLOP/s and the fraction of the
device's dense bf16 peak, peak GPU memory and peak host memory. Each mode runs in its own
subprocess so that its peak host memory (ru_maxrss) is its own.

Modes: plain | block_swap:K (K blocks resident) | fp8 (FP8 weights, bf16 compute) |
fp8_matmul (FP8 tensor-core matmuls, CUDA >= 8.9) | batched (the guidance passes of a step as
one forward of B=2 or 3) | compile (torch.compile of each block) | token_chunk:N (each block's
per-token work over at most N tokens at a time) | load (streaming a checkpoint from --ckpt_dir:
seconds and peak host memory; no forward) | load_fp8 (the same, quantised block by block to FP8
as ``--dit_dtype fp8`` loads) | magcache:T / fbcache:T (step caching at threshold T: a DC-CFG run
of ``--cache_steps`` steps without and with the cache, same noise; seconds per step of both, the
forwards skipped and the relative error of the final latent to the uncached one; MagCache uses
the ratios measured by the uncached run itself, which is its calibration) | attention:NAME (the
plain forward with the attention kernel NAME = sage, flash3, flash2 or sdpa forced, as ``--attention
NAME`` does, and the relative error of its output to SDPA's on the same inputs; a kernel that cannot
run here gives a row with the reason generate would print) | vae:plain / vae:tiled (the Wan 2.1 VAE,
the released architecture with random weights, in float32 as the pipeline runs it, decoding the
latent of --frames/--size streamed: seconds, peak GPU memory or, on a CPU, the decode's host peak;
the tiled row also gives the max and mean absolute difference of its frames to the untiled decode) |
cfg_parallel (``--cfg_parallel`` on two processes: torchrun --nproc_per_node=2 of this script, one
GPU each, the guidance passes of a 3-pass and a 2-pass step dealt over the two and gathered;
seconds per step of each and the average step, and the relative error of the gathered predictions
to the process's own forwards; on a CUDA machine with one GPU a row saying so).
``scripts/make_random_dit.py`` writes a random 14B checkpoint.

A step is the official default: 40 steps with the pose pass inside (0.1, 0.4), i.e. 3 passes
on 11 steps and 2 on 29 (2.275 passes per step on average).

    python scripts/bench.py                                  # GPU, 14B, all default modes
    python scripts/bench.py --device cpu                     # reduced shape, a few minutes
    python scripts/bench.py --device cpu --dim 32 --num_layers 2 --frames 5 --size 64*64 --repeats 1
    python scripts/bench.py --modes attention:sdpa,attention:sage,vae:plain,vae:tiled
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from steadydancer.errors import InputError  # noqa: E402

FULL_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
CPU_REDUCED = dict(dim=512, ffn_dim=1536, num_heads=8, num_layers=4)
# Dense bf16 tensor-core peaks (TFLOP/s, datasheets) of common cards, by a substring of the device
# name; the longest matching substring wins ("H100 NVL" before "H100").
PEAK_TFLOPS = {"H200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H800": 989.0,
               "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "RTX 6000 Ada": 364.0,
               "4090": 165.0, "A6000": 155.0, "3090": 71.0}
STEPS, POSE_WINDOW = 40, (0.1, 0.4)
LOAD_MODES = ("load", "load_fp8")
SIMPLE_MODES = ("plain", "fp8", "fp8_matmul", "batched", "compile")
CACHE_MODES = ("magcache", "fbcache")
ATTENTION_KERNELS = ("sage", "flash3", "flash2", "sdpa")     # --attention's backends, auto left out
VAE_MODES = ("vae:plain", "vae:tiled")
# The released Wan2.1_VAE.pth: base width 96 (widths 96, 192, 384, 384; 127M parameters).
VAE_DIM = 96
# diffusers' AutoencoderKLWan.enable_tiling defaults, which --vae_tiling uses: tile and stride, pixels
VAE_TILE = (256, 192)
TEXT_TOKENS, TEXT_LEN, CLIP_TOKENS = 512, 512, 257


def pass_counts(steps: int = STEPS) -> tuple[int, int]:
    """(steps with 3 passes, steps with 2 passes) under the official pose window."""
    three = sum(1 for i in range(steps) if POSE_WINDOW[0] < i / steps < POSE_WINDOW[1])
    return three, steps - three


def latent_shape(frames: int, size: str) -> tuple[int, int, int]:
    """(F_lat, lat_h, lat_w) for ``frames`` pixel frames at ``size`` = 'W*H' (the area rule of the pipeline)."""
    try:
        width, height = (int(v) for v in size.replace("x", "*").split("*"))
    except ValueError:
        raise InputError(f"--size: expected W*H in pixels (e.g. 1024*576), got {size!r}") from None
    if width < 1 or height < 1:
        raise InputError(f"--size: expected positive W*H, got {size!r}")
    area, ar = width * height, height / width
    lat_h = round((area * ar) ** 0.5 // 8 // 2 * 2)
    lat_w = round((area / ar) ** 0.5 // 8 // 2 * 2)
    return (frames - 1) // 4 + 1, int(lat_h), int(lat_w)


def forward_flops(cfg: dict, f_lat: int, lat_h: int, lat_w: int, batch: int = 1) -> float:
    """Matmul FLOPs of the transformer blocks for one forward (embedding and head left out)."""
    d, ffn, layers = cfg["dim"], cfg["ffn_dim"], cfg["num_layers"]
    tokens = (f_lat + 2) * (lat_h // 2) * (lat_w // 2)        # video frames + ref image + ref pose
    context = CLIP_TOKENS + TEXT_LEN
    per_block = (8 * tokens * d * d                  # self-attention q, k, v, o
                 + 4 * tokens * tokens * d           # scores and weighted sum
                 + 4 * tokens * d * d                # cross-attention q, o
                 + 8 * context * d * d               # k, v, k_img, v_img over the context
                 + 4 * tokens * context * d          # cross-attention scores and sum
                 + 4 * tokens * d * ffn)             # feed-forward
    return float(batch * layers * per_block)


def peak_for_name(name: str) -> float | None:
    """Dense bf16 peak of a device called ``name`` (the longest key of PEAK_TFLOPS it contains)."""
    keys = sorted((k for k in PEAK_TFLOPS if k in name), key=len, reverse=True)
    return PEAK_TFLOPS[keys[0]] if keys else None


def device_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def host_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux


def reset_host_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux /proc/self/clear_refs, "5"), so
    that :func:`host_peak_since_reset_gib` is one step's peak; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _proc_status_gib(field: str) -> float | None:
    """A kB field of /proc/self/status (VmHWM, VmRSS) in GiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


def host_peak_since_reset_gib() -> float:
    """Peak RSS (VmHWM) since :func:`reset_host_peak`, GiB; ru_maxrss where /proc is not there."""
    peak = _proc_status_gib("VmHWM")
    return host_peak_gib() if peak is None else peak


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ---- model and inputs ------------------------------------------------------------------------

def build_random_dit(cfg: dict, device: torch.device, dtype: torch.dtype, seed: int = 0,
                     host_blocks_from: int | None = None):
    """The DiT with random N(0, 0.02) weights in ``dtype``, materialised on ``device``.

    Cast on the meta device first, so no float32 copy ever exists (the 14B DiT in float32 would be
    61 GiB). With ``host_blocks_from`` = K, blocks K.. end on the host (each initialised on
    ``device``, then moved), so block swap rows need one block of device memory to build.
    """
    from steadydancer.models.dit import SteadyDancerDiT

    with torch.device("meta"):
        model = SteadyDancerDiT(**cfg)
    # torch's cast, not diffusers' ModelMixin.to, which warns about float32 modules the DiT has not got
    model = torch.nn.Module.to(model, dtype)
    generator = torch.Generator(device=device).manual_seed(seed)

    def materialise(module: torch.nn.Module) -> torch.nn.Module:
        module.to_empty(device=device)
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.02, generator=generator)
        return module

    streamed = [] if host_blocks_from is None else list(model.blocks[host_blocks_from:])
    for block in streamed:
        materialise(block).to("cpu")
    # the rest; to_empty would re-create the host blocks' tensors, so it runs on each other part
    for name, child in model.named_children():
        if child is model.blocks and streamed:
            for block in model.blocks[:host_blocks_from]:
                materialise(block)
        else:
            materialise(child)
    if any(p.is_meta for p in model.parameters(recurse=False)):
        raise RuntimeError("the DiT has parameters of its own outside its children: build_random_dit cannot place them")
    return model.eval().requires_grad_(False)


def random_inputs(cfg: dict, shape: tuple[int, int, int], batch: int, device: torch.device, dtype: torch.dtype):
    from steadydancer.sampling.conditions import DiTConditions

    f, h, w = shape
    g = torch.Generator(device=device).manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=dtype)  # noqa: E731
    cond = DiTConditions(text_context=r(batch, min(TEXT_TOKENS, cfg.get("text_len", TEXT_LEN)), cfg["text_dim"]),
                         clip_image=r(batch, CLIP_TOKENS, cfg["clip_dim"]), clip_pose=r(batch, CLIP_TOKENS, cfg["clip_dim"]),
                         image_cond=r(batch, 20, f, h, w), pose_latents=r(batch, 16, f, h, w),
                         ref_image=r(batch, 36, 1, h, w), ref_pose=r(batch, 36, 1, h, w))
    return r(batch, 16, f, h, w), torch.full((batch,), 500.0, device=device), cond


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, latents, timestep, cond, device: torch.device, repeats: int) -> float:
    """Seconds per forward: one warm-up, then the mean of ``repeats`` timed forwards."""
    return time_forward_with_output(model, latents, timestep, cond, device, repeats)[0]


def time_forward_with_output(model, latents, timestep, cond, device: torch.device,
                             repeats: int) -> tuple[float, torch.Tensor]:
    """:func:`time_forward` and the last forward's output."""
    with torch.no_grad():
        model(latents, timestep, **cond.as_kwargs())           # warm-up (kernels, compile, slots)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            out = model(latents, timestep, **cond.as_kwargs())
        _sync(device)
    return (time.perf_counter() - start) / repeats, out


# ---- one mode (runs in a subprocess) -----------------------------------------------------------

def run_mode(mode: str, cfg: dict, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype,
             repeats: int, ckpt_dir: str | None = None, vae_dim: int = VAE_DIM,
             vae_tile: tuple[int, int] = VAE_TILE) -> dict:
    """Measure one mode; returns a dict of numbers (seconds, TFLOP/s, GiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row: dict = {"mode": mode}
    if mode in VAE_MODES:
        return run_vae_mode(mode, shape, device, row, vae_dim, vae_tile)
    if mode == "cfg_parallel":
        return run_cfg_parallel_mode(cfg, shape, dtype, repeats, row)
    if mode.startswith("attention:"):
        return run_attention_mode(mode, cfg, shape, device, dtype, repeats, row)
    if mode in LOAD_MODES:
        from steadydancer.models.memory import MemoryOptions, load_dit_with_options
        if not ckpt_dir:
            raise InputError(f"--ckpt_dir: the {mode} mode needs a checkpoint folder")
        stored = sum(p.stat().st_size for p in Path(ckpt_dir).glob("*.safetensors"))
        before = host_peak_gib()
        start = time.perf_counter()
        options = MemoryOptions(dit_dtype="fp8" if mode == "load_fp8" else None)
        model = load_dit_with_options(ckpt_dir, device, dtype, options)
        _sync(device)
        row.update(load_s=time.perf_counter() - start, stored_gib=stored / 2 ** 30,
                   host_before_gib=before, host_peak_gib=host_peak_gib(),
                   params_b=sum(p.numel() for p in model.parameters()) / 1e9,
                   model_gib=sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 30)
        if device.type == "cuda":
            row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        return row

    if mode.split(":")[0] in CACHE_MODES:
        return run_cache_mode(mode, cfg, shape, device, dtype, row)
    # Built on the device (fast random init); for block swap the streamed blocks go to the host as
    # they are built and are then packed into one pinned arena.
    resident = int(mode.split(":")[1]) if mode.startswith("block_swap") else None
    model = build_random_dit(cfg, device, dtype, host_blocks_from=resident)
    if resident is not None:
        from steadydancer.models.block_swap import enable_block_swap
        swap = enable_block_swap(model, resident, device)
        row["resident_weights_gib"] = swap.device_bytes() / 2 ** 30
        row["host_arena_gib"] = swap.host_bytes() / 2 ** 30
        row["pinned_gib"] = swap.arena.pinned_bytes / 2 ** 30
    elif mode in ("fp8", "fp8_matmul"):
        from steadydancer.models.quant.fp8 import quantize_model_fp8
        quantize_model_fp8(model, fp8_matmul=mode == "fp8_matmul")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elif mode == "compile":
        for block in model.blocks:
            block.compile()
    elif mode.startswith("token_chunk:"):
        for block in model.blocks:
            block.token_chunk_size = int(mode.split(":")[1])
    elif mode not in ("plain", "batched"):
        raise InputError(f"--modes: unknown mode {mode!r}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    flops1 = forward_flops(cfg, *shape)
    three, two = pass_counts()
    if mode == "batched":
        latents, t, cond = random_inputs(cfg, shape, 3, device, dtype)
        t3 = time_forward(model, latents, t, cond, device, repeats)
        latents2, t2_, cond2 = random_inputs(cfg, shape, 2, device, dtype)
        t2 = time_forward(model, latents2, t2_, cond2, device, repeats)
        step = (three * t3 + two * t2) / STEPS
        row.update(forward_s=t3 / 3, step_s=step, forward_b3_s=t3, forward_b2_s=t2,
                   tflops=3 * flops1 / t3 / 1e12)
    else:
        latents, t, cond = random_inputs(cfg, shape, 1, device, dtype)
        t1 = time_forward(model, latents, t, cond, device, repeats)
        row.update(forward_s=t1, step_s=t1 * (3 * three + 2 * two) / STEPS, tflops=flops1 / t1 / 1e12)
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    row["host_peak_gib"] = host_peak_gib()
    return row


def attention_refusal(kernel: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why ``--attention kernel`` cannot run the DiT here (one line), or None when it can.

    First the check generate runs before any model loads (its very text), then the kernel's own
    check of a query of the DiT's dtype and head size (e.g. flash-attn on a CPU or in float32).
    """
    from steadydancer.models import attention as kernels
    from steadydancer.models.memory import check_attention_option

    try:
        check_attention_option(kernel, device)
        with kernels.attention_backend(kernel):
            kernels.select_backend(torch.empty(1, 1, 1, head_dim, device=device, dtype=dtype))
    except (InputError, RuntimeError) as exc:
        return str(exc).splitlines()[0]
    return None


def run_attention_mode(mode: str, cfg: dict, shape: tuple[int, int, int], device: torch.device,
                       dtype: torch.dtype, repeats: int, row: dict) -> dict:
    """attention:NAME: the plain forward with the kernel NAME forced, and its output's relative L2
    error to SDPA's on the same model and inputs (0 for sdpa itself). A kernel that cannot run here
    gives {"mode", "refused": reason} instead of numbers."""
    from steadydancer.models.attention import attention_backend

    kernel = mode.partition(":")[2]
    reason = attention_refusal(kernel, device, dtype, cfg["dim"] // cfg["num_heads"])
    if reason is not None:
        row["refused"] = reason
        return row
    model = build_random_dit(cfg, device, dtype)
    latents, t, cond = random_inputs(cfg, shape, 1, device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with attention_backend(kernel):
        seconds, out = time_forward_with_output(model, latents, t, cond, device, repeats)
    rel_err = 0.0
    if kernel != "sdpa":
        with torch.no_grad(), attention_backend("sdpa"):
            reference = model(latents, t, **cond.as_kwargs()).float()
        rel_err = ((out.float() - reference).norm() / reference.norm()).item()
    three, two = pass_counts()
    row.update(forward_s=seconds, step_s=seconds * (3 * three + 2 * two) / STEPS,
               tflops=forward_flops(cfg, *shape) / seconds / 1e12, rel_err_vs_sdpa=rel_err)
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    row["host_peak_gib"] = host_peak_gib()
    return row


def vae_tile_count(lat_h: int, lat_w: int, tile: tuple[int, int]) -> int:
    """Spatial tiles of a tiled decode of a lat_h x lat_w latent (1: no larger than a tile, untiled),
    as diffusers' AutoencoderKLWan decides (8 pixels a latent cell)."""
    tile_lat, stride_lat = tile[0] // 8, tile[1] // 8
    if lat_h <= tile_lat and lat_w <= tile_lat:
        return 1
    return len(range(0, lat_h, stride_lat)) * len(range(0, lat_w, stride_lat))


def _timed_decode(vae, latent: torch.Tensor, device: torch.device, keep: bool) -> tuple[float, list[torch.Tensor]]:
    """Seconds of one streamed decode of ``latent``; its chunks (on the host) when ``keep``."""
    chunks = []
    _sync(device)
    start = time.perf_counter()
    for chunk in vae.decode_stream(latent):
        if keep:
            chunks.append(chunk.cpu())
    _sync(device)
    return time.perf_counter() - start, chunks


def run_vae_mode(mode: str, shape: tuple[int, int, int], device: torch.device, row: dict,
                 vae_dim: int = VAE_DIM, tile: tuple[int, int] = VAE_TILE) -> dict:
    """vae:plain / vae:tiled: one streamed decode (as the pipeline decodes, float32) of a random
    latent [16, F_lat, lat_h, lat_w] by the Wan 2.1 VAE with random weights.

    Memory is the decode's own: GPU peak allocated, or on a CPU the host peak since a reset of the
    process's peak RSS. The tiled row decodes tiled first (timed, measured), then untiled, and
    compares the frames: max and mean absolute difference on the [-1, 1] scale.
    """
    from steadydancer.encoders.tiny import write_tiny_vae
    from steadydancer.encoders.vae import WanVAE

    # written and read back through the loader of Wan2.1_VAE.pth: the release's layout, not a copy of it
    with tempfile.TemporaryDirectory() as folder:
        vae = WanVAE(write_tiny_vae(Path(folder) / "Wan2.1_VAE.pth", dim=vae_dim), device=device)
    f_lat, lat_h, lat_w = shape
    latent = torch.randn(16, f_lat, lat_h, lat_w, generator=torch.Generator().manual_seed(2))
    tiled = mode == "vae:tiled"
    if tiled:
        vae.enable_tiling(*tile)
    _timed_decode(vae, latent[:, :1], device, keep=False)      # warm-up: one frame, kernels and allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset = reset_host_peak()
    if reset:
        row["host_before_gib"] = _proc_status_gib("VmRSS") or 0.0
    seconds, frames = _timed_decode(vae, latent, device, keep=tiled)
    row.update(decode_s=seconds, frames=4 * (f_lat - 1) + 1, height=8 * lat_h, width=8 * lat_w,
               vae_dim=vae_dim, tiles=vae_tile_count(lat_h, lat_w, tile) if tiled else 1,
               params_m=sum(p.numel() for p in vae.model.parameters()) / 1e6)
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    row["host_peak_gib"] = host_peak_since_reset_gib() if reset else host_peak_gib()
    row["host_peak_is_decode_only"] = reset
    if tiled:
        row.update(tile_px=tile[0], stride_px=tile[1])
        vae.model.disable_tiling()
        total, count, worst, index = 0.0, 0, 0.0, 0
        for chunk in vae.decode_stream(latent):
            difference = (chunk.cpu() - frames[index]).abs()
            total, count = total + difference.double().sum().item(), count + difference.numel()
            worst = max(worst, difference.max().item())
            index += 1
        row.update(max_abs_diff=worst, mean_abs_diff=total / count)
    return row


CACHE_STEPS = 8  # --cache_steps default: 19 forwards per run (the pose window holds 3 of 8 steps)


def run_cfg_parallel_mode(cfg: dict, shape: tuple[int, int, int], dtype: torch.dtype, repeats: int,
                          row: dict) -> dict:
    """cfg_parallel, in each of the two torchrun processes: the same random DiT and inputs on both,
    the steps' passes through generate's CFG-parallel ``passes`` (cond + neg_pose here, neg_text
    there, then the exchange). Every rank returns the row; rank 0's is printed."""
    from dataclasses import replace

    import torch.distributed as dist

    from steadydancer.distributed.launch import init_distributed
    from steadydancer.sampling.batched import GuidancePasses

    setup = init_distributed(cfg_parallel=2)
    device = setup.device
    model = build_random_dit(cfg, device, dtype)
    latents, t, cond = random_inputs(cfg, shape, 1, device, dtype)
    sets = [cond, replace(cond, text_context=cond.text_context.flip(1)),
            replace(cond, pose_latents=cond.pose_latents.flip(2))]
    split = GuidancePasses(split=setup.cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step_seconds(passes: int) -> tuple[float, list[torch.Tensor]]:
        with torch.no_grad():
            split(model, latents[0], t[:1], sets[:passes], device)      # warm-up
            _sync(device)
            dist.barrier()
            start = time.perf_counter()
            for _ in range(repeats):
                preds = split(model, latents[0], t[:1], sets[:passes], device)
            _sync(device)
        return (time.perf_counter() - start) / repeats, preds

    step3, gathered = step_seconds(3)
    step2, _ = step_seconds(2)
    with torch.no_grad():
        own = GuidancePasses()(model, latents[0], t[:1], sets, device)
    err = max(float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(gathered, own))
    three, two = pass_counts()
    step = (three * step3 + two * step2) / STEPS
    row.update(forward_s=step2, step_s=step, cfg_step3_s=step3, cfg_step2_s=step2, cfg_rel_err=err,
               processes=setup.world_size,
               tflops=forward_flops(cfg, *shape) * (3 * three + 2 * two) / STEPS / step / 1e12)
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    row["host_peak_gib"] = host_peak_gib()
    setup.shutdown()
    return row


def run_cache_mode(mode: str, cfg: dict, shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype,
                   row: dict, steps: int | None = None) -> dict:
    """magcache:T / fbcache:T: the same DC-CFG run uncached (= MagCache's calibration) and cached."""
    from steadydancer.models.step_cache import StepCacheOptions, step_cache_session
    from steadydancer.sampling import sample_dc_cfg
    from steadydancer.sampling.batched import make_passes

    steps = steps or int(os.environ.get("BENCH_CACHE_STEPS", CACHE_STEPS))
    kind, _, threshold = mode.partition(":")
    model = build_random_dit(cfg, device, dtype)
    import dataclasses

    noise, _, cond = random_inputs(cfg, shape, 1, device, dtype)
    # another prompt and another pose stream, same shapes
    neg_text = dataclasses.replace(cond, text_context=cond.text_context.flip(1))
    neg_pose = dataclasses.replace(cond, pose_latents=cond.pose_latents.flip(-1))

    def run(options):
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad(), step_cache_session(model, options, steps, make_passes()) as (passes, cache):
            latent = sample_dc_cfg(model, noise[0].float(), cond, neg_text, neg_pose, steps=steps, progress=False,
                                   device=device, passes=passes)
        _sync(device)
        return latent, (time.perf_counter() - start) / steps, cache

    reference, plain_step_s, calibration = run(StepCacheOptions(calibrate=True))
    options = StepCacheOptions(kind, float(threshold),
                               calibration.calibration_ratios() if kind == "magcache" else None)
    latent, cached_step_s, cache = run(options)
    err = ((latent - reference).norm() / reference.norm()).item()
    row.update(forward_s=cached_step_s * steps / max(1, cache.forwards - cache.skipped), step_s=cached_step_s,
               uncached_step_s=plain_step_s, skipped=cache.skipped, forwards=cache.forwards, rel_err=err,
               cache_steps=steps, tflops=forward_flops(cfg, *shape) * (cache.forwards - cache.skipped)
               / (cached_step_s * steps) / 1e12)
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    row["host_peak_gib"] = host_peak_gib()
    return row


# ---- driver ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="compute dtype (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--modes", default=None,
                   help="comma-separated (default GPU: plain,block_swap:20,block_swap:0,fp8,batched,token_chunk:8192; "
                        "CPU: plain,block_swap:1,fp8,batched); also compile, fp8_matmul, load, load_fp8, "
                        "magcache:T, fbcache:T, attention:sage|flash3|flash2|sdpa, vae:plain, vae:tiled")
    p.add_argument("--frames", type=int, default=None, help="pixel frames, 4n+1 (default 81; CPU 9)")
    p.add_argument("--size", default=None, help="W*H (default 1024*576; CPU 256*144)")
    for name in ("dim", "ffn_dim", "num_heads", "num_layers"):
        p.add_argument(f"--{name}", type=int, default=None, help="override the DiT shape")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak, when not in the table")
    p.add_argument("--vae_dim", type=int, default=VAE_DIM,
                   help=f"base width of the VAE of the vae: rows (default {VAE_DIM}, the release's)")
    p.add_argument("--vae_tile", default=f"{VAE_TILE[0]},{VAE_TILE[1]}",
                   help="TILE,STRIDE in pixels for vae:tiled (default diffusers' %(default)s, as --vae_tiling)")
    p.add_argument("--ckpt_dir", default=None, help="for the load mode")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--jsonl", default=None, help="append each row to this file (JSON lines) as it finishes")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[dict, tuple[int, int, int], torch.device, torch.dtype, list[str]]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device here (use --device cpu for the reduced shape)")
    on_cpu = device.type == "cpu"
    cfg = dict(CPU_REDUCED if on_cpu else FULL_14B)
    cfg.update({k: getattr(args, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers") if getattr(args, k)})
    cfg.update(text_dim=4096, clip_dim=1280, text_len=TEXT_LEN, in_dim=36, in_dim_c=16, out_dim=16)
    frames = args.frames or (9 if on_cpu else 81)
    if frames % 4 != 1:
        raise InputError(f"--frames: expected 4n+1, got {frames}")
    shape = latent_shape(frames, args.size or ("256*144" if on_cpu else "1024*576"))
    from steadydancer.models.memory import DTYPES

    dtype = DTYPES[args.dtype or ("fp32" if on_cpu else "bf16")]
    default_modes = "plain,block_swap:1,fp8,batched" if on_cpu else "plain,block_swap:20,block_swap:0,fp8,batched,token_chunk:8192"
    modes = [m.strip() for m in (args.modes or default_modes).split(",") if m.strip()]
    for mode in modes:
        if mode in VAE_MODES + ("cfg_parallel",):
            continue
        if mode.startswith("attention:"):
            if mode.partition(":")[2] not in ATTENTION_KERNELS:
                raise InputError(f"--modes: {mode!r}: expected attention:NAME with NAME one of "
                                 f"{', '.join(ATTENTION_KERNELS)}")
            continue
        if mode.split(":")[0] in CACHE_MODES:
            try:
                if float(mode.split(":")[1]) < 0:
                    raise ValueError
            except (IndexError, ValueError):
                raise InputError(f"--modes: {mode!r}: expected {mode.split(':')[0]}:T with a threshold T >= 0") from None
            continue
        if mode not in SIMPLE_MODES + LOAD_MODES and not mode.startswith(("block_swap", "token_chunk")):
            raise InputError(f"--modes: unknown mode {mode!r} (expected "
                             f"{', '.join(SIMPLE_MODES + LOAD_MODES + VAE_MODES)}, block_swap:K, token_chunk:N, "
                             f"magcache:T, fbcache:T, attention:NAME or cfg_parallel)")
        if mode.startswith("block_swap"):
            from steadydancer.models.block_swap import check_blocks_on_gpu
            try:
                count = int(mode.split(":")[1])
            except (IndexError, ValueError):
                raise InputError(f"--modes: {mode!r}: expected block_swap:K") from None
            check_blocks_on_gpu(count, cfg["num_layers"], flag=f"--modes {mode}")
        if mode.startswith("token_chunk"):
            _, _, tokens = mode.partition(":")
            if not tokens.isdigit() or int(tokens) < 1:
                raise InputError(f"--modes: {mode!r}: expected token_chunk:N with N >= 1 tokens")
        if mode == "fp8_matmul":
            from steadydancer.models.quant.fp8 import check_fp8_matmul_supported
            check_fp8_matmul_supported(device)
    return cfg, shape, device, dtype, modes


def parse_vae_tile(text: str) -> tuple[int, int]:
    """--vae_tile 'TILE,STRIDE' -> (tile, stride) in pixels, both multiples of 8, 0 < stride <= tile."""
    try:
        tile, stride = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--vae_tile: expected TILE,STRIDE in pixels (e.g. 256,192), got {text!r}") from None
    if not 0 < stride <= tile or tile % 8 or stride % 8:
        raise InputError(f"--vae_tile: tile {tile} and stride {stride} must be multiples of 8 with 0 < stride <= tile")
    return tile, stride


TABLE_HEAD = ("| mode | s/forward | s/step | TFLOP/s | of peak | GPU peak GiB | host peak GiB | wall s |\n"
              "|---|---|---|---|---|---|---|---|")


def format_row(r: dict, peak: float | None) -> str:
    """One markdown table line for a result row."""
    wall = f"{r['wall_s']:.0f}" if "wall_s" in r else ""
    if "error" in r:
        return f"| {r['mode']} | failed: {r['error']} | | | | | | {wall} |"
    if "refused" in r:     # the kernel cannot run here: the reason generate gives, not a failure
        return f"| {r['mode']} | refused: {r['refused']} | | | | | | {wall} |"
    gpu = f"{r['gpu_peak_gib']:.2f}" if "gpu_peak_gib" in r else "n/a"
    if r["mode"] in VAE_MODES:  # a decode, not a DiT forward: seconds in the s/forward column
        what = f"{r['frames']} frames {r['width']}x{r['height']}, VAE dim {r['vae_dim']}"
        if r["mode"] == "vae:tiled":
            what += (f", {r['tiles']} tiles of {r['tile_px']} px at stride {r['stride_px']}; vs untiled: max abs diff "
                     f"{r['max_abs_diff']:.3g}, mean {r['mean_abs_diff']:.3g}")
        host = f"{r['host_peak_gib']:.2f}"
        if r.get("host_peak_is_decode_only"):   # the peak during the decode, and the RSS it started from
            host += f" ({r['host_before_gib']:.2f} before)"
        return f"| {r['mode']} ({what}) | decode {r['decode_s']:.2f} s | | | | {gpu} | {host} | {wall} |"
    if r["mode"] in LOAD_MODES:
        return (f"| {r['mode']} ({r['stored_gib']:.2f} GiB stored -> {r['model_gib']:.2f} GiB model) "
                f"| load {r['load_s']:.1f} s | | | | {gpu} | {r['host_peak_gib']:.2f} | {wall} |")
    frac = f"{r['tflops'] / peak:.0%}" if peak else "n/a"
    if "skipped" in r:     # a step-cache row: s/step cached vs uncached, skips and error in the mode cell
        return (f"| {r['mode']} ({r['skipped']} of {r['forwards']} forwards skipped, rel. error {r['rel_err']:.2e}, "
                f"uncached {r['uncached_step_s']:.3f} s/step over {r['cache_steps']} steps) | {r['forward_s']:.3f} "
                f"| {r['step_s']:.3f} | {r['tflops']:.3g} | {frac} | {gpu} | {r['host_peak_gib']:.2f} | {wall} |")
    mode = r["mode"]
    if "cfg_rel_err" in r:   # TFLOP/s and "of peak" count both GPUs' work against one GPU's peak
        mode += (f" ({r['processes']} processes, TFLOP/s of both; s/forward = a 2-pass step, "
                 f"a 3-pass step {r['cfg_step3_s']:.3f} s; gathered vs own forwards rel. error {r['cfg_rel_err']:.2e})")
    if "rel_err_vs_sdpa" in r:
        mode += f" (rel. error vs SDPA {r['rel_err_vs_sdpa']:.2e})"
    return (f"| {mode} | {r['forward_s']:.3f} | {r['step_s']:.3f} | {r['tflops']:.3g} | {frac} "
            f"| {gpu} | {r['host_peak_gib']:.2f} | {wall} |")


def format_table(rows: list[dict], peak: float | None) -> str:
    return "\n".join([TABLE_HEAD] + [format_row(r, peak) for r in rows])


def run_worker(mode: str, base_args: list[str], device: torch.device | None = None) -> dict:
    """Run one mode in its own process (cfg_parallel: two, under torchrun); its row (or {"mode",
    "error"}, or {"mode", "refused"} when the machine cannot run it)."""
    started = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve())] + base_args + ["--worker", mode]
    if mode == "cfg_parallel":
        if device is not None and device.type == "cuda" and torch.cuda.device_count() < 2:
            return {"mode": mode, "refused": f"needs two GPUs, {torch.cuda.device_count()} visible",
                    "wall_s": time.perf_counter() - started}
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_ROW ")]
    if proc.returncode or not found:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        row = {"mode": mode, "error": tail[:200]}
    else:
        row = json.loads(found[-1][len("BENCH_ROW "):])
    row["wall_s"] = time.perf_counter() - started
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, shape, device, dtype, modes = resolve(args)
        vae_tile = parse_vae_tile(args.vae_tile)
        if args.vae_dim < 1:
            raise InputError(f"--vae_dim: expected a positive width, got {args.vae_dim}")
        if args.worker:
            row = run_mode(args.worker, cfg, shape, device, dtype, args.repeats, args.ckpt_dir,
                           vae_dim=args.vae_dim, vae_tile=vae_tile)
            if os.environ.get("RANK", "0") == "0":   # cfg_parallel: one row, rank 0's
                print("BENCH_ROW " + json.dumps(row))
            return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    peak = device_peak_tflops(device, args.peak_tflops)
    f, h, w = shape
    header = f"device: {device_name(device)}; dtype {str(dtype).replace('torch.', '')}"
    if any(mode not in LOAD_MODES + VAE_MODES for mode in modes):
        header += (f"; DiT dim {cfg['dim']}, ffn {cfg['ffn_dim']}, heads {cfg['num_heads']}, layers "
                   f"{cfg['num_layers']}; latent {f}x{h}x{w} ({(f + 2) * (h // 2) * (w // 2)} tokens); "
                   f"{forward_flops(cfg, *shape) / 1e12:.2f} TFLOP per forward; peak {peak or 'unknown'} TFLOP/s")
    if any(mode in VAE_MODES for mode in modes):
        header += (f"; VAE dim {args.vae_dim} float32, latent 16x{f}x{h}x{w} -> {4 * (f - 1) + 1} frames "
                   f"{8 * w}x{8 * h}, tiles {vae_tile[0]} px at stride {vae_tile[1]}")
    if args.ckpt_dir and any(mode in LOAD_MODES for mode in modes):
        header += f"; loads {args.ckpt_dir}"
    # the header and each row are printed (and appended to --jsonl) as soon as they exist, so a run
    # stopped part-way keeps every finished row
    print(header)
    print(TABLE_HEAD, flush=True)
    if args.jsonl:
        with open(args.jsonl, "a") as out:
            out.write(json.dumps({"header": header}) + "\n")
    rows = []
    base = list(argv if argv is not None else sys.argv[1:])
    for mode in modes:
        row = run_worker(mode, base, device)
        rows.append(row)
        print(format_row(row, peak), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as out:
                out.write(json.dumps(row) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
