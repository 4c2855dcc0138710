"""Memory and speed options of the DiT, from the command line to a loaded model.

Flags (``add_memory_arguments``):
  --dit_dtype bf16|fp16|fp32|fp8   weights' dtype (fp8: quantise the block linears on load)
  --dit_fp8_file PATH              load a ComfyUI/Kijai ``*_fp8_e4m3fn_scaled.safetensors`` DiT
  --gguf PATH                      load a ComfyUI-GGUF DiT (Q8_0, Q4_K ...; dequantised per layer)
  --fp8_matmul                     FP8 tensor-core matmuls for FP8 weights (CUDA capability >= 8.9)
  --lora PATH[:STRENGTH]           apply a LoRA (repeatable; strength 1 by default)
  --blocks_on_gpu K                keep K blocks on the GPU, stream the others (block swap)
  --batch_guidance                 run a step's guidance passes as one batched forward
  --token_chunk_size TOKENS        run each block's per-token work over at most TOKENS tokens at a time
  --compile                        torch.compile each transformer block
  --step_cache none|magcache|fbcache|taylorseer  skip DiT forwards (--cache_threshold X, --cache_ratios FILE,
                                     --cache_interval N)
  --attention auto|sage|flash3|flash2|sdpa  attention kernel (sage: SageAttention, optional)

Order of work in ``load_dit_with_options``: load (streamed, in the stored low precision where
asked) -> LoRA -> token chunking -> block swap -> compile. With a block count, the model is loaded to the host and
only the resident blocks and the two swap slots go to the GPU.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from steadydancer.errors import InputError
from steadydancer.options import MemoryOptions

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

log = logging.getLogger(__name__)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the memory/speed flags to a command's parser (their own group)."""
    group = parser.add_argument_group("memory and speed")
    group.add_argument("--dit_dtype", default=None, choices=["bf16", "fp16", "fp32", "fp8"],
                       help="DiT weight dtype (default bf16 on GPU, fp32 on CPU); fp8 quantises the block "
                            "linears to e4m3 with per-tensor scales on load (half the memory)")
    group.add_argument("--dit_fp8_file", default=None, metavar="PATH",
                       help="a *_fp8_e4m3fn_scaled.safetensors DiT (ComfyUI/Kijai layout) instead of the shards")
    group.add_argument("--gguf", default=None, metavar="PATH",
                       help="a GGUF DiT (MCG-NJU/SteadyDancer-GGUF, ComfyUI-GGUF layout) instead of the shards")
    group.add_argument("--fp8_matmul", action="store_true", default=False,
                       help="FP8 tensor-core matmuls for FP8 weights (Ada/Hopper, CUDA capability >= 8.9)")
    group.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                       help="apply a LoRA for the Wan 2.1 I2V 14B DiT at a strength (default 1); repeatable. "
                            "Step-distilled LoRAs want e.g. --sample_steps 4 --sample_guide_scale 1")
    group.add_argument("--blocks_on_gpu", type=int, default=None, metavar="K",
                       help="block swap: keep K of the DiT's blocks on the GPU and stream the rest from "
                            "pinned host memory, prefetching the next block during compute")
    group.add_argument("--batch_guidance", action="store_true", default=False,
                       help="run the 2-3 guidance passes of a step as one batched forward (more memory, faster)")
    group.add_argument("--compile", action="store_true", default=False,
                       help="torch.compile each transformer block (first steps are slower)")
    group.add_argument("--token_chunk_size", type=int, default=None, metavar="TOKENS",
                       help="long videos: run each block's per-token work (norms, projections, "
                            "cross-attention, feed-forward) over at most TOKENS tokens at a time, only the "
                            "self-attention kernel over all; about halves a block's activation peak; e.g. 8192")
    # speed: step caching (docs/speed.md)
    group.add_argument("--step_cache", default="none", choices=["none", "magcache", "fbcache", "taylorseer"],
                       help="skip DiT forwards the previous steps predict (diffusers' MagCache / first-block "
                            "cache / TaylorSeer hooks, one cache per guidance pass); the log ends with how many "
                            "were skipped")
    group.add_argument("--cache_threshold", type=float, default=None, metavar="X",
                       help="step cache threshold (default magcache 0.06, fbcache 0.05; 0 skips nothing)")
    group.add_argument("--cache_interval", type=int, default=None, metavar="N",
                       help="taylorseer: a full forward every N steps after the first 3, extrapolated in between "
                            "(default 5, diffusers'; 1 skips nothing)")
    group.add_argument("--attention", default=None, choices=["auto", "sage", "flash3", "flash2", "sdpa"],
                       help="attention kernel (default auto: SageAttention when installed and the GPU takes it, "
                            "else flash-attn 3, flash-attn 2, SDPA); a forced one that cannot run stops with the reason")
    group.add_argument("--vae_tiling", action="store_true", default=False,
                       help="VAE encode and decode in overlapping 256 px tiles (diffusers' tiling; decode still "
                            "streamed): a lower VAE peak at large sizes, output not bit-identical (docs/speed.md)")
    group.add_argument("--cache_ratios", default=None, metavar="FILE",
                       help="MagCache magnitude ratios (steadydancer calibrate-cache, or "
                            "configs/magcache/wan21_i2v_14b_480p.json as a starting point)")


