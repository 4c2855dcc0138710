"""The evaluation protocols over folders of videos: HumanVid's TikTok metrics and VBench-I2V.

``evaluate(options)`` matches every generated video with its reference video (and input image),
loads each network whose weight file is present once, then scores the videos one at a time (only
one video pair and the set-level features are held in memory), and returns the report dictionary
(:mod:`.report` writes it). A metric whose file is missing is skipped with one line.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

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
# provenance: generated frame i meets the driving frame that made it (the video's sidecar), frame for
# frame when a video has none; aligned: frame i meets frame i; humanvid: HumanVid metrics.py's stride
PAIRINGS = ("provenance", "aligned", "humanvid")
FRAME_SAMPLINGS = ("all", "sample-once")
VBENCH_VERSIONS = ("current", "2024-03")

# What each number is, written into report.json and the Markdown notes.
CONVENTIONS = {
    "ssim": "3DGS Gaussian-window SSIM (11x11, sigma 1.5, zero padding), mean over frame pairs",
    "psnr": "20 log10(1 / sqrt(mse)) per frame pair in [0, 1], mean over frame pairs",
    "lpips": "LPIPS v0.1 VGG, inputs in [-1, 1] (LPIPS' own convention), mean over frame pairs",
    "lpips_01": "the same LPIPS fed [0, 1] images as they are (HumanVid/DisCo TikTok scripts)",
    "fid": "pytorch-fid FID Inception pool3, Fréchet distance of all scored generated frames vs their reference "
           "frames (at the reference's own size)",
    "fvd_set": "StyleGAN-V FVD: I3D features of the first 16-frame clip of each video, set-level Fréchet distance",
    "fvd_pair": "HumanVid FVD: per generated/reference pair, squared I3D feature distance of every 10..T-frame "
                "prefix (a Fréchet distance of one video per side), mean over prefixes and pairs",
    "subject_consistency": "VBench: DINO ViT-B/16, mean of cos to previous and first frame, over all frames",
    "background_consistency": "VBench: CLIP ViT-B/32, mean of cos to previous and first frame, over all frames",
    "temporal_flickering": "VBench: (255 - mean |f_i - f_i+1|) / 255, mean over videos",
    "aesthetic_quality": "VBench: LAION head on CLIP ViT-L/14 embeddings / 10, mean over frames then videos",
    "i2v_subject": "VBench-I2V (current, since e7f070a): DINO, 0.4 max cos(image, frame) + 0.3 mean + 0.3 min "
                   "cos(consecutive frames), inputs resized to 256 (bicubic) and centre-cropped to 224; "
                   "--vbench_version 2024-03: 0.5 max + 0.5 mean, shorter side 224, no crop",
    "motion_smoothness": "VBench: AMT-S re-creates odd frames from even ones, (255 - mean |real - made|) / 255, "
                         "mean over videos",
    "i2v_background": "VBench-I2V: DreamSim ensemble, 0.4 max cos(image, frame) + 0.3 mean + 0.3 min "
                      "cos(consecutive frames)",
    "imaging_quality": "VBench: MUSIQ (SPAQ) per frame, longer side capped at 512 (bilinear, no antialias), / 100, "
                       "mean over frames then videos",
}


@dataclass
class EvalOptions:
    generated: Path
    reference: Path | None
    images: Path | None
    protocol: str
    weights: Path | None
    device: str = "cpu"
    fid_resize: int = 768         # HumanVid's pre-resize of every frame to 768x768 before the FID Inception; 0: off
    fid_frames: int = 24          # FID frames per video (HumanVid's video2jpg keeps 24); 0: every scored frame
    sampling: str = "provenance"  # how reference frames are paired with generated frames (PAIRINGS)
    frame_sampling: str = "all"   # SSIM/PSNR/LPIPS over every pair, or one random pair per video (HumanVid)
    sample_seed: int = 0          # the random generator of frame_sampling "sample-once"
    vbench_version: str = "current"  # VBench-I2V's i2v_subject rule and DINO transform (VBENCH_VERSIONS)
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


def provenance_indices(video: Path) -> list[int] | None:
    """The driving-frame indices recorded in ``video``'s sidecar (``X.json``, or the sidecar of the file a
    link ``X.mp4`` points to); None when there is none."""
    from ..pipeline.sidecar import read_sidecar

    for path in dict.fromkeys((Path(video), Path(video).resolve())):
        provenance = read_sidecar(path).get("provenance")
        if isinstance(provenance, dict) and isinstance(provenance.get("frame_indices"), list):
            try:
                return [int(i) for i in provenance["frame_indices"]]
            except (TypeError, ValueError):
                raise InputError(f"{path.with_suffix('.json')}: provenance.frame_indices must be integers") from None
    return None


@dataclass
class Pairing:
    """Which reference frame each scored generated frame meets: generated frame i <-> reference frame
    ``reference[i]``, for i < len(reference)."""

    method: str
    reference: list[int]


def pair_frames(generated_count: int, reference_count: int, sampling: str,
                provenance: list[int] | None) -> Pairing:
    """The frame pairing of one video (see PAIRINGS). With provenance, frames whose driving frame lies
    beyond the reference video are not scored."""
    if sampling == "provenance" and provenance is not None:
        indices = provenance[:generated_count]
        kept = list(itertools.takewhile(lambda i: 0 <= i < reference_count, indices))
        if len(kept) < len(indices):
            log.warning("generated frames %d.. were driven by frames beyond the %d of the reference video; "
                        "not scored", len(kept), reference_count)
        return Pairing("provenance", kept)
    if sampling == "humanvid":
        return Pairing("humanvid", humanvid_reference_indices(reference_count)[:generated_count])
    method = "aligned" if sampling == "aligned" else "frame for frame (no provenance)"
    return Pairing(method, list(range(min(generated_count, reference_count))))


def _resize_like(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize of uint8 frames (torchvision ``Resize`` on PIL images, as HumanVid)."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def _to_unit(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


# metrics whose overall value is the mean over all per-frame (or per-prefix) values of all videos, as the
# reference scripts aggregate them (HumanVid's frame lists, VBench's sim / cnt); the others average videos
AGGREGATE_OVER_FRAMES = ("ssim", "psnr", "lpips", "lpips_01", "fvd_pair", "subject_consistency",
                         "background_consistency")
HUMANVID_METRICS = ("ssim", "psnr", "lpips", "lpips_01", "fid", "fvd_pair")
VBENCH_METRICS = ("i2v_subject", "i2v_background", "subject_consistency", "background_consistency",
                  "temporal_flickering", "motion_smoothness", "aesthetic_quality", "imaging_quality")


def finite_mean(values: list[float]) -> float:
    """Mean of the finite values; +inf when there are none but infinities (PSNR of identical frames:
    the 3DGS formula divides by a zero error), nan when empty."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return float(np.mean(finite))
    return math.inf if values else math.nan


