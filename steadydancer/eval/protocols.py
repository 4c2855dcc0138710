"""The evaluation protocols over folders of videos: HumanVid's TikTok metrics and VBench-I2V.

``evaluate(options)`` matches every generated video with its reference video (and input image),
computes each metric whose weight file is present, and returns the report dictionary
(:mod:`.report` writes it). A metric whose file is missing is skipped with one line.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from . import metrics as M
from .weights import find_weight, missing_reason

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROTOCOLS = ("humanvid", "vbench-i2v", "all")

# What each number is, written into report.json and the Markdown notes.
CONVENTIONS = {
    "ssim": "3DGS Gaussian-window SSIM (11x11, sigma 1.5, zero padding), mean over frame pairs",
    "psnr": "20 log10(1 / sqrt(mse)) per frame pair in [0, 1], mean over frame pairs",
    "lpips": "LPIPS v0.1 VGG, inputs in [-1, 1] (LPIPS' own convention), mean over frame pairs",
    "lpips_01": "the same LPIPS fed [0, 1] images as they are (HumanVid/DisCo TikTok scripts)",
    "fid": "pytorch-fid FID Inception pool3, Fréchet distance of all scored generated vs reference frames",
    "fvd_set": "StyleGAN-V FVD: I3D features of the first 16-frame clip of each video, set-level Fréchet distance",
    "fvd_pair": "HumanVid FVD: per generated/reference pair, squared I3D feature distance of every 10..T-frame "
                "prefix (a Fréchet distance of one video per side), mean over prefixes and pairs",
    "subject_consistency": "VBench: DINO ViT-B/16, mean of cos to previous and first frame, over all frames",
    "background_consistency": "VBench: CLIP ViT-B/32, mean of cos to previous and first frame, over all frames",
    "temporal_flickering": "VBench: (255 - mean |f_i - f_i+1|) / 255, mean over videos",
    "aesthetic_quality": "VBench: LAION head on CLIP ViT-L/14 embeddings / 10, mean over frames then videos",
    "i2v_subject": "VBench-I2V: DINO, 0.5 max cos(image, frame) + 0.5 mean cos(consecutive frames)",
    "motion_smoothness": "VBench: AMT-S re-creates odd frames from even ones, (255 - mean |real - made|) / 255, "
                         "mean over videos",
    "i2v_background": "VBench-I2V: DreamSim ensemble, 0.4 max cos(image, frame) + 0.3 mean + 0.3 min "
                      "cos(consecutive frames)",
    "imaging_quality": "VBench: MUSIQ (SPAQ) per frame, longer side capped at 512, / 100, mean over frames then videos",
}


@dataclass
class EvalOptions:
    generated: Path
    reference: Path | None
    images: Path | None
    protocol: str
    weights: Path | None
    device: str = "cpu"
    fid_resize: int = 0           # 768: HumanVid's pre-resize of every frame to 768x768 before the FID Inception
    sampling: str = "humanvid"    # how reference frames are paired with generated frames
    max_frames: int | None = None


@dataclass
class Item:
    id: str
    generated: Path
    reference: Path | None
    image: Path | None


def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in extensions}


def _match(stem: str, candidates: dict[str, Path]) -> Path | None:
    """The candidate named like ``stem``: the same name, else its last or first ``_`` part (HumanVid
    names generated videos ``..._<id>.mp4``)."""
    for key in (stem, stem.split("_")[-1], stem.split("_")[0]):
        if key in candidates:
            return candidates[key]
    return None


def match_inputs(options: EvalOptions) -> list[Item]:
    """Generated videos with their reference video and input image, by file name."""
    for flag, folder in (("--generated", options.generated), ("--reference", options.reference),
                         ("--images", options.images)):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{flag}: folder not found: {folder}")
    generated = _files(Path(options.generated), VIDEO_EXTENSIONS)
    if not generated:
        raise InputError(f"--generated: no videos ({', '.join(VIDEO_EXTENSIONS)}) in {options.generated}")
    references = _files(Path(options.reference), VIDEO_EXTENSIONS) if options.reference else {}
    images = _files(Path(options.images), IMAGE_EXTENSIONS) if options.images else {}
    items = []
    for stem, path in generated.items():
        items.append(Item(stem, path, _match(stem, references), _match(stem, images)))
        if options.reference and items[-1].reference is None:
            log.warning("%s: no reference video named like it in %s", path.name, options.reference)
    return items


def read_frames(path: Path, max_frames: int | None = None) -> np.ndarray:
    """Decoded video, uint8 [T, H, W, 3]."""
    from ..pose.video import read_video

    frames, _ = read_video(path, max_frames)
    return np.stack(frames)


def read_image(path: Path) -> np.ndarray:
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def humanvid_reference_indices(count: int) -> list[int]:
    """Reference frames HumanVid's ``metrics.py`` scores: every third frame of videos longer than
    72 frames, else a stride of count // 24 (at least 1); generated frame i meets the i-th of these."""
    if count > 72:
        return list(range(0, count, 3))
    return list(range(0, count, max(1, count // 24)))


def humanvid_fvd_reference_indices(count: int) -> list[int]:
    """Reference frames of HumanVid's ``eval_fvd.py``: every third frame beyond 72 frames, the first 24."""
    indices = list(range(count))
    if count > 72:
        indices = indices[::3]
    return indices[:24]


def _resize_like(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize of uint8 frames (torchvision ``Resize`` on PIL images, as HumanVid)."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def _to_unit(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


class Evaluation:
    """Accumulates per-video values, per-frame curves, aggregates and skip reasons."""

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        self.videos: dict[str, dict] = {}
        self.aggregate: dict[str, float | None] = {}
        self.skipped: dict[str, str] = {}
        self.i3d = None  # loaded once, shared by both FVD conventions

    def skip(self, metric: str, reason: str) -> None:
        self.skipped[metric] = reason
        self.aggregate[metric] = None
        print(f"skip {metric}: {reason}")

    def weight(self, key: str, metrics: tuple[str, ...]) -> Path | None:
        path = find_weight(self.options.weights, key)
        if path is None:
            for metric in metrics:
                self.skip(metric, missing_reason(key, self.options.weights))
        return path

    def put(self, item_id: str, metric: str, value: float, per_frame: list[float] | None = None) -> None:
        entry = self.videos.setdefault(item_id, {"metrics": {}, "per_frame": {}})
        entry["metrics"][metric] = float(value)
        if per_frame is not None:
            entry["per_frame"][metric] = [float(v) for v in per_frame]


def _run_humanvid(ev: Evaluation, items: list[Item], load: Callable[[Path], np.ndarray]) -> None:
    opts = ev.options
    pairs = [it for it in items if it.reference is not None]
    if not pairs:
        for metric in ("ssim", "psnr", "lpips", "lpips_01", "fid", "fvd_pair"):
            ev.skip(metric, "no generated video has a reference video (--reference)")
        return
    lpips_model = None
    vgg, lin = ev.weight("vgg16", ("lpips", "lpips_01")), None
    if vgg is not None:
        lin = ev.weight("lpips_vgg", ("lpips", "lpips_01"))
    if vgg is not None and lin is not None:
        from .lpips import load_lpips

        lpips_model = load_lpips(vgg, lin, device=opts.device)
    inception_path = ev.weight("fid_inception", ("fid",))
    inception = None
    if inception_path is not None:
        from .inception import load_fid_inception

        inception = load_fid_inception(inception_path, device=opts.device)
    i3d_path = find_weight(opts.weights, "i3d")
    if i3d_path is None:
        ev.skip("fvd_pair", missing_reason("i3d", opts.weights))
    fid_gen, fid_ref = [], []
    pair_values: list[float] = []
    for it in pairs:
        gen = load(it.generated)
        ref_all = load(it.reference)
        h, w = gen.shape[1:3]
        indices = (humanvid_reference_indices(len(ref_all)) if opts.sampling == "humanvid"
                   else list(range(len(ref_all))))
        count = min(len(gen), len(indices))
        gen_u = _to_unit(gen[:count])
        ref_u = _to_unit(_resize_like(ref_all[indices[:count]], h, w))
        ssim = M.ssim(gen_u, ref_u)
        psnr = M.psnr(gen_u, ref_u)
        ev.put(it.id, "ssim", ssim.mean(), ssim.tolist())
        ev.put(it.id, "psnr", psnr.mean(), psnr.tolist())
        if lpips_model is not None:
            d = opts.device
            lp = torch.cat([lpips_model(gen_u[i:i + 8].to(d) * 2 - 1, ref_u[i:i + 8].to(d) * 2 - 1).cpu()
                            for i in range(0, count, 8)])
            lp01 = torch.cat([lpips_model(gen_u[i:i + 8].to(d), ref_u[i:i + 8].to(d), input_range="01").cpu()
                              for i in range(0, count, 8)])
            ev.put(it.id, "lpips", lp.mean(), lp.tolist())
            ev.put(it.id, "lpips_01", lp01.mean(), lp01.tolist())
        if inception is not None:
            fid_gen.append(_inception_features(inception, gen[:count], opts))
            fid_ref.append(_inception_features(inception, ref_all[indices[:count]], opts))
        if i3d_path is not None:
            if ev.i3d is None:
                from .i3d import load_i3d

                ev.i3d = load_i3d(i3d_path, device=opts.device)
            from .i3d import pair_fvd

            fvd_indices = (humanvid_fvd_reference_indices(len(ref_all)) if opts.sampling == "humanvid"
                           else list(range(len(ref_all))))
            values = pair_fvd(ev.i3d, gen, _resize_like(ref_all[fvd_indices], h, w), device=opts.device)
            if values:
                ev.put(it.id, "fvd_pair", np.mean(values), values)
                pair_values.extend(values)
    for metric in ("ssim", "psnr", "lpips", "lpips_01"):
        if metric not in ev.skipped:
            # HumanVid averages over all scored frame pairs of all videos
            ev.aggregate[metric] = M.mean_or_nan(v for e in ev.videos.values() for v in e["per_frame"].get(metric, []))
    if inception is not None:
        gen_feats, ref_feats = np.concatenate(fid_gen), np.concatenate(fid_ref)
        if len(gen_feats) < 2 or len(ref_feats) < 2:
            ev.skip("fid", "fewer than two frames on a side")
        else:
            ev.aggregate["fid"] = M.frechet_distance_of_features(gen_feats, ref_feats)
    if i3d_path is not None:
        if pair_values:
            ev.aggregate["fvd_pair"] = float(np.mean(pair_values))
        else:
            ev.skip("fvd_pair", "no pair has 10 frames or more")


def _inception_features(model, frames: np.ndarray, opts: EvalOptions) -> np.ndarray:
    if opts.fid_resize:
        size = opts.fid_resize
        frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])
    images = _to_unit(frames)
    feats = [model(images[i:i + 16].to(opts.device)).double().cpu().numpy() for i in range(0, len(images), 16)]
    return np.concatenate(feats)


def _run_fvd_set(ev: Evaluation, items: list[Item], load: Callable[[Path], np.ndarray]) -> None:
    opts = ev.options
    pairs = [it for it in items if it.reference is not None]
    if not pairs:
        ev.skip("fvd_set", "no generated video has a reference video (--reference)")
        return
    path = find_weight(opts.weights, "i3d")
    if path is None:
        ev.skip("fvd_set", missing_reason("i3d", opts.weights))
        return
    from .i3d import CLIP_FRAMES, load_i3d, set_level_features

    if ev.i3d is None:
        ev.i3d = load_i3d(path, device=opts.device)
    detector = ev.i3d
    gen = set_level_features(detector, [load(it.generated) for it in pairs], opts.device)
    ref = set_level_features(detector, [load(it.reference) for it in pairs], opts.device)
    if gen is None or ref is None or len(gen) < 2 or len(ref) < 2:
        ev.skip("fvd_set", f"needs two or more videos of {CLIP_FRAMES}+ frames on each side")
        return
    ev.aggregate["fvd_set"] = M.frechet_distance_of_features(gen, ref)


def _run_vbench(ev: Evaluation, items: list[Item], load: Callable[[Path], np.ndarray]) -> None:
    from . import vbench as V

    opts = ev.options
    videos = [load(it.generated) for it in items]
    short = [it.id for it, v in zip(items, videos) if len(v) < 2]
    if short:
        raise InputError(f"VBench needs two or more frames per video: {', '.join(short)}")

    def store(metric: str, result: V.DimensionResult) -> None:
        for it, value, frames in zip(items, result.per_video, result.per_frame or [None] * len(items)):
            ev.put(it.id, metric, value, frames)
        ev.aggregate[metric] = result.aggregate

    store("temporal_flickering", V.temporal_flickering_dimension(videos))
    dino_path = ev.weight("dino_vitb16", ("subject_consistency", "i2v_subject"))
    if dino_path is not None:
        from .vit import load_dino_vit

        dino = load_dino_vit(dino_path, device=opts.device)
        store("subject_consistency", V.subject_consistency(videos, dino, opts.device))
        with_image = [(it, v) for it, v in zip(items, videos) if it.image is not None]
        if not with_image:
            ev.skip("i2v_subject", "no generated video has an input image (--images)")
        else:
            result = V.i2v_subject([(read_image(it.image), v) for it, v in with_image], dino, opts.device)
            for (it, _), value, frames in zip(with_image, result.per_video, result.per_frame):
                ev.put(it.id, "i2v_subject", value, frames)
            ev.aggregate["i2v_subject"] = result.aggregate
    _run_i2v_background(ev, items, videos)
    b32 = ev.weight("clip_vitb32", ("background_consistency",))
    if b32 is not None:
        from .vit import load_clip_image_encoder

        store("background_consistency",
              V.background_consistency(videos, load_clip_image_encoder(b32, device=opts.device), opts.device))
    l14 = ev.weight("clip_vitl14", ("aesthetic_quality",))
    head = ev.weight("aesthetic_head", ("aesthetic_quality",)) if l14 is not None else None
    if l14 is not None and head is not None:
        from .vit import load_aesthetic_head, load_clip_image_encoder

        store("aesthetic_quality", V.aesthetic_quality(videos, load_clip_image_encoder(l14, device=opts.device),
                                                       load_aesthetic_head(head, device=opts.device), opts.device))
    musiq_path = ev.weight("musiq_spaq", ("imaging_quality",))
    if musiq_path is not None:
        from .musiq import load_musiq

        store("imaging_quality", V.imaging_quality(videos, load_musiq(musiq_path, device=opts.device), opts.device))
    amt_path = ev.weight("amt_s", ("motion_smoothness",))
    if amt_path is not None:
        if min(len(v) for v in videos) < 3:
            ev.skip("motion_smoothness", "needs three or more frames per video")
        elif min(min(v.shape[1:3]) for v in videos) <= 48:
            ev.skip("motion_smoothness", "AMT-S needs frames larger than 48 pixels a side")
        else:
            from .amt import load_amt_s

            store("motion_smoothness", V.motion_smoothness(videos, load_amt_s(amt_path, device=opts.device),
                                                           opts.device))
    for metric, reason in V.NOT_IMPLEMENTED.items():
        ev.skip(metric, reason)


def _run_i2v_background(ev: Evaluation, items: list[Item], videos: list[np.ndarray]) -> None:
    from . import vbench as V

    with_image = [(it, v) for it, v in zip(items, videos) if it.image is not None]
    if not with_image:
        ev.skip("i2v_background", "no generated video has an input image (--images)")
        return
    paths = {}
    for key in ("dino_vitb16", "dreamsim_clip", "dreamsim_open_clip", "dreamsim_lora"):
        paths[key] = find_weight(ev.options.weights, key)
        if paths[key] is None:
            ev.skip("i2v_background", missing_reason(key, ev.options.weights))
            return
    from .dreamsim import load_dreamsim

    model = load_dreamsim(paths["dino_vitb16"], paths["dreamsim_clip"], paths["dreamsim_open_clip"],
                          paths["dreamsim_lora"].parent, device=ev.options.device)
    result = V.i2v_background([(read_image(it.image), v) for it, v in with_image], model, ev.options.device)
    for (it, _), value, frames in zip(with_image, result.per_video, result.per_frame):
        ev.put(it.id, "i2v_background", value, frames)
    ev.aggregate["i2v_background"] = result.aggregate


def evaluate(options: EvalOptions) -> dict:
    """Run the protocol; returns the report dictionary (see :mod:`.report`)."""
    if options.protocol not in PROTOCOLS:
        raise InputError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {options.protocol!r}")
    if options.weights is not None and not Path(options.weights).is_dir():
        raise InputError(f"--weights: folder not found: {options.weights}")
    if options.fid_resize < 0:
        raise InputError(f"--fid_resize: expected 0 (off) or a size such as 768, got {options.fid_resize}")
    items = match_inputs(options)
    cache: dict[Path, np.ndarray] = {}

    def load(path: Path) -> np.ndarray:
        if path not in cache:
            cache[path] = read_frames(path, options.max_frames)
        return cache[path]

    ev = Evaluation(options)
    if options.protocol in ("humanvid", "all"):
        _run_humanvid(ev, items, load)
    if options.protocol in ("vbench-i2v", "all"):
        _run_vbench(ev, items, load)
    _run_fvd_set(ev, items, load)
    for it in items:
        entry = ev.videos.setdefault(it.id, {"metrics": {}, "per_frame": {}})
        entry.update({"generated": str(it.generated), "reference": str(it.reference) if it.reference else None,
                      "image": str(it.image) if it.image else None})
    return {
        "protocol": options.protocol,
        "generated": str(options.generated),
        "reference": str(options.reference) if options.reference else None,
        "images": str(options.images) if options.images else None,
        "weights": str(options.weights) if options.weights else None,
        "options": {"fid_resize": options.fid_resize or None, "sampling": options.sampling,
                    "max_frames": options.max_frames, "device": options.device},
        "conventions": {k: v for k, v in CONVENTIONS.items() if k in ev.aggregate},
        "aggregate": {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                      for k, v in ev.aggregate.items()},
        "skipped": ev.skipped,
        "videos": ev.videos,
    }
