"""VBench / VBench-I2V dimensions, each by VBench's formula (Vchitect/VBench), on decoded videos.

Videos are uint8 arrays [T, H, W, 3] (T >= 2); images uint8 [H, W, 3]. Each function returns the
per-video values and, where VBench's aggregate is not their plain mean, says so. The frame
transforms reproduce torchvision's as VBench applies them: its ``load_video`` returns
``torch.Tensor(frames)``, i.e. float32 values 0..255 (not uint8), so the resizes (no antialias)
are neither rounded nor clamped before the division by 255.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .metrics import temporal_flickering

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DimensionResult:
    """``aggregate``: VBench's overall score; ``per_video``: one value per video;
    ``per_frame``: the per-frame (or per-pair) terms behind each video's value."""

    aggregate: float
    per_video: list[float]
    per_frame: list[list[float]] = field(default_factory=list)


def _resize_short_side(frames: torch.Tensor, size: int, mode: str, antialias: bool = False) -> torch.Tensor:
    """Frames [T, 3, H, W] (values 0..255) -> float32 with the shorter side ``size`` (torchvision
    ``Resize(int)`` on a float tensor: the long side is int(size * long / short))."""
    h, w = frames.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    out_size = (size, new_long) if h <= w else (new_long, size)
    return F.interpolate(frames.float(), size=out_size, mode=mode, align_corners=False, antialias=antialias)


