"""Frame pairing by provenance on a 90-frame moving scene: a perfect copy scores as one (no crash on
the infinite PSNR of identical frames), a copy with +-1 noise stays above 40 dB, whether the frames
are paired frame for frame, through the video's sidecar, or through a tiktok benchmark row whose
generation is replaced by the frames that drove it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import steadydancer.batch.runner as runner
import steadydancer.pipeline.run as run
import steadydancer.pipeline.tiny as tiny
import steadydancer.pose.prepare as prepare
from steadydancer.cli.main import main
from steadydancer.eval.benchmark import TiktokRecipe
from steadydancer.eval.protocols import pair_frames
from steadydancer.pipeline.inputs import GenerationInputs
from steadydancer.pipeline.sidecar import read_sidecar, update_sidecar
from steadydancer.pose.video import read_video, write_video

from test_pipeline_support import tiny_checkpoint


def moving_scene(frames: int = 90, height: int = 96, width: int = 128) -> list[np.ndarray]:
    """A smooth, nearly grey scene (so that H.264's chroma subsampling barely touches it) with a moving
    blob and a drifting wave: every frame differs from its neighbours."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for t in range(frames):
        cx, cy = 20 + t * 0.9, height / 2 + 25 * np.sin(t / 9)
        blob = 140 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 400)
        lum = 50 + 0.5 * xx + 0.4 * yy + blob + 25 * np.sin((xx + 2 * t) / 40)
        out.append(np.clip(np.stack([lum + 4, lum, lum - 4], -1), 0, 255).astype(np.uint8))
    return out


def noisy(frames: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(f.astype(int) + rng.integers(-1, 2, f.shape), 0, 255).astype(np.uint8) for f in frames]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """The reference video (90 frames, 30 fps) and its decoded frames."""
    path = tmp_path_factory.mktemp("scene") / "clip.mp4"
    write_video(path, moving_scene(), 30)
    frames, _ = read_video(path)
    assert len(frames) == 90
    return path, frames