def memory_options_from_args(args: argparse.Namespace) -> MemoryOptions:
    """Check the flags (one-line InputError) and bundle them; files must exist."""
    from steadydancer.models.lora import parse_lora_arg

    dit_fp8_file = Path(args.dit_fp8_file) if getattr(args, "dit_fp8_file", None) else None
    gguf = Path(args.gguf) if getattr(args, "gguf", None) else None
    if dit_fp8_file and gguf:
        raise InputError("--dit_fp8_file and --gguf: choose one DiT weights file")
    for flag, path in (("--dit_fp8_file", dit_fp8_file), ("--gguf", gguf)):
        if path is not None and not path.is_file():
            raise InputError(f"{flag}: file not found: {path}")
    dit_dtype = getattr(args, "dit_dtype", None)
    if gguf and dit_dtype == "fp8":
        raise InputError("--dit_dtype fp8 with --gguf: the GGUF file fixes the weights' precision; "
                         "--dit_dtype may only name the compute dtype (bf16, fp16, fp32)")
    fp8_matmul = bool(getattr(args, "fp8_matmul", False))
    if fp8_matmul and not (dit_dtype == "fp8" or dit_fp8_file):
        raise InputError("--fp8_matmul: needs FP8 weights (--dit_dtype fp8 or --dit_fp8_file)")
    blocks_on_gpu = getattr(args, "blocks_on_gpu", None)
    if blocks_on_gpu is not None and blocks_on_gpu < 0:
        raise InputError(f"--blocks_on_gpu: expected a whole number from 0 to the DiT's block count, "
                         f"got {blocks_on_gpu}")
    token_chunk_size = getattr(args, "token_chunk_size", None)
    if token_chunk_size is not None and token_chunk_size < 1:
        raise InputError(f"--token_chunk_size: expected a number of tokens >= 1, got {token_chunk_size}")
    loras = [parse_lora_arg(value) for value in getattr(args, "lora", None) or []]
    step_cache = getattr(args, "step_cache", None) or "none"
    cache_threshold = getattr(args, "cache_threshold", None)
    cache_ratios = Path(args.cache_ratios) if getattr(args, "cache_ratios", None) else None
    cache_interval = getattr(args, "cache_interval", None)
    if step_cache != "none" or cache_threshold is not None or cache_ratios is not None or cache_interval is not None:
        from steadydancer.models.step_cache import check_step_cache_options, read_cache_ratios

        check_step_cache_options(step_cache, cache_threshold, cache_ratios, interval=cache_interval)
        if cache_ratios is not None:
            read_cache_ratios(cache_ratios)              # unreadable: one line now, not after loading
        if step_cache == "fbcache" and getattr(args, "ulysses_size", 1) * getattr(args, "ring_size", 1) > 1:
            raise InputError("--step_cache fbcache with sequence parallelism: each process would decide from its "
                             "own share of the tokens; use --step_cache magcache (its decisions need no tokens)")
        if getattr(args, "batch_guidance", False):
            raise InputError("--step_cache with --batch_guidance: the cache keeps one state per guidance pass, "
                             "which needs the passes as separate forwards; drop --batch_guidance")
    return MemoryOptions(dit_dtype=dit_dtype, dit_fp8_file=dit_fp8_file, gguf=gguf, fp8_matmul=fp8_matmul,
                         loras=loras, blocks_on_gpu=blocks_on_gpu,
                         batch_guidance=bool(getattr(args, "batch_guidance", False)),
                         compile=bool(getattr(args, "compile", False)), token_chunk_size=token_chunk_size,
                         step_cache=step_cache, cache_threshold=cache_threshold, cache_ratios=cache_ratios,
                         cache_interval=cache_interval,
                         attention=getattr(args, "attention", None),
                         vae_tiling=bool(getattr(args, "vae_tiling", False)))


