"""`steadydancer generate --dit_fp8_file F` / `--gguf F` on files in the real community layouts, with a
checkpoint folder that has only the encoders, with and without the DiT's config.json."""

from __future__ import annotations

import json

import pytest

from community_layouts import community_dit, write_kijai_fp8, write_steadydancer_gguf
from steadydancer.cli.main import main
from steadydancer.models.loading import CONFIG_NAME, official_config
from test_pipeline_support import write_inputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("community")
    model = community_dit(num_layers=2)     # the layouts' tensor counts are checked in test_community_weights
    write_kijai_fp8(model, root / "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors")
    write_steadydancer_gguf(model, root / "SteadyDancer-Q8_0.gguf")
    encoders = write_tiny_checkpoint(root / "encoders", seed=0)
    for dit_file in [encoders / CONFIG_NAME, *encoders.glob("diffusion_pytorch_model*")]:
        dit_file.unlink()           # only T5, CLIP, VAE and the tokenizers are left
    with_config = root / "with_config"
    with_config.mkdir()
    for item in encoders.iterdir():
        (with_config / item.name).symlink_to(item)
    (with_config / CONFIG_NAME).write_text(json.dumps(official_config(model)))
    write_inputs(root / "in", 5, ref_size=(40, 56), pose_size=(40, 56))
    return root


FP8_FILE, GGUF_FILE = "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors", "SteadyDancer-Q8_0.gguf"


# Whole runs: the smallest --size still makes thousands of tokens, ~17 s each on 2 CPU cores.
@pytest.mark.slow
@pytest.mark.parametrize("flag,name", [("--dit_fp8_file", FP8_FILE), ("--gguf", GGUF_FILE)])
@pytest.mark.parametrize("ckpt", ["encoders", "with_config"])
def test_generate_with_a_community_dit_file(setup, flag, name, ckpt) -> None:
    out = setup / f"{ckpt}-{flag.strip('-')}.mp4"
    # the cheapest whole run: one frame, one step, one pass (guidance 1, pose CFG window empty)
    argv = ["generate", "--ckpt_dir", str(setup / ckpt), "--input_dir", str(setup / "in"), "--frame_num", "1",
            "--size", "832*480", "--sample_steps", "1", "--sample_guide_scale", "1", "--st_cond_cfg", "0",
            "--end_cond_cfg", "0", "--device", "cpu", "--prompt", "dance", "--save_file", str(out),
            flag, str(setup / name)]
    assert main(argv) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("field,name", [("dit_fp8_file", FP8_FILE), ("gguf", GGUF_FILE)])
@pytest.mark.parametrize("ckpt", ["encoders", "with_config"])
def test_pipeline_loads_and_runs_the_dit_from_the_file(setup, field, name, ckpt) -> None:
    import torch

    from steadydancer.models.memory import MemoryOptions
    from steadydancer.pipeline.i2v import DancerPipeline
    from community_layouts import dit_inputs as inputs

    pipeline = DancerPipeline(setup / ckpt, device="cpu", memory=MemoryOptions(**{field: setup / name}))
    assert pipeline.text_len == 512 and pipeline.patch_size == (1, 2, 2)
    dit = pipeline.dit()
    assert len(dit.blocks) == 2 and dit.dim == 128
    with torch.no_grad():
        assert torch.isfinite(dit(**inputs())).all()


def test_without_a_dit_file_the_folder_still_needs_its_config(setup, capsys) -> None:
    argv = ["generate", "--ckpt_dir", str(setup / "encoders"), "--input_dir", str(setup / "in"), "--frame_num", "5",
            "--size", "832*480", "--device", "cpu", "--prompt", "dance", "--save_file", str(setup / "x.mp4")]
    assert main(argv) == 2
    assert "config.json" in capsys.readouterr().err