class Evaluation:
    """Per-video values, per-frame curves, aggregates and skip reasons of one run."""

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        self.videos: dict[str, dict] = {}
        self.aggregate: dict[str, float | None] = {}
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def skip(self, metric: str, reason: str) -> None:
        if metric in self.skipped:
            return
        self.skipped[metric] = reason
        self.aggregate[metric] = None
        print(f"skip {metric}: {reason}")

    def weights(self, keys: tuple[str, ...], metrics: tuple[str, ...]) -> list[Path] | None:
        """The files for ``keys``, or None after skipping ``metrics`` for the first one missing."""
        paths = []
        for key in keys:
            path = find_weight(self.options.weights, key)
            if path is None:
                for metric in metrics:
                    self.skip(metric, missing_reason(key, self.options.weights))
                return None
            paths.append(path)
        return paths

    def put(self, item_id: str, metric: str, value: float, per_frame: list[float] | None = None) -> None:
        entry = self.videos.setdefault(item_id, {"metrics": {}, "per_frame": {}})
        entry["metrics"][metric] = float(value)
        if per_frame is not None:
            entry["per_frame"][metric] = [float(v) for v in per_frame]

    def finish(self, metric: str) -> None:
        """The aggregate of a per-video metric from the stored values."""
        if metric in self.skipped:
            return
        if metric in AGGREGATE_OVER_FRAMES:
            values = [v for e in self.videos.values() for v in e["per_frame"].get(metric, [])]
        else:
            values = [e["metrics"][metric] for e in self.videos.values() if metric in e["metrics"]]
        infinite = sum(1 for v in values if not math.isfinite(v))
        if infinite:
            self.notes[metric] = (f"{infinite} of {len(values)} values are infinite (identical frames: a zero error), "
                                  + ("so the score is infinite" if infinite == len(values)
                                     else f"the mean is over the other {len(values) - infinite}")
                                  + "; report.json writes infinite values as null")
        if values:
            self.aggregate[metric] = finite_mean(values)
        else:
            self.skip(metric, "no video could be scored")