def dit_weights_shapes(options: MemoryOptions) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of the GGUF / FP8 DiT file ``options`` name (None: no such file)."""
    if options.gguf is not None:
        from steadydancer.models.quant.gguf import gguf_file_shapes
        return gguf_file_shapes(options.gguf)
    if options.dit_fp8_file is not None:
        from steadydancer.models.quant.fp8 import fp8_file_shapes
        return fp8_file_shapes(options.dit_fp8_file)
    return None


def _meta_model(ckpt_dir: Path, options: MemoryOptions | None = None):
    """The DiT on the meta device. With a GGUF / FP8 file: config.json when ``ckpt_dir`` has one,
    else the architecture inferred from the file's tensors, with the widths that the file
    carries; otherwise config.json with the widths of the shards (tiny test models)."""
    from steadydancer.models.loading import build_meta_dit, index_checkpoint

    shapes = dit_weights_shapes(options) if options is not None else None
    if shapes is not None:
        return build_meta_dit(ckpt_dir, shapes, source=options.gguf or options.dit_fp8_file)
    try:
        entries = index_checkpoint(ckpt_dir)
    except InputError:
        entries = None
    return build_meta_dit(ckpt_dir, entries)


def dit_config_for(ckpt_dir: str | os.PathLike, options: MemoryOptions | None = None) -> dict:
    """The DiT's constructor arguments: config.json, or (no config.json, a GGUF / FP8 file given)
    the architecture inferred from the file's tensors."""
    from steadydancer.models.loading import CONFIG_NAME, infer_dit_config, read_dit_config

    shapes = dit_weights_shapes(options) if options is not None else None
    if shapes is not None and not (Path(ckpt_dir) / CONFIG_NAME).is_file():
        return infer_dit_config(shapes, str(options.gguf or options.dit_fp8_file))
    return read_dit_config(ckpt_dir)


def check_memory_options(ckpt_dir: str | os.PathLike, device: torch.device | str, options: MemoryOptions) -> None:
    """Everything about ``options`` that can be checked before a model loads (one-line InputError):
    the block count against the config, FP8 matmul hardware, and each LoRA against the DiT's
    layers and shapes (tried on a meta-device model: no memory, no data)."""
    from steadydancer.models.block_swap import check_blocks_on_gpu
    from steadydancer.models.lora import apply_lora

    if options.step_cache != "calibrate" and (options.step_cache != "none" or options.cache_threshold is not None
                                               or options.cache_ratios is not None
                                               or options.cache_interval is not None):   # the Python API's path
        from steadydancer.models.step_cache import check_step_cache_options

        check_step_cache_options(options.step_cache, options.cache_threshold, options.cache_ratios,
                                 interval=options.cache_interval)
        options.step_cache_options()                     # reads the ratios file: one line if unreadable
    check_attention_option(options.attention, device)
    if options.blocks_on_gpu is None and not options.fp8_matmul and not options.loras:
        return  # nothing to check: no meta model to build
    model = _meta_model(Path(ckpt_dir), options)
    if options.blocks_on_gpu is not None:
        check_blocks_on_gpu(options.blocks_on_gpu, len(model.blocks))
    if options.fp8_matmul:
        from steadydancer.models.quant.fp8 import check_fp8_matmul_supported
        check_fp8_matmul_supported(device)
    for path, strength in options.loras:
        apply_lora(model, path, strength)


def check_attention_option(attention: str | None, device: torch.device | str) -> None:
    """One-line InputError for a forced attention kernel that cannot run on ``device``."""
    from steadydancer.models import attention as kernels

    if attention in (None, "auto", "sdpa"):
        return
    if attention == "sage":
        reason = kernels.sage_refusal(device)
        if reason is not None:
            raise InputError(f"--attention sage: {reason}; use --attention auto (flash-attn or SDPA)")
        return
    if attention not in kernels.available_backends():
        raise InputError(f"--attention {attention}: its package is not installed "
                         f"(available here: {', '.join(kernels.available_backends())})")


