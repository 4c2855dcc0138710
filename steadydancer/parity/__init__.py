"""Parity checks against the official implementation's outputs.

``python -m steadydancer.parity CASE_DIR`` recognises a case folder (the format of
``shared/parity``: dit, vae, t5, clip, pose, and the metric kinds of ``shared/parity/metrics``
named by their ``meta.json`` ``kind``: lpips, fid_inception, frechet, ssim_psnr,
temporal_flickering), runs our code on it, prints the relative error
of each output (||ours - ref|| / ||ref||) and exits non-zero when any is above the tolerance.
``--device cuda`` / ``--dtype bf16`` run the model kinds on a GPU / in a lower precision (the
official outputs stay float32: the error then measures that precision).

Each kind lives in its own module with ``run_case(case_dir) -> dict[str, float]``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

TOLERANCE = 1e-3


def detect_kind(case_dir: str | Path) -> str:
    """Name of the case kind from the files in the folder (not from its name)."""
    case = Path(case_dir)
    from .metrics import metric_kind

    kind = metric_kind(case)
    if kind is not None:
        return kind
    if (case / "ckpt" / "config.json").is_file():
        return "dit"
    if any(case.glob("*VAE*.pth")):
        return "vae"
    if any(case.glob("models_t5*.pth")):
        return "t5"
    if any(case.glob("models_clip*.pth")):
        return "clip"
    if (case / "keypoints.json").is_file() and (case / "official").is_dir():
        return "pose"
    raise ValueError(f"{case}: not a parity case folder (no ckpt/config.json, *VAE*.pth, "
                     "models_t5*.pth, models_clip*.pth, keypoints.json + official/ or a meta.json "
                     "with a metric kind)")


def run_case(case_dir: str | Path, device: str = "cpu", dtype=None) -> dict[str, float]:
    """Relative error of each output of the case, by output name.

    ``device`` / ``dtype`` (a torch dtype; None: float32, as the official outputs) apply to the
    model kinds; the pose kind runs on the CPU in any case; the metric kinds run in float32
    (their reference outputs are float32 or float64) on ``device``.
    """
    kind = detect_kind(case_dir)
    from .metrics import METRIC_KINDS

    if kind in METRIC_KINDS:
        from .metrics import run_case as run_metric_case

        return run_metric_case(Path(case_dir), kind, device=device)
    module = importlib.import_module(f"steadydancer.parity.{kind}")
    if kind == "pose":
        return module.run_case(Path(case_dir))
    import torch

    return module.run_case(Path(case_dir), device=device, dtype=dtype or torch.float32)


def relative_error(ours, ref) -> float:
    """||ours - ref|| / ||ref|| in float64."""
    import torch

    ours = torch.as_tensor(ours).double()
    ref = torch.as_tensor(ref).double()
    if ours.shape != ref.shape:
        raise ValueError(f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}")
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-30))
