"""The generation pipeline under torchrun: every rank runs it, the DiT (and T5) are sharded
and/or sequence-parallel, rank 0 writes the video.

Every rank computes the same noise (rank 0's seed, broadcast), the same conditions and, through
the gathered DiT outputs, the same sampler steps; only rank 0 writes the mp4.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ..errors import InputError
from ..pipeline import config as C
from ..models.memory import load_dit_with_options
from ..options import SamplingOptions
from ..pipeline.i2v import DancerPipeline
from ..pipeline.run import check_inputs, generate_to_file
from .launch import DistributedSetup

log = logging.getLogger(__name__)


class DistributedDancerPipeline(DancerPipeline):
    """:class:`DancerPipeline` whose DiT and T5 go through the :class:`DistributedSetup`.

    Models stay on the GPU (no offloading, as the official code does with several processes).
    With ``dit_fsdp`` the DiT is loaded on the CPU and each block moves to the GPU only to be
    sharded, so no GPU ever holds the whole model.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, setup: DistributedSetup, t5_cpu: bool = False,
                 dit_dtype: torch.dtype | None = None, memory=None, keep_models: bool = False) -> None:
        if t5_cpu and setup.t5_fsdp:
            raise InputError("--t5_cpu and --t5_fsdp exclude each other: T5 either stays on the CPU or is "
                             "sharded over the GPUs")
        check_parallel_memory_options(memory, dit_fsdp=setup.dit_fsdp, sequence_parallel=setup.sequence_parallel)
        super().__init__(ckpt_dir, device=setup.device, offload_model=False, t5_cpu=t5_cpu,
                         dit_dtype=dit_dtype, keep_models=keep_models, memory=memory)
        self.setup = setup

    def dit(self):
        if self._dit is None:
            where = torch.device("cpu") if self.setup.dit_fsdp else self.device
            log.info("loading DiT from %s (%s) on %s", self.ckpt_dir, str(self.dit_dtype).replace("torch.", ""), where)
            model = load_dit_with_options(self.ckpt_dir, where, self.dit_dtype, self.memory)
            self._dit = self.setup.prepare_dit(model)
        return self._dit

    def guidance_passes(self, guide_scale: float):
        """The single-process passes, dealt over this rank's CFG group with ``--cfg_parallel``."""
        return super().guidance_passes(guide_scale).with_split(self.setup.cfg)

    def decode(self, latent: torch.Tensor) -> torch.Tensor | None:
        """Only the group's first rank decodes (it alone writes the video), as the official code's
        rank 0; others get None."""
        return super().decode(latent) if self.setup.is_group_leader else None

    def text_encoder(self):
        if self._t5 is None:
            self._t5 = self.setup.prepare_text_encoder(super().text_encoder())
        return self._t5


def check_parallel_memory_options(memory, dit_fsdp: bool, sequence_parallel: bool) -> None:
    """Memory/speed flags that do not combine with several processes stop with one line.

    Everything else is allowed: a LoRA (merged on the host before FSDP shards the DiT),
    --batch_guidance (the sequence-parallel DiT takes a batch of 2-3 like the plain one),
    --dit_dtype, FP8/GGUF weights without --dit_fsdp (replicated), --fp8_matmul,
    --compile without sequence parallelism.
    """
    if memory is None:
        return
    if memory.block_swap:
        raise InputError("--blocks_on_gpu: block swap is a one-GPU mode; under torchrun use --dit_fsdp to "
                         "split the DiT's weights over the GPUs")
    if memory.compile and sequence_parallel:
        raise InputError("--compile with --ulysses_size/--ring_size is not supported (the sequence-parallel "
                         "attention's collectives inside compiled blocks are untested)")
    if dit_fsdp and (memory.dit_dtype == "fp8" or memory.dit_fp8_file or memory.gguf):
        raise InputError("--dit_fsdp with FP8 or GGUF weights is not supported; drop --dit_fsdp (the quantised "
                         "DiT is small enough to replicate) or use bf16 weights")


def generate_video_distributed(setup: DistributedSetup, *, ckpt_dir: str | os.PathLike, image: str | os.PathLike,
                               cond_pos_folder: str | os.PathLike, cond_neg_folder: str | os.PathLike,
                               prompt: str, save_file: str | os.PathLike, size: str = C.DEFAULT_SIZE,
                               frame_num: int | None = None, sampling: SamplingOptions | None = None,
                               seed: int = -1, t5_cpu: bool = False, negative_prompt: str | None = None,
                               progress: bool = True, memory=None, long_video=None) -> Path | None:
    """Multi-process version of :func:`steadydancer.pipeline.run.generate_video` (same inputs;
    ``memory``: a :class:`~steadydancer.options.MemoryOptions`, see :func:`check_parallel_memory_options`).

    Every rank must call it with the same arguments. Returns the written path on rank 0 and None
    on the others. ``long_video``: a :class:`~steadydancer.options.LongVideoOptions`
    (windows past its ``context_frames``; every rank runs every window, rank 0 decodes and writes).
    """
    sampling = sampling or SamplingOptions()
    max_area, frame_num = check_inputs(ckpt_dir, image, cond_pos_folder, cond_neg_folder, size, frame_num,
                                       save_file=save_file if setup.is_main else None, memory=memory)
    seed = setup.broadcast_seed(seed)

    started = time.perf_counter()
    pipeline = DistributedDancerPipeline(ckpt_dir, setup, t5_cpu=t5_cpu, memory=memory)
    log.info("rank %d/%d on %s, seed %d, %d frames, solver %s, %d steps", setup.rank, setup.world_size,
             pipeline.device, seed, frame_num, sampling.solver, sampling.steps)
    written = generate_to_file(pipeline, image=image, cond_pos_folder=cond_pos_folder,
                               cond_neg_folder=cond_neg_folder, prompt=prompt, save_file=save_file,
                               max_area=max_area, frame_num=frame_num, sampling=sampling, seed=seed,
                               negative_prompt=negative_prompt, progress=progress, long_video=long_video,
                               emit=setup.is_main, started=started)
    setup.barrier()
    return written