def _eval(tmp_path: Path, gen: Path, ref: Path, *extra: str) -> dict:
    out = tmp_path / "out" / "report.json"
    assert main(["eval", "--generated", str(gen), "--reference", str(ref), "--protocol", "humanvid",
                 "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_a_perfect_copy_writes_its_report_with_the_infinite_psnr_stated(tmp_path, scene) -> None:
    ref_video, _ = scene
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    shutil.copy(ref_video, ref / "clip.mp4")
    shutil.copy(ref_video, gen / "clip.mp4")
    report = _eval(tmp_path, gen, ref)  # json.loads: strict JSON (no Infinity/NaN tokens) was written
    agg = report["aggregate"]
    assert agg["ssim"] > 0.99
    assert agg["psnr"] is None and "90 of 90 values are infinite" in report["notes"]["psnr"]
    assert report["videos"]["clip"]["pairing"]["method"] == "frame for frame (no provenance)"
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| ∞ |" in table and "identical frames" in table


def test_a_copy_with_noise_paired_frame_for_frame(tmp_path, scene) -> None:
    ref_video, frames = scene
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    shutil.copy(ref_video, ref / "clip.mp4")
    write_video(gen / "clip.mp4", noisy(frames[:30]), 16)
    report = _eval(tmp_path, gen, ref)
    assert report["aggregate"]["psnr"] > 40 and report["aggregate"]["ssim"] > 0.97
    assert len(report["videos"]["clip"]["per_frame"]["psnr"]) == 30


def test_a_strided_copy_is_paired_through_its_sidecar(tmp_path, scene) -> None:
    ref_video, frames = scene
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    shutil.copy(ref_video, ref / "clip.mp4")
    indices = list(range(0, 72, 3))  # HumanVid's 24 frames at stride 3
    write_video(gen / "clip.mp4", noisy([frames[i] for i in indices]), 16)
    update_sidecar(gen / "clip.mp4", provenance={"source_video": str(ref_video), "frame_indices": indices,
                                                  "fps": 30.0, "target_fps": 10.0})
    report = _eval(tmp_path, gen, ref)
    assert report["aggregate"]["psnr"] > 40
    assert report["videos"]["clip"]["pairing"] == {"method": "provenance", "reference_frames": indices}
    # the same video without its sidecar is paired frame for frame, which is wrong for it (and says so)
    (gen / "clip.json").unlink()
    report = _eval(tmp_path / "again", gen, ref)
    assert report["aggregate"]["psnr"] < 30
    assert "frame for frame (no provenance)" in (tmp_path / "again" / "out" / "report.md").read_text()


def test_pairing_rules() -> None:
    assert pair_frames(5, 90, "provenance", [0, 3, 6, 9, 12, 15]).reference == [0, 3, 6, 9, 12]
    # driving frames beyond the reference are not scored
    assert pair_frames(4, 7, "provenance", [0, 3, 6, 9]).reference == [0, 3, 6]
    assert pair_frames(30, 90, "humanvid", None).reference == list(range(0, 90, 3))[:30]
    assert pair_frames(30, 90, "aligned", None).reference == list(range(30))
    assert pair_frames(30, 20, "provenance", None).method == "frame for frame (no provenance)"


def test_tiktok_recipe_follows_humanvid_eval_pose2vid() -> None:
    recipe = TiktokRecipe()
    stride, indices, ref = recipe.plan(300)
    assert stride == 3 and indices == list(range(0, 75, 3)) and ref == 36  # tgt_idx[24 // 2]
    # a shorter video: the stride drops until 24 x stride frames fit; the 25th frame repeats the last
    stride, indices, ref = recipe.plan(60)
    assert stride == 2 and indices[:24] == list(range(0, 48, 2)) and indices[24] == 48 and ref == 24
    assert recipe.plan(72)[1][24] == 71
    assert recipe.plan(23) is None
    assert TiktokRecipe(start="first").plan(300)[2] == 0


# -- a benchmark row whose generation is replaced by the frames that drove it ---------------------

class CopyPipeline:
    """Stands in for the model: the 'generated' video is the driving frames themselves (+ optional noise)."""

    noise = False

    def generate(self, image, pose_first, positive, negative, prompt, **kw) -> torch.Tensor:
        frames = [np.asarray(p) for p in positive]
        frames = noisy(frames) if self.noise else frames
        video = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float()
        return (video + 0.5) / 127.5 - 1  # [3, N, H, W] in [-1, 1]; + 0.5 survives the writer's truncation


@pytest.fixture
def copy_rows(monkeypatch):
    def fake_prepare(image, video, out_dir, prompt=None, **kw):
        """The real folder layout and provenance.json, with the driving frames themselves as 'poses'."""
        out_dir = Path(out_dir)
        frames, _ = read_video(video)
        for stream in ("positive", "negative"):
            (out_dir / stream).mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(frames):
                Image.fromarray(frame).save(out_dir / stream / f"{i:04d}.jpg")
        shutil.copy(image, out_dir / "ref_image.png")
        prepare.write_provenance(out_dir, Path(video), len(frames), 0, None)
        return out_dir

    def exact_inputs(image, pos_folder, neg_folder, prompt, frame_num):
        """The driving frames decoded from the clip (not the JPEG copies), so that the copy is exact."""
        record = json.loads((Path(pos_folder).parent / prepare.PROVENANCE_NAME).read_text())
        frames, _ = read_video(record["source_video"])
        pil = [Image.fromarray(frames[i]) for i in record["frame_indices"][:frame_num]]
        return GenerationInputs(Image.open(image).convert("RGB"), pil[0], pil, pil, prompt)

    monkeypatch.setattr(prepare, "prepare_inputs", fake_prepare)
    monkeypatch.setattr(run, "read_inputs", exact_inputs)
    ckpt = tiny_checkpoint()
    monkeypatch.setattr(tiny, "write_tiny_checkpoint", lambda out_dir, seed=0: shutil.copytree(ckpt, out_dir))
    monkeypatch.setattr(runner.BatchRunner, "load_models", lambda self: setattr(self, "pipeline", CopyPipeline()))
    return CopyPipeline


@pytest.mark.parametrize("with_noise", [False, True])
def test_a_tiktok_row_made_of_its_driving_frames_scores_as_a_copy(tmp_path, scene, copy_rows, with_noise) -> None:
    ref_video, frames = scene
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(ref_video, videos / "clip.mp4")
    copy_rows.noise = with_noise
    out = tmp_path / "bench"
    assert main(["benchmark", "--protocol", "tiktok", "--videos", str(videos), "--out", str(out)]) == 0
    # the row: 25 driving frames (24 at stride 3, + 1 for 4n+1) from the clip cut out of the test video
    row_mp4 = out / "rows" / "clip" / "clip.mp4"
    assert read_sidecar(row_mp4)["provenance"]["frame_indices"] == list(range(25))
    assert np.array_equal(np.asarray(Image.open(out / "ref_frames" / "clip.stride3.middle.png")), frames[36])
    # the scoring's sidecar names the test video's frames
    assert read_sidecar(out / "generated" / "clip.mp4")["provenance"]["frame_indices"] == list(range(0, 75, 3))
    report = json.loads((out / "report.json").read_text())
    entry = report["videos"]["clip"]
    assert entry["pairing"] == {"method": "provenance", "reference_frames": list(range(0, 72, 3))}
    assert len(entry["per_frame"]["ssim"]) == 24  # the 25th frame is not scored
    assert report["aggregate"]["psnr"] > 40
    if not with_noise:
        assert report["aggregate"]["ssim"] > 0.99
    table = (out / "report.md").read_text()
    assert "24 at stride 3 from frame 0" in table and "the middle driving frame" in table
    assert "| Method | SSIM ↑ | PSNR ↑ | LPIPS ↓ | FID ↓ | FVD ↓ |" in table


def test_driving_frame_indices_follow_the_resampling() -> None:
    assert prepare.driving_frame_indices(4, 2, 30.0, None) == [2, 3, 4, 5]
    # 30 -> 10 fps keeps every third frame; 30 -> 12 fps drops frames unevenly (frame on screen at j / 12 s)
    assert prepare.driving_frame_indices(4, 0, 30.0, 10.0) == [0, 3, 6, 9]
    assert prepare.driving_frame_indices(5, 1, 30.0, 12.0) == [2, 5, 7, 10, 12]


def test_sidecar_sections_merge_and_a_damaged_one_is_one_line(tmp_path) -> None:
    from steadydancer.errors import InputError

    video = tmp_path / "x.mp4"
    assert read_sidecar(video) == {}
    update_sidecar(video, settings={"seed": 1})
    path = update_sidecar(video, provenance={"frame_indices": [0]})
    assert path == tmp_path / "x.json"
    assert read_sidecar(video) == {"settings": {"seed": 1}, "provenance": {"frame_indices": [0]}}
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="x.json: expected a JSON object"):
        read_sidecar(video)


def test_small_fixes_dino_positions_and_batchnorm_counters(tmp_path) -> None:
    from steadydancer.eval.inception import FIDInception, load_fid_inception
    from steadydancer.eval.vit import DinoViT

    vit = DinoViT(dim=16, depth=1, patch=16, num_positions=5, hidden=32)
    torch.nn.init.normal_(vit.pos_embed)
    # DINO skips the interpolation only for square pixel sizes: a 32x34 frame has a square 2x2 grid, yet
    # its position embeddings go through DINO's (+0.1) bicubic interpolation
    assert torch.equal(vit._positions(2, 2, 32, 32), vit.pos_embed)
    assert not torch.equal(vit._positions(2, 2, 32, 34), vit.pos_embed)
    # a pytorch-fid file without BatchNorm num_batches_tracked entries loads (torch's loader allows it)
    state = {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "inception.pth")
    assert isinstance(load_fid_inception(tmp_path / "inception.pth"), FIDInception)


def test_sample_once_scores_one_seeded_frame_per_video_and_says_so(tmp_path, scene) -> None:
    ref_video, frames = scene
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    shutil.copy(ref_video, ref / "clip.mp4")
    write_video(gen / "clip.mp4", noisy(frames[:30]), 16)
    report = _eval(tmp_path, gen, ref, "--frame_sampling", "sample-once")
    assert len(report["videos"]["clip"]["per_frame"]["psnr"]) == 1
    assert report["options"]["frame_sampling"] == "sample-once" and report["options"]["sample_seed"] == 0
    assert "one random frame per video (HumanVid's sample-once, seed 0)" in (tmp_path / "out" / "report.md").read_text()
