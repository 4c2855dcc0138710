"""FP8 e4m3 scaled weights: quantise our own, load the ComfyUI/Kijai layout, stated tolerances."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from steadydancer.errors import InputError
from steadydancer.models.quant.fp8 import (FP8_DTYPE, FP8Linear, check_fp8_matmul_supported,
                                           load_fp8_scaled, quantize_model_fp8, save_fp8_scaled)

# e4m3 keeps 3 mantissa bits: each weight is off by at most 1/16 of itself, about 2.5% RMS; a layer's
# output then carries ~2-3% relative error. These are the tolerances we state and test.
LAYER_TOL = 0.04
MODEL_TOL = 0.08


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(self.norm(x) + self.modulation)


class Toy(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return x


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_fp8_linear_error_within_tolerance() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = FP8Linear.from_linear(linear)
    assert layer.weight.dtype == FP8_DTYPE and layer.scale_weight.shape == ()
    x = torch.randn(5, 64)
    assert rel(layer(x), linear(x)) < LAYER_TOL
    # bf16 compute: weight scaled in float32 and rounded once
    assert rel(layer(x.bfloat16()), linear(x)) < LAYER_TOL + 0.01


def test_quantize_model_only_touches_block_linears() -> None:
    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(2, 5, 32)
    want = model(x)
    assert quantize_model_fp8(model) == 6
    assert type(model.embed) is nn.Linear and isinstance(model.blocks[0].ffn[0], FP8Linear)
    got = model(x)
    err = rel(got, want)
    assert 0 < err < MODEL_TOL


def test_save_and_load_round_trip_is_exact_and_streams_onto_meta_model(tmp_path) -> None:
    torch.manual_seed(0)
    model = Toy()
    quantize_model_fp8(model)
    path = tmp_path / "dit_fp8_e4m3fn_scaled.safetensors"
    save_fp8_scaled(model, path)
    with torch.device("meta"):
        fresh = Toy()
    load_fp8_scaled(fresh, path, device="cpu", dtype=torch.float32)
    x = torch.randn(2, 5, 32)
    assert torch.equal(fresh(x), model(x))
    assert fresh.blocks[1].ffn[2].weight.dtype == FP8_DTYPE


def test_loads_comfy_layout_with_prefix_and_per_row_scales(tmp_path) -> None:
    torch.manual_seed(0)
    model = Toy()
    state = {}
    for key, value in model.state_dict().items():
        state["model.diffusion_model." + key] = value
    # quantise the second block's first ffn linear per output row, the way some converters do
    weight = model.blocks[1].ffn[0].weight.detach()
    row_scale = weight.abs().amax(dim=1, keepdim=True) / 448
    state["model.diffusion_model.blocks.1.ffn.0.weight"] = (weight / row_scale).to(FP8_DTYPE)
    state["model.diffusion_model.blocks.1.ffn.0.scale_weight"] = row_scale.float()
    state["model.diffusion_model.blocks.1.ffn.0.scale_input"] = torch.ones(1)
    state["scaled_fp8"] = torch.empty(0, dtype=FP8_DTYPE)
    path = tmp_path / "comfy.safetensors"
    save_file(state, str(path))
    with torch.device("meta"):
        fresh = Toy()
    load_fp8_scaled(fresh, path, dtype=torch.float32)
    layer = fresh.blocks[1].ffn[0]
    assert isinstance(layer, FP8Linear) and type(fresh.blocks[0].ffn[0]) is nn.Linear
    x = torch.randn(3, 32)
    assert rel(layer(x), model.blocks[1].ffn[0](x)) < LAYER_TOL


def test_wrong_file_is_one_clear_line(tmp_path) -> None:
    model = Toy()
    state = {k: v for k, v in Toy(dim=16).state_dict().items()}
    path = tmp_path / "other.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError, match="other.safetensors"):
        load_fp8_scaled(copy.deepcopy(model), path)
    with pytest.raises(InputError, match="not found"):
        load_fp8_scaled(model, tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(InputError, match=r"garbage\.safetensors: not a readable \.safetensors file"):
        load_fp8_scaled(model, garbage)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp8_matmul_without_hardware_is_one_clear_line() -> None:
    with pytest.raises(InputError, match=r"^--fp8_matmul: FP8 matmuls need"):
        check_fp8_matmul_supported("cpu")
    with pytest.raises(InputError, match="--fp8_matmul"):
        quantize_model_fp8(Toy(), fp8_matmul=True)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs FP8 tensor cores")
def test_fp8_matmul_close_to_dequantised_path() -> None:
    torch.manual_seed(0)
    layer = FP8Linear.from_linear(nn.Linear(256, 512).cuda())
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    want = layer(x)
    layer.fp8_matmul = True
    assert rel(layer(x), want) < LAYER_TOL


def test_scaled_non_linear_layer_is_dequantised_on_load(tmp_path) -> None:
    torch.manual_seed(0)

    class WithConv(Toy):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv3d(4, 32, (1, 2, 2), (1, 2, 2))

    model = WithConv()
    state = dict(model.state_dict())
    weight = state["patch.weight"]
    scale = weight.abs().amax() / 448
    state["patch.weight"] = (weight / scale).to(FP8_DTYPE)
    state["patch.scale_weight"] = scale.reshape(1)
    path = tmp_path / "conv.safetensors"
    save_file(state, str(path))
    with torch.device("meta"):
        fresh = WithConv()
    load_fp8_scaled(fresh, path, dtype=torch.float32)
    assert fresh.patch.weight.dtype == torch.float32
    assert rel(fresh.patch.weight, weight) < LAYER_TOL


def test_fp8_matmul_argument_layout_on_cpu() -> None:
    """torch._scaled_mm also runs on the CPU: the FP8 path's operand layout, scales, row padding
    (21 rows) and bias give the dequantised result without a GPU."""
    torch.manual_seed(0)
    layer = FP8Linear.from_linear(nn.Linear(256, 512).to(torch.bfloat16))
    x = torch.randn(3, 7, 256, dtype=torch.bfloat16)
    out = layer._fp8_forward(x, layer.bias.to(x.dtype))
    assert out.shape == (3, 7, 512) and out.dtype == torch.bfloat16
    assert rel(out, layer(x)) < LAYER_TOL


@pytest.mark.parametrize("layer", ["blocks.1.ffn.0", "patch"])
def test_scale_of_the_wrong_size_is_one_line(tmp_path, layer: str) -> None:
    class WithConv(Toy):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv3d(4, 32, (1, 2, 2), (1, 2, 2))

    state = dict(WithConv().state_dict())
    state[f"{layer}.weight"] = state[f"{layer}.weight"].to(FP8_DTYPE)
    state[f"{layer}.scale_weight"] = torch.ones(3)
    path = tmp_path / "bad_scale.safetensors"
    save_file(state, str(path))
    with torch.device("meta"):
        fresh = WithConv()
    with pytest.raises(InputError, match=rf"bad_scale\.safetensors: {layer}\.scale_weight has 3 values, "
                                         r"expected 1 or one per output row"):
        load_fp8_scaled(fresh, path)


class WithAttention(Toy):
    """A Toy with a parameter-level weight (``cross_attn.in_proj_weight``), as the FAAU has."""

    def __init__(self) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(32, 4)


@pytest.mark.parametrize("spelling", ["in_proj_scale_weight", "in_proj_weight_scale"])
def test_parameter_level_scale_is_applied_on_load(tmp_path, spelling: str) -> None:
    """Kijai names a parameter's scale key.replace("weight", "scale_weight"): for the FAAU's
    in_proj_weight that is in_proj_scale_weight, which must be read, not refused."""
    torch.manual_seed(0)
    model = WithAttention()
    state = {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}
    weight = model.cross_attn.in_proj_weight.detach()
    scale = weight.abs().amax() / 448
    state["model.diffusion_model.cross_attn.in_proj_weight"] = (weight / scale).to(FP8_DTYPE)
    state[f"model.diffusion_model.cross_attn.{spelling}"] = scale.reshape(1)
    path = tmp_path / "kijai_in_proj.safetensors"
    save_file(state, str(path))
    with torch.device("meta"):
        fresh = WithAttention()
    load_fp8_scaled(fresh, path, dtype=torch.float32)
    assert fresh.cross_attn.in_proj_weight.dtype == torch.float32
    # scale applied: a 1-ulp-of-e4m3 error, not a factor of 1/scale
    assert rel(fresh.cross_attn.in_proj_weight, weight) < LAYER_TOL


def test_parameter_level_scale_without_its_parameter_is_refused(tmp_path) -> None:
    state = dict(Toy().state_dict())
    state["cross_attn.in_proj_scale_weight"] = torch.ones(1)
    path = tmp_path / "stray_scale.safetensors"
    save_file(state, str(path))
    with torch.device("meta"):
        fresh = Toy()
    with pytest.raises(InputError, match=r"stray_scale\.safetensors: not a SteadyDancer DiT fp8 file.*"
                                         r"cross_attn\.in_proj_scale_weight"):
        load_fp8_scaled(fresh, path)


def test_nvfp4_described_only_in_the_header_is_refused_by_format(tmp_path) -> None:
    """ComfyUI's newer files describe quantised layers in __metadata__["_quantization_metadata"]
    (comfy/utils.py convert_old_quants); an nvfp4 layer there carries weight_scale_2, and the
    refusal must name the format, not the unexpected tensor."""
    import json

    state = dict(Toy().state_dict())
    name = "blocks.0.ffn.0"
    out_features, in_features = state[f"{name}.weight"].shape
    state[f"{name}.weight"] = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
    state[f"{name}.weight_scale"] = torch.ones(out_features, in_features // 16).to(FP8_DTYPE)
    state[f"{name}.weight_scale_2"] = torch.ones(())
    path = tmp_path / "nvfp4.safetensors"
    save_file(state, str(path), metadata={"_quantization_metadata": json.dumps(
        {"format_version": "1.0", "layers": {name: {"format": "nvfp4"}}})})
    with torch.device("meta"):
        fresh = Toy()
    with pytest.raises(InputError, match=r"nvfp4\.safetensors: the header's _quantization_metadata says "
                                         r"blocks\.0\.ffn\.0 is 'nvfp4'; only the float8 formats"):
        load_fp8_scaled(fresh, path)


def test_float8_formats_in_the_header_load(tmp_path) -> None:
    import json

    torch.manual_seed(0)
    model = Toy()
    quantize_model_fp8(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    layers = {k[:-len(".weight")]: {"format": "float8_e4m3fn"} for k, v in state.items() if v.dtype == FP8_DTYPE}
    path = tmp_path / "header_fp8.safetensors"
    save_file(state, str(path), metadata={"_quantization_metadata": json.dumps({"layers": layers})})
    with torch.device("meta"):
        fresh = Toy()
    load_fp8_scaled(fresh, path, dtype=torch.float32)
    x = torch.randn(2, 5, 32)
    assert torch.equal(fresh(x), model(x))
