"""Memory flags through `steadydancer generate`: refusals are one line and come before any model loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from steadydancer.cli.main import main
from test_pipeline_support import write_inputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("cli")
    ckpt = write_tiny_checkpoint(root / "ckpt", seed=0)
    write_inputs(root / "in", 5, ref_size=(40, 56), pose_size=(40, 56))
    return root, ckpt


def generate(setup, *flags: str) -> list[str]:
    root, ckpt = setup
    return ["generate", "--ckpt_dir", str(ckpt), "--input_dir", str(root / "in"), "--frame_num", "5",
            "--size", "832*480", "--sample_steps", "2", "--device", "cpu", "--prompt", "dance",
            "--save_file", str(root / "out.mp4"), *flags]


def one_error_line(capsys, argv) -> str:
    assert main(argv) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_refusals_are_one_line_before_loading(setup, capsys, tmp_path, monkeypatch) -> None:
    import steadydancer.models.loading as loading

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(loading, "load_dit", no_load)
    assert "--blocks_on_gpu: expected a whole number from 0 to 2" in one_error_line(
        capsys, generate(setup, "--blocks_on_gpu", "9"))
    lora = tmp_path / "other.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 5120),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(5120, 4)}, str(lora))
    line = one_error_line(capsys, generate(setup, "--lora", f"{lora}:0.8"))
    assert "other.safetensors" in line and "blocks.0.self_attn.q" in line
    assert "not found" in one_error_line(capsys, generate(setup, "--lora", str(tmp_path / "none.safetensors")))
    if not torch.cuda.is_available():
        assert "--fp8_matmul: FP8 matmuls need" in one_error_line(
            capsys, generate(setup, "--dit_dtype", "fp8", "--fp8_matmul"))
    assert not (setup[0] / "out.mp4").exists()


def test_flags_reach_the_pipeline(setup, monkeypatch) -> None:
    import steadydancer.api as api  # the command line runs through the Python API

    seen = {}
    monkeypatch.setattr(api, "generate_video", lambda **kw: seen.update(kw))
    assert main(generate(setup, "--blocks_on_gpu", "1", "--dit_dtype", "fp8", "--batch_guidance")) == 0
    memory = seen["memory"]
    assert memory.blocks_on_gpu == 1 and memory.dit_dtype == "fp8" and memory.batch_guidance