def _load_networks(ev: Evaluation, humanvid: bool, vbench: bool, any_reference: bool, any_image: bool) -> dict:
    """Every network the protocol needs and whose files are present (skips printed for the rest)."""
    opts, nets = ev.options, {}
    if humanvid and any_reference:
        found = ev.weights(("vgg16", "lpips_vgg"), ("lpips", "lpips_01"))
        if found:
            from .lpips import load_lpips

            nets["lpips"] = load_lpips(*found, device=opts.device)
        found = ev.weights(("fid_inception",), ("fid",))
        if found:
            from .inception import load_fid_inception

            nets["inception"] = load_fid_inception(found[0], device=opts.device)
    if any_reference:
        found = ev.weights(("i3d",), ("fvd_pair", "fvd_set") if humanvid else ("fvd_set",))
        if found:
            from .i3d import load_i3d

            nets["i3d"] = load_i3d(found[0], device=opts.device)
    elif humanvid:
        for metric in HUMANVID_METRICS:
            ev.skip(metric, "no generated video has a reference video (--reference)")
    if not any_reference:
        ev.skip("fvd_set", "no generated video has a reference video (--reference)")
    if not vbench:
        return nets
    from .vit import load_aesthetic_head, load_clip_image_encoder, load_dino_vit

    found = ev.weights(("dino_vitb16",), ("subject_consistency", "i2v_subject"))
    if found:
        nets["dino"] = load_dino_vit(found[0], device=opts.device)
    if not any_image:
        for metric in ("i2v_subject", "i2v_background"):
            ev.skip(metric, "no generated video has an input image (--images)")
    else:
        found = ev.weights(("dino_vitb16", "dreamsim_clip", "dreamsim_open_clip", "dreamsim_lora"), ("i2v_background",))
        if found:
            from .dreamsim import load_dreamsim

            nets["dreamsim"] = load_dreamsim(*found[:3], found[3].parent, device=opts.device)
    found = ev.weights(("clip_vitb32",), ("background_consistency",))
    if found:
        nets["clip_b32"] = load_clip_image_encoder(found[0], device=opts.device)
    found = ev.weights(("clip_vitl14", "aesthetic_head"), ("aesthetic_quality",))
    if found:
        nets["clip_l14"] = load_clip_image_encoder(found[0], device=opts.device)
        nets["aesthetic_head"] = load_aesthetic_head(found[1], device=opts.device)
    found = ev.weights(("musiq_spaq",), ("imaging_quality",))
    if found:
        from .musiq import load_musiq

        nets["musiq"] = load_musiq(found[0], device=opts.device)
    found = ev.weights(("amt_s",), ("motion_smoothness",))
    if found:
        from .amt import load_amt_s

        nets["amt"] = load_amt_s(found[0], device=opts.device)
    return nets


def _inception_features(model, frames: np.ndarray, opts: EvalOptions) -> np.ndarray:
    if opts.fid_resize:
        size = opts.fid_resize
        frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])
    images = _to_unit(frames)
    feats = [model(images[i:i + 16].to(opts.device)).double().cpu().numpy() for i in range(0, len(images), 16)]
    return np.concatenate(feats)


