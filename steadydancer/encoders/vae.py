"""Wan 2.1 video VAE, loaded from the official ``Wan2.1_VAE.pth``.

The network is diffusers' ``AutoencoderKLWan``, which runs the official causal chunked
schedule: the encoder sees frames in chunks of 1, 4, 4, ... with a cache of the last two
frames per causal conv, and the decoder one latent frame at a time. Only tensor names
differ; ``official_to_diffusers_names`` renames them. The latent is normalised with the
official per-channel mean/std exactly as the official code does: ``(mu - mean) * (1/std)``
after encoding, ``z / (1/std) + mean`` before decoding.

Architecture rule: every number is read from the tensors: base width from
``encoder.conv1``, latent channels from ``conv2``, the width multipliers, the number of
residual blocks per level and which downsamples are temporal (those with a
``time_conv``) from the layout of ``encoder.downsamples``. ``arch.json`` is not needed.
"""

from __future__ import annotations

import contextlib
import os
import re as _re
from pathlib import Path
from typing import Iterator

import torch

from ..errors import InputError
from ..progress import progress
from ._common import assign_state_dict, load_official_state_dict, require_keys

# The official latent statistics of the 16-channel Wan 2.1 VAE.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

_RESIDUAL_RENAMES = (("residual.0.gamma", "norm1.gamma"), ("residual.2.", "conv1."),
                     ("residual.3.gamma", "norm2.gamma"), ("residual.6.", "conv2."),
                     ("shortcut.", "conv_shortcut."))


def _sequence_layout(state: dict[str, torch.Tensor], prefix: str) -> list[tuple[int, str]]:
    """(index, kind) of each entry of an official nn.Sequential: residual, attention, resample[3d]."""
    entries: dict[int, set[str]] = {}
    for key in state:
        m = _re.match(_re.escape(prefix) + r"(\d+)\.(.+)$", key)
        if m:
            entries.setdefault(int(m.group(1)), set()).add(m.group(2))
    layout = []
    for index in sorted(entries):
        names = entries[index]
        if "residual.0.gamma" in names:
            kind = "residual"
        elif "to_qkv.weight" in names:
            kind = "attention"
        elif "time_conv.weight" in names:
            kind = "resample3d"
        else:
            kind = "resample2d"
        layout.append((index, kind))
    return layout


