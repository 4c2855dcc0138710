"""From files to the mp4: check every input, load the models, generate, write atomically."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..pose.video import write_video
from . import config as C
from ..options import SamplingOptions, check_frame_num, max_area_for
from .i2v import DancerPipeline, verify_checkpoint, video_to_frames
from .inputs import check_output_file, check_pose_folders, load_image, read_inputs, resolve_frame_num

if TYPE_CHECKING:
    from ..options import LongVideoOptions, MemoryOptions

log = logging.getLogger(__name__)


def generate_video(*, ckpt_dir: str | os.PathLike, image: str | os.PathLike, cond_pos_folder: str | os.PathLike,
                   cond_neg_folder: str | os.PathLike, prompt: str, save_file: str | os.PathLike,
                   size: str = C.DEFAULT_SIZE, frame_num: int | None = None,
                   sampling: SamplingOptions | None = None, seed: int = -1,
                   offload_model: bool | None = None, t5_cpu: bool = False,
                   device: torch.device | str | None = None, negative_prompt: str | None = None,
                   progress: bool = True, memory: "MemoryOptions | None" = None,
                   long_video: "LongVideoOptions | None" = None) -> Path:
    """Generate the video for one input set and write it to ``save_file`` (H.264 mp4, 16 fps):
    one generation in one process with a pipeline used once (``steadydancer generate`` runs the
    same through :func:`steadydancer.api.generate_video`).

    All inputs are checked (InputError, one line) before any model loads; the mp4 appears only
    when complete. ``frame_num`` None: up to 81 frames (4n+1), as many as the pose folders hold.
    ``long_video``: how more than ``long_video.context_frames`` frames are generated (windows;
    None: one window of any length). Returns the path written.
    """
    # every input, the checkpoint included, is checked before the pipeline exists
    check_inputs(ckpt_dir, image, cond_pos_folder, cond_neg_folder, size, frame_num, save_file=save_file,
                 memory=memory)
    pipeline = DancerPipeline(ckpt_dir, device=device, offload_model=offload_model, t5_cpu=t5_cpu,
                              keep_models=False, memory=memory)
    return generate_from_files(pipeline, image=image, cond_pos_folder=cond_pos_folder,
                               cond_neg_folder=cond_neg_folder, prompt=prompt, save_file=save_file, size=size,
                               frame_num=frame_num, sampling=sampling, seed=seed, negative_prompt=negative_prompt,
                               long_video=long_video, progress=progress)


def generate_from_files(pipeline: DancerPipeline, *, image: str | os.PathLike, cond_pos_folder: str | os.PathLike,
                        cond_neg_folder: str | os.PathLike, prompt: str, save_file: str | os.PathLike,
                        size: str = C.DEFAULT_SIZE, frame_num: int | None = None,
                        sampling: SamplingOptions | None = None, seed: int = -1,
                        negative_prompt: str | None = None, long_video: "LongVideoOptions | None" = None,
                        progress: bool = True) -> Path:
    """Check the input files (not the checkpoint: ``pipeline`` has it), log the settings and
    generate into ``save_file``: the body of
    :meth:`steadydancer.api.SteadyDancerPipeline.generate_to_file`. Returns the path written."""
    sampling = sampling or SamplingOptions()
    max_area, frame_num = check_inputs(pipeline.ckpt_dir, image, cond_pos_folder, cond_neg_folder, size,
                                       frame_num, save_file=save_file, memory=pipeline.memory,
                                       checkpoint_verified=True)
    log.info("device %s, offload_model %s, t5_cpu %s, %d frames, solver %s, %d steps, shift %g",
             pipeline.device, pipeline.offload_model, pipeline.t5_cpu, frame_num, sampling.solver,
             sampling.steps, sampling.shift)
    return generate_to_file(pipeline, image=image, cond_pos_folder=cond_pos_folder,
                            cond_neg_folder=cond_neg_folder, prompt=prompt, save_file=save_file,
                            max_area=max_area, frame_num=frame_num, sampling=sampling, seed=seed,
                            negative_prompt=negative_prompt, progress=progress, long_video=long_video,
                            started=time.perf_counter())


def generate_to_file(pipeline: DancerPipeline, *, image: str | os.PathLike, cond_pos_folder: str | os.PathLike,
                     cond_neg_folder: str | os.PathLike, prompt: str, save_file: str | os.PathLike | None,
                     max_area: int, frame_num: int, sampling: SamplingOptions, seed: int = -1,
                     negative_prompt: str | None = None, progress: bool = True,
                     long_video: "LongVideoOptions | None" = None, emit: bool = True,
                     started: float | None = None) -> Path | None:
    """One generation with an existing ``pipeline`` (inputs already checked, see :func:`check_inputs`).

    The one path from checked files to the mp4, shared by ``generate``, its torchrun version and
    ``batch`` (which keeps one pipeline for many rows). ``emit`` False (torchrun ranks other than
    a group's first): run every step, decode and write nothing, return None.
    """
    started = time.perf_counter() if started is None else started
    if long_video is not None and long_video.windowed(frame_num):
        from .long_video import generate_long_video_file

        written = generate_long_video_file(pipeline, image=image, cond_pos_folder=cond_pos_folder,
                                           cond_neg_folder=cond_neg_folder, prompt=prompt, save_file=save_file,
                                           max_area=max_area, frame_num=frame_num, sampling=sampling,
                                           options=long_video, seed=seed, negative_prompt=negative_prompt,
                                           progress=progress and emit, emit=emit, started=started)
        if written is not None:
            write_provenance_sidecar(written, cond_pos_folder, frame_num)
        return written
    inputs = read_inputs(image, cond_pos_folder, cond_neg_folder, prompt, frame_num)
    video = pipeline.generate(inputs.image, inputs.pose_first, inputs.positive, inputs.negative, prompt,
                              max_area=max_area, frame_num=frame_num, sampling=sampling, seed=seed,
                              negative_prompt=negative_prompt, progress=progress and emit)
    if not emit:
        return None
    written = save_video(video, save_file, started)
    write_provenance_sidecar(written, cond_pos_folder, frame_num)
    return written


def write_provenance_sidecar(save_file: str | os.PathLike, cond_pos_folder: str | os.PathLike,
                             frame_num: int) -> Path | None:
    """Record in ``save_file``'s sidecar (``X.json``) which driving frames made its ``frame_num`` frames:
    the ``provenance.json`` of the prepared folder holding ``cond_pos_folder``, cut to the frames used.
    Pose folders from elsewhere (no provenance.json) get no record; returns the sidecar written or None."""
    from ..pose.prepare import PROVENANCE_NAME
    from .sidecar import update_sidecar

    record_path = Path(cond_pos_folder).parent / PROVENANCE_NAME
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        indices = [int(i) for i in record["frame_indices"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s); %s gets no provenance record", record_path, exc, Path(save_file).name)
        return None
    if len(indices) < frame_num:
        log.warning("%s lists %d frames, fewer than the %d generated; %s gets no provenance record",
                    record_path, len(indices), frame_num, Path(save_file).name)
        return None
    provenance = {"source_video": record.get("source_video"), "frame_indices": indices[:frame_num],
                  "fps": record.get("fps"), "target_fps": record.get("target_fps")}
    return update_sidecar(save_file, provenance=provenance)


def check_inputs(ckpt_dir: str | os.PathLike, image: str | os.PathLike, cond_pos_folder: str | os.PathLike,
                 cond_neg_folder: str | os.PathLike, size: str, frame_num: int | None,
                 save_file: str | os.PathLike | None = None,
                 memory: "MemoryOptions | None" = None, checkpoint_verified: bool = False) -> tuple[int, int]:
    """Check every input before any model loads (InputError, one line); returns (max_area, frame_num).

    ``frame_num`` None: up to 81 frames (4n+1), as many as the pose folders hold. ``save_file``:
    the output, checked to be writable (None: not checked). The checkpoint folder is verified
    whole (:func:`~steadydancer.pipeline.i2v.verify_checkpoint`); ``memory``: whether the DiT
    comes from a GGUF/FP8 file instead of the shards; ``checkpoint_verified``: done already (a
    batch verifies it once, not per row).
    """
    max_area = max_area_for(size)
    if frame_num is not None:
        check_frame_num(frame_num)
    available = check_pose_folders(cond_pos_folder, cond_neg_folder)
    frame_num = resolve_frame_num(frame_num, available, C.DEFAULT_FRAME_NUM, cond_pos_folder)
    load_image(image)  # readable?
    if not checkpoint_verified:
        verify_checkpoint(ckpt_dir, dit_from_other_file=bool(memory and (memory.gguf or memory.dit_fp8_file)))
    if save_file is not None:
        check_output_file(save_file)
    return max_area, frame_num


def save_video(video: torch.Tensor, save_file: str | os.PathLike, started: float) -> Path:
    """Write the generated video [3, N, H, W] in [-1, 1] as H.264 mp4 at 16 fps (atomically)."""
    frames = video_to_frames(video)
    count = write_video(save_file, (f.numpy() for f in frames), fps=C.SAMPLE_FPS)
    log.info("saved %d frames (%dx%d, %d fps) to %s in %.1f s", count, frames.shape[2], frames.shape[1],
             C.SAMPLE_FPS, save_file, time.perf_counter() - started)
    return Path(save_file)