def _score_humanvid_pair(ev: Evaluation, nets: dict, item: Item, gen: np.ndarray, ref_all: np.ndarray,
                         fid_feats: dict[str, list], pairing: Pairing, rng: np.random.Generator) -> None:
    """SSIM, PSNR, LPIPS per frame pair, FID features, HumanVid's per-pair FVD of one video pair."""
    opts, device = ev.options, ev.options.device
    h, w = gen.shape[1:3]
    indices = pairing.reference
    count = len(indices)
    if count == 0:
        log.warning("%s: no generated frame has a reference frame to meet; not scored", item.generated.name)
        return
    # HumanVid metrics.py "sample-once": one random generated frame per video (seeded here)
    scored = [int(rng.integers(0, count))] if opts.frame_sampling == "sample-once" else list(range(count))
    ref = _resize_like(ref_all[[indices[i] for i in scored]], h, w)
    gen_u, ref_u = _to_unit(gen[scored]), _to_unit(ref)
    count = len(scored)
    ssim, psnr = M.ssim(gen_u, ref_u), M.psnr(gen_u, ref_u)
    ev.put(item.id, "ssim", ssim.mean(), ssim.tolist())
    ev.put(item.id, "psnr", finite_mean(psnr.tolist()), psnr.tolist())
    if "lpips" in nets:
        model = nets["lpips"]
        lp = torch.cat([model(gen_u[i:i + 8].to(device) * 2 - 1, ref_u[i:i + 8].to(device) * 2 - 1).cpu()
                        for i in range(0, count, 8)])
        lp01 = torch.cat([model(gen_u[i:i + 8].to(device), ref_u[i:i + 8].to(device), input_range="01").cpu()
                          for i in range(0, count, 8)])
        ev.put(item.id, "lpips", lp.mean(), lp.tolist())
        ev.put(item.id, "lpips_01", lp01.mean(), lp01.tolist())
    if "inception" in nets:
        # HumanVid's video2jpg keeps the first 24 frames of each generated video and the frames they were
        # paired with, each at its own size (the Inception, or the 768 pre-resize, resizes them)
        fid_count = min(len(indices), opts.fid_frames) if opts.fid_frames else len(indices)
        fid_feats["generated"].append(_inception_features(nets["inception"], gen[:fid_count], opts))
        fid_feats["reference"].append(_inception_features(nets["inception"], ref_all[indices[:fid_count]], opts))
    if "i3d" in nets:
        from .i3d import pair_fvd

        fvd_indices = (humanvid_fvd_reference_indices(len(ref_all)) if pairing.method == "humanvid"
                       else indices)
        fvd_gen = gen if pairing.method == "humanvid" else gen[:len(indices)]
        values = pair_fvd(nets["i3d"], fvd_gen, _resize_like(ref_all[fvd_indices], h, w), device=device)
        if values:
            ev.put(item.id, "fvd_pair", np.mean(values), values)


def _score_vbench_video(ev: Evaluation, nets: dict, item: Item, video: np.ndarray, image: np.ndarray | None) -> None:
    """Every VBench-I2V dimension whose network is loaded, for one generated video."""
    from . import vbench as V

    device = ev.options.device
    if len(video) < 2:
        raise InputError(f"{item.generated}: VBench needs two or more frames")

    def store(metric: str, result: V.DimensionResult) -> None:
        ev.put(item.id, metric, result.per_video[0], result.per_frame[0] if result.per_frame else None)

    store("temporal_flickering", V.temporal_flickering_dimension([video]))
    if "dino" in nets:
        store("subject_consistency", V.subject_consistency([video], nets["dino"], device))
        if image is not None:
            store("i2v_subject", V.i2v_subject([(image, video)], nets["dino"], device, ev.options.vbench_version))
    if "dreamsim" in nets and image is not None:
        store("i2v_background", V.i2v_background([(image, video)], nets["dreamsim"], device))
    if "clip_b32" in nets:
        store("background_consistency", V.background_consistency([video], nets["clip_b32"], device))
    if "clip_l14" in nets:
        store("aesthetic_quality", V.aesthetic_quality([video], nets["clip_l14"], nets["aesthetic_head"], device))
    if "musiq" in nets:
        store("imaging_quality", V.imaging_quality([video], nets["musiq"], device))
    if "amt" in nets:
        if len(video) < 3 or min(video.shape[1:3]) <= 112:
            log.warning("%s: motion smoothness needs 3+ frames larger than 112 pixels a side; not scored",
                        item.generated.name)
        else:
            store("motion_smoothness", V.motion_smoothness([video], nets["amt"], device))


