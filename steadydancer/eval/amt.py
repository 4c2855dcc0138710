"""AMT-S (Li et al., CVPR 2023) frame interpolation, for VBench's motion smoothness, from
``amt-s.pth`` (its ``state_dict``, MCG-NKU/AMT module names, so the released file loads as is).

The network predicts the middle frame of two frames: a RAFT-style correlation volume between
1/8-resolution features, an IFRNet-style pyramid of decoders whose flows are refined by small
update blocks with correlation lookups, and a last decoder that predicts three flow pairs, masks
and residuals, merged by warping both inputs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ._loading import load_into, read_state_dict

CHANNELS = (20, 32, 44, 56)
SKIP = 20
NUM_FLOWS = 3
CORR_RADIUS = 3
CORR_LEVELS = 4


def _resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp of ``image`` [B, C, H, W] by ``flow`` [B, 2, H, W] (pixels), border padding."""
    b, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device).view(1, 1, 1, w).expand(b, -1, h, -1)
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device).view(1, 1, h, 1).expand(b, -1, -1, w)
    grid = torch.cat([xs, ys], 1).to(image)
    scaled = torch.cat([flow[:, :1] / ((w - 1.0) / 2.0), flow[:, 1:2] / ((h - 1.0) / 2.0)], 1)
    return F.grid_sample(image, (grid + scaled).permute(0, 2, 3, 1), mode="bilinear",
                         padding_mode="border", align_corners=True)


def _conv_prelu(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.PReLU(cout))


