"""VBench-I2V dimensions: each formula checked on synthetic videos against a value computed by hand,
and each network loaded from a random state dict in its released file's key layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from steadydancer.errors import InputError
from steadydancer.eval import vbench as V
from steadydancer.eval.testing import write_aesthetic_head, write_clip, write_dino
from steadydancer.eval.vit import load_aesthetic_head, load_clip_image_encoder, load_dino_vit


class FixedFeatures(torch.nn.Module):
    """Returns the next of the given feature vectors per input image (to pin a formula by hand)."""

    def __init__(self, vectors: list[list[float]]) -> None:
        super().__init__()
        self.vectors = [torch.tensor(v, dtype=torch.float32) for v in vectors]
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack(self.vectors[self.calls:self.calls + x.shape[0]])
        self.calls += x.shape[0]
        return out


def _video(frames: int = 3, h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


def test_consistency_formula_by_hand() -> None:
    # frames' features e1, e1, -e1, e2: frame 1: (1 + 1) / 2 = 1; frame 2: cos -1 clamps to 0 for both
    # the previous and the first frame -> 0; frame 3: prev cos(-e1, e2) = 0, first cos(e1, e2) = 0 -> 0.
    model = FixedFeatures([[1, 0], [1, 0], [-1, 0], [0, 1], [3, 4], [3, 4]])
    result = V.subject_consistency([_video(4), _video(2)], model)
    assert result.per_video == pytest.approx([1 / 3, 1.0])
    assert result.per_frame[0] == pytest.approx([1.0, 0.0, 0.0])
    # VBench's overall score averages over all frames of all videos: (1 + 0 + 0 + 1) / 4, not (1/3 + 1) / 2
    assert result.aggregate == pytest.approx(0.5)
    model = FixedFeatures([[1, 0], [0.6, 0.8], [0, 1]])
    result = V.background_consistency([_video(3)], model)
    # frame 1: (0.6 + 0.6) / 2; frame 2: prev cos = 0.8, first cos = 0 -> 0.4
    assert result.per_video == pytest.approx([(0.6 + 0.4) / 2])


def test_i2v_subject_formula_by_hand() -> None:
    # image e1; frames e1, e2, (e1+e2)/sqrt2: to-image 1, 0, 0.7071; consecutive 0, 0.7071
    model = FixedFeatures([[1, 0], [1, 0], [0, 1], [1, 1]])
    image = _video(1)[0]
    result = V.i2v_subject([(image, _video(3))], model, version="2024-03")
    assert result.per_video == pytest.approx([0.5 * 1.0 + 0.5 * (0 + 2 ** -0.5) / 2])
    assert result.aggregate == pytest.approx(result.per_video[0])
    # today's rule (VBench e7f070a): 0.4 max + 0.3 mean + 0.3 min of the consecutive similarities
    model = FixedFeatures([[1, 0], [1, 0], [0, 1], [1, 1]])
    result = V.i2v_subject([(image, _video(3))], model)
    assert result.per_video == pytest.approx([0.4 * 1.0 + 0.3 * (0 + 2 ** -0.5) / 2 + 0.3 * 0.0])


def test_i2v_subject_transform_is_today_vbench_resize_256_and_crop_224() -> None:
    frames = V.dino_frames_internet(_video(2, 300, 400))
    assert frames.shape == (2, 3, 224, 224)
    image = V.dino_image_internet(_video(1, 400, 300)[0])
    assert image.shape == (1, 3, 224, 224)
    # the beta's transform keeps the aspect ratio (no crop)
    assert V.dino_frames(_video(2, 300, 400)).shape == (2, 3, 224, 298)


def test_temporal_flickering_dimension_by_hand() -> None:
    still = np.full((3, 8, 8, 3), 100, np.uint8)
    blinking = still.copy()
    blinking[1] = 120   # |diff| 20 twice
    result = V.temporal_flickering_dimension([still, blinking])
    assert result.per_video == pytest.approx([1.0, (255 - 20) / 255])
    assert result.aggregate == pytest.approx((1.0 + (255 - 20) / 255) / 2)


def test_aesthetic_formula_by_hand(tmp_path) -> None:
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[10.0, 0.0]]))
        head.bias.fill_(5.0)
    # normalised features e1, (0.6, 0.8): scores 15 and 11 -> / 10 -> mean 1.3
    model = FixedFeatures([[2, 0], [3, 4]])
    result = V.aesthetic_quality([_video(2)], model, head)
    assert result.per_video == pytest.approx([1.3])
    assert result.per_frame[0] == pytest.approx([1.5, 1.1])


def test_frame_transforms_follow_torchvision_on_float_frames() -> None:
    video = _video(2, 30, 50)
    dino = V.dino_frames(video)
    assert dino.shape == (2, 3, 224, int(224 * 50 / 30))     # shorter side 224, no crop
    clip = V.clip_frames(video)
    assert clip.shape == (2, 3, 224, 224)                     # bicubic + centre crop
    # VBench's frames are float32 0..255: the resize is neither rounded nor clamped
    frames = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    expected = F.interpolate(frames, size=(224, int(224 * 50 / 30)), mode="bilinear", align_corners=False)
    assert torch.allclose(dino[:, 0] * 0.229 + 0.485, expected[:, 0] / 255, atol=1e-6)
    assert not torch.allclose(expected, expected.round())
    assert V.dino_image(video[0]).shape == (1, 3, 224, int(224 * 50 / 30))


def test_dino_loads_the_hub_layout_and_runs_non_square(tmp_path) -> None:
    dino = load_dino_vit(write_dino(tmp_path / "dino_vitbase16_pretrain.pth"))
    frames = V.dino_frames(_video(3, 30, 50))
    feats = dino(frames)
    assert feats.shape == (3, 32)
    # identical frames: every similarity is 1, so the video scores exactly 1
    still = np.repeat(_video(1, 30, 50), 3, axis=0)
    assert V.subject_consistency([still], dino).aggregate == pytest.approx(1.0, abs=1e-6)
    # the real network's numbers follow the formula on its own features
    moving = _video(3, 30, 50, seed=1)
    f = F.normalize(dino(V.dino_frames(moving)), dim=-1)
    cos = lambda i, j: max(0.0, float((f[i] * f[j]).sum()))  # noqa: E731
    expected = ((cos(0, 1) + cos(0, 1)) / 2 + (cos(1, 2) + cos(0, 2)) / 2) / 2
    assert V.subject_consistency([moving], dino).aggregate == pytest.approx(expected, rel=1e-5)
    image = moving[0]
    result = V.i2v_subject([(image, moving)], dino)
    assert 0.0 <= result.aggregate <= 1.0
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not a DINO ViT"):
        load_dino_vit(tmp_path / "bad.pth")


def test_clip_loads_the_openai_layout_plain_and_torchscript(tmp_path) -> None:
    path = write_clip(tmp_path / "ViT-B-32.pt")
    clip = load_clip_image_encoder(path)
    frames = V.clip_frames(_video(2, 30, 50))
    emb = clip(frames)
    assert emb.shape == (2, 16)
    # the released ViT-*.pt are TorchScript archives: the same tensors read through torch.jit
    state = torch.load(path, weights_only=True)

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, tensor in state.items():
                parent = self
                parts = name.split(".")
                for part in parts[:-1]:
                    if not hasattr(parent, part):
                        parent.add_module(part, torch.nn.Module())
                    parent = getattr(parent, part)
                parent.register_buffer(parts[-1], tensor)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    torch.jit.save(torch.jit.script(Holder()), str(tmp_path / "jit.pt"))
    assert torch.allclose(load_clip_image_encoder(tmp_path / "jit.pt")(frames), emb, atol=1e-6)
    still = np.repeat(_video(1, 30, 50), 2, axis=0)
    assert V.background_consistency([still], clip).aggregate == pytest.approx(1.0, abs=1e-6)


def test_aesthetic_head_layout(tmp_path) -> None:
    head = load_aesthetic_head(write_aesthetic_head(tmp_path / "sa_0_4_vit_l_14_linear.pth", embed=16))
    clip = load_clip_image_encoder(write_clip(tmp_path / "ViT-L-14.pt", patch=14, grid=16))
    video = _video(2, 30, 50)
    result = V.aesthetic_quality([video], clip, head)
    feats = F.normalize(clip(V.clip_frames(video)), dim=-1)
    assert result.per_video[0] == pytest.approx(float((head(feats) / 10).mean()), rel=1e-6)
    torch.save({"weight": torch.zeros(2, 16), "bias": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="LAION aesthetic"):
        load_aesthetic_head(tmp_path / "bad.pth")


def test_imaging_quality_formula_and_resize_by_hand() -> None:
    seen = []

    class FixedScores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scores = iter([40.0, 60.0, 80.0])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return torch.tensor([next(self.scores)])

    tall = _video(2, 1000, 600)  # longer side 1000 > 512: scale 0.512 -> (512, int(0.512 * 600) = 307)
    small = _video(1, 100, 60)   # left as it is
    result = V.imaging_quality([tall, small], FixedScores())
    assert seen == [(1, 3, 512, 307), (1, 3, 512, 307), (1, 3, 100, 60)]
    assert result.per_video == pytest.approx([0.5, 0.8])
    assert result.aggregate == pytest.approx(0.65)
    frames = V.imaging_frames(small)
    assert torch.equal(frames * 255, torch.from_numpy(small).permute(0, 3, 1, 2).float())


def test_musiq_patching_by_hand_and_pyiqa_layout(tmp_path) -> None:
    from steadydancer.eval.musiq import _hash_positions, _patches, load_musiq
    from steadydancer.eval.testing import write_musiq

    # 3 patch rows on the 10-cell grid: nearest cells 0, 3, 6; 2 columns: 0, 5
    assert _hash_positions(3, 2).tolist() == [0, 5, 30, 35, 60, 65]
    # a 40x70 image: SAME padding to 64x96 -> 2 x 3 patches, padded to 49 with a zero mask
    patches, spatial, scale, mask = _patches(torch.rand(1, 3, 40, 70), scale_id=1, max_len=49)
    assert patches.shape == (1, 49, 3 * 32 * 32) and mask.sum() == 6 and mask[0, :6].all()
    assert scale[0, :6].tolist() == [1.0] * 6 and spatial[0, 6:].abs().sum() == 0
    path = write_musiq(tmp_path / "musiq_spaq_ckpt-358bb6af.pth")
    state = torch.load(path, weights_only=True)
    for key in ("conv_root.weight", "block1.conv_proj.weight", "block1.gn_proj.bias", "embedding.weight",
                "transformer_encoder.posembed_input.position_emb", "transformer_encoder.scaleembed_input.scale_emb",
                "transformer_encoder.cls", "transformer_encoder.transformer.encoderblock_0.attention.query.weight",
                "transformer_encoder.transformer.encoderblock_0.mlp.fc2.bias", "head.weight"):
        assert key in state, key
    musiq = load_musiq(path)
    video = _video(2, 40, 70)
    scores = musiq(V.imaging_frames(video))
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    result = V.imaging_quality([video], musiq)
    assert result.per_video[0] == pytest.approx(float(scores.mean()) / 100, rel=1e-5)
    del state["head.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not a pyiqa MUSIQ"):
        load_musiq(tmp_path / "bad.pth")


def test_motion_smoothness_formula_by_hand() -> None:
    class Average(torch.nn.Module):
        """Interpolates by averaging: exact on a linear ramp."""

        def forward(self, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            assert a.shape[-2] % 16 == 0 and a.shape[-1] % 16 == 0   # padded to multiples of 16
            return (1 - t) * a + t * b

    ramp = np.stack([np.full((128, 144, 3), 10 * i, np.uint8) for i in range(5)])
    result = V.motion_smoothness([ramp], Average())
    assert result.per_video == [1.0]                    # every odd frame re-created exactly
    jumpy = ramp.copy()
    jumpy[1] = 0          # the average of frames 0 and 2 is 10, the real frame 0: |diff| = 10
    jumpy[3] += 6         # 36 vs 30: 6
    result = V.motion_smoothness([jumpy], Average())
    assert result.per_frame[0] == pytest.approx([(255 - 10) / 255, (255 - 6) / 255])
    assert result.per_video == pytest.approx([(255 - 8) / 255])
    with pytest.raises(ValueError, match="three or more"):
        V.motion_smoothness([ramp[:2]], Average())
    with pytest.raises(ValueError, match="113\\+ pixels"):
        V.motion_smoothness([ramp[:, :112]], Average())


def test_amt_s_loads_the_released_layout_and_interpolates(tmp_path) -> None:
    from steadydancer.eval.amt import load_amt_s, warp
    from steadydancer.eval.testing import write_amt_s

    path = write_amt_s(tmp_path / "amt-s.pth")
    state = torch.load(path, weights_only=True)["state_dict"]
    for key in ("feat_encoder.conv1.weight", "feat_encoder.layer2.0.downsample.0.weight", "encoder.pyramid4.1.1.weight",
                "decoder4.convblock.0.0.weight", "decoder4.convblock.1.conv5.weight", "decoder1.convblock.2.weight",
                "update3.convc1.weight", "update2.flow_head.2.bias", "comb_block.1.weight"):
        assert key in state, key
    assert state["decoder1.convblock.2.weight"].shape == (60, 24, 4, 4)   # 3 flows x (2 + 2 + 1 + 3) channels
    amt = load_amt_s(path)
    video = _video(5, 120, 136)
    result = V.motion_smoothness([video], amt)
    assert len(result.per_frame[0]) == 2 and 0 < result.per_video[0] <= 1
    with torch.no_grad():
        middle = amt(torch.rand(1, 3, 128, 144), torch.rand(1, 3, 128, 144), torch.tensor(0.5).view(1, 1, 1, 1))
    assert torch.isfinite(middle).all() and middle.min() >= 0 and middle.max() <= 1
    # warping by a zero flow is the identity; by one pixel right it samples the left neighbour
    img = torch.rand(1, 3, 8, 12)
    assert torch.allclose(warp(img, torch.zeros(1, 2, 8, 12)), img, atol=1e-6)
    shifted = warp(img, torch.cat([torch.ones(1, 1, 8, 12), torch.zeros(1, 1, 8, 12)], 1))
    assert torch.allclose(shifted[..., :-1], img[..., 1:], atol=1e-5)


def test_i2v_background_formula_by_hand() -> None:
    # image e1; frames e1, (0.6, 0.8), e2: to-image 1, 0.6, 0 -> max 1; consecutive 0.6, 0.8
    model = FixedFeatures([[1, 0], [1, 0], [0.6, 0.8], [0, 1]])
    result = V.i2v_background([(_video(1)[0], _video(3))], model)
    assert result.per_video == pytest.approx([0.4 * 1.0 + 0.3 * 0.7 + 0.3 * 0.6])
    assert V.dreamsim_frames(_video(2, 30, 50)).shape == (2, 3, 224, 224)
    assert V.dreamsim_image(_video(1, 30, 50)[0]).shape == (1, 3, 224, 224)


def test_dreamsim_loads_its_files_and_merges_the_lora(tmp_path) -> None:
    from steadydancer.eval.dreamsim import load_dreamsim
    from steadydancer.eval.testing import write_dino, write_dreamsim

    dino_path = write_dino(tmp_path / "dino_vitbase16_pretrain.pth")
    write_dreamsim(tmp_path)
    model = load_dreamsim(dino_path, tmp_path / "clip_vitb16_pretrain.pth.tar",
                          tmp_path / "open_clip_vitb16_pretrain.pth.tar", tmp_path / "ensemble_lora")
    # LoRA: W + (alpha / r) * B @ A, alpha 8, r 4
    lora = torch.load(tmp_path / "ensemble_lora" / "adapter_model.bin", weights_only=True)
    base = torch.load(tmp_path / "clip_vitb16_pretrain.pth.tar", weights_only=True)["state_dict"]
    prefix = "base_model.model.extractor_list.1.model.blocks.1.attn.qkv"
    expected = base["blocks.1.attn.qkv.weight"] + 2.0 * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
    assert torch.allclose(model.clip.blocks[1].attn.qkv.weight, expected, atol=1e-6)
    assert model.clip.blocks[0].mlp.quick_gelu and not model.open_clip.blocks[0].mlp.quick_gelu
    assert model.clip.norm.eps == 1e-5 and model.dino.norm.eps == 1e-6 and hasattr(model.clip, "pos_drop")
    emb = model(V.dreamsim_frames(_video(2, 30, 50)))
    assert emb.shape == (2, 32 + 16 + 16)
    assert torch.allclose(emb.mean(dim=1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    still = np.repeat(_video(1, 30, 50), 3, axis=0)
    result = V.i2v_background([(still[0], still)], model)
    assert result.per_video[0] == pytest.approx(0.4 * result.per_frame[0][0] + 0.6, abs=1e-5)