def apply_attention_option(attention: str | None, device: torch.device | str) -> None:
    """Select the attention kernel for this process; in auto mode on a GPU, say in one line why
    SageAttention is not used when it is installed but refused."""
    from steadydancer.models import attention as kernels

    if attention is not None:
        kernels.set_attention_backend(attention)
    if attention in (None, "auto") and kernels._sage is not None:
        reason = kernels.sage_refusal(device)
        if reason is not None and torch.device(device).type == "cuda":
            log.warning("attention: SageAttention not used: %s; using %s", reason,
                        ", ".join(b for b in kernels.available_backends() if b != "sage"))


def load_dit_with_options(ckpt_dir: str | os.PathLike, device: torch.device | str,
                          default_dtype: torch.dtype, options: MemoryOptions) -> nn.Module:
    """Load the DiT as ``options`` ask; returns it ready to run on ``device``.

    With block swap the returned model has its resident part on ``device`` and the rest in host
    memory (``model.block_swap`` holds the BlockSwap); do not call ``.to(device)`` on it.
    """
    from steadydancer.models.block_swap import check_blocks_on_gpu, enable_block_swap
    from steadydancer.models.loading import load_dit

    ckpt_dir = Path(ckpt_dir)
    device = torch.device(device)
    compute = DTYPES.get(options.dit_dtype or "", default_dtype)
    if options.fp8_matmul:
        from steadydancer.models.quant.fp8 import check_fp8_matmul_supported
        check_fp8_matmul_supported(device)
    load_device = torch.device("cpu") if options.block_swap else device
    if options.gguf is not None:
        from steadydancer.models.quant.gguf import load_gguf
        model = load_gguf(_meta_model(ckpt_dir, options), options.gguf, device=load_device, dtype=compute)
    elif options.dit_fp8_file is not None:
        from steadydancer.models.quant.fp8 import load_fp8_scaled
        model = load_fp8_scaled(_meta_model(ckpt_dir, options), options.dit_fp8_file, device=load_device,
                                dtype=compute, fp8_matmul=options.fp8_matmul)
    elif options.dit_dtype == "fp8":
        # Each block is quantised on the device as soon as its tensors are read, so neither host
        # nor GPU ever holds more than one block in the compute dtype.
        from steadydancer.models.quant.fp8 import quantize_model_fp8

        def quantise(block: nn.Module) -> None:
            quantize_model_fp8(block, under="", fp8_matmul=options.fp8_matmul)
            block.to(load_device)

        model = load_dit(ckpt_dir, device=device, dtype=compute, on_block_loaded=quantise)
        model.to(load_device)
    else:
        model = load_dit(ckpt_dir, device=load_device, dtype=compute)
    if options.blocks_on_gpu is not None:
        check_blocks_on_gpu(options.blocks_on_gpu, len(model.blocks))
    apply_attention_option(options.attention, device)
    from steadydancer.models.lora import apply_lora
    for path, strength in options.loras:
        apply_lora(model, path, strength, compute_dtype=compute)
    if options.token_chunk_size is not None:
        for block in model.blocks:
            block.token_chunk_size = options.token_chunk_size
    if options.blocks_on_gpu is not None:
        model.block_swap = enable_block_swap(model, options.blocks_on_gpu, device)
    if options.compile:
        compile_blocks(model)
    return model


def compile_blocks(model: nn.Module, **compile_kwargs) -> None:
    """torch.compile every transformer block's forward in place (embed and unembed stay eager).

    The forward is compiled rather than the module call so that the block-swap hooks stay
    outside the compiled graph.
    """
    for block in model.blocks:
        block.forward = torch.compile(block.forward, **compile_kwargs)


def sampler_passes(options: MemoryOptions | None, guide_scale: float) -> Callable:
    """The ``passes`` function for ``sample_dc_cfg``: batched or not, and without the
    negative-text pass when ``guide_scale`` is 1 (it would not change the result)."""
    from steadydancer.sampling.batched import make_passes

    return make_passes(batch_guidance=bool(options and options.batch_guidance),
                       skip_negative_text=guide_scale == 1.0)
