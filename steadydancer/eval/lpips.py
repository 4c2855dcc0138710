"""LPIPS v0.1 with VGG16 (Zhang et al. 2018), from torchvision's ``vgg16-397923af.pth`` and the
LPIPS linear layers ``vgg.pth`` (v0.1)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ._loading import read_state_dict

# torchvision vgg16 ``features`` indices of the convolutions, grouped into the five stages whose
# last ReLU LPIPS reads (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3); a 2x2 max pool precedes
# every stage but the first.
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
# LPIPS' ScalingLayer: inputs in [-1, 1] are shifted and scaled towards ImageNet statistics.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """Distance [N] of image pairs [N, 3, H, W] in [-1, 1] (LPIPS' own convention).

    Feeding images in [0, 1] unchanged (as the HumanVid/DisCo TikTok scripts do) runs the
    same network on other numbers: ``forward(..., input_range="01")`` names that convention.
    """

    def __init__(self, vgg_state: dict[str, torch.Tensor], lin_weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.vgg_weights = nn.ParameterList()
        self.vgg_biases = nn.ParameterList()
        for stage in VGG16_STAGES:
            for index in stage:
                self.vgg_weights.append(nn.Parameter(vgg_state[f"features.{index}.weight"].float(), requires_grad=False))
                self.vgg_biases.append(nn.Parameter(vgg_state[f"features.{index}.bias"].float(), requires_grad=False))
        self.lins = nn.ParameterList([nn.Parameter(w.float(), requires_grad=False) for w in lin_weights])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        conv = 0
        for stage_index, stage in enumerate(VGG16_STAGES):
            if stage_index:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            for _ in stage:
                x = F.relu(F.conv2d(x, self.vgg_weights[conv], self.vgg_biases[conv], padding=1))
                conv += 1
            outputs.append(x)
        return outputs

    @torch.no_grad()
    def forward(self, x0: torch.Tensor, x1: torch.Tensor, input_range: str = "-11") -> torch.Tensor:
        """``input_range`` "-11": images in [-1, 1]; "01": images in [0, 1] fed as they are."""
        if input_range not in ("-11", "01"):
            raise ValueError(f"input_range must be '-11' or '01', got {input_range!r}")
        f0 = self.features((x0.float() - self.shift) / self.scale)
        f1 = self.features((x1.float() - self.shift) / self.scale)
        total = 0
        for a, b, lin in zip(f0, f1, self.lins):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((a - b) ** 2, lin).mean(dim=(2, 3))
        return total.reshape(-1)


def load_lpips(vgg_path: str | os.PathLike, lin_path: str | os.PathLike,
               device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS from torchvision's VGG16 file (``features.N.*``; ``classifier.*`` unused) and the v0.1
    linear layers (``lin0.model.1.weight`` ... ``lin4.model.1.weight``)."""
    vgg = read_state_dict(vgg_path, "VGG16")
    missing = [f"features.{i}.weight" for stage in VGG16_STAGES for i in stage if f"features.{i}.weight" not in vgg]
    if missing:
        raise InputError(f"{vgg_path}: not torchvision's VGG16 weights (missing {missing[0]})")
    lin_state = read_state_dict(lin_path, "LPIPS linear layers")
    lins = []
    for k in range(len(VGG16_STAGES)):
        weight = lin_state.get(f"lin{k}.model.1.weight", lin_state.get(f"lins.{k}.model.1.weight"))
        if weight is None:
            raise InputError(f"{lin_path}: not LPIPS linear layers (missing lin{k}.model.1.weight)")
        lins.append(weight)
    return LPIPS(vgg, lins).to(device).eval()
