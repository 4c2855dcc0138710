"""The Python API, in diffusers' conventions: :class:`SteadyDancerPipeline` and :func:`prepare_pose`.

    from steadydancer import SteadyDancerPipeline, prepare_pose, export_to_video

    pipe = SteadyDancerPipeline.from_pretrained("SteadyDancer-14B", device="cuda")
    prepared = prepare_pose("ref.png", "dance.mp4")          # the pose stage (detect, align, draw)
    video = pipe(prepared, num_frames=81, seed=106060).frames[0]
    export_to_video(video, "out.mp4")

This module only converts inputs and outputs: the generation itself is
:meth:`steadydancer.pipeline.i2v.DancerPipeline.generate` (or the long-video functions of
``steadydancer.pipeline.long_video``), the same code ``steadydancer generate`` runs. See
docs/python_api.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .options import (SOLVERS, LongVideoOptions, MemoryOptions, SamplingOptions, check_seed, draw_seed, is_integer,
                      is_real)
from .pipeline import config as C
from .pipeline.inputs import LazyFrames, PreparedFolder

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# One set of defaults for the command line, the API and the UI: the official generate_dancer.py's
# (SamplingOptions), size 1280*720 included.
DEFAULT_SAMPLING = SamplingOptions()
DEFAULT_API_SIZE = C.DEFAULT_SIZE
DIT_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# diffusers' name of what a step callback may read and replace
CALLBACK_TENSOR_INPUTS = ("latents",)

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor, str, os.PathLike]
PoseVideoInput = Union[Sequence[ImageInput], np.ndarray, torch.Tensor, str, os.PathLike]


# -- input conversion -------------------------------------------------------------------------

def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    """[H, W, 3|4|1] or [H, W], uint8 or float in [0, 1] -> RGB PIL."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"{name}: expected an image array [H, W, 3], got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{name}: unsupported array dtype {array.dtype}")
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8) \
            if np.issubdtype(array.dtype, np.floating) else np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _tensor_to_pil(tensor: torch.Tensor, name: str) -> Image.Image:
    """[3, H, W] (or [H, W, 3]) uint8, or float in [0, 1] -> RGB PIL."""
    tensor = tensor.detach().cpu()
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)  # channels first, as torchvision and diffusers
    if tensor.is_floating_point():
        tensor = tensor.float()
    return _array_to_pil(tensor.numpy(), name)


def _load_image_file(path: Path, name: str) -> Image.Image:
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"{name}: cannot read {path}: not an image file") from None