def vae_arch_from_state(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict:
    """Constructor numbers of the official WanVAE_, read from the tensors' shapes and layout."""
    require_keys(state, ["encoder.conv1.weight", "conv1.weight", "conv2.weight", "decoder.conv1.weight",
                         "encoder.downsamples.0.residual.0.gamma"], path, "Wan VAE")
    dim = int(state["encoder.conv1.weight"].shape[0])
    z_dim = int(state["conv2.weight"].shape[0])
    layout = _sequence_layout(state, "encoder.downsamples.")
    if any(kind == "attention" for _, kind in layout) or any(
            kind == "attention" for _, kind in _sequence_layout(state, "decoder.upsamples.")):
        raise InputError(f"{path}: Wan VAE with attention in the down/up blocks (attn_scales) is not "
                         "supported; Wan 2.1 has attention only in the middle blocks")
    dim_mult, temporal, residuals_per_level = [], [], []
    count = 0
    for index, kind in layout:
        if kind == "residual":
            count += 1
            out_dim = int(state[f"encoder.downsamples.{index}.residual.2.weight"].shape[0])
        else:
            dim_mult.append(out_dim // dim)
            temporal.append(kind == "resample3d")
            residuals_per_level.append(count)
            count = 0
    dim_mult.append(out_dim // dim)
    residuals_per_level.append(count)
    if len(set(residuals_per_level)) != 1:
        raise InputError(f"{path}: Wan VAE levels have different residual counts {residuals_per_level}")
    return dict(dim=dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=residuals_per_level[0],
                temperal_downsample=temporal)


def _rename_residual(rest: str) -> str:
    for old, new in _RESIDUAL_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _rename_middle(rest: str) -> str:
    index, _, tail = rest.partition(".")
    if index == "1":
        return "mid_block.attentions.0." + tail
    return f"mid_block.resnets.{int(index) // 2}." + _rename_residual(tail)


def official_to_diffusers_names(state: dict[str, torch.Tensor], arch: dict) -> dict[str, torch.Tensor]:
    """Official WanVAE_ tensor names -> AutoencoderKLWan names (unknown names are kept as they are)."""
    levels = len(arch["dim_mult"])
    per_level = arch["num_res_blocks"] + 1
    # Flat decoder.upsamples index -> (up block, 'resnets.j' or 'upsamplers.0').
    decoder_index: dict[int, str] = {}
    flat = 0
    for level in range(levels):
        for j in range(per_level):
            decoder_index[flat] = f"up_blocks.{level}.resnets.{j}"
            flat += 1
        if level != levels - 1:
            decoder_index[flat] = f"up_blocks.{level}.upsamplers.0"
            flat += 1

    out = {}
    for key, tensor in state.items():
        new = key
        if key.startswith(("conv1.", "conv2.")):
            new = ("quant_conv." if key.startswith("conv1.") else "post_quant_conv.") + key.split(".", 1)[1]
        elif key.startswith(("encoder.", "decoder.")):
            part, rest = key.split(".", 1)
            section, _, rest = rest.partition(".")
            if section == "conv1":
                new = f"{part}.conv_in.{rest}"
            elif section == "head":
                new = f"{part}.norm_out.gamma" if rest == "0.gamma" else f"{part}.conv_out.{rest[2:]}"
            elif section == "middle":
                new = f"{part}.{_rename_middle(rest)}"
            elif section == "downsamples":
                index, _, tail = rest.partition(".")
                new = f"encoder.down_blocks.{index}.{_rename_residual(tail)}"
            elif section == "upsamples":
                index, _, tail = rest.partition(".")
                target = decoder_index.get(int(index))
                if target is not None:
                    tail = _rename_residual(tail) if ".resnets." in target else tail
                    new = f"decoder.{target}.{tail}"
        out[new] = tensor
    return out


class WanVAE:
    """Wan 2.1 VAE: video [3, F, H, W] in [-1, 1] <-> normalised latent [16, (F-1)//4+1, H/8, W/8].

    Weights stay float32 (the model is small); with ``dtype`` bfloat16/float16 the
    forward runs under autocast in that dtype, as the official code does. Outputs are float32.
    """

    def __init__(self, checkpoint_path: str | os.PathLike, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        from diffusers import AutoencoderKLWan

        self.checkpoint_path = Path(checkpoint_path)
        self.device = torch.device(device)
        self.dtype = dtype
        state = load_official_state_dict(self.checkpoint_path, "Wan VAE")
        self.arch = arch = vae_arch_from_state(state, self.checkpoint_path)
        if arch["z_dim"] != len(LATENT_MEAN):
            raise InputError(f"{self.checkpoint_path}: Wan VAE with {arch['z_dim']} latent channels; "
                             f"the official latent statistics are for {len(LATENT_MEAN)}")
        with torch.device("meta"):
            model = AutoencoderKLWan(base_dim=arch["dim"], z_dim=arch["z_dim"], dim_mult=arch["dim_mult"],
                                     num_res_blocks=arch["num_res_blocks"], attn_scales=[],
                                     temperal_downsample=arch["temperal_downsample"], dropout=0.0)
        assign_state_dict(model, official_to_diffusers_names(state, arch), self.device, torch.float32,
                          self.checkpoint_path, "Wan VAE")
        del state
        self.model = model.eval().requires_grad_(False)
        self._set_stats()

    def _set_stats(self) -> None:
        self.mean = torch.tensor(LATENT_MEAN, dtype=torch.float32, device=self.device).view(-1, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=torch.float32, device=self.device).view(-1, 1, 1, 1)

    def to(self, device: torch.device | str) -> "WanVAE":
        """Move the weights; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._set_stats()
        return self

    def _autocast(self):
        enabled = self.dtype != torch.float32
        device_type = self.device.type if self.device.type in ("cuda", "cpu") else "cuda"
        return torch.autocast(device_type, dtype=self.dtype, enabled=enabled)

    @contextlib.contextmanager
    def _frame_progress(self, module: torch.nn.Module, frames: int, desc: str | None) -> Iterator[None]:
        """A bar over the ``frames`` pixel frames that ``module`` (encoder or decoder) works through.

        Both run the causal schedule chunk by chunk (1 frame, then 4 per call), so each call
        of ``module`` advances the bar by its chunk's frames.
        """
        if desc is None or frames <= 1:
            yield
            return
        bar = progress(total=frames, desc=desc, unit="frame")

        def advance(*_: object) -> None:
            bar.update(min(1 if bar.n == 0 else 4, bar.total - bar.n))

        handle = module.register_forward_hook(advance)
        try:
            yield
        finally:
            handle.remove()
            bar.close()

    @torch.no_grad()
    def encode(self, video: torch.Tensor, desc: str | None = None) -> torch.Tensor:
        """[3, F, H, W] in [-1, 1], F = 4n+1, H and W multiples of 8 -> latent [16, n+1, H/8, W/8].

        ``desc``: label of a progress bar over the frames (None: no bar).
        """
        if video.ndim != 4 or video.shape[0] != 3:
            raise ValueError(f"expected a video [3, F, H, W], got {tuple(video.shape)}")
        frames, height, width = video.shape[1:]
        if frames % 4 != 1:
            raise ValueError(f"the Wan VAE encodes 4n+1 frames, got {frames}")
        if height % 8 or width % 8:
            raise ValueError(f"video height and width must be multiples of 8, got {height}x{width}")
        with self._autocast(), self._frame_progress(self.model.encoder, frames, desc):
            posterior = self.model.encode(video[None].to(self.device, torch.float32)).latent_dist
            mu = posterior.mean.float()[0]
        return (mu - self.mean) * self.inv_std

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, desc: str | None = None) -> torch.Tensor:
        """Normalised latent [16, f, h, w] -> video [3, 4(f-1)+1, 8h, 8w], float32 clamped to [-1, 1].

        ``desc``: label of a progress bar over the frames (None: no bar).
        """
        if latent.ndim != 4 or latent.shape[0] != self.mean.shape[0]:
            raise ValueError(f"expected a latent [{self.mean.shape[0]}, f, h, w], got {tuple(latent.shape)}")
        z = latent.to(self.device, torch.float32) / self.inv_std + self.mean
        with self._autocast(), self._frame_progress(self.model.decoder, 4 * (latent.shape[1] - 1) + 1, desc):
            video = self.model.decode(z[None]).sample
        return video.float().clamp_(-1, 1)[0]

    def enable_tiling(self, tile_px: int = 256, stride_px: int = 192) -> None:
        """Encode and decode in overlapping spatial tiles of ``tile_px`` pixels at ``stride_px``
        (diffusers' ``AutoencoderKLWan.enable_tiling``, whose defaults these are): the activations of
        one tile at a time instead of the whole frame. Not exact: the decoder's middle block attends
        over its whole input, which is a tile here, and tiles are blended over ``tile_px - stride_px``
        pixels (docs/speed.md gives the difference on the tiny VAE)."""
        if not 0 < stride_px <= tile_px or tile_px % 8 or stride_px % 8:
            raise InputError(f"VAE tiling: tile {tile_px} px and stride {stride_px} px must be multiples of 8 "
                             "with 0 < stride <= tile")
        self.model.enable_tiling(tile_px, tile_px, stride_px, stride_px)

    @property
    def tiling(self) -> bool:
        return bool(getattr(self.model, "use_tiling", False))

    def _tiled_decode_stream(self, z: torch.Tensor):
        """:meth:`decode_stream` with diffusers' tiling: each spatial tile keeps its own causal conv
        cache across the latent frames, and the tiles of one chunk are blended as ``tiled_decode``
        blends them, so the chunks concatenate to ``tiled_decode``'s video while only one chunk (and
        the tiles' causal caches, together about 1.8x one frame's) is held."""
        model = self.model
        ratio = model.spatial_compression_ratio
        tile_h, tile_w = model.tile_sample_min_height // ratio, model.tile_sample_min_width // ratio
        step_h, step_w = model.tile_sample_stride_height // ratio, model.tile_sample_stride_width // ratio
        keep_h, keep_w = model.tile_sample_stride_height, model.tile_sample_stride_width
        blend_h = model.tile_sample_min_height - keep_h
        blend_w = model.tile_sample_min_width - keep_w
        height, width = z.shape[-2:]
        caches: dict[tuple[int, int], list] = {}
        try:
            for k in range(z.shape[2]):
                rows = []
                for i in range(0, height, step_h):
                    row = []
                    for j in range(0, width, step_w):
                        model.clear_cache()
                        model._feat_map = caches.setdefault((i, j), model._feat_map)
                        model._conv_idx = [0]
                        tile = model.post_quant_conv(z[:, :, k:k + 1, i:i + tile_h, j:j + tile_w])
                        row.append(model.decoder(tile, feat_cache=model._feat_map, feat_idx=model._conv_idx,
                                                 first_chunk=(k == 0)))
                    rows.append(row)
                bands = []
                for i, row in enumerate(rows):
                    kept = []
                    for j, tile in enumerate(row):
                        if i > 0:
                            tile = model.blend_v(rows[i - 1][j], tile, blend_h)
                        if j > 0:
                            tile = model.blend_h(row[j - 1], tile, blend_w)
                        kept.append(tile[:, :, :, :keep_h, :keep_w])
                    bands.append(torch.cat(kept, dim=-1))
                chunk = torch.cat(bands, dim=3)[:, :, :, :height * ratio, :width * ratio]
                yield chunk.float().clamp_(-1, 1)[0]
        finally:
            model.clear_cache()

    @torch.no_grad()
    def decode_stream(self, latent: torch.Tensor):
        """Yield the frames of :meth:`decode` chunk by chunk: [3, 1, 8h, 8w] for the first latent
        frame, then [3, 4, 8h, 8w] per latent frame (float32 on the VAE's device, clamped to [-1, 1]).

        The same causal per-frame decoder pass as ``decode`` (diffusers' own loop, with its conv
        cache), so the chunks concatenate to ``decode``'s video; only one chunk is held at a time.
        """
        if latent.ndim != 4 or latent.shape[0] != self.mean.shape[0]:
            raise ValueError(f"expected a latent [{self.mean.shape[0]}, f, h, w], got {tuple(latent.shape)}")
        model = self.model
        if getattr(model.config, "patch_size", None) is not None:
            yield self.decode(latent)  # a layout the per-frame loop below does not cover
            return
        z = latent.to(self.device, torch.float32) / self.inv_std + self.mean
        tile_h = model.tile_sample_min_height // model.spatial_compression_ratio
        tile_w = model.tile_sample_min_width // model.spatial_compression_ratio
        if self.tiling and (z.shape[-2] > tile_h or z.shape[-1] > tile_w):  # as diffusers' _decode decides
            with self._autocast():
                yield from self._tiled_decode_stream(z[None])
            return
        model.clear_cache()
        try:
            with self._autocast():
                x = model.post_quant_conv(z[None])
                for i in range(x.shape[2]):
                    model._conv_idx = [0]
                    out = model.decoder(x[:, :, i:i + 1], feat_cache=model._feat_map, feat_idx=model._conv_idx,
                                        first_chunk=(i == 0))
                    yield out.float().clamp_(-1, 1)[0]
        finally:
            model.clear_cache()
