"""Parity of the DiT forward, the sampler's timesteps and the whole DC-CFG loop (dit-kind cases).

Case folder: ``ckpt/`` (official-layout DiT), ``io.safetensors`` (inputs and official outputs),
``meta.json`` (sampler settings and ``pose_cfg_steps``). See shared/parity/README.md.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..sampling import DiTConditions, make_scheduler, sample_dc_cfg
from . import relative_error


def case_conditions(io: dict[str, torch.Tensor]) -> tuple[DiTConditions, DiTConditions, DiTConditions]:
    """(positive, negative text, negative pose) condition sets of a case, batch 1."""

    def conditions(context: torch.Tensor, pose: torch.Tensor) -> DiTConditions:
        return DiTConditions(text_context=context[None], clip_image=io["clip_x"][None],
                             clip_pose=io["clip_c"][None], image_cond=io["y"][None],
                             pose_latents=pose[None], ref_image=io["ref_x"][None],
                             ref_pose=io["ref_c"][None])

    return (conditions(io["context"], io["condition"]),
            conditions(io["context_neg"], io["condition"]),
            conditions(io["context"], io["condition_neg"]))


def run_case(case_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Relative errors of ``forward_out``, ``timesteps`` and ``sample_out``.

    The official outputs are float32; with another ``dtype`` the DiT runs under autocast in it,
    as the pipeline does on a GPU, and the errors say how far that precision lands.
    """
    from ..models.loading import load_dit  # the models stage; imported late so the others run without it

    case_dir = Path(case_dir)
    device = torch.device(device)
    io = {name: tensor.to(device) for name, tensor in load_file(str(case_dir / "io.safetensors")).items()}
    meta = json.loads((case_dir / "meta.json").read_text())
    model = load_dit(case_dir / "ckpt", device=device, dtype=dtype)
    cond, neg_text, neg_pose = case_conditions(io)
    errors: dict[str, float] = {}
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext())

    with torch.no_grad(), autocast:
        forward = model(io["noise"][None], io["t"], **cond.as_kwargs())[0]
    errors["forward_out"] = relative_error(forward, io["forward_out"])

    num_train = int(meta.get("num_train_timesteps", 1000))
    _, timesteps = make_scheduler(meta["solver"], int(meta["steps"]), float(meta["shift"]), num_train)
    errors["timesteps"] = relative_error(timesteps.float(), io["timesteps"])

    three_pass_steps: list[int] = []
    with torch.no_grad(), autocast:
        sample = sample_dc_cfg(
            model, io["noise"], cond, neg_text, neg_pose, solver=meta["solver"], steps=int(meta["steps"]),
            shift=float(meta["shift"]), guide_scale=float(meta["guide_scale"]),
            condition_guide_scale=float(meta["condition_guide_scale"]),
            st_cond_cfg=float(meta["st_cond_cfg"]), end_cond_cfg=float(meta["end_cond_cfg"]),
            progress=False, num_train_timesteps=num_train, device=device,
            on_step=lambda idx, t, passes: three_pass_steps.append(idx) if passes == 3 else None)
    if "pose_cfg_steps" in meta:
        assert three_pass_steps == list(meta["pose_cfg_steps"]), (
            f"{case_dir}: negative-pose pass ran at steps {three_pass_steps}, "
            f"official at {meta['pose_cfg_steps']}")
    errors["sample_out"] = relative_error(sample, io["sample_out"])
    return errors
