"""Reading and checking the generation inputs: reference image, pose folders, sizes, frame counts.

Every problem is an :class:`InputError` naming the file or flag, raised before any model loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..fileio import check_can_create
from ..options import check_frame_num
from .config import VAE_STRIDE


def latent_size(image_height: int, image_width: int, max_area: int, patch: tuple[int, int] = (2, 2),
                stride: tuple[int, int] = VAE_STRIDE[1:]) -> tuple[int, int]:
    """(lat_h, lat_w) as the official code computes it from the reference image's aspect ratio."""
    aspect = image_height / image_width
    lat_h = round(np.sqrt(max_area * aspect) // stride[0] // patch[0] * patch[0])
    lat_w = round(np.sqrt(max_area / aspect) // stride[1] // patch[1] * patch[1])
    if lat_h < patch[0] or lat_w < patch[1]:
        raise InputError(f"reference image {image_width}x{image_height}: aspect ratio too extreme for the area {max_area}")
    return int(lat_h), int(lat_w)


def first_frame_mask(frame_num: int, lat_h: int, lat_w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """I2V mask [4, F_lat, lat_h, lat_w]: 1 for pixel frames 0..3 (the first latent frame), else 0.

    The official code builds it for 81 frames only; this is the same layout for any 4n+1.
    """
    mask = torch.zeros(1, frame_num, lat_h, lat_w, device=device)
    mask[:, 0] = 1
    # the first pixel frame stands for 4 slots, so the frame axis packs evenly into groups of 4
    mask = torch.cat([mask[:, :1].repeat_interleave(4, dim=1), mask[:, 1:]], dim=1)
    mask = mask.view(1, mask.shape[1] // 4, 4, lat_h, lat_w)
    return mask.transpose(1, 2)[0]


def load_image(path: str | os.PathLike, what: str = "reference image") -> Image.Image:
    """An RGB PIL image; InputError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path}: not an image file") from None


def count_pose_frames(folder: str | os.PathLike, flag: str) -> int:
    """Number of consecutive frames 0000.jpg, 0001.jpg, ... in a pose folder.

    A gap (a frame missing before later ones) is an InputError naming the missing frame: the
    frames after it would otherwise be dropped without a word.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{flag} {folder}: folder not found")
    count = 0
    while (folder / f"{count:04d}.jpg").is_file():
        count += 1
    later = sorted(int(p.stem) for p in folder.glob("[0-9][0-9][0-9][0-9].jpg") if int(p.stem) > count)
    if later:
        raise InputError(f"{flag} {folder}: frame {count:04d}.jpg is missing (frames up to {later[-1]:04d}.jpg "
                         f"follow); the pose frames must be numbered without gaps")
    return count


def load_pose_frames(folder: str | os.PathLike, count: int, size: tuple[int, int]) -> list[Image.Image]:
    """Frames 0000.jpg .. as RGB, PIL-bicubic-resized to ``size`` (W, H) = the reference image's."""
    frames = []
    for i in range(count):
        image = load_image(Path(folder) / f"{i:04d}.jpg", "pose frame")
        frames.append(image.resize(size, Image.Resampling.BICUBIC))
    return frames


@dataclass(frozen=True)
class PreparedFolder:
    """The files generation reads from a folder written by ``steadydancer prepare``."""

    folder: Path

    @property
    def image(self) -> Path:
        return self.folder / "ref_image.png"

    @property
    def positive(self) -> Path:
        return self.folder / "positive"

    @property
    def negative(self) -> Path:
        return self.folder / "negative"

    @property
    def prompt_file(self) -> Path:
        return self.folder / "prompt.txt"

    def prompt(self) -> str | None:
        """The text of prompt.txt (stripped); None when the folder has none."""
        return self.prompt_file.read_text(encoding="utf-8").strip() if self.prompt_file.is_file() else None


class LazyFrames(Sequence[Image.Image]):
    """``count`` frames made one at a time by :meth:`frame` when indexed, so that a long video's
    frames are never all in memory (subclasses say where a frame comes from)."""

    count: int

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(index)
        return self.frame(index % self.count)

    def frame(self, index: int) -> Image.Image:
        raise NotImplementedError


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 [3, H, W] in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)


def resize_bicubic(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, 3, H, W] -> [3, N, height, width] by torch bicubic (no antialias, as the official code)."""
    out = torch.nn.functional.interpolate(frames, size=(height, width), mode="bicubic")
    return out.transpose(0, 1)


@dataclass
class GenerationInputs:
    """Everything read from disk for one generation (images as PIL, not yet tensors)."""

    image: Image.Image  # reference image, RGB
    pose_first: Image.Image  # first positive pose frame, resized to the image size (second CLIP input, ref_c)
    positive: list[Image.Image]  # frame_num positive pose frames, resized to the image size
    negative: list[Image.Image]  # frame_num negative pose frames, resized to the image size
    prompt: str


def largest_valid_frame_num(available: int, limit: int) -> int:
    """The largest 4n+1 <= min(available, limit)."""
    top = min(available, limit)
    return 4 * ((top - 1) // 4) + 1 if top >= 1 else 0


def resolve_frame_num(frame_num: int | None, available: int, default: int, pos_folder) -> int:
    """The frame count to generate: the flag's, or the default capped to the frames available."""
    if frame_num is None:
        frame_num = largest_valid_frame_num(available, default)
        if frame_num < 1:
            raise InputError(f"--cond_pos_folder {pos_folder}: no pose frames (0000.jpg ...) found")
        return frame_num
    check_frame_num(frame_num)
    if available < frame_num:
        raise InputError(f"--cond_pos_folder {pos_folder}: found {available} pose frames, "
                         f"--frame_num {frame_num} needs {frame_num}")
    return frame_num


def read_inputs(image_path: str | os.PathLike, pos_folder: str | os.PathLike, neg_folder: str | os.PathLike,
                prompt: str, frame_num: int) -> GenerationInputs:
    """Read the image and ``frame_num`` frames of each pose stream (already checked to exist)."""
    image = load_image(image_path)
    positive = load_pose_frames(pos_folder, frame_num, image.size)
    negative = load_pose_frames(neg_folder, frame_num, image.size)
    return GenerationInputs(image=image, pose_first=positive[0], positive=positive, negative=negative,
                            prompt=prompt)


def check_output_file(path: str | os.PathLike) -> None:
    """InputError unless ``path`` can be written (it is written only after the whole generation).

    Its folder may be missing (it is created), but not a file, nor read-only; the path itself
    must not be a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--save_file {path}: is a folder; name the mp4 to write")
    check_can_create(path, "--save_file")


def check_pose_folders(pos_folder, neg_folder) -> int:
    """Frames available in both folders; InputError if missing, empty or of different lengths."""
    if pos_folder is None:
        raise InputError("--cond_pos_folder is required (or --input_dir with a positive/ folder)")
    if neg_folder is None:
        raise InputError("--cond_neg_folder is required (or --input_dir with a negative/ folder)")
    n_pos = count_pose_frames(pos_folder, "--cond_pos_folder")
    n_neg = count_pose_frames(neg_folder, "--cond_neg_folder")
    if n_pos == 0:
        raise InputError(f"--cond_pos_folder {pos_folder}: no pose frames (0000.jpg ...) found")
    if n_pos != n_neg:
        raise InputError(f"pose folders differ in length: {pos_folder} has {n_pos} frames, "
                         f"{neg_folder} has {n_neg}")
    return n_pos
