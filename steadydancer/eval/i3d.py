"""FVD features from StyleGAN-V's I3D (``i3d_torchscript.pt``, the Kinetics-400 I3D of the original
TensorFlow FVD, as a TorchScript archive loaded with ``torch.jit.load``).

Two conventions, each named in the report:
- ``set`` (StyleGAN-V): one 16-frame clip per video, uint8 values as floats fed with
  ``rescale=True, resize=True`` (the detector maps 0..255 to [-1, 1] and resizes to 224x224
  itself); FVD is the Fréchet distance of the two sets of 400-d features.
- ``pair`` (HumanVid's ``eval_fvd.py``): per generated/reference pair, every prefix of
  10..T frames resized (shorter side 224, bilinear, then centre crop) and mapped to [-1, 1] by us,
  fed with ``rescale=False, resize=False``; with one video per side the Fréchet distance reduces
  to the squared distance of the two feature vectors; the score is the mean over prefixes and pairs.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

CLIP_FRAMES = 16        # StyleGAN-V's clip length
MIN_PREFIX_FRAMES = 10  # HumanVid / common_metrics: prefixes shorter than 10 frames are not scored


def load_i3d(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """The I3D detector from its TorchScript file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of export; the file is TorchScript
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # noqa: BLE001 - a bad file is the user's input
        raise InputError(f"{path}: not a TorchScript I3D file ({exc.__class__.__name__})") from None


@torch.no_grad()
def set_level_features(detector, videos: list[np.ndarray], device: torch.device | str = "cpu") -> np.ndarray | None:
    """Features [N, D] of the first 16-frame clip of each video (uint8 [T, H, W, 3], T >= 16);
    videos shorter than a clip are left out (StyleGAN-V discards them); None when none is left."""
    feats = []
    for video in videos:
        if len(video) < CLIP_FRAMES:
            continue
        clip = torch.from_numpy(np.ascontiguousarray(video[:CLIP_FRAMES])).to(device).float()
        clip = clip.permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, T, H, W], values 0..255
        feats.append(detector(clip, rescale=True, resize=True, return_features=True).double().cpu().numpy())
    return np.concatenate(feats, axis=0) if feats else None


def _humanvid_preprocess(frames: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """Frames [T, H, W, 3] in [0, 1] -> [3, T, R, R] in [-1, 1]: shorter side to R (ceil), bilinear
    without antialias, centre crop (HumanVid's ``preprocess_single``)."""
    video = frames.permute(3, 0, 1, 2)  # C, T, H, W
    _, _, h, w = video.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    top = (video.shape[2] - resolution) // 2
    left = (video.shape[3] - resolution) // 2
    video = video[:, :, top:top + resolution, left:left + resolution]
    return ((video - 0.5) * 2).contiguous()


@torch.no_grad()
def pair_fvd(detector, generated: np.ndarray, reference: np.ndarray,
             device: torch.device | str = "cpu") -> list[float]:
    """HumanVid's per-pair FVD values, one per prefix length 10..T (T: the shorter video);
    videos uint8 [T, H, W, 3] of the same frame size. Empty when T < 10."""
    length = min(len(generated), len(reference))
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"frame sizes differ: {generated.shape[1:]} vs {reference.shape[1:]}")
    gen = _humanvid_preprocess(torch.from_numpy(np.ascontiguousarray(generated[:length])).float() / 255)
    ref = _humanvid_preprocess(torch.from_numpy(np.ascontiguousarray(reference[:length])).float() / 255)
    values = []
    for prefix in range(MIN_PREFIX_FRAMES, length + 1):
        fg = detector(gen[:, :prefix].unsqueeze(0).to(device), rescale=False, resize=False, return_features=True)
        fr = detector(ref[:, :prefix].unsqueeze(0).to(device), rescale=False, resize=False, return_features=True)
        values.append(float(((fg.double() - fr.double()) ** 2).sum()))
    return values
