"""Evaluation metrics: the shared parity cases through the parity CLI, and hand-computed values at
other sizes (so a case of another size or seed cannot pass by accident)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import PARITY
from steadydancer.errors import InputError
from steadydancer.eval import metrics as M
from steadydancer.eval.testing import write_lpips_lin, write_vgg16
from steadydancer.parity import detect_kind
from steadydancer.parity.__main__ import main as parity_main

METRIC_CASES = sorted(p for p in (PARITY / "metrics").glob("*") if (p / "meta.json").is_file())


@pytest.mark.skipif(not METRIC_CASES, reason="no shared metric parity cases")
def test_every_metric_case_reproduces_to_1e4_through_the_parity_cli(capsys) -> None:
    assert parity_main([str(c) for c in METRIC_CASES] + ["--tolerance", "1e-4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for case in METRIC_CASES:
        kind = json.loads((case / "meta.json").read_text())["kind"]
        assert detect_kind(case) == kind
        mine = [line for line in lines if line.startswith(f"{case} [{kind}]")]
        assert mine and all(line.endswith(" ok") for line in mine)
        for line in mine:
            assert float(re.search(r"rel err (\S+)", line).group(1)) < 1e-4


def test_metric_kind_comes_from_meta_json_not_the_folder_name(tmp_path) -> None:
    case = tmp_path / "whatever"
    case.mkdir()
    (case / "meta.json").write_text(json.dumps({"kind": "temporal_flickering"}))
    frames = np.zeros((3, 4, 5, 3), np.uint8)
    frames[1] += 10
    from safetensors.torch import save_file

    save_file({"frames": torch.from_numpy(frames), "score": torch.tensor([(255 - 10) / 255], dtype=torch.float64)},
              case / "io.safetensors")
    assert detect_kind(case) == "temporal_flickering"
    assert parity_main([str(case), "--tolerance", "1e-6"]) == 0
    save_file({"frames": torch.from_numpy(frames), "score": torch.tensor([0.5], dtype=torch.float64)},
              case / "io.safetensors")
    assert parity_main([str(case)]) == 1


def test_psnr_by_hand() -> None:
    a = torch.full((2, 3, 7, 9), 0.5)
    b = a.clone()
    b[0] += 0.1          # mse 0.01 -> 20 dB
    b[1, :, :, :3] += 0.3  # mse 0.09 / 3 = 0.03
    assert M.psnr(a, b).tolist() == pytest.approx([20.0, 20 * math.log10(1 / math.sqrt(0.03))], rel=1e-5)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM (scipy correlation with zero fill) for one image [C, H, W]."""
    from scipy.signal import correlate2d

    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    w = np.outer(g, g)

    def blur(img):
        return correlate2d(img, w, mode="same", boundary="fill", fillvalue=0)

    maps = []
    for ca, cb in zip(a.astype(np.float64), b.astype(np.float64)):
        mu_a, mu_b = blur(ca), blur(cb)
        va, vb, cov = blur(ca * ca) - mu_a ** 2, blur(cb * cb) - mu_b ** 2, blur(ca * cb) - mu_a * mu_b
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        maps.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(maps))


def test_ssim_matches_an_independent_formula_at_odd_sizes() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 13, 17, generator=g)
    b = (a + 0.2 * torch.rand(2, 3, 13, 17, generator=g)).clamp(0, 1)
    ours = M.ssim(a, b)
    for i in range(2):
        assert float(ours[i]) == pytest.approx(_ssim_reference(a[i].numpy(), b[i].numpy()), rel=1e-5)
    assert M.ssim(a, a).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_frechet_distance_by_hand() -> None:
    # 1-D: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2)
    a = np.array([[0.0], [2.0], [4.0]])      # mean 2, var 4
    b = np.array([[1.0], [2.0], [3.0], [6.0]])  # mean 3, var 14/3
    expected = 1 + 4 + 14 / 3 - 2 * math.sqrt(4 * 14 / 3)
    assert M.frechet_distance_of_features(a, b) == pytest.approx(expected, rel=1e-10)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 5))
    assert M.frechet_distance_of_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="at least two"):
        M.feature_stats(feats[:1])


def test_temporal_flickering_by_hand() -> None:
    frames = np.zeros((3, 4, 6, 3), np.uint8)
    frames[1] = 30
    frames[2, :2] = 30   # half the pixels change by 30 between frames 1 and 2
    assert M.temporal_flickering(frames) == pytest.approx((255 - (30 + 15) / 2) / 255, rel=1e-7)
    with pytest.raises(ValueError, match="two frames"):
        M.temporal_flickering(frames[:1])


def test_lpips_conventions_and_identity(tmp_path) -> None:
    from steadydancer.eval.lpips import load_lpips

    model = load_lpips(write_vgg16(tmp_path / "vgg16-397923af.pth"), write_lpips_lin(tmp_path / "vgg.pth"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 32, 40, generator=g)
    x1 = torch.rand(2, 3, 32, 40, generator=g)
    assert model(x0, x0).abs().max() < 1e-6
    d_11 = model(x0 * 2 - 1, x1 * 2 - 1)
    d_01 = model(x0, x1, input_range="01")
    assert d_11.shape == (2,) and bool((d_11 > 0).all())
    assert not torch.allclose(d_11, d_01, rtol=1e-3)  # the [0,1] feed is a different number
    with pytest.raises(ValueError, match="input_range"):
        model(x0, x1, input_range="0-255")


def test_bad_weight_files_are_one_line_errors(tmp_path) -> None:
    from steadydancer.eval.inception import load_fid_inception
    from steadydancer.eval.lpips import load_lpips

    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not a FID Inception"):
        load_fid_inception(tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not torchvision's VGG16"):
        load_lpips(tmp_path / "bad.pth", tmp_path / "bad.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read") as info:
        load_fid_inception(tmp_path / "garbage.pth")
    assert "\n" not in str(info.value)
