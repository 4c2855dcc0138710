"""LoRA files: the common key layouts, a strength, quantised layers, and clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from memory_helpers import tiny_conditions, tiny_dit, tiny_latents
from steadydancer.errors import InputError
from steadydancer.models.lora import apply_lora, parse_lora_arg, read_lora
from steadydancer.models.quant.fp8 import quantize_model_fp8

TARGETS = ["blocks.0.self_attn.q", "blocks.1.cross_attn.k_img", "blocks.2.ffn.0"]
RANK = 4


def lora_tensors(model, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in TARGETS:
        weight = model.get_submodule(name).weight
        out[name] = (torch.randn(RANK, weight.shape[1], generator=g) * 0.3,   # down
                     torch.randn(weight.shape[0], RANK, generator=g) * 0.3)   # up
    return out


def merged_by_hand(model, tensors, strength: float, alpha: float | None = None):
    model = copy.deepcopy(model)
    scale = (alpha / RANK) if alpha is not None else 1.0
    for name, (down, up) in tensors.items():
        layer = model.get_submodule(name)
        layer.weight.data = layer.weight + strength * scale * (up @ down)
    return model


def run(model) -> torch.Tensor:
    return model(tiny_latents(), torch.tensor([700.0]), **tiny_conditions().as_kwargs())


def write(path, state) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def test_peft_layout_at_a_strength(tmp_path) -> None:
    model = tiny_dit()
    tensors = lora_tensors(model)
    state = {}
    for name, (down, up) in tensors.items():
        state[f"diffusion_model.{name}.lora_A.weight"] = down
        state[f"diffusion_model.{name}.lora_B.weight"] = up
    want = run(merged_by_hand(model, tensors, 0.7))
    assert apply_lora(model, write(tmp_path / "peft.safetensors", state), strength=0.7) == 3
    got = run(model)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, run(tiny_dit()), atol=1e-3)     # the LoRA did change the output


@pytest.mark.parametrize("layout", ["down_up_alpha", "kohya"])
def test_down_up_alpha_and_kohya_layouts(tmp_path, layout: str) -> None:
    model = tiny_dit()
    tensors = lora_tensors(model, seed=3)
    state = {}
    for name, (down, up) in tensors.items():
        key = f"lora_unet_{name.replace('.', '_')}" if layout == "kohya" else name
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(2.0)
    want = run(merged_by_hand(model, tensors, 1.0, alpha=2.0))
    apply_lora(model, write(tmp_path / f"{layout}.safetensors", state))
    assert torch.allclose(run(model), want, rtol=1e-5, atol=1e-6)


def test_full_weight_and_bias_deltas(tmp_path) -> None:
    model = tiny_dit()
    reference = copy.deepcopy(model)
    diff = torch.randn(32, 32) * 0.1
    diff_b = torch.randn(32) * 0.1
    reference.blocks[0].self_attn.o.weight.data += 0.5 * diff
    reference.blocks[0].self_attn.o.bias.data += 0.5 * diff_b
    apply_lora(model, write(tmp_path / "diff.safetensors", {
        "diffusion_model.blocks.0.self_attn.o.diff": diff,
        "diffusion_model.blocks.0.self_attn.o.diff_b": diff_b}), strength=0.5)
    assert torch.allclose(run(model), run(reference), rtol=1e-5, atol=1e-6)


def test_quantised_layers_get_the_low_rank_path_at_run_time(tmp_path) -> None:
    model = tiny_dit()
    quantize_model_fp8(model)
    tensors = lora_tensors(tiny_dit())
    state = {f"{n}.lora_A.weight": d for n, (d, u) in tensors.items()}
    state.update({f"{n}.lora_B.weight": u for n, (d, u) in tensors.items()})
    # reference: a plain model holding exactly the dequantised FP8 weights, merged by hand
    plain = tiny_dit()
    for name, module in plain.named_modules():
        if name.startswith("blocks.") and type(module) is torch.nn.Linear:
            module.weight.data = model.get_submodule(name).dequantized_weight(torch.float32)
    want = run(merged_by_hand(plain, tensors, 0.8))
    apply_lora(model, write(tmp_path / "lora.safetensors", state), strength=0.8)
    assert torch.allclose(run(model), want, rtol=1e-4, atol=1e-5)


def test_quantised_layer_takes_a_full_delta_and_a_second_lora_at_run_time(tmp_path) -> None:
    torch.manual_seed(0)
    model = tiny_dit()
    quantize_model_fp8(model)
    name = "blocks.0.self_attn.o"
    plain = tiny_dit()
    for module_name, module in plain.named_modules():
        if module_name.startswith("blocks.") and type(module) is torch.nn.Linear:
            module.weight.data = model.get_submodule(module_name).dequantized_weight(torch.float32)
    diff = torch.randn(32, 32) * 0.1
    down, up = torch.randn(RANK, 32) * 0.1, torch.randn(32, RANK) * 0.1
    plain.get_submodule(name).weight.data += 0.5 * diff + 0.8 * (up @ down)
    apply_lora(model, write(tmp_path / "diff.safetensors", {f"{name}.diff": diff}), strength=0.5)
    apply_lora(model, write(tmp_path / "low.safetensors", {f"{name}.lora_A.weight": down,
                                                           f"{name}.lora_B.weight": up}), strength=0.8)
    layer = model.get_submodule(name)
    assert layer.lora_delta.shape == (32, 32) and layer.lora_down.shape == (RANK, 32)
    assert torch.allclose(run(model), run(plain), rtol=1e-4, atol=1e-5)


def test_lora_that_does_not_fit_is_refused_and_leaves_the_model_alone(tmp_path) -> None:
    model = tiny_dit()
    before = run(model)
    wrong_shape = {"blocks.0.self_attn.q.lora_A.weight": torch.randn(RANK, 48),
                   "blocks.0.self_attn.q.lora_B.weight": torch.randn(32, RANK),
                   "blocks.1.self_attn.q.lora_A.weight": torch.randn(RANK, 32),
                   "blocks.1.self_attn.q.lora_B.weight": torch.randn(32, RANK)}
    with pytest.raises(InputError, match=r"--lora .*wrong\.safetensors: blocks\.0\.self_attn\.q is \(32, 32\)"):
        apply_lora(model, write(tmp_path / "wrong.safetensors", wrong_shape))
    assert torch.equal(run(model), before)
    other_model = {"blocks.40.self_attn.q.lora_A.weight": torch.randn(RANK, 32),
                   "blocks.40.self_attn.q.lora_B.weight": torch.randn(32, RANK)}
    with pytest.raises(InputError, match="targets no layer of this model"):
        apply_lora(model, write(tmp_path / "other.safetensors", other_model))
    with pytest.raises(InputError, match="unrecognised key"):
        apply_lora(model, write(tmp_path / "junk.safetensors", {"blocks.0.self_attn.q.weight": torch.ones(1)}))


def test_parse_lora_arg(tmp_path) -> None:
    path = tmp_path / "a:b.safetensors"
    path.write_bytes(b"x")
    assert parse_lora_arg(f"{path}:0.6") == (path, 0.6)
    assert parse_lora_arg(str(path)) == (path, 1.0)
    with pytest.raises(InputError, match="--lora: file not found"):
        parse_lora_arg(str(tmp_path / "missing.safetensors:1"))


def test_lightx2v_style_parameter_and_bias_deltas(tmp_path) -> None:
    """lightx2v ships blocks.N.diff_m (modulation), norm weight diffs and lora_B.bias-style bias deltas."""
    model = tiny_dit()
    reference = copy.deepcopy(model)
    diff_m = torch.randn(1, 6, 32) * 0.1
    norm_diff = torch.randn(32) * 0.1
    bias_delta = torch.randn(32) * 0.1
    reference.blocks[1].modulation.data += 0.5 * diff_m
    reference.blocks[0].cross_attn.norm_k_img.weight.data += 0.5 * norm_diff
    reference.blocks[2].ffn[2].bias.data += 0.5 * bias_delta
    state = {"diffusion_model.blocks.1.diff_m": diff_m,
             "diffusion_model.blocks.0.cross_attn.norm_k_img.diff": norm_diff,
             "diffusion_model.blocks.2.ffn.2.lora_B.bias": bias_delta,
             "diffusion_model.blocks.0.modulation.diff": torch.zeros(1, 6, 32)}
    assert apply_lora(model, write(tmp_path / "lightx2v.safetensors", state), strength=0.5) == 4
    assert torch.allclose(run(model), run(reference), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"blocks\.1\.modulation"):
        apply_lora(model, write(tmp_path / "bad.safetensors", {"blocks.1.diff_m": torch.zeros(5)}))


@pytest.mark.parametrize("name", ["broken.safetensors", "broken.pt"])
def test_unreadable_lora_file_is_one_line(tmp_path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"not a tensor file at all")
    with pytest.raises(InputError, match=rf"^--lora .*{name}: not a readable LoRA file"):
        read_lora(path, ["blocks.0.self_attn.q"])


def test_locon_mid_factor_is_composed_into_the_delta(tmp_path) -> None:
    """LoCon's .lora_mid.weight (taken with its pair by lightx2v's loader) is the Tucker middle
    factor: delta = up @ mid @ down for a linear layer."""
    model = tiny_dit()
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    name = "blocks.1.ffn.0"
    weight = model.get_submodule(name).weight
    down = torch.randn(RANK, weight.shape[1], generator=g) * 0.3
    mid = torch.randn(RANK, RANK, generator=g)
    up = torch.randn(weight.shape[0], RANK, generator=g) * 0.3
    reference.get_submodule(name).weight.data += 0.5 * (2.0 / RANK) * (up @ mid @ down)
    apply_lora(model, write(tmp_path / "locon.safetensors", {
        f"lora_unet_{name.replace('.', '_')}.lora_down.weight": down,
        f"lora_unet_{name.replace('.', '_')}.lora_mid.weight": mid,
        f"lora_unet_{name.replace('.', '_')}.lora_up.weight": up,
        f"lora_unet_{name.replace('.', '_')}.alpha": torch.tensor(2.0)}), strength=0.5)
    assert torch.allclose(run(model), run(reference), rtol=1e-5, atol=1e-6)


def test_locon_mid_of_the_wrong_rank_is_one_line(tmp_path) -> None:
    model = tiny_dit()
    name = "blocks.1.ffn.0"
    weight = model.get_submodule(name).weight
    with pytest.raises(InputError, match=r"blocks\.1\.ffn\.0\.lora_mid\.weight \(3, 3\) does not fit"):
        apply_lora(model, write(tmp_path / "bad_mid.safetensors", {
            f"{name}.lora_down.weight": torch.zeros(RANK, weight.shape[1]),
            f"{name}.lora_mid.weight": torch.zeros(3, 3),
            f"{name}.lora_up.weight": torch.zeros(weight.shape[0], RANK)}))


def test_run_time_factors_are_kept_in_the_compute_dtype(tmp_path) -> None:
    """With block swap the quantised layers sit in host memory when the LoRA is applied: the
    factors must still be the compute dtype (bf16), not float32 (twice the copy traffic)."""
    model = tiny_dit()
    quantize_model_fp8(model)
    tensors = lora_tensors(tiny_dit())
    state = {f"{n}.lora_A.weight": d for n, (d, u) in tensors.items()}
    state.update({f"{n}.lora_B.weight": u for n, (d, u) in tensors.items()})
    state["blocks.0.self_attn.o.diff"] = torch.randn(32, 32) * 0.1
    apply_lora(model, write(tmp_path / "lora.safetensors", state), compute_dtype=torch.bfloat16)
    for name in TARGETS:
        layer = model.get_submodule(name)
        assert layer.weight.device.type == "cpu"
        assert layer.lora_down.dtype == layer.lora_up.dtype == torch.bfloat16
    assert model.get_submodule("blocks.0.self_attn.o").lora_delta.dtype == torch.bfloat16
