"""scripts/bench.py at a tiny shape on CPU: every mode runs, numbers are sane, bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench  # noqa: E402

TINY_ARGS = ["--device", "cpu", "--dim", "32", "--ffn_dim", "64", "--num_heads", "2", "--num_layers", "2",
             "--frames", "5", "--size", "64*64", "--repeats", "1"]


def test_flop_count_and_pass_counts() -> None:
    assert bench.pass_counts(40) == (11, 29)            # steps 5..15 run the pose pass
    assert bench.latent_shape(81, "1024*576") == (21, 72, 128)
    flops = bench.forward_flops(bench.FULL_14B, 21, 72, 128)
    assert 3.0e15 < flops < 4.5e15                      # ~3.6 PFLOP per forward: 52992 tokens


@pytest.mark.parametrize("mode", ["plain", "block_swap:1", "fp8", "batched", "token_chunk:16"])
def test_each_mode_runs_in_process(mode: str) -> None:
    cfg, shape, device, dtype, _ = bench.resolve(bench.parse_args(TINY_ARGS))
    row = bench.run_mode(mode, cfg, shape, device, dtype, repeats=1)
    assert row["forward_s"] > 0 and row["step_s"] > row["forward_s"] and row["tflops"] > 0
    assert row["host_peak_gib"] > 0.05


def test_driver_runs_a_mode_in_a_subprocess_and_prints_the_table(tmp_path) -> None:
    out, lines = tmp_path / "rows.json", tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), *TINY_ARGS,
                           "--modes", "block_swap:0,no_such_mode", "--json", str(out), "--jsonl", str(lines)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr          # an unknown mode is refused before any row runs
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), *TINY_ARGS,
                           "--modes", "block_swap:0", "--json", str(out), "--jsonl", str(lines)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| block_swap:0 |" in proc.stdout and "device: CPU" in proc.stdout
    assert out.is_file()
    # the JSON lines hold the header, then each row as it finished (appended, never rewritten)
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert "header" in records[0] and records[1]["mode"] == "block_swap:0" and records[1]["wall_s"] > 0
    assert records[1]["host_arena_gib"] > 0 and records[1]["pinned_gib"] == 0     # nothing is pinned on a CPU


def test_peak_of_a_device_name_takes_the_longest_match() -> None:
    assert bench.peak_for_name("NVIDIA H100 NVL") == 835.0
    assert bench.peak_for_name("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_for_name("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_for_name("NVIDIA H200") == 989.0
    assert bench.peak_for_name("Tesla T4") is None


def test_random_dit_is_materialised_in_its_dtype_never_float32(monkeypatch) -> None:
    seen: list[set] = []
    original = torch.nn.Module.to_empty

    def recording_to_empty(module, *args, **kwargs):
        seen.append({p.dtype for p in module.parameters()})
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to_empty", recording_to_empty)
    cfg, *_ = bench.resolve(bench.parse_args(TINY_ARGS))
    model = bench.build_random_dit(cfg, torch.device("cpu"), torch.bfloat16, host_blocks_from=1)
    assert seen and all(dtypes <= {torch.bfloat16} for dtypes in seen)   # the 14B in float32 is 61 GiB
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters())


def test_bad_modes_are_one_line(capsys) -> None:
    assert bench.main([*TINY_ARGS, "--modes", "block_swap:7"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --modes block_swap:7: expected a whole number from 0 to 2 (the model has 2 blocks), got 7"]
    assert bench.main([*TINY_ARGS, "--modes", "token_chunk:0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --modes: 'token_chunk:0': expected token_chunk:N with N >= 1 tokens"]
    if not torch.cuda.is_available():
        assert bench.main([*TINY_ARGS, "--modes", "fp8_matmul"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --fp8_matmul: FP8 matmuls need")


@pytest.mark.parametrize("size", ["64x", "wide*tall", "0*64"])
def test_bad_size_is_one_line(capsys, size: str) -> None:
    assert bench.main(["--device", "cpu", "--size", size, "--modes", "plain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --size:") and len(err.splitlines()) == 1


def test_load_modes_on_a_random_checkpoint(tmp_path) -> None:
    """make_random_dit.py writes the released layout; bench's load modes read it back (plain, FP8)."""
    import make_random_dit
    from steadydancer.models.loading import load_dit

    ckpt = tmp_path / "dit"
    assert make_random_dit.main([str(ckpt), "--dim", "32", "--ffn_dim", "64", "--num_heads", "2",
                                 "--num_layers", "2", "--shards", "3"]) == 0
    assert len(list(ckpt.glob("diffusion_pytorch_model-0000?-of-00003.safetensors"))) == 3
    model = load_dit(ckpt, dtype=torch.bfloat16)
    weight = model.blocks[1].ffn[0].weight.float()
    assert 0.015 < weight.std().item() < 0.025                       # N(0, 0.02), not zeros
    rows = {}
    for mode in ("load", "load_fp8"):
        cfg, shape, device, dtype, _ = bench.resolve(bench.parse_args([*TINY_ARGS, "--dtype", "bf16"]))
        rows[mode] = bench.run_mode(mode, cfg, shape, device, dtype, repeats=1, ckpt_dir=str(ckpt))
    stored = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 2 ** 30
    assert abs(rows["load"]["stored_gib"] - stored) < 1e-9
    linears = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    saved = sum(m.weight.numel() - 4 for m in linears) / 2 ** 30     # 2 -> 1 byte a weight, + a float32 scale
    assert abs(rows["load"]["model_gib"] - rows["load_fp8"]["model_gib"] - saved) < 1e-9
    table = bench.format_table([{**rows["load"], "mode": "load"}, rows["load_fp8"]], None)
    assert "| load_fp8 (" in table and "GiB model) | load " in table