def evaluate(options: EvalOptions) -> dict:
    """Run the protocol; returns the report dictionary (see :mod:`.report`)."""
    if options.protocol not in PROTOCOLS:
        raise InputError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {options.protocol!r}")
    if options.weights is not None and not Path(options.weights).is_dir():
        raise InputError(f"--weights: folder not found: {options.weights}")
    if options.fid_resize < 0:
        raise InputError(f"--fid_resize: expected 0 (off) or a size such as 768, got {options.fid_resize}")
    if options.fid_frames < 0:
        raise InputError(f"--fid_frames: expected 0 (every scored frame) or a count such as 24, got {options.fid_frames}")
    for flag, value, allowed in (("--sampling", options.sampling, PAIRINGS),
                                 ("--frame_sampling", options.frame_sampling, FRAME_SAMPLINGS),
                                 ("--vbench_version", options.vbench_version, VBENCH_VERSIONS)):
        if value not in allowed:
            raise InputError(f"{flag}: expected one of {', '.join(allowed)}, got {value!r}")
    items = match_inputs(options)
    humanvid = options.protocol in ("humanvid", "all")
    vbench = options.protocol in ("vbench-i2v", "all")
    ev = Evaluation(options)
    nets = _load_networks(ev, humanvid, vbench, any(it.reference for it in items), any(it.image for it in items))
    fid_feats: dict[str, list] = {"generated": [], "reference": []}
    fvd_feats: dict[str, list] = {"generated": [], "reference": []}
    rng = np.random.default_rng(options.sample_seed)
    pairings: dict[str, dict] = {}
    for number, item in enumerate(items, 1):
        log.info("scoring %s (%d/%d)", item.generated.name, number, len(items))
        gen = read_frames(item.generated, options.max_frames)
        provenance = provenance_indices(item.generated) if options.sampling == "provenance" else None
        ref = None
        if item.reference:
            # the driving frames a sidecar names are read whatever --max_frames says
            ref = read_frames(item.reference, max(provenance[:len(gen)]) + 1 if provenance else options.max_frames)
        image = read_image(item.image) if item.image else None
        if humanvid and ref is not None:
            pairing = pair_frames(len(gen), len(ref), options.sampling, provenance)
            pairings[item.id] = {"method": pairing.method, "reference_frames": pairing.reference}
            _score_humanvid_pair(ev, nets, item, gen, ref, fid_feats, pairing, rng)
        if vbench:
            _score_vbench_video(ev, nets, item, gen, image)
        if "i3d" in nets and ref is not None:
            from .i3d import set_level_features

            for side, video in (("generated", gen), ("reference", ref)):
                feats = set_level_features(nets["i3d"], [video], options.device)
                if feats is not None:
                    fvd_feats[side].append(feats)
        entry = ev.videos.setdefault(item.id, {"metrics": {}, "per_frame": {}})
        entry.update({"generated": str(item.generated), "reference": str(item.reference) if item.reference else None,
                      "image": str(item.image) if item.image else None})
        if item.id in pairings:
            entry["pairing"] = pairings[item.id]
    for metric in (HUMANVID_METRICS if humanvid else ()) + (VBENCH_METRICS if vbench else ()):
        if metric != "fid":
            ev.finish(metric)
    if "inception" in nets:
        if sum(len(f) for f in fid_feats["generated"]) < 2:
            ev.skip("fid", "fewer than two scored frames")
        else:
            ev.aggregate["fid"] = M.frechet_distance_of_features(np.concatenate(fid_feats["generated"]),
                                                                 np.concatenate(fid_feats["reference"]))
    if "i3d" in nets:
        from .i3d import CLIP_FRAMES

        if min(len(fvd_feats["generated"]), len(fvd_feats["reference"])) < 2:
            ev.skip("fvd_set", f"needs two or more videos of {CLIP_FRAMES}+ frames on each side")
        else:
            ev.aggregate["fvd_set"] = M.frechet_distance_of_features(np.concatenate(fvd_feats["generated"]),
                                                                     np.concatenate(fvd_feats["reference"]))
    return {
        "protocol": options.protocol,
        "generated": str(options.generated),
        "reference": str(options.reference) if options.reference else None,
        "images": str(options.images) if options.images else None,
        "weights": str(options.weights) if options.weights else None,
        "options": {"fid_resize": options.fid_resize or None, "fid_frames": options.fid_frames or None,
                    "sampling": options.sampling, "frame_sampling": options.frame_sampling,
                    "sample_seed": options.sample_seed if options.frame_sampling == "sample-once" else None,
                    "vbench_version": options.vbench_version, "max_frames": options.max_frames,
                    "device": options.device},
        "pairing": _pairing_summary(pairings),
        "conventions": {k: v for k, v in CONVENTIONS.items() if k in ev.aggregate},
        "aggregate": dict(ev.aggregate),
        "notes": ev.notes,
        "skipped": ev.skipped,
        "videos": ev.videos,
    }


def _pairing_summary(pairings: dict[str, dict]) -> str | None:
    """How many videos were paired which way, in words (None when nothing was paired)."""
    if not pairings:
        return None
    counts: dict[str, int] = {}
    for entry in pairings.values():
        counts[entry["method"]] = counts.get(entry["method"], 0) + 1
    return "; ".join(f"{method}: {n} video{'s' if n > 1 else ''}" for method, n in counts.items())
