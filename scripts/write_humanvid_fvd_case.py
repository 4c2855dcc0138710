"""Write the HumanVid per-pair FVD case under tests/data/humanvid_fvd/ by running HumanVid's own code.

Run it in a separate venv with PyPI torch + torchvision (not the package's environment):

    python scripts/write_humanvid_fvd_case.py --humanvid_git /path/to/HumanVid/.git --out tests/data/humanvid_fvd

What runs is ``metrics/utils/fvd.py`` of zhenzhiwang/HumanVid at the commit below (``calculate_fvd``:
``preprocess_single`` per prefix of 10..T frames, the I3D call, ``frechet_distance`` of one video per
side), fed the way ``metrics/eval_fvd.py`` feeds it: the reference frames ``evaluate_inds`` (every
third frame of videos longer than 72 frames, the first 24), each PIL-resized to the generated size
and ``ToTensor``-ed. That selection is a few inline lines of the script (not a function), so they are
restated here; the rest is HumanVid's code.

The I3D is a stand-in (a small scripted network with I3D's call signature, saved as TorchScript like
``i3d_torchscript.pt``): the case pins what HumanVid does around the network. ``scipy.linalg.sqrtm`` is
imported by fvd.py but not called with one video per side; it is stubbed if scipy is absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HUMANVID_COMMIT = "68e6be43b6436c3db0954f962c7427849769e352"  # zhenzhiwang/HumanVid


class StandInI3D(torch.nn.Module):
    """Features [B, 400] of videos [B, 3, T, H, W]: a fixed 3-D convolution, pooled, projected."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(3, 7, 7), stride=(1, 4, 4))
        self.proj = torch.nn.Linear(16, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        h = torch.tanh(self.conv(x))
        pooled = torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1)
        return self.proj(pooled)


def _video(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6, size=3)
    out = [np.stack([128 + 100 * np.sin(xx / 5 + t / 4 + phase[0]), 128 + 100 * np.cos(yy / 4 - t / 6 + phase[1]),
                     128 + 100 * np.sin((xx - yy) / 7 + t / 5 + phase[2])], -1) for t in range(frames)]
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--humanvid_git", type=Path, required=True, help="git directory of zhenzhiwang/HumanVid")
    parser.add_argument("--out", type=Path, default=Path("tests/data/humanvid_fvd"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = Path(tempfile.mkdtemp(prefix="humanvid-fvd-")) / "fvd.py"
    source.write_text(subprocess.run(["git", f"--git-dir={args.humanvid_git}", "show",
                                      f"{HUMANVID_COMMIT}:metrics/utils/fvd.py"],
                                     check=True, capture_output=True, text=True).stdout)
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        sys.modules["scipy"] = types.ModuleType("scipy")
        sys.modules["scipy.linalg"] = types.SimpleNamespace(sqrtm=None)
    spec = importlib.util.spec_from_file_location("humanvid_fvd", source)
    fvd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fvd)

    torch.manual_seed(0)
    detector = torch.jit.script(StandInI3D().eval())
    torch.jit.save(detector, str(args.out / "i3d_standin.pt"))
    detector = torch.jit.load(str(args.out / "i3d_standin.pt")).eval()

    rng = np.random.default_rng(0)
    # in steps of 16 so that they compress; the reference at another size (it is resized to the generated)
    generated = _video(rng, 24, 36, 44) // 16 * 16   # HumanVid's 24 generated frames
    reference = _video(rng, 75, 40, 52) // 16 * 16   # longer than 72 frames: every third, the first 24
    np.savez_compressed(args.out / "videos.npz", generated=generated, reference=reference)

    # eval_fvd.py's selection and per-frame transforms (restated, see the module docstring)
    evaluate_inds = list(range(len(reference)))
    if len(evaluate_inds) > 72:
        evaluate_inds = evaluate_inds[::3]
    evaluate_inds = evaluate_inds[:24]
    height, width = generated.shape[1:3]

    def to_tensor(frame: np.ndarray) -> torch.Tensor:
        image = Image.fromarray(frame).convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)  # transforms.Resize((h, w)) on a PIL image
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # ToTensor

    video1 = torch.stack([to_tensor(f) for f in generated]).unsqueeze(0)
    video2 = torch.stack([to_tensor(reference[i]) for i in evaluate_inds]).unsqueeze(0)
    result = fvd.calculate_fvd(video1, video2, "cpu", i3d=detector, method="styleganv")
    values = [float(v) for v in result["value"].values()]
    expected = {"reference": f"zhenzhiwang/HumanVid@{HUMANVID_COMMIT} metrics/utils/fvd.py + metrics/eval_fvd.py",
                "torch": torch.__version__, "reference_frames": evaluate_inds,
                "per_prefix": values, "fvd": float(torch.tensor(values).mean())}
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(json.dumps({k: v for k, v in expected.items() if k != "per_prefix"}, indent=1))


if __name__ == "__main__":
    main()