def to_pil_image(value: ImageInput, name: str = "image") -> Image.Image:
    """One RGB PIL image from a PIL image, an array [H, W, 3] (uint8, or float in [0, 1]), a
    tensor [3, H, W] (uint8, or float in [0, 1]) or an image file path. InputError naming ``name``."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, os.PathLike)):
        return _load_image_file(Path(value), name)
    if isinstance(value, np.ndarray):
        return _array_to_pil(value, name)
    if isinstance(value, torch.Tensor):
        return _tensor_to_pil(value, name)
    raise InputError(f"{name}: expected a PIL image, an array, a tensor or a file path, got {type(value).__name__}")


class FolderFrames(LazyFrames):
    """Pose frames 0000.jpg ... of a folder as RGB PIL images, read only when indexed (a long
    video's frames are never all in memory)."""

    def __init__(self, folder: str | os.PathLike, count: int | None = None, name: str = "pose_video") -> None:
        from .pipeline.inputs import count_pose_frames

        self.folder = Path(folder)
        self.count = count_pose_frames(self.folder, name) if count is None else count
        self.name = name

    def frame(self, index: int) -> Image.Image:
        return _load_image_file(self.folder / f"{index:04d}.jpg", self.name)


class ResizedFrames(LazyFrames):
    """``frames[i]`` PIL-bicubic-resized to ``size`` (W, H), as the CLI reads pose folders."""

    def __init__(self, frames: Sequence[Image.Image], size: tuple[int, int], count: int) -> None:
        self.frames, self.size, self.count = frames, size, count

    def frame(self, index: int) -> Image.Image:
        return self.frames[index].resize(self.size, Image.Resampling.BICUBIC)


def to_pose_frames(value: PoseVideoInput, name: str = "pose_video",
                   max_frames: int | None = None) -> Sequence[Image.Image]:
    """Pose frames as a sequence of RGB PIL images (not resized).

    ``value``: a list of images (PIL, arrays [H, W, 3], tensors [3, H, W], paths), an array
    [N, H, W, 3] (uint8, or float in [0, 1]), a tensor [N, 3, H, W] (uint8, or float in
    [0, 1]), a folder of 0000.jpg ... (read lazily), a prepared folder (its positive/ frames) or
    a video file (at most ``max_frames`` frames read). InputError naming ``name``.
    """
    if isinstance(value, PreparedInputs):
        return value.positive
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_dir():
            if (path / "positive").is_dir() and not (path / "0000.jpg").is_file():
                path = path / "positive"
            frames = FolderFrames(path, name=name)
            if len(frames) == 0:
                raise InputError(f"{name}: {path}: no pose frames (0000.jpg ...) found")
            return frames
        if not path.is_file():
            raise InputError(f"{name}: not found: {path}")
        from .pose.video import iter_video

        try:
            arrays = list(iter_video(path, max_frames))
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        if not arrays:
            raise InputError(f"{name}: video {path} has no decodable frames")
        return [Image.fromarray(a) for a in arrays]
    if isinstance(value, np.ndarray):
        if value.ndim != 4:
            raise InputError(f"{name}: expected an array of frames [N, H, W, 3], got shape {tuple(value.shape)}")
        return [_array_to_pil(frame, name) for frame in value]
    if isinstance(value, torch.Tensor):
        if value.ndim != 4:
            raise InputError(f"{name}: expected a tensor of frames [N, 3, H, W], got shape {tuple(value.shape)}")
        return [_tensor_to_pil(frame, name) for frame in value]
    if isinstance(value, FolderFrames):  # already lazy RGB frames (a PreparedInputs' streams)
        return value
    if isinstance(value, Sequence):
        if not value:
            raise InputError(f"{name}: no frames given")
        return [to_pil_image(frame, f"{name}[{i}]") for i, frame in enumerate(value)]
    raise InputError(f"{name}: expected frames (a list of images, an array [N, H, W, 3], a tensor "
                     f"[N, 3, H, W]), a folder or a video file, got {type(value).__name__}")


def _sibling_negative(value: Any) -> Path | None:
    """The negative/ folder that goes with a prepared folder (or its positive/) given as a path."""
    if not isinstance(value, (str, os.PathLike)):
        return None
    path = Path(value)
    for candidate in (path / "negative", path.parent / "negative" if path.name == "positive" else None):
        if candidate is not None and candidate.is_dir() and (candidate / "0000.jpg").is_file():
            return candidate
    return None


def augment_negative(frames: Sequence[Image.Image], seed: int | None = 0) -> list[Image.Image]:
    """The negative pose stream made from drawn positive frames by the official augmentation
    (random aspect 0.6-1.4 and scale 0.7-1.3 about the neck per frame, seeded; see
    :func:`steadydancer.pose.augment.augment_frames`)."""
    from .pose.augment import augment_frames

    arrays = augment_frames([np.asarray(frame.convert("RGB")) for frame in frames], seed)
    return [Image.fromarray(a) for a in arrays]


# -- the pose stage ---------------------------------------------------------------------------

@dataclass
class PreparedInputs:
    """What the pose stage made: everything the pipeline needs for one video.

    ``image``: the reference (RGB, its own size). ``positive`` / ``negative``: the drawn pose
    frames (RGB PIL, twice the resized reference size; read lazily from ``folder``), equally
    many. ``prompt``: the text prompt. ``folder``: the prepared folder (ref_image.png,
    prompt.txt, positive/, negative/, all.mp4, keypoints.json). ``fps``: the poses' frame rate.
    """

    image: Image.Image
    positive: Sequence[Image.Image]
    negative: Sequence[Image.Image]
    prompt: str = ""
    folder: Path | None = None
    fps: float | None = None
    _temporary: bool = field(default=False, repr=False)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "PreparedInputs":
        """Read a folder written by ``steadydancer prepare`` (frames stay on disk until used)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"prepared folder not found: {folder}")
        files = PreparedFolder(folder)
        image = _load_image_file(files.image, "ref_image.png")
        positive = FolderFrames(files.positive, name="positive")
        negative = FolderFrames(files.negative, name="negative")
        if len(positive) == 0:
            raise InputError(f"{folder / 'positive'}: no pose frames (0000.jpg ...) found")
        if len(positive) != len(negative):
            raise InputError(f"{folder}: positive/ has {len(positive)} frames, negative/ {len(negative)}")
        prompt = files.prompt() or ""
        return cls(image=image, positive=positive, negative=negative, prompt=prompt, folder=folder,
                   fps=_poses_fps(folder))

    def __len__(self) -> int:
        return len(self.positive)

    @property
    def preview(self) -> Path | None:
        """all.mp4: reference | its pose | positive | negative | video | raw pose, side by side."""
        return None if self.folder is None else self.folder / "all.mp4"

    def as_kwargs(self) -> dict[str, Any]:
        """``pipe(**prepared.as_kwargs())``: image, pose_video, negative_pose_video, prompt."""
        return {"image": self.image, "pose_video": self.positive, "negative_pose_video": self.negative,
                "prompt": self.prompt}

    def cleanup(self) -> None:
        """Remove the folder when :func:`prepare_pose` made it in a temporary place."""
        if self._temporary and self.folder is not None:
            shutil.rmtree(self.folder.parent, ignore_errors=True)
            self.folder = None


def _poses_fps(folder: Path) -> float | None:
    import json

    try:
        return float(json.loads((folder / "keypoints.json").read_text())["driving"]["fps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_prepare_arguments(*, video: Any, out_dir: Any, prompt: Any, align_frame: Any, max_frame: Any,
                            target_fps: Any, seed: Any, backend: Any, detect_resolution: Any, device: Any,
                            all_people: Any, progress: Any) -> None:
    """Type and range of :func:`prepare_pose`'s arguments (one-line InputError, before any work)."""
    if not isinstance(video, (str, os.PathLike)):
        raise InputError(f"video: expected a video file path, got {type(video).__name__}")
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        raise InputError(f"out_dir: expected a folder path, got {type(out_dir).__name__}")
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt: expected a string, got {type(prompt).__name__}")
    if not is_integer(align_frame) or align_frame < 0:
        raise InputError(f"align_frame {align_frame!r}: expected a whole number >= 0")
    if max_frame is not None and (not is_integer(max_frame) or max_frame < 1):
        raise InputError(f"max_frame {max_frame!r}: expected a whole number >= 1 (or None: all)")
    if target_fps is not None and (not is_real(target_fps) or not 0 < target_fps <= 240):
        raise InputError(f"target_fps {target_fps!r}: expected a rate in (0, 240] (or None: the video's)")
    check_seed(seed, "seed", allow_random=False)
    if not isinstance(backend, str):
        raise InputError(f"backend {backend!r}: expected 'auto', 'mediapipe', 'onnx' or 'mmpose'")
    if not is_integer(detect_resolution) or detect_resolution < 64:
        raise InputError(f"detect_resolution {detect_resolution!r}: expected a whole number >= 64")
    if not isinstance(device, str):
        raise InputError(f"device {device!r}: expected 'cpu' or 'cuda'")
    for name, value in (("all_people", all_people), ("progress", progress)):
        if not isinstance(value, bool):
            raise InputError(f"{name} {value!r}: expected True or False")


def prepare_pose(image: ImageInput, video: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 prompt: str | None = None, align_frame: int = 0, max_frame: int | None = 300,
                 target_fps: float | None = None, seed: int = 0, backend: str = "auto",
                 detect_resolution: int = 1024, device: str = "cpu", all_people: bool = False,
                 detector: Any = None, progress: bool = True, **weights: Any) -> PreparedInputs:
    """The pose stage (``steadydancer prepare``) as a call: detect, align, augment, draw.

    ``image``: the reference (a file path, or a PIL image / array / tensor, saved as PNG first);
    ``video``: the driving video file. ``out_dir``: the folder to write (new, empty or an earlier
    prepared folder, whose keypoints.json is reused); None: a new temporary folder (removed by
    :meth:`PreparedInputs.cleanup`). ``align_frame``: the driving frame the limb scales are
    measured on (earlier frames are dropped); ``max_frame``: frames read from the start of the
    video (None: all); ``target_fps``: resample the video first (16 keeps real speed in the
    16 fps output); ``seed``: the negative-stream augmentation. ``backend`` "auto" uses mediapipe
    unless DWPose weights are given (``dwpose_onnx=``, ``yolox_onnx=``, ``dwpose_pth=``,
    ``yolox_pth=``). Returns :class:`PreparedInputs`, which ``pipe(prepared)`` accepts.
    """
    from .pose.prepare import prepare_inputs

    unknown = sorted(set(weights) - {"dwpose_onnx", "yolox_onnx", "dwpose_pth", "yolox_pth"})
    if unknown:
        raise TypeError(f"prepare_pose() got unexpected keyword arguments: {', '.join(unknown)}")
    check_prepare_arguments(video=video, out_dir=out_dir, prompt=prompt, align_frame=align_frame,
                            max_frame=max_frame, target_fps=target_fps, seed=seed, backend=backend,
                            detect_resolution=detect_resolution, device=device, all_people=all_people,
                            progress=progress)
    temporary = out_dir is None
    scratch = Path(tempfile.mkdtemp(prefix="steadydancer-pose-")) if temporary else None
    try:
        if isinstance(image, (str, os.PathLike)):
            image_path = Path(image)
        else:
            holder = scratch or Path(tempfile.mkdtemp(prefix="steadydancer-ref-"))
            image_path = holder / "reference.png"
            to_pil_image(image, "image").save(image_path)
        target = scratch / "inputs" if temporary else Path(out_dir)
        folder = prepare_inputs(image_path, video, target, prompt=prompt, align_frame=align_frame,
                                max_frame=max_frame, target_fps=target_fps, seed=seed, backend=backend,
                                detect_resolution=detect_resolution, device=device, all_people=all_people,
                                detector=detector, progress=progress, **weights)
    except InputError as exc:  # the pose stage names the command line's flags: name the arguments
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise _api_names(exc, POSE_FLAG_NAMES) from None
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    prepared = PreparedInputs.from_folder(folder)
    prepared._temporary = temporary
    return prepared


# -- the pipeline -----------------------------------------------------------------------------

from diffusers.utils import BaseOutput  # noqa: E402 (diffusers is a dependency of the sampling stage)


@dataclass
class SteadyDancerPipelineOutput(BaseOutput):
    """``frames``: a batch of one video, as diffusers' video pipelines return it (a
    ``diffusers.utils.BaseOutput``: ``out.frames``, ``out["frames"]``, ``out[0]``, ``out.to_tuple()``).

    ``output_type`` "pil": ``[[PIL.Image] * N]``; "np": float32 [1, N, H, W, 3] in [0, 1];
    "pt": float32 [1, N, 3, H, W] in [0, 1]; "latent": float32 [1, 16, (N - 1) // 4 + 1, H / 8, W / 8].
    ``seed``: the noise seed used (reproduces the video). ``fps``: the frame rate to play it at.
    """

    frames: Any
    seed: int
    fps: int = C.SAMPLE_FPS


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise InputError(f"{name} {value!r}: expected one of {', '.join(map(str, allowed))}")


def _api_names(exc: InputError, flags: dict[str, str]) -> InputError:
    """The same one-line error with the command line's flag names replaced by the API's."""
    text = str(exc)
    for flag, name in flags.items():
        text = text.replace(flag, name)
    return InputError(text)


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """``device`` as a torch.device, checked against this machine (None: the default)."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise InputError(f"{name} {device!r}: expected 'cuda', 'cuda:N', 'cpu' or a torch.device")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"{name} {device!r}: expected 'cuda', 'cuda:N' or 'cpu'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{name} {device}: no CUDA GPU is visible to this process (use 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{name} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise InputError(f"{name} {device}: only 'cuda', 'cuda:N' and 'cpu' are supported")
    return device


def check_dtype(dtype: Any, name: str = "dtype") -> str | None:
    """The DiT's weight type as a MemoryOptions name (bf16 | fp16 | fp32 | fp8), or None (default)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in DIT_DTYPES:
            raise InputError(f"{name} {dtype}: expected torch.bfloat16, torch.float16 or torch.float32 "
                             "(or 'fp8')")
        return DIT_DTYPES[dtype]
    _check_choice(name, dtype, ("bf16", "fp16", "fp32", "fp8"))
    return dtype


def _memory_options(memory: Any, dtype: str | None, extra: dict[str, Any]) -> MemoryOptions:
    """MemoryOptions from ``memory`` and its fields given as keywords (block swap, LoRA, FP8, ...)."""
    names = {f.name for f in fields(MemoryOptions)}
    unknown = sorted(set(extra) - names)
    if unknown:
        raise TypeError(f"from_pretrained() got unexpected keyword arguments: {', '.join(unknown)} "
                        f"(memory options: {', '.join(sorted(names))})")
    if memory is not None and not isinstance(memory, MemoryOptions):
        raise InputError(f"memory: expected a steadydancer.options.MemoryOptions, got {type(memory).__name__}")
    options = memory or MemoryOptions()
    updates = dict(extra)
    for key in ("gguf", "dit_fp8_file"):
        if updates.get(key) is not None:
            if not isinstance(updates[key], (str, os.PathLike)):
                raise InputError(f"{key}: expected a file path, got {type(updates[key]).__name__}")
            updates[key] = Path(updates[key])
    if "loras" in updates:
        loras = []
        for lora in updates["loras"] or []:
            path, strength = (lora, 1.0) if isinstance(lora, (str, os.PathLike)) else tuple(lora)
            if not isinstance(path, (str, os.PathLike)) or not is_real(strength):
                raise InputError(f"loras: expected paths or (path, strength) pairs, got {lora!r}")
            loras.append((Path(path), float(strength)))
        updates["loras"] = loras
    if "blocks_on_gpu" in updates and updates["blocks_on_gpu"] is not None:
        if not is_integer(updates["blocks_on_gpu"]) or updates["blocks_on_gpu"] < 0:
            raise InputError(f"blocks_on_gpu {updates['blocks_on_gpu']!r}: expected a whole number >= 0")
        updates["blocks_on_gpu"] = int(updates["blocks_on_gpu"])
    if "token_chunk_size" in updates and updates["token_chunk_size"] is not None:
        if not is_integer(updates["token_chunk_size"]) or updates["token_chunk_size"] < 1:
            raise InputError(f"token_chunk_size {updates['token_chunk_size']!r}: expected a whole number >= 1")
        updates["token_chunk_size"] = int(updates["token_chunk_size"])
    for key in ("fp8_matmul", "batch_guidance", "compile"):
        if key in updates and not isinstance(updates[key], bool):
            raise InputError(f"{key} {updates[key]!r}: expected True or False")
    if dtype is not None:
        updates["dit_dtype"] = dtype
    from dataclasses import replace

    return replace(options, **updates)


# the command line's flag names in messages that the API shares with it -> the API's argument names
MEMORY_FLAG_NAMES = {"--ckpt_dir ": "ckpt_dir ", "--lora ": "loras ", "--lora:": "loras:",
                     "--blocks_on_gpu": "blocks_on_gpu", "--dit_dtype fp8": "dtype 'fp8'", "--dit_dtype": "dtype",
                     "--fp8_matmul": "fp8_matmul", "--gguf": "gguf", "--dit_fp8_file": "dit_fp8_file",
                     "--token_chunk_size": "token_chunk_size", "--batch_guidance": "batch_guidance",
                     "--compile": "compile", "--device": "device"}
POSE_FLAG_NAMES = {"--align_frame": "align_frame", "--max_frame": "max_frame", "--target_fps": "target_fps",
                   "--detect_resolution": "detect_resolution", "--backend": "backend", "--seed": "seed",
                   "--prompt": "prompt", "--image": "image", "--video": "video", "--out": "out_dir"}


def _check_real(name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> None:
    if not is_real(value) or value != value:  # NaN
        raise InputError(f"{name} {value!r}: expected a number")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"{minimum:g} to {maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise InputError(f"{name} {value}: expected {bounds}")


def _check_optional_str(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise InputError(f"{name}: expected a string (one prompt for the one video), got {type(value).__name__}")


def check_call_arguments(*, prompt: Any, negative_prompt: Any, num_frames: Any, size: Any, num_inference_steps: Any,
                         guidance_scale: Any, condition_guidance_scale: Any, cfg_window: Any, solver: Any,
                         shift: Any, timesteps: Any, seed: Any, generator: Any, callback_on_step_end: Any,
                         callback_on_step_end_tensor_inputs: Any, output_type: Any, return_dict: Any,
                         long_video: Any, augment_seed: Any, progress: Any) -> None:
    """The type and range of every documented argument of :meth:`SteadyDancerPipeline.__call__`
    but the media (checked when read): one-line InputError (a ValueError) before any model
    loads. numpy numbers count as numbers; bools do not."""
    _check_optional_str("prompt", prompt)
    _check_optional_str("negative_prompt", negative_prompt)
    if num_frames is not None and not is_integer(num_frames):
        raise InputError(f"num_frames {num_frames!r}: expected a whole number 4n+1 (e.g. 17, 33, 81)")
    if not (isinstance(size, str) or is_integer(size)):
        raise InputError(f"size {size!r}: expected an official size name such as '1280*720', or an int pixel area")
    if not is_integer(num_inference_steps) or num_inference_steps < 1:
        raise InputError(f"num_inference_steps {num_inference_steps!r}: expected a whole number >= 1")
    _check_real("guidance_scale", guidance_scale)
    _check_real("condition_guidance_scale", condition_guidance_scale)
    if (isinstance(cfg_window, (str, bytes)) or not isinstance(cfg_window, (Sequence, np.ndarray))
            or len(cfg_window) != 2):
        raise InputError(f"cfg_window {cfg_window!r}: expected (start, end), fractions of the steps")
    _check_real("cfg_window[0]", cfg_window[0])  # the range: check_sampling, as the CLI
    _check_real("cfg_window[1]", cfg_window[1])
    _check_choice("solver", solver, SOLVERS)
    if shift is not None:
        _check_real("shift", shift, minimum=0)
    if timesteps is not None:
        if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, (Sequence, np.ndarray, torch.Tensor)):
            raise InputError(f"timesteps {timesteps!r}: expected a list of numbers on the 0..1000 scale")
        for value in timesteps:
            _check_real("timesteps", value.item() if isinstance(value, torch.Tensor) else value)
    if seed is not None and not (is_integer(seed) and seed < 0):  # negative: random, as the CLI's -1
        check_seed(seed, "seed", allow_random=False)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator: expected a torch.Generator, got {type(generator).__name__} (or pass seed=)")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise InputError("callback_on_step_end: expected a function (pipe, step, timestep, callback_kwargs) -> dict")
    if isinstance(callback_on_step_end_tensor_inputs, str) or not isinstance(callback_on_step_end_tensor_inputs,
                                                                             (Sequence, set, frozenset)):
        raise InputError("callback_on_step_end_tensor_inputs: expected a list of names such as ['latents']")
    bad_inputs = sorted(set(map(str, callback_on_step_end_tensor_inputs)) - set(CALLBACK_TENSOR_INPUTS))
    if bad_inputs:
        raise InputError(f"callback_on_step_end_tensor_inputs: {', '.join(bad_inputs)} not available "
                         f"(only {', '.join(CALLBACK_TENSOR_INPUTS)})")
    _check_choice("output_type", output_type, OUTPUT_TYPES)
    if not isinstance(return_dict, bool):
        raise InputError(f"return_dict {return_dict!r}: expected True or False")
    if long_video is not None and not isinstance(long_video, LongVideoOptions):
        raise InputError(f"long_video: expected a steadydancer.options.LongVideoOptions, got {type(long_video).__name__}")
    if augment_seed is not None:
        check_seed(augment_seed, "augment_seed", allow_random=False)
    if progress is not None and not isinstance(progress, bool):
        raise InputError(f"progress {progress!r}: expected True or False")


class SteadyDancerPipeline:
    """SteadyDancer image animation: a reference image + a pose video -> a video.

    Build with :meth:`from_pretrained`; each call runs one generation. The models load on the
    first call and stay loaded for the next ones (``pipeline``: the underlying
    :class:`~steadydancer.pipeline.i2v.DancerPipeline`). diffusers' conventions where they cost
    little: ``torch_dtype=``, :meth:`to`, :meth:`enable_model_cpu_offload`,
    :meth:`set_progress_bar_config`, :attr:`components`, a ``BaseOutput``.
    """

    def __init__(self, pipeline: "DancerPipeline") -> None:  # noqa: F821 (imported lazily)
        self.pipeline = pipeline
        self._progress_bar_config: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | os.PathLike, *, device: torch.device | str | None = None,
                        dtype: torch.dtype | str | None = None, offload_model: bool | None = None,
                        t5_cpu: bool = False, memory: Any = None, keep_models: bool = True,
                        torch_dtype: torch.dtype | str | None = None,
                        **memory_kwargs: Any) -> "SteadyDancerPipeline":
        """Check the checkpoint folder (every file, as the CLI does), the device and the dtype,
        and make the pipeline; no model is loaded yet (each loads on first use, straight onto its
        device).

        ``ckpt_dir``: the SteadyDancer-14B folder. ``device``: "cuda", "cuda:N", "cpu" (default
        CUDA when available; float32 on the CPU). ``dtype`` (or diffusers' ``torch_dtype``): the
        DiT's weights, torch.bfloat16 | float16 | float32 or "bf16" | "fp16" | "fp32" | "fp8"
        (default bf16 on GPU). ``offload_model``: move each model off the GPU after its stage
        (default True). ``t5_cpu``: T5 on the CPU. ``memory``: a
        :class:`~steadydancer.options.MemoryOptions`, or its fields as keywords:
        ``blocks_on_gpu=K`` (block swap), ``loras=[(path, strength)]``, ``gguf=``,
        ``dit_fp8_file=``, ``fp8_matmul=``, ``batch_guidance=``, ``compile=``, ``token_chunk_size=``,
        ``step_cache="magcache"|"fbcache"|"taylorseer"``, ``cache_threshold=``, ``cache_ratios=``,
        ``cache_interval=``, ``vae_tiling=True`` (docs/speed.md).
        ``keep_models`` False (a one-shot run, the CLI): with offloading the DiT is dropped after
        sampling instead of parked in host memory.
        """
        from .pipeline.i2v import DancerPipeline, verify_checkpoint

        if not isinstance(ckpt_dir, (str, os.PathLike)):
            raise InputError(f"ckpt_dir: expected a folder path, got {type(ckpt_dir).__name__}")
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise InputError(f"dtype {dtype} and torch_dtype {torch_dtype}: give one of them")
        dtype_name = check_dtype(dtype if dtype is not None else torch_dtype,
                                 "dtype" if dtype is not None else "torch_dtype")
        device = check_device(device)
        for name, value in (("offload_model", offload_model), ("t5_cpu", t5_cpu), ("keep_models", keep_models)):
            if value is not None and not isinstance(value, bool):
                raise InputError(f"{name} {value!r}: expected True or False")
        options = _memory_options(memory, dtype_name, memory_kwargs)
        try:
            verify_checkpoint(ckpt_dir, dit_from_other_file=bool(options.gguf or options.dit_fp8_file))
            pipeline = DancerPipeline(ckpt_dir, device=device, offload_model=offload_model, t5_cpu=t5_cpu,
                                      keep_models=keep_models, memory=options)
        except InputError as exc:  # name the arguments, not the CLI flags
            raise _api_names(exc, MEMORY_FLAG_NAMES) from None
        return cls(pipeline)

    # -- diffusers' conveniences ------------------------------------------------------------

    @property
    def components(self) -> dict[str, Any]:
        """The models by diffusers' names (None until loaded: they load on first use)."""
        p = self.pipeline
        return {"transformer": p._dit, "vae": p._vae, "text_encoder": p._t5, "image_encoder": p._clip}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "SteadyDancerPipeline":
        """Run on ``device`` from now on (models already loaded move there); ``dtype`` only before
        the DiT is loaded (its weights are loaded in that type). Returns self, as diffusers."""
        if isinstance(device, torch.dtype) and dtype is None:  # pipe.to(torch.float16)
            device, dtype = None, device
        pipeline = self.pipeline
        name = check_dtype(dtype) if dtype is not None else None
        if name is not None:
            if pipeline._dit is not None:
                raise InputError("dtype: the DiT is loaded already; pass dtype to from_pretrained")
            from .models.memory import DTYPES

            pipeline.memory.dit_dtype = name
            pipeline.dit_dtype = DTYPES.get(name, pipeline.dit_dtype)
        device = check_device(device)
        if device is not None and device != pipeline.device:
            pipeline.device = device
            pipeline.on_gpu = device.type != "cpu"
            if not pipeline.on_gpu:  # on the CPU everything runs in float32
                pipeline.t5_dtype = pipeline.clip_dtype = torch.float32
                if name is None and pipeline._dit is None:
                    pipeline.dit_dtype = torch.float32
            for model in (pipeline._vae, pipeline._dit):
                if model is not None:
                    model.to(device)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Move each model to the GPU for its stage only (the official --offload_model True)."""
        if gpu_id is not None or device is not None:
            self.to(device if device is not None else f"cuda:{gpu_id}")
        self.pipeline.offload_model = True

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """``disable=True`` turns the progress bars of later calls off (diffusers' method)."""
        self._progress_bar_config.update(kwargs)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    # -- one generation ---------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, image: "ImageInput | PreparedInputs | None" = None, pose_video: PoseVideoInput | None = None,
                 negative_pose_video: PoseVideoInput | None = None, prompt: str | None = None,
                 negative_prompt: str | None = None, num_frames: int | None = None,
                 size: str | int = DEFAULT_API_SIZE,
                 num_inference_steps: int = DEFAULT_SAMPLING.steps,
                 guidance_scale: float = DEFAULT_SAMPLING.guide_scale,
                 condition_guidance_scale: float = DEFAULT_SAMPLING.condition_guide_scale,
                 cfg_window: tuple[float, float] = (DEFAULT_SAMPLING.st_cond_cfg, DEFAULT_SAMPLING.end_cond_cfg),
                 solver: str = DEFAULT_SAMPLING.solver, shift: float | None = None,
                 timesteps: Sequence[float] | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 callback_on_step_end: Callable[..., dict] | None = None,
                 callback_on_step_end_tensor_inputs: Sequence[str] = CALLBACK_TENSOR_INPUTS,
                 output_type: str = "pil", return_dict: bool = True, long_video: Any = None,
                 augment_seed: int | None = 0, progress: bool | None = None):
        """Generate one video; returns :class:`SteadyDancerPipelineOutput` (``.frames``).

        ``image``: the reference image (PIL, array [H, W, 3], tensor [3, H, W], path), or a
        :class:`PreparedInputs` (then ``pose_video``, ``negative_pose_video`` and ``prompt``
        come from it). ``pose_video``: the positive pose frames (list of images, array
        [N, H, W, 3], tensor [N, 3, H, W], a folder of 0000.jpg ..., a prepared folder, a video
        file), resized to the reference size as the CLI does. ``negative_pose_video``: the
        negative stream, same forms and length; None: a prepared folder's negative/, else made
        from ``pose_video`` by the official augmentation seeded by ``augment_seed``.
        ``prompt`` (default: the prepared prompt, else empty) / ``negative_prompt`` (default: the
        official Chinese one). ``num_frames``: 4n+1, at most the pose frames given (default: up to
        81). ``size``: output pixel area "W*H" (one of the official sizes; the aspect ratio is the
        reference's), or an int area in pixels (experiments and tests: the model was trained at
        the official sizes). ``num_inference_steps``; ``guidance_scale``: text CFG;
        ``condition_guidance_scale``: pose CFG, active for steps with start < step/N < end of
        ``cfg_window``. ``solver``: unipc | dpm++ | euler | lcm (``timesteps``: euler/lcm step
        list on 0..1000). ``shift``: default 5.0 (3.0 at 480p). ``seed`` or ``generator`` (its
        ``initial_seed()`` is the seed); neither: random (``.seed`` of the output says which).
        ``callback_on_step_end(pipe, step, timestep, callback_kwargs) -> dict``: after every
        step, ``callback_kwargs["latents"]`` is the latent [1, 16, F, h, w]; a returned
        ``{"latents": tensor}`` replaces it. ``output_type``: pil | np | pt | latent (see
        :class:`SteadyDancerPipelineOutput`). ``long_video``: a
        :class:`~steadydancer.options.LongVideoOptions` (default: the CLI's, windows
        of 81 frames sharing 16 past 81 frames). ``return_dict`` False: ``(frames,)``.
        """
        from .options import ARG_NAMES, check_generation
        from .pipeline.inputs import latent_size

        # -- everything is checked here, before any model loads --------------------------------
        if isinstance(image, PreparedInputs):
            prepared = image
            if pose_video is not None:
                raise InputError("pose_video: given twice (the PreparedInputs already holds the pose frames)")
            image, pose_video = prepared.image, prepared.positive
            negative_pose_video = prepared.negative if negative_pose_video is None else negative_pose_video
            prompt = prepared.prompt if prompt is None else prompt
        if image is None:
            raise InputError("image: required (a reference image, or the PreparedInputs of prepare_pose)")
        if pose_video is None:
            raise InputError("pose_video: required (pose frames, a folder or a video file)")
        check_call_arguments(prompt=prompt, negative_prompt=negative_prompt, num_frames=num_frames, size=size,
                             num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             condition_guidance_scale=condition_guidance_scale, cfg_window=cfg_window,
                             solver=solver, shift=shift, timesteps=timesteps, seed=seed, generator=generator,
                             callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                             output_type=output_type, return_dict=return_dict, long_video=long_video,
                             augment_seed=augment_seed, progress=progress)
        num_frames = None if num_frames is None else int(num_frames)
        size = int(size) if is_integer(size) else size
        sampling = SamplingOptions(solver=solver, steps=len(timesteps) if timesteps else int(num_inference_steps),
                                   shift=C.default_shift(str(size)) if shift is None else float(shift),
                                   guide_scale=float(guidance_scale),
                                   condition_guide_scale=float(condition_guidance_scale),
                                   st_cond_cfg=float(cfg_window[0]), end_cond_cfg=float(cfg_window[1]),
                                   timesteps=tuple(float(t) for t in timesteps) if timesteps else None)
        options = long_video if long_video is not None else LongVideoOptions()
        # the command line's checks, naming the arguments (steadydancer.options)
        max_area = check_generation(size, num_frames, sampling, options, names=ARG_NAMES, allow_area=True)
        if progress is None:
            progress = not self._progress_bar_config.get("disable", False)

        reference = to_pil_image(image, "image")
        read_limit = num_frames if num_frames is not None else C.DEFAULT_FRAME_NUM
        positive = to_pose_frames(pose_video, "pose_video", max_frames=read_limit)
        if negative_pose_video is None:
            sibling = _sibling_negative(pose_video)
            negative = FolderFrames(sibling, name="negative_pose_video") if sibling else None
        else:
            negative = to_pose_frames(negative_pose_video, "negative_pose_video", max_frames=read_limit)
        available = len(positive) if negative is None else min(len(positive), len(negative))
        if num_frames is None:  # as the CLI: up to 81 frames, the largest 4n+1 the streams hold
            num_frames = 4 * ((min(available, C.DEFAULT_FRAME_NUM) - 1) // 4) + 1
        for name, frames in (("pose_video", positive), ("negative_pose_video", negative)):
            if frames is not None and len(frames) < num_frames:
                raise InputError(f"{name}: {len(frames)} frames, num_frames {num_frames} needs {num_frames}")
        if negative is None:
            log.info("no negative pose stream given: augmenting the positive one (seed %s)", augment_seed)
            negative = augment_negative(positive[:num_frames], augment_seed)
        latent_size(reference.height, reference.width, max_area, self.pipeline.patch_size[1:])  # aspect check
        windowed = options.windowed(num_frames)
        if windowed and output_type == "latent" and options.mode == "chain":
            raise InputError("output_type 'latent': not available with long_video mode 'chain' "
                             "(each window is decoded before the next starts)")

        if generator is not None:
            seed = int(generator.initial_seed())
        seed = draw_seed() if seed is None or seed < 0 else int(seed)
        callback = self._step_hook(callback_on_step_end)
        # pose frames at the reference size, exactly as pipeline.inputs.read_inputs reads a folder
        pos = ResizedFrames(positive, reference.size, num_frames)
        neg = ResizedFrames(negative, reference.size, num_frames)
        prompt = prompt or ""

        # -- the generation: the same functions as the CLI -------------------------------------
        if windowed:
            frames = self._long_video(reference, pos, neg, prompt, negative_prompt, max_area, num_frames,
                                      sampling, options, seed, progress, callback, output_type)
        else:
            frames = self.pipeline.generate(reference, pos[0], list(pos), list(neg), prompt, max_area=max_area,
                                            frame_num=num_frames, sampling=sampling, seed=seed,
                                            negative_prompt=negative_prompt, progress=progress,
                                            callback=callback, decode=output_type != "latent")
            frames = frames[None] if output_type == "latent" else _convert_video(frames, output_type)
        output = SteadyDancerPipelineOutput(frames=frames, seed=seed)
        return output if return_dict else output.to_tuple()

    def generate_to_file(self, *, image: str | os.PathLike, cond_pos_folder: str | os.PathLike,
                         cond_neg_folder: str | os.PathLike, prompt: str, save_file: str | os.PathLike,
                         size: str = C.DEFAULT_SIZE, frame_num: int | None = None, sampling: Any = None,
                         seed: int = -1, negative_prompt: str | None = None, long_video: Any = None,
                         progress: bool = True) -> Path:
        """Generate from files into an mp4 (16 fps): what ``steadydancer generate`` runs.

        The inputs are those of the command line (reference image, folders of 0000.jpg ...
        pose frames, the official ``size`` names, a :class:`~steadydancer.options.SamplingOptions`)
        and are all checked (InputError) before any model loads; frames stream from disk and
        into the mp4 window by window, so long videos need no memory for the whole video; the
        mp4 appears only when complete. ``frame_num`` None: up to 81 (4n+1), as many as the
        folders hold. Returns the path written.
        """
        from .pipeline.run import generate_from_files

        return generate_from_files(self.pipeline, image=image, cond_pos_folder=cond_pos_folder,
                                   cond_neg_folder=cond_neg_folder, prompt=prompt, save_file=save_file, size=size,
                                   frame_num=frame_num, sampling=sampling, seed=seed,
                                   negative_prompt=negative_prompt, long_video=long_video, progress=progress)

    def _step_hook(self, callback_on_step_end: Callable[..., dict] | None):
        """diffusers' ``callback_on_step_end(pipe, step, timestep, kwargs) -> dict`` as the sampling
        loop's ``callback(idx, timestep, latent)`` (latents with the batch axis, as diffusers)."""
        if callback_on_step_end is None:
            return None

        def hook(idx: int, timestep: float, latent: torch.Tensor) -> torch.Tensor | None:
            out = callback_on_step_end(self, idx, timestep, {"latents": latent[None]}) or {}
            new = out.get("latents") if isinstance(out, dict) else None
            return None if new is None else new.reshape(latent.shape)

        return hook

    def _long_video(self, reference, pos, neg, prompt, negative_prompt, max_area, num_frames, sampling,
                    options, seed, progress, callback, output_type):
        from .pipeline.long_video import long_video_frames, sample_context

        args = (self.pipeline, reference, pos[0], pos, neg, prompt, max_area, num_frames, sampling)
        kwargs = dict(options=options, seed=seed, negative_prompt=negative_prompt, progress=progress,
                      callback=callback)
        if output_type == "latent":
            return sample_context(*args, **kwargs).float().cpu()[None]
        uint8 = np.stack(list(long_video_frames(*args, **kwargs)))  # [N, H, W, 3]
        if output_type == "pil":
            return [[Image.fromarray(frame) for frame in uint8]]
        video = torch.from_numpy(uint8).float().div(255)
        return video[None].numpy() if output_type == "np" else video.permute(0, 3, 1, 2)[None]


def generate_video(*, ckpt_dir: str | os.PathLike, image: str | os.PathLike, cond_pos_folder: str | os.PathLike,
                   cond_neg_folder: str | os.PathLike, prompt: str, save_file: str | os.PathLike,
                   size: str = C.DEFAULT_SIZE, frame_num: int | None = None, sampling: Any = None,
                   seed: int = -1, offload_model: bool | None = None, t5_cpu: bool = False,
                   device: torch.device | str | None = None, negative_prompt: str | None = None,
                   progress: bool = True, memory: Any = None, long_video: Any = None) -> Path:
    """``steadydancer generate`` as one call: check every input (the checkpoint included) before
    any model loads, make a pipeline that drops each model after use, write the mp4. Same
    arguments as :func:`steadydancer.pipeline.run.generate_video`; returns the path written."""
    from .pipeline.i2v import DancerPipeline
    from .pipeline.run import check_inputs

    check_inputs(ckpt_dir, image, cond_pos_folder, cond_neg_folder, size, frame_num, save_file=save_file,
                 memory=memory)
    pipe = SteadyDancerPipeline(DancerPipeline(ckpt_dir, device=device, offload_model=offload_model,
                                               t5_cpu=t5_cpu, keep_models=False, memory=memory))
    return pipe.generate_to_file(image=image, cond_pos_folder=cond_pos_folder, cond_neg_folder=cond_neg_folder,
                                 prompt=prompt, save_file=save_file, size=size, frame_num=frame_num,
                                 sampling=sampling, seed=seed, negative_prompt=negative_prompt,
                                 long_video=long_video, progress=progress)


def _convert_video(video: torch.Tensor, output_type: str):
    """[3, N, H, W] in [-1, 1] -> the ``output_type`` form (see SteadyDancerPipelineOutput)."""
    from .pipeline.i2v import video_to_frames

    if output_type == "pil":
        # the uint8 frames the CLI writes (the official scaling and truncation)
        return [[Image.fromarray(frame.numpy()) for frame in video_to_frames(video)]]
    unit = video.clamp(-1, 1).add(1).div(2).float()  # [3, N, H, W] in [0, 1]
    if output_type == "np":
        return unit.permute(1, 2, 3, 0).contiguous()[None].numpy()
    return unit.permute(1, 0, 2, 3).contiguous()[None]


def export_to_video(frames: Any, path: str | os.PathLike | None = None, fps: float = C.SAMPLE_FPS, *,
                    output_video_path: str | os.PathLike | None = None, audio_from: str | os.PathLike | None = None,
                    audio_start: float = 0.0) -> Path:
    """Write one video's frames as H.264 mp4 (atomically: the file appears when complete).

    ``frames``: ``output.frames[0]`` of any output type but latent: a list of PIL images, an
    array [N, H, W, 3] (float in [0, 1] or uint8) or a tensor [N, 3, H, W] (float in [0, 1]).
    ``path`` or diffusers' ``output_video_path`` (neither: a new temporary .mp4). ``fps``: 16,
    the rate the model makes (``output.fps``; note that ``diffusers.utils.export_to_video`` writes
    10 fps unless told). ``audio_from``: a media file whose sound, from ``audio_start`` seconds,
    goes into the video (right only when the poses were sampled at ``fps``: ``target_fps=16``).
    Returns the path written.
    """
    from .pose.video import write_video

    if path is not None and output_video_path is not None and Path(path) != Path(output_video_path):
        raise InputError("export_to_video: give path or output_video_path, not both")
    path = path if path is not None else output_video_path
    if path is None:
        handle, name = tempfile.mkstemp(suffix=".mp4")
        os.close(handle)
        path = name
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"output_video_path: expected a file path, got {type(path).__name__}")
    if not is_real(fps) or not 0 < fps <= 240:
        raise InputError(f"fps {fps!r}: expected a number in (0, 240]")

    def uint8(frame: Any) -> np.ndarray:
        if isinstance(frame, Image.Image):
            return np.asarray(frame.convert("RGB"))
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().permute(1, 2, 0).numpy()
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:  # the official writer's scaling: truncate, not round
            frame = (np.clip(frame, 0, 1) * 255).astype(np.uint8)
        return frame

    iterable: Iterable[Any] = frames
    write_video(path, (uint8(frame) for frame in iterable), fps=float(fps))
    if audio_from is not None:
        from .pipeline.audio import add_audio

        add_audio(path, audio_from, start_s=audio_start)
    return Path(path)


__all__ = ["PreparedInputs", "SteadyDancerPipeline", "SteadyDancerPipelineOutput", "augment_negative",
           "export_to_video", "prepare_pose", "to_pil_image", "to_pose_frames"]
