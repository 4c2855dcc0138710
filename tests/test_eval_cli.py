"""`steadydancer eval`: report.json + table + plots on a folder of videos, one line per missing
weight file, and the two FVD conventions on the scripted I3D stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steadydancer.cli.main import main
from steadydancer.eval import metrics as M
from steadydancer.eval.i3d import load_i3d, pair_fvd, set_level_features
from steadydancer.eval.protocols import humanvid_fvd_reference_indices, humanvid_reference_indices
from steadydancer.eval.testing import write_i3d, write_tiny_weights
from steadydancer.pose.video import write_video


def _make_folders(root: Path, frames: int = 18, ids=("00001", "00002")) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    gen, ref, img = root / "gen", root / "ref", root / "img"
    for folder in (gen, ref, img):
        folder.mkdir(parents=True)
    for vid in ids:
        base = rng.integers(0, 255, (64, 72, 3)).astype(np.float32)
        reference = [np.roll(base, t, axis=1).astype(np.uint8) for t in range(frames)]
        generated = [np.clip(f + rng.normal(0, 15, f.shape), 0, 255).astype(np.uint8) for f in reference]
        write_video(ref / f"{vid}.mp4", reference, 16)
        write_video(gen / f"sample_{vid}.mp4", generated, 16)
        Image.fromarray(reference[0]).save(img / f"{vid}.png")
    return gen, ref, img


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


def test_eval_writes_report_table_and_plots(tmp_path, weights, capsys) -> None:
    gen, ref, img = _make_folders(tmp_path / "data")
    out = tmp_path / "out" / "report.json"
    assert main(["eval", "--generated", str(gen), "--reference", str(ref), "--images", str(img),
                 "--protocol", "all", "--weights", str(weights), "--out", str(out), "--name", "tiny"]) == 0
    printed = capsys.readouterr().out.splitlines()
    # the FID Inception is the one file not written: exactly one line names it, the rest is computed
    fid_lines = [line for line in printed if "pt_inception" in line]
    assert fid_lines == [f"skip fid: pt_inception-2015-12-05-6726825d.pth (FID Inception v3 (pool3)) not found in {weights}"]
    report = json.loads(out.read_text())
    agg = report["aggregate"]
    for metric in ("ssim", "psnr", "lpips", "lpips_01", "fvd_pair", "fvd_set", "subject_consistency",
                   "background_consistency", "temporal_flickering", "aesthetic_quality", "i2v_subject",
                   "imaging_quality", "i2v_background"):
        assert isinstance(agg[metric], float), metric
    assert agg["fid"] is None and "pt_inception" in report["skipped"]["fid"]
    # 64x72 frames are too small for AMT-S's correlation pyramid: the one dimension not scored
    assert set(report["skipped"]) == {"fid", "motion_smoothness"}
    assert set(report["videos"]) == {"sample_00001", "sample_00002"}
    video = report["videos"]["sample_00001"]
    assert video["reference"].endswith("00001.mp4") and video["image"].endswith("00001.png")
    # the aggregate SSIM is the mean over all scored frame pairs (HumanVid), and each value is the metric's
    all_ssim = [v for e in report["videos"].values() for v in e["per_frame"]["ssim"]]
    assert agg["ssim"] == pytest.approx(float(np.mean(all_ssim)))
    assert 0 < agg["ssim"] < 1 and agg["psnr"] > 10 and agg["lpips"] > 0
    assert agg["lpips"] != pytest.approx(agg["lpips_01"])
    table = out.with_suffix(".md").read_text()
    assert "| Method | SSIM ↑ | PSNR ↑ | LPIPS ↓" in table and "| tiny |" in table and "I2V Subject" in table
    assert f"{agg['ssim']:.4f}" in table
    for png in ("report_per_video.png", "report_per_frame.png"):
        assert (out.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(".*partial*"))


def test_without_weights_every_network_metric_is_one_line_and_the_rest_runs(tmp_path, capsys) -> None:
    gen, ref, _ = _make_folders(tmp_path / "data", frames=6, ids=("a",))
    empty = tmp_path / "w"
    empty.mkdir()
    out = tmp_path / "r.json"
    assert main(["eval", "--generated", str(gen), "--reference", str(ref), "--weights", str(empty),
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    skips = [line for line in lines if line.startswith("skip ")]
    for needed in ("vgg16-397923af.pth", "i3d_torchscript.pt", "dino_vitbase16_pretrain.pth", "ViT-B-32.pt",
                   "ViT-L-14.pt", "pt_inception-2015-12-05-6726825d.pth", "musiq_spaq_ckpt-358bb6af.pth", "amt-s.pth"):
        assert any(needed in line for line in skips), needed
    report = json.loads(out.read_text())
    assert report["aggregate"]["ssim"] is not None and report["aggregate"]["temporal_flickering"] is not None
    assert report["aggregate"]["lpips"] is None


@pytest.mark.parametrize("argv, message", [
    (["--generated", "/nonexistent"], "--generated: folder not found"),
    (["--protocol", "humanvid"], "--protocol humanvid needs --reference"),
    (["--out", "report.txt"], "--out: expected a .json path"),
    (["--device", "gpu0"], "--device: expected cpu, cuda or cuda:N"),
    (["--reference", "/nonexistent"], "--reference: folder not found"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message) -> None:
    gen = tmp_path / "g"
    gen.mkdir()
    args = ["eval", "--generated", str(gen)] + argv if argv[0] != "--generated" else ["eval"] + argv
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_humanvid_frame_sampling() -> None:
    assert humanvid_reference_indices(100)[:3] == [0, 3, 6] and len(humanvid_reference_indices(100)) == 34
    assert humanvid_reference_indices(48) == list(range(0, 48, 2))
    assert humanvid_reference_indices(10) == list(range(10))
    assert humanvid_fvd_reference_indices(100) == list(range(0, 72, 3))
    assert humanvid_fvd_reference_indices(30) == list(range(24))


def test_fvd_conventions_on_a_scripted_stand_in(tmp_path) -> None:
    detector = load_i3d(write_i3d(tmp_path / "i3d_torchscript.pt"))
    rng = np.random.default_rng(1)
    videos_a = [rng.integers(0, 255, (17, 20, 28, 3), dtype=np.uint8) for _ in range(3)]
    videos_b = [np.clip(v.astype(int) + 40, 0, 255).astype(np.uint8) for v in videos_a]
    feats_a = set_level_features(detector, videos_a)
    # set-level: the first 16 frames, values 0..255 with rescale/resize left to the detector
    clip = torch.from_numpy(videos_a[0][:16]).float().permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        direct = detector(clip, rescale=True, resize=True, return_features=True)[0].numpy()
    assert np.allclose(feats_a[0], direct, atol=1e-5)
    fvd = M.frechet_distance_of_features(feats_a, set_level_features(detector, videos_b))
    assert fvd > 0 and M.frechet_distance_of_features(feats_a, feats_a) == pytest.approx(0, abs=1e-6)
    assert set_level_features(detector, [v[:15] for v in videos_a]) is None  # shorter than a clip
    # per pair: one value per prefix of 10..T frames, 0 for identical videos
    values = pair_fvd(detector, videos_a[0][:12], videos_b[0][:12])
    assert len(values) == 3 and all(v > 0 for v in values)
    assert pair_fvd(detector, videos_a[0][:12], videos_a[0][:12]) == pytest.approx([0, 0, 0], abs=1e-10)
    assert pair_fvd(detector, videos_a[0][:9], videos_b[0][:9]) == []


def test_fid_wiring_with_a_stand_in_inception(tmp_path, monkeypatch) -> None:
    """FID: generated frames vs their paired reference frames through the Inception, optional pre-resize."""
    import steadydancer.eval.inception as inception
    from steadydancer.eval.protocols import EvalOptions, evaluate

    seen_sizes = []

    class MeanColour(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen_sizes.append(tuple(images.shape[-2:]))
            return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)

    monkeypatch.setattr(inception, "load_fid_inception", lambda path, device="cpu": MeanColour())
    gen, ref, _ = _make_folders(tmp_path / "data", frames=8)
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"stand-in")
    report = evaluate(EvalOptions(gen, ref, None, "humanvid", weights, sampling="aligned", fid_resize=0, fid_frames=0))
    from steadydancer.eval.protocols import read_frames

    def feats(folder: Path) -> np.ndarray:
        frames = np.concatenate([read_frames(p) for p in sorted(folder.glob("*.mp4"))])
        return MeanColour()(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).double().numpy()

    assert report["aggregate"]["fid"] == pytest.approx(M.frechet_distance_of_features(feats(gen), feats(ref)), rel=1e-6)
    assert set(seen_sizes) == {(64, 72)}
    seen_sizes.clear()
    report = evaluate(EvalOptions(gen, ref, None, "humanvid", weights, fid_resize=768))
    assert set(seen_sizes) == {(768, 768)} and report["options"]["fid_resize"] == 768