def _center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    h, w = frames.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frames[..., top:top + size, left:left + size]


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def dino_frames(video: np.ndarray, size: int = 224) -> torch.Tensor:
    """VBench ``dino_transform``: shorter side to 224 (bilinear), /255, ImageNet normalisation."""
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)
    return _normalise(_resize_short_side(frames, size, "bilinear") / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def dino_image(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """VBench-I2V ``dino_transform_Image`` of the input image (a PIL resize, shorter side 224)."""
    pil = Image.fromarray(image).convert("RGB")
    w, h = pil.size
    new = (int(size * w / h), size) if h <= w else (size, int(size * h / w))
    arr = np.asarray(pil.resize(new, Image.BILINEAR), dtype=np.float32) / 255.0
    return _normalise(torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0), IMAGENET_MEAN, IMAGENET_STD)


def dino_frames_internet(video: np.ndarray, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """VBench-I2V ``dino_transform_internet`` (vbench2_beta_i2v/utils.py since e7f070a): shorter side to
    256 (bicubic; torchvision >= 0.17 antialiases tensors by default, and VBench leaves the default),
    centre crop 224, /255, ImageNet normalisation."""
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)
    frames = _center_crop(_resize_short_side(frames, resize, "bicubic", antialias=True), crop)
    return _normalise(frames / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def dino_image_internet(image: np.ndarray, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """VBench-I2V ``dino_transform_Image_internet`` of the input image: PIL bicubic resize of the shorter
    side to 256, centre crop 224, /255, ImageNet normalisation."""
    pil = Image.fromarray(image).convert("RGB")
    w, h = pil.size
    new = (int(resize * w / h), resize) if h <= w else (resize, int(resize * h / w))
    arr = np.asarray(pil.resize(new, Image.BICUBIC), dtype=np.float32) / 255.0
    frames = _center_crop(torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0), crop)
    return _normalise(frames, IMAGENET_MEAN, IMAGENET_STD)


def clip_frames(video: np.ndarray, size: int = 224) -> torch.Tensor:
    """VBench ``clip_transform``: shorter side to 224 (bicubic), centre crop 224, /255, CLIP normalisation."""
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)
    frames = _center_crop(_resize_short_side(frames, size, "bicubic"), size)
    return _normalise(frames / 255.0, CLIP_MEAN, CLIP_STD)


def _features(model, frames: torch.Tensor, device, batch: int = 16) -> torch.Tensor:
    out = [model(frames[i:i + batch].to(device)).float().cpu() for i in range(0, len(frames), batch)]
    return F.normalize(torch.cat(out), dim=-1)


def _consistency(features_per_video: list[torch.Tensor]) -> DimensionResult:
    """VBench's subject/background consistency: for frames 1..T-1, the mean of the (clamped at 0)
    cosine similarities to the previous and to the first frame. The overall score averages over
    all frames of all videos (sum / count, as VBench), not over videos."""
    total, count, per_video, per_frame = 0.0, 0, [], []
    for feats in features_per_video:
        terms = []
        for i in range(1, len(feats)):
            to_prev = max(0.0, float(F.cosine_similarity(feats[i - 1:i], feats[i:i + 1])))
            to_first = max(0.0, float(F.cosine_similarity(feats[0:1], feats[i:i + 1])))
            terms.append((to_prev + to_first) / 2)
        total += sum(terms)
        count += len(terms)
        per_video.append(sum(terms) / len(terms))
        per_frame.append(terms)
    return DimensionResult(total / count, per_video, per_frame)


def subject_consistency(videos: list[np.ndarray], dino, device="cpu") -> DimensionResult:
    """VBench subject consistency: DINO ViT-B/16 CLS features of ``dino_frames``."""
    return _consistency([_features(dino, dino_frames(v), device) for v in videos])


def background_consistency(videos: list[np.ndarray], clip_b32, device="cpu") -> DimensionResult:
    """VBench background consistency: CLIP ViT-B/32 image embeddings of ``clip_frames``."""
    return _consistency([_features(clip_b32, clip_frames(v), device) for v in videos])


def temporal_flickering_dimension(videos: list[np.ndarray]) -> DimensionResult:
    """VBench temporal flickering: (255 - mean absolute difference of consecutive frames) / 255 per
    video; the overall score is the mean over videos."""
    per_video, per_frame = [], []
    for video in videos:
        per_video.append(temporal_flickering(video))
        frames = torch.from_numpy(np.asarray(video)).float()
        per_frame.append([(255.0 - float((frames[i] - frames[i + 1]).abs().mean())) / 255.0
                          for i in range(len(frames) - 1)])
    return DimensionResult(float(np.mean(per_video)), per_video, per_frame)


def aesthetic_quality(videos: list[np.ndarray], clip_l14, head, device="cpu") -> DimensionResult:
    """VBench aesthetic quality: the LAION linear head on normalised CLIP ViT-L/14 embeddings of
    ``clip_frames``, divided by 10, averaged over frames; the overall score is the mean over videos."""
    per_video, per_frame = [], []
    for video in videos:
        feats = _features(clip_l14, clip_frames(video), device)
        with torch.no_grad():
            scores = (head(feats.to(device)).squeeze(-1).float().cpu() / 10).tolist()
        per_video.append(float(np.mean(scores)))
        per_frame.append(scores)
    return DimensionResult(float(np.mean(per_video)), per_video, per_frame)


def _image_and_consecutive(pairs: list[tuple[np.ndarray, np.ndarray]], net, image_input, frame_inputs, device,
                           combine) -> DimensionResult:
    """The I2V dimensions' shared loop: per (input image, video), the (clamped) cosine similarity of
    each frame to the image and of each frame to the one before; ``combine(to_image, consecutive)``
    gives the video's score; the overall score is the mean over videos."""
    per_video, per_frame = [], []
    for image, video in pairs:
        image_feat = _features(net, image_input(image), device)
        feats = _features(net, frame_inputs(video), device)
        to_image = [max(0.0, float(F.cosine_similarity(image_feat, feats[i:i + 1]))) for i in range(len(feats))]
        consecutive = [max(0.0, float(F.cosine_similarity(feats[i - 1:i], feats[i:i + 1])))
                       for i in range(1, len(feats))]
        per_video.append(combine(to_image, consecutive))
        per_frame.append(to_image)
    return DimensionResult(float(np.mean(per_video)), per_video, per_frame)


def i2v_subject(pairs: list[tuple[np.ndarray, np.ndarray]], dino, device="cpu",
                version: str = "current") -> DimensionResult:
    """VBench-I2V subject: per (input image, video), from the (clamped) cosine similarities of each
    frame to the image and of consecutive frames; the overall score is the mean over videos.

    ``current`` (vbench2_beta_i2v/i2v_subject.py since e7f070a, 2024-07-12): 0.4 max(to image) +
    0.3 mean(consecutive) + 0.3 min(consecutive), image and frames through ``dino_transform*_internet``
    (256 bicubic, centre crop 224). ``2024-03`` (the beta, 409bd3e): 0.5 max + 0.5 mean, shorter side
    resized to 224 without a crop."""
    if version == "2024-03":
        return _image_and_consecutive(
            pairs, dino, dino_image, dino_frames, device,
            lambda to_image, consecutive: 0.5 * max(to_image) + 0.5 * float(np.mean(consecutive)))
    if version != "current":
        raise ValueError(f"unknown VBench-I2V version {version!r}")
    return _image_and_consecutive(
        pairs, dino, dino_image_internet, dino_frames_internet, device,
        lambda to_image, consecutive: (0.4 * max(to_image) + 0.3 * float(np.mean(consecutive))
                                       + 0.3 * min(consecutive)))


def imaging_frames(video: np.ndarray, longest: int = 512) -> torch.Tensor:
    """VBench imaging-quality transform ('longer', its default): frames whose longer side exceeds 512
    are resized (bilinear, antialias=False as vbench/imaging_quality.py sets it since ee896a9,
    2024-11-29) to (int(s h), int(s w)), s = 512 / longer side; then /255."""
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float()
    h, w = frames.shape[-2:]
    if max(h, w) > longest:
        scale = longest / max(h, w)
        frames = F.interpolate(frames, size=(int(scale * h), int(scale * w)), mode="bilinear",
                               align_corners=False, antialias=False)
    return frames / 255.0


def imaging_quality(videos: list[np.ndarray], musiq, device="cpu") -> DimensionResult:
    """VBench imaging quality: MUSIQ (SPAQ) score of every frame, averaged per video, / 100; the
    overall score is the mean over videos."""
    per_video, per_frame = [], []
    for video in videos:
        frames = imaging_frames(video)
        scores = [float(musiq(frames[i:i + 1].to(device))) / 100 for i in range(len(frames))]
        per_video.append(float(np.mean(scores)))
        per_frame.append(scores)
    return DimensionResult(float(np.mean(per_video)), per_video, per_frame)


def _pad_to_16(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Replicate-pad [B, C, H, W] to multiples of 16, split evenly (AMT's ``InputPadder``)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (16 - h % 16) % 16, (16 - w % 16) % 16
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    return F.pad(x, pads, mode="replicate"), pads


def motion_smoothness(videos: list[np.ndarray], amt, device="cpu") -> DimensionResult:
    """VBench motion smoothness: AMT-S re-creates every odd frame from its even neighbours; the score is
    (255 - mean absolute difference between the real and re-created odd frames, as uint8) / 255 per video,
    the mean over videos overall. Needs 3+ frames. (VBench shrinks the frames first when its VRAM
    estimate is short; at scale 1, which CPUs and large GPUs get, this is the same computation.)"""
    t = torch.tensor(0.5).view(1, 1, 1, 1).to(device)
    per_video, per_frame = [], []
    for video in videos:
        if len(video) < 3:
            raise ValueError(f"motion smoothness needs three or more frames, got {len(video)}")
        inputs = torch.from_numpy(np.ascontiguousarray(video[0::2])).permute(0, 3, 1, 2).float() / 255.0
        padded, (left, right, top, bottom) = _pad_to_16(inputs)
        h, w = padded.shape[-2:]
        if min(h, w) < 128:
            # AMT's 4-level correlation pyramid from 1/8 resolution needs 2+ cells a side at its coarsest
            # level (1/64): a 1-cell level divides by zero when its lookup normalises coordinates
            raise ValueError(f"motion smoothness needs frames of 113+ pixels a side (padded to 128), "
                             f"got {video.shape[1:3]}")
        diffs = []
        for i in range(len(padded) - 1):
            middle = amt(padded[i:i + 1].to(device), padded[i + 1:i + 2].to(device), t).cpu()
            middle = middle[..., top:h - bottom, left:w - right]
            # AMT's tensor2img: * 255, clip, truncate to uint8
            made = (middle[0] * 255.0).permute(1, 2, 0).numpy().clip(0, 255).astype(np.uint8)
            real = video[2 * i + 1]
            diffs.append(float(np.mean(np.abs(made.astype(np.int16) - real.astype(np.int16)))))
        per_video.append((255.0 - float(np.mean(diffs))) / 255.0)
        per_frame.append([(255.0 - d) / 255.0 for d in diffs])
    return DimensionResult(float(np.mean(per_video)), per_video, per_frame)


def dreamsim_frames(video: np.ndarray, size: int = 224) -> torch.Tensor:
    """VBench-I2V ``dreamsim_transform``: resize to 224x224 (bicubic, torchvision's default antialias), /255."""
    frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float()
    return F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False, antialias=True) / 255.0


def dreamsim_image(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """VBench-I2V ``dreamsim_transform_Image``: PIL bicubic resize to 224x224, /255."""
    pil = Image.fromarray(image).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def i2v_background(pairs: list[tuple[np.ndarray, np.ndarray]], dreamsim, device="cpu") -> DimensionResult:
    """VBench-I2V background: with DreamSim embeddings, 0.4 * max over frames of the (clamped) cosine
    similarity to the input image + 0.3 * mean + 0.3 * min of consecutive-frame similarities; the
    overall score is the mean over videos."""
    return _image_and_consecutive(
        pairs, dreamsim, dreamsim_image, dreamsim_frames, device,
        lambda to_image, consecutive: 0.4 * max(to_image) + 0.3 * float(np.mean(consecutive)) + 0.3 * min(consecutive))
