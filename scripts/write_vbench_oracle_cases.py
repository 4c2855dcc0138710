"""Write the VBench oracle cases under tests/data/vbench_oracle/ by running VBench's own code.

Run it in a separate venv with PyPI torch + torchvision (which import on the CPU), not in the
package's environment:

    pip install tqdm opencv-python-headless
    python scripts/write_vbench_oracle_cases.py --vbench_git /path/to/VBench/.git \
        --dino_git /path/to/dino/.git --clip_git /path/to/CLIP/.git --iqa_git /path/to/IQA-PyTorch/.git \
        --out tests/data/vbench_oracle

What runs is the reference code, read from the three repositories at the commits named below (``git
show``, nothing else of them is imported): VBench's ``vbench2_beta_i2v/i2v_subject.py`` and
``utils.py`` (today's rule and ``dino_transform*_internet``), ``vbench/subject_consistency.py``,
``vbench/background_consistency.py``, ``vbench/aesthetic_quality.py``, ``vbench/temporal_flickering.py``,
``vbench/imaging_quality.py``
(with their ``vbench/utils.py``), DINO's ``vision_transformer.py`` and OpenAI CLIP's ``clip/model.py``.

- The DINO network is DINO's own ``VisionTransformer`` class at a reduced width (64, one head, two
  blocks) with random weights, rounded to float16 and saved in the released file's key layout
  (``dino_tiny.pth``), so our loader takes the architecture from the file. Likewise CLIP's own ``CLIP``
  class at vision width 64 (patch 32, two blocks, embedding 32; a token-sized text tower, not stored):
  its ``visual.*`` tensors in float16 (``clip_tiny.pth``), and a LAION-style linear head on its
  embedding (``aesthetic_tiny.pth``), for background consistency and aesthetic quality.
- Video decoding is not under test: VBench's ``load_video`` is replaced by one returning the stored
  frames exactly as its own returns decord's (``torch.Tensor(frames)`` permuted to [T, C, H, W]).
- Imaging quality runs VBench's transform and averaging twice: with pyiqa's own ``MUSIQ`` class at
  hidden size 32 (``musiq_tiny.pth``, its state dict in float16), and with a stand-in score
  (``stand_in_musiq`` below; the tests apply the same function) that isolates the transform.

Everything is seeded; running it again writes the same files.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

VBENCH_COMMIT = "45e79ec14e69a2187202c675d2dbce1a71843d53"  # 2026-03-23, Vchitect/VBench
DINO_COMMIT = "7c446df5b9f45747937fb0d72314eb9f7b66930a"    # 2023-04-27, facebookresearch/dino
CLIP_COMMIT = "d05afc436d78f1c48dc0dbf8e5980a9d471f35f6"    # 2026-03-25, openai/CLIP
PYIQA_COMMIT = "01ae427f9afd66842031d3a7cb694dcad5b5cbb8"   # 2026-05-14, chaofengc/IQA-PyTorch
PYIQA_FILES = ("pyiqa/archs/musiq_arch.py", "pyiqa/archs/arch_util.py", "pyiqa/archs/constants.py",
               "pyiqa/matlab_utils/padding.py", "pyiqa/utils/registry.py", "pyiqa/data/multiscale_trans_util.py")
VBENCH_FILES = ("vbench/utils.py", "vbench/distributed.py", "vbench/subject_consistency.py",
                "vbench/background_consistency.py", "vbench/aesthetic_quality.py", "vbench/temporal_flickering.py",
                "vbench/imaging_quality.py", "vbench2_beta_i2v/utils.py", "vbench2_beta_i2v/i2v_subject.py")


def stand_in_musiq(frame: torch.Tensor) -> torch.Tensor:
    """A fixed, resize-sensitive score of one frame [1, 3, H, W] in [0, 1] (stands in for MUSIQ):
    100 x (mean brightness + 10 x mean absolute horizontal gradient)."""
    gradient = (frame[..., 1:] - frame[..., :-1]).abs().mean()
    return 100 * (frame.mean() + 10 * gradient)


def _export(git_dir: Path, commit: str, files: tuple[str, ...], root: Path) -> None:
    for name in files:
        text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{commit}:{name}"], check=True,
                              capture_output=True, text=True).stdout
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for package in {Path(n).parent for n in files if "/" in n}:
        (root / package / "__init__.py").touch()  # not the packages' own __init__ (it imports everything)


def _import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _smooth_video(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """Frames with structure at several scales (so that resizes matter) that also compress well."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    video = []
    phase = rng.uniform(0, 6, size=6)
    for t in range(frames):
        tint = 60 * np.sin(t * 1.3 + phase[5])  # frames differ as a whole too, not only in detail
        r = 128 + tint + 70 * np.sin(xx / (7 + t) + phase[0]) * np.cos(yy / 11 + phase[1])
        g = 128 + 90 * np.sin((xx + yy) / 5 + t / 2 + phase[2])
        b = 128 - tint + 70 * np.cos(xx / 3 + phase[3]) * np.sin(yy / (4 + t / 3) + phase[4])
        video.append(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8))
    return np.stack(video)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vbench_git", type=Path, required=True, help="git directory of Vchitect/VBench")
    parser.add_argument("--dino_git", type=Path, required=True, help="git directory of facebookresearch/dino")
    parser.add_argument("--clip_git", type=Path, required=True, help="git directory of openai/CLIP")
    parser.add_argument("--iqa_git", type=Path, required=True, help="git directory of chaofengc/IQA-PyTorch (pyiqa)")
    parser.add_argument("--out", type=Path, default=Path("tests/data/vbench_oracle"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = Path(tempfile.mkdtemp(prefix="vbench-oracle-"))
    _export(args.vbench_git, VBENCH_COMMIT, VBENCH_FILES, source)
    _export(args.dino_git, DINO_COMMIT, ("vision_transformer.py",), source)
    _export(args.clip_git, CLIP_COMMIT, ("clip/model.py",), source)
    _export(args.iqa_git, PYIQA_COMMIT, PYIQA_FILES, source)
    # pyiqa's package __init__ files import every metric; only these modules are needed
    (source / "pyiqa" / "matlab_utils" / "__init__.py").write_text("from .padding import ExactPadding2d, exact_padding_2d\n")
    # imports the reference files make that play no part here (decoding, DINO's training utils)
    sys.modules["decord"] = types.SimpleNamespace(VideoReader=None, cpu=None)
    import cv2  # noqa: F401 - temporal_flickering.py calls cv2.absdiff (pip install opencv-python-headless)
    sys.modules["clip"] = types.SimpleNamespace(load=None)  # VBench's import of the package (clip.load)
    sys.modules["utils"] = types.SimpleNamespace(trunc_normal_=torch.nn.init.trunc_normal_)
    sys.modules["huggingface_hub"] = types.SimpleNamespace(hf_hub_url=lambda *a, **k: "")  # download helpers
    sys.modules["pyiqa.utils.download_util"] = types.SimpleNamespace(load_file_from_url=None)
    sys.path.insert(0, str(source))
    vit = importlib.import_module("vision_transformer")
    i2v = importlib.import_module("vbench2_beta_i2v.i2v_subject")
    subject = importlib.import_module("vbench.subject_consistency")
    imaging = importlib.import_module("vbench.imaging_quality")
    background = importlib.import_module("vbench.background_consistency")
    aesthetic = importlib.import_module("vbench.aesthetic_quality")
    flickering = importlib.import_module("vbench.temporal_flickering")
    clip_model_module = _import_file("clip_model", source / "clip" / "model.py")
    musiq_arch = importlib.import_module("pyiqa.archs.musiq_arch")

    torch.manual_seed(0)
    dino = vit.VisionTransformer(patch_size=16, embed_dim=64, depth=2, num_heads=1, mlp_ratio=4, qkv_bias=True,
                                 norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    with torch.no_grad():
        # scales at which the CLS token depends on the picture (at DINO's init it barely does, and every
        # cosine similarity would be ~1, hiding any difference in the transforms)
        for name, tensor in dino.named_parameters():
            if name.endswith("weight") and tensor.dim() > 1:
                tensor.normal_(0, 0.6 / tensor[0].numel() ** 0.5)
        dino.patch_embed.proj.weight.mul_(3)
        for block in dino.blocks:
            block.attn.qkv.weight.mul_(3)  # peaked attention: the CLS token is not a plain average
        dino.pos_embed.normal_(0, 0.2)
        dino.cls_token.normal_(0, 0.2)
    state = {k: v.half() for k, v in dino.state_dict().items()}
    torch.save(state, args.out / "dino_tiny.pth")
    dino.load_state_dict({k: v.float() for k, v in state.items()})  # the reference runs the stored weights
    dino.eval()

    torch.manual_seed(1)
    clip = clip_model_module.CLIP(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=64,
                                  vision_patch_size=32, context_length=4, vocab_size=8, transformer_width=8,
                                  transformer_heads=1, transformer_layers=1)
    with torch.no_grad():  # as for DINO: scales at which the embedding depends on the picture
        clip.visual.conv1.weight.normal_(0, 3 / clip.visual.conv1.weight[0].numel() ** 0.5)
        for block in clip.visual.transformer.resblocks:
            block.attn.in_proj_weight.mul_(10)
    visual = {k: v.half() for k, v in clip.state_dict().items() if k.startswith("visual.")}
    torch.save(visual, args.out / "clip_tiny.pth")
    clip.load_state_dict({**clip.state_dict(), **{k: v.float() for k, v in visual.items()}})
    clip.eval()
    head = torch.nn.Linear(32, 1)
    with torch.no_grad():
        head.weight.normal_(0, 5)
        head.bias.add_(5)
    head_state = {k: v.half() for k, v in head.state_dict().items()}
    torch.save(head_state, args.out / "aesthetic_tiny.pth")
    head.load_state_dict({k: v.float() for k, v in head_state.items()})

    torch.manual_seed(2)
    # pyiqa's MUSIQ at hidden size 32 (one head, two blocks; its ResNet stem is fixed at 64 channels)
    musiq = musiq_arch.MUSIQ(num_class=1, hidden_size=32, mlp_dim=64, num_heads=1, num_layers=2, pretrained=False)
    with torch.no_grad():  # a score that moves with the picture
        musiq.head.weight.mul_(20)
        musiq.head.bias.fill_(50)
    musiq_state = {k: v.half() if v.is_floating_point() else v for k, v in musiq.state_dict().items()}
    torch.save(musiq_state, args.out / "musiq_tiny.pth")
    musiq.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in musiq_state.items()})
    musiq.eval()

    rng = np.random.default_rng(0)
    # "large" (longer side > 512: VBench resizes it) in steps of 8 so that it compresses
    videos = {"wide": _smooth_video(rng, 5, 72, 100), "tall": _smooth_video(rng, 4, 90, 60),
              "large": _smooth_video(rng, 2, 240, 560) // 8 * 8}
    np.savez_compressed(args.out / "videos.npz", **videos)
    images = {"wide": videos["wide"][0], "tall": 255 - videos["tall"][2]}
    for name, image in images.items():
        Image.fromarray(image).save(args.out / f"image_{name}.png")

    def load_video(key, *unused, **unused_kw):
        return torch.Tensor(videos[key]).permute(0, 3, 1, 2)  # as VBench's load_video returns decord frames

    for module in (i2v, subject, imaging, background, aesthetic):
        module.load_video = load_video
    flickering.get_frames = lambda key: list(videos[key])  # its cv2 reader (the channel order plays no part)
    pairs = [(str(args.out / f"image_{name}.png"), name) for name in images]
    i2v_score, i2v_videos = i2v.i2v_subject(dino, pairs, "cpu")
    subject_score, subject_videos = subject.subject_consistency(dino, ["wide", "tall"], "cpu", read_frame=False)
    imaging_score, imaging_videos = imaging.technical_quality(stand_in_musiq, ["large", "wide"], "cpu")
    musiq_score, musiq_videos = imaging.technical_quality(musiq, ["large", "tall"], "cpu")
    background_score, background_videos = background.background_consistency(clip, None, ["wide", "tall"], "cpu",
                                                                             read_frame=False)
    aesthetic_score, aesthetic_videos = aesthetic.laion_aesthetic(head, clip, ["wide", "tall"], "cpu")
    flicker_score, flicker_videos = flickering.temporal_flickering(["wide", "tall", "large"])
    import torchvision

    expected = {
        "reference": {"vbench": f"Vchitect/VBench@{VBENCH_COMMIT}", "dino": f"facebookresearch/dino@{DINO_COMMIT}",
                      "clip": f"openai/CLIP@{CLIP_COMMIT}", "pyiqa": f"chaofengc/IQA-PyTorch@{PYIQA_COMMIT}",
                      "torch": torch.__version__, "torchvision": torchvision.__version__},
        "i2v_subject": {"score": float(i2v_score), "per_video": [float(v["video_results"]) for v in i2v_videos],
                        "pairs": list(images)},
        "subject_consistency": {"score": float(subject_score),
                                "per_video": [float(v["video_results"]) for v in subject_videos],
                                "videos": ["wide", "tall"]},
        "background_consistency": {"score": float(background_score),
                                   "per_video": [float(v["video_results"]) for v in background_videos],
                                   "videos": ["wide", "tall"]},
        "aesthetic_quality": {"score": float(aesthetic_score),
                              "per_video": [float(v["video_results"]) for v in aesthetic_videos],
                              "videos": ["wide", "tall"]},
        "temporal_flickering": {"score": float(flicker_score),
                                "per_video": [float(v["video_results"]) for v in flicker_videos],
                                "videos": ["wide", "tall", "large"]},
        "imaging_quality_musiq": {"score": float(musiq_score),
                                  "per_video": [float(v["video_results"]) / 100 for v in musiq_videos],
                                  "videos": ["large", "tall"]},
        "imaging_quality": {"score": float(imaging_score),
                            "per_video": [float(v["video_results"]) / 100 for v in imaging_videos],
                            "videos": ["large", "wide"]},
    }
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