class _SideResBlock(nn.Module):
    """IFRNet residual block whose last ``side`` channels take an extra convolution twice."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.conv1 = _conv_prelu(channels, channels)
        self.conv2 = _conv_prelu(side, side)
        self.conv3 = _conv_prelu(channels, channels)
        self.conv4 = _conv_prelu(side, side)
        self.conv5 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.prelu = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.conv3(torch.cat([out[:, :-self.side], self.conv2(out[:, -self.side:])], 1))
        out = self.conv5(torch.cat([out[:, :-self.side], self.conv4(out[:, -self.side:])], 1))
        return self.prelu(x + out)


def _decoder_block(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv_prelu(cin, hidden), _SideResBlock(hidden, SKIP),
                         nn.ConvTranspose2d(hidden, cout, 4, 2, 1))


class _Pyramid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        prev = 3
        for i, ch in enumerate(CHANNELS, 1):
            self.register_module(f"pyramid{i}", nn.Sequential(_conv_prelu(prev, ch, 3, 2, 1), _conv_prelu(ch, ch)))
            prev = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(len(CHANNELS)):
            x = getattr(self, f"pyramid{i + 1}")(x)
            feats.append(x)
        return feats


class _Bottleneck(nn.Module):
    """RAFT bottleneck with (parameter-free) instance norms."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes // 4, 1)
        self.conv2 = nn.Conv2d(planes // 4, planes // 4, 3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(planes // 4, planes, 1)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride), nn.InstanceNorm2d(planes))
                           if stride != 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(F.instance_norm(self.conv1(x)))
        y = F.relu(F.instance_norm(self.conv2(y)))
        y = F.relu(F.instance_norm(self.conv3(y)))
        return F.relu((self.downsample(x) if self.downsample is not None else x) + y)


class _FeatureEncoder(nn.Module):
    """RAFT's small encoder: 1/8-resolution features (84 channels in AMT-S)."""

    def __init__(self, out_dim: int = 84) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=3)
        self.layer1 = nn.Sequential(_Bottleneck(32, 32, 1), _Bottleneck(32, 32, 1))
        self.layer2 = nn.Sequential(_Bottleneck(32, 64, 2), _Bottleneck(64, 64, 1))
        self.layer3 = nn.Sequential(_Bottleneck(64, 96, 2), _Bottleneck(96, 96, 1))
        self.conv2 = nn.Conv2d(96, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.instance_norm(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class _UpdateBlock(nn.Module):
    """RAFT-style small update: correlation + flow -> feature and flow residuals (at 1/scale)."""

    def __init__(self, cdim: int, scale: int | None, hidden: int = 76, flow_dim: int = 20,
                 corr_dim: int = 64, fc_dim: int = 68) -> None:
        super().__init__()
        self.scale = scale
        corr_planes = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2
        self.convc1 = nn.Conv2d(2 * corr_planes, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, flow_dim * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(flow_dim * 2, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)
        act = nn.LeakyReLU(0.1)
        self.gru = nn.Sequential(nn.Conv2d(fc_dim + 4 + cdim, hidden, 3, padding=1), act,
                                 nn.Conv2d(hidden, hidden, 3, padding=1))
        self.feat_head = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), act, nn.Conv2d(hidden, cdim, 3, padding=1))
        self.flow_head = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), act, nn.Conv2d(hidden, 4, 3, padding=1))

    def forward(self, feat: torch.Tensor, flow: torch.Tensor, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lrelu = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        if self.scale is not None:
            feat = _resize(feat, 1 / self.scale)
        cor = lrelu(self.convc1(corr))
        flo = lrelu(self.convf2(lrelu(self.convf1(flow))))
        inp = torch.cat([lrelu(self.conv(torch.cat([cor, flo], 1))), flow, feat], 1)
        out = self.gru(inp)
        delta_feat, delta_flow = self.feat_head(out), self.flow_head(out)
        if self.scale is not None:
            delta_feat = _resize(delta_feat, self.scale)
            delta_flow = self.scale * _resize(delta_flow, self.scale)
        return delta_feat, delta_flow


def _sample(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    h, w = volume.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    grid = torch.cat([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1)
    return F.grid_sample(volume, grid, align_corners=True)


class _BidirectionalCorrelation:
    """All-pairs correlation of two feature maps and its transpose, pooled into 4 levels; a lookup
    samples a (2r+1)^2 window around given coordinates at every level."""

    def __init__(self, f0: torch.Tensor, f1: torch.Tensor) -> None:
        b, dim, h, w = f0.shape
        corr = (f0.reshape(b, dim, h * w).transpose(1, 2) @ f1.reshape(b, dim, h * w)) / torch.sqrt(
            torch.tensor(dim).float())
        corr = corr.view(b, h, w, 1, h, w)
        corr_t = corr.permute(0, 4, 5, 3, 1, 2).reshape(b * h * w, 1, h, w)
        corr = corr.reshape(b * h * w, 1, h, w)
        self.levels, self.levels_t = [corr], [corr_t]
        for _ in range(CORR_LEVELS - 1):
            self.levels.append(F.avg_pool2d(self.levels[-1], 2, stride=2))
            self.levels_t.append(F.avg_pool2d(self.levels_t[-1], 2, stride=2))

    def __call__(self, coords0: torch.Tensor, coords1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = CORR_RADIUS
        c0, c1 = coords0.permute(0, 2, 3, 1), coords1.permute(0, 2, 3, 1)
        b, h, w, _ = c0.shape
        offsets = torch.linspace(-r, r, 2 * r + 1, device=c0.device)
        delta = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).view(1, 2 * r + 1, 2 * r + 1, 2)
        out, out_t = [], []
        for i in range(CORR_LEVELS):
            out.append(_sample(self.levels[i], c0.reshape(b * h * w, 1, 1, 2) / 2 ** i + delta).view(b, h, w, -1))
            out_t.append(_sample(self.levels_t[i], c1.reshape(b * h * w, 1, 1, 2) / 2 ** i + delta).view(b, h, w, -1))
        return (torch.cat(out, -1).permute(0, 3, 1, 2).contiguous().float(),
                torch.cat(out_t, -1).permute(0, 3, 1, 2).contiguous().float())


class AMTS(nn.Module):
    """Two frames [B, 3, H, W] in [0, 1] (H, W multiples of 16) -> the frame at ``t`` (0.5: the middle)."""

    def __init__(self) -> None:
        super().__init__()
        c = CHANNELS
        self.feat_encoder = _FeatureEncoder(84)
        self.encoder = _Pyramid()
        self.decoder4 = nn.Module()
        self.decoder4.convblock = _decoder_block(c[3] * 2 + 1, c[3] * 2, c[2] + 4)
        self.decoder3 = nn.Module()
        self.decoder3.convblock = _decoder_block(c[2] * 3 + 4, c[2] * 3, c[1] + 4)
        self.decoder2 = nn.Module()
        self.decoder2.convblock = _decoder_block(c[1] * 3 + 4, c[1] * 3, c[0] + 4)
        self.decoder1 = nn.Module()
        self.decoder1.convblock = _decoder_block(c[0] * 3 + 4, c[0] * 3, 8 * NUM_FLOWS)
        self.update4 = _UpdateBlock(c[2], None)
        self.update3 = _UpdateBlock(c[1], 2)
        self.update2 = _UpdateBlock(c[0], 4)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * NUM_FLOWS, 6 * NUM_FLOWS, 3, 1, 1), nn.PReLU(6 * NUM_FLOWS),
                                        nn.Conv2d(6 * NUM_FLOWS, 3, 3, 1, 1))

    @staticmethod
    def _intermediate(block: nn.Sequential, ft, f0, f1, flow0, flow1):
        out = block(torch.cat([ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))
        d0, d1 = torch.chunk(out[:, :4], 2, 1)
        return d0 + 2.0 * _resize(flow0, 2.0), d1 + 2.0 * _resize(flow1, 2.0), out[:, 4:]

    def _refine(self, update, corr_fn, coord, ft, flow0, flow1, t: torch.Tensor, downsample: int):
        small0, small1 = flow0, flow1
        if downsample != 1:
            small0 = (1 / downsample) * _resize(flow0, 1 / downsample)
            small1 = (1 / downsample) * _resize(flow1, 1 / downsample)
        # flows towards t, extended linearly to the other frame for the correlation lookup
        corr0, corr1 = corr_fn(coord + small1 * (1.0 / t), coord + small0 * (1.0 / (1.0 - t)))
        delta_ft, delta_flow = update(ft, torch.cat([small0, small1], 1), torch.cat([corr0, corr1], 1))
        d0, d1 = torch.chunk(delta_flow, 2, 1)
        return ft + delta_ft, flow0 + d0, flow1 + d1

    @torch.no_grad()
    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mean = torch.cat([img0, img1], 2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        b, _, h, w = img0.shape
        ys, xs = torch.meshgrid(torch.arange(h // 8, device=img0.device), torch.arange(w // 8, device=img0.device),
                                indexing="ij")
        coord = torch.stack([xs, ys], 0).float()[None].repeat(b, 1, 1, 1)
        fmaps = self.feat_encoder(torch.cat([img0, img1], 0))
        corr_fn = _BidirectionalCorrelation(fmaps[:b], fmaps[b:])
        f0 = self.encoder(img0)
        f1 = self.encoder(img1)

        fh, fw = f0[3].shape[2:]
        out = self.decoder4.convblock(torch.cat([f0[3], f1[3], t.repeat(1, 1, fh, fw)], 1))
        flow0, flow1 = torch.chunk(out[:, :4], 2, 1)
        ft = out[:, 4:]
        ft, flow0, flow1 = self._refine(self.update4, corr_fn, coord, ft, flow0, flow1, t, 1)
        flow0, flow1, ft = self._intermediate(self.decoder3.convblock, ft, f0[2], f1[2], flow0, flow1)
        ft, flow0, flow1 = self._refine(self.update3, corr_fn, coord, ft, flow0, flow1, t, 2)
        flow0, flow1, ft = self._intermediate(self.decoder2.convblock, ft, f0[1], f1[1], flow0, flow1)
        ft, flow0, flow1 = self._refine(self.update2, corr_fn, coord, ft, flow0, flow1, t, 4)

        n = NUM_FLOWS
        out = self.decoder1.convblock(torch.cat([ft, warp(f0[0], flow0), warp(f1[0], flow1), flow0, flow1], 1))
        d0, d1, mask, residual = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
        flows0 = d0 + 2.0 * _resize(flow0, 2.0).repeat(1, n, 1, 1)
        flows1 = d1 + 2.0 * _resize(flow1, 2.0).repeat(1, n, 1, 1)
        mask = torch.sigmoid(mask).reshape(b * n, 1, h, w)
        residual = residual.reshape(b * n, 3, h, w)
        warped0 = warp(img0.repeat_interleave(n, 0), flows0.reshape(b * n, 2, h, w))
        warped1 = warp(img1.repeat_interleave(n, 0), flows1.reshape(b * n, 2, h, w))
        candidates = mask * warped0 + (1 - mask) * warped1 + mean.repeat_interleave(n, 0) + residual
        candidates = candidates.reshape(b, n, 3, h, w)
        return (candidates.mean(1) + self.comb_block(candidates.reshape(b, n * 3, h, w))).clamp(0, 1)


def load_amt_s(path: str | os.PathLike, device: torch.device | str = "cpu") -> AMTS:
    """AMT-S from the released ``amt-s.pth`` (tensors under ``state_dict``)."""
    state = read_state_dict(path, "AMT-S")
    if "comb_block.0.weight" not in state or "feat_encoder.conv1.weight" not in state:
        raise InputError(f"{path}: not an AMT-S checkpoint (no comb_block / feat_encoder tensors)")
    model = AMTS()
    load_into(model, state, path, "AMT-S")
    return model.to(device)