@pytest.mark.parametrize("mode", ["magcache:0.5", "fbcache:1.0"])
def test_step_cache_rows_report_skips_and_the_error_to_the_uncached_run(mode: str) -> None:
    cfg, shape, device, dtype, _ = bench.resolve(bench.parse_args(TINY_ARGS + ["--modes", mode]))
    row = bench.run_cache_mode(mode, cfg, shape, device, dtype, {"mode": mode}, steps=4)
    assert row["forwards"] == 2 * 4 + 1              # the pose window holds step 1 of 4
    assert 0 <= row["skipped"] < row["forwards"] and row["step_s"] > 0 and row["uncached_step_s"] > 0
    assert row["rel_err"] >= 0 and (row["skipped"] > 0) == (row["rel_err"] > 0)
    assert "forwards skipped" in bench.format_row(row, None)


def test_bad_cache_mode_is_one_line(capsys) -> None:
    with pytest.raises(bench.InputError, match=r"--modes: 'magcache:x': expected magcache:T"):
        bench.resolve(bench.parse_args(TINY_ARGS + ["--modes", "magcache:x"]))


# ---- attention:NAME and vae:plain / vae:tiled rows (issue 23) -----------------------------------

def _expected_refusal(kernel: str) -> str | None:
    """The line generate prints for --attention KERNEL on this CPU (None when it would run)."""
    from steadydancer.errors import InputError
    from steadydancer.models.memory import check_attention_option

    try:
        check_attention_option(kernel, "cpu")
    except InputError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("kernel", ["sage", "flash3", "flash2"])
def test_an_attention_kernel_that_cannot_run_gives_its_reason_not_a_failure(kernel: str) -> None:
    cfg, shape, device, dtype, _ = bench.resolve(bench.parse_args(TINY_ARGS))
    row = bench.run_mode(f"attention:{kernel}", cfg, shape, device, dtype, repeats=1)
    assert set(row) == {"mode", "refused"}
    # generate's own text where its check refuses; else the kernel's (e.g. flash-attn on a CPU)
    expected = _expected_refusal(kernel)
    if expected is not None:
        assert row["refused"] == expected
    else:
        assert "needs CUDA fp16/bf16" in row["refused"]
    line = bench.format_row({**row, "wall_s": 1.0}, None)
    assert line.startswith(f"| attention:{kernel} | refused: ") and "\n" not in line


def test_sdpa_row_is_the_reference_and_a_forced_kernel_reports_its_error_against_it(monkeypatch) -> None:
    import types

    import steadydancer.models.attention as kernels

    cfg, shape, device, dtype, _ = bench.resolve(bench.parse_args(TINY_ARGS))
    sdpa = bench.run_mode("attention:sdpa", cfg, shape, device, dtype, repeats=1)
    assert sdpa["rel_err_vs_sdpa"] == 0.0 and sdpa["forward_s"] > 0 and sdpa["tflops"] > 0
    assert "(rel. error vs SDPA 0.00e+00) |" in bench.format_row(sdpa, None)

    # a stand-in "sage" that is SDPA plus a 1 % relative perturbation: the row must see about that
    calls = []

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, **kwargs):
        calls.append(tensor_layout)
        exact = kernels._run_backend("sdpa", q, k, v)
        return exact + 0.01 * exact.abs().mean() * torch.randn_like(exact)

    monkeypatch.setattr(kernels, "_sage", types.SimpleNamespace(sageattn=sageattn))
    monkeypatch.setattr(kernels, "sage_refusal", lambda *args, **kwargs: None)
    sage = bench.run_mode("attention:sage", cfg, shape, device, dtype, repeats=1)
    assert calls and set(calls) == {"NHD"}                   # the forced kernel ran, in every attention
    assert 1e-5 < sage["rel_err_vs_sdpa"] < 0.5, sage


def test_vae_rows_time_the_decode_and_tiled_reports_its_difference_to_untiled() -> None:
    cfg, shape, device, dtype, _ = bench.resolve(bench.parse_args(TINY_ARGS))
    assert shape == (2, 8, 8)                                   # 5 frames at 64x64
    plain = bench.run_vae_mode("vae:plain", shape, device, {"mode": "vae:plain"}, vae_dim=4, tile=(32, 24))
    assert plain["decode_s"] > 0 and plain["frames"] == 5 and (plain["width"], plain["height"]) == (64, 64)
    assert plain["tiles"] == 1 and "max_abs_diff" not in plain and plain["host_peak_gib"] > 0
    tiled = bench.run_vae_mode("vae:tiled", shape, device, {"mode": "vae:tiled"}, vae_dim=4, tile=(32, 24))
    assert tiled["tiles"] == 9 == bench.vae_tile_count(8, 8, (32, 24))   # rows and columns at 0, 3, 6
    assert 0 < tiled["mean_abs_diff"] < tiled["max_abs_diff"] <= 2.0      # tiled is close, not exact
    if tiled["host_peak_is_decode_only"]:
        assert tiled["host_peak_gib"] >= tiled["host_before_gib"] > 0
    line = bench.format_row({**tiled, "wall_s": 1.0}, None)
    assert line.startswith("| vae:tiled (5 frames 64x64, VAE dim 4, 9 tiles of 32 px at stride 24; vs untiled")
    # a latent no larger than one tile is decoded untiled: bit for bit the same frames
    one = bench.run_vae_mode("vae:tiled", shape, device, {"mode": "vae:tiled"}, vae_dim=4, tile=(64, 48))
    assert one["tiles"] == 1 and one["max_abs_diff"] == 0.0


def test_the_vae_of_the_rows_is_the_released_architecture() -> None:
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):   # the layout write_tiny_vae writes, at the release's width
        vae = AutoencoderKLWan(base_dim=bench.VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                               attn_scales=[], temperal_downsample=[False, True, True])
    params = sum(p.numel() for p in vae.parameters())
    assert 126.5e6 < params < 127.5e6                          # Wan2.1_VAE.pth: 508 MB of float32
    assert bench.vae_tile_count(72, 128, bench.VAE_TILE) == 18   # 1024*576: 3 x 6 tiles of 256 px


def test_driver_prints_refusals_as_rows_and_still_succeeds(tmp_path) -> None:
    lines = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), *TINY_ARGS, "--vae_dim", "4",
                           "--vae_tile", "32,24", "--modes", "attention:flash3,vae:tiled", "--jsonl", str(lines)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr                 # a refused kernel is a result, not a failure
    assert "| attention:flash3 | refused: " in proc.stdout and "| vae:tiled (5 frames 64x64" in proc.stdout
    assert "VAE dim 4 float32, latent 16x2x8x8 -> 5 frames 64x64" in proc.stdout
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r.get("mode") for r in records[1:]] == ["attention:flash3", "vae:tiled"]
    assert records[2]["max_abs_diff"] > 0


@pytest.mark.parametrize("args, message", [
    (["--modes", "attention:xformers"],
     "error: --modes: 'attention:xformers': expected attention:NAME with NAME one of sage, flash3, flash2, sdpa"),
    (["--modes", "vae:big"], "error: --modes: unknown mode 'vae:big'"),
    (["--modes", "vae:tiled", "--vae_tile", "256"], "error: --vae_tile: expected TILE,STRIDE in pixels"),
    (["--modes", "vae:tiled", "--vae_tile", "250,192"], "error: --vae_tile: tile 250 and stride 192 must be multiples of 8"),
])
def test_bad_attention_and_vae_arguments_are_one_line(capsys, args: list[str], message: str) -> None:
    assert bench.main([*TINY_ARGS, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_cfg_parallel_row_runs_two_processes_and_the_exchange_is_exact(tmp_path, monkeypatch) -> None:
    """cfg_parallel: two torchrun processes (gloo here) time a 3-pass and a 2-pass step; the
    predictions gathered from the other process equal this process's own forwards exactly. On a
    CUDA machine with one GPU the row says it needs two, without failing the table."""
    lines = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), *TINY_ARGS, "--modes", "cfg_parallel",
                           "--jsonl", str(lines)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(lines.read_text().splitlines()[1])
    assert row["mode"] == "cfg_parallel" and row["processes"] == 2 and row["cfg_rel_err"] == 0.0
    assert row["cfg_step3_s"] > 0 and row["cfg_step2_s"] > 0 and row["step_s"] > 0
    assert "| cfg_parallel (2 processes" in proc.stdout
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    refused = bench.run_worker("cfg_parallel", TINY_ARGS, torch.device("cuda"))
    assert refused["refused"] == "needs two GPUs, 1 visible"
