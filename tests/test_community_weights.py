"""Community weight files in their real layouts (tests/community_layouts.py): Kijai FP8,
ComfyUI comfy_quant FP8, unscaled FP8, SteadyDancer-GGUF, a lightx2v LoRA; each loads, computes in
the compute dtype and runs a forward pass equal to the same weights dequantised by hand."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from community_layouts import (COMMUNITY_DIT, KIJAI_FP8_TENSORS, POSE_LINEARS, RELEASE_MODEL_TENSORS,
                               block_linears, community_dit, rel, write_kijai_fp8, write_lightx2v_lora,
                               write_steadydancer_gguf, write_unscaled_fp8)
from community_layouts import dit_inputs as inputs
from steadydancer.errors import InputError
from steadydancer.models.dit import SteadyDancerDiT
from steadydancer.models.loading import build_meta_dit, infer_dit_config
from steadydancer.models.lora import apply_lora
from steadydancer.models.quant.fp8 import FLOAT8_DTYPES, FP8Linear, fp8_file_shapes, load_fp8_scaled
from steadydancer.models.quant.gguf import GGUFLinear, gguf_file_shapes, load_gguf

FLOAT8 = set(FLOAT8_DTYPES)


@pytest.fixture(scope="module")
def model() -> SteadyDancerDiT:
    return community_dit()


def meta_model(shapes, source="fixture") -> SteadyDancerDiT:
    """The DiT built, as without config.json, from the file's tensors alone."""
    return build_meta_dit("/nonexistent-ckpt", shapes, source=source)


def dequantised_by_hand(state: dict[str, torch.Tensor], prefix: str = "") -> SteadyDancerDiT:
    """A float32 DiT holding exactly what a written fp8 file means (weight x scale)."""
    plain = {}
    for key, tensor in state.items():
        key = key[len(prefix):]
        if key.endswith((".scale_weight", ".weight_scale", ".comfy_quant", ".input_scale")) or key == "scaled_fp8":
            continue
        module = key.rpartition(".")[0]
        scale = state.get(f"{prefix}{module}.scale_weight", state.get(f"{prefix}{module}.weight_scale"))
        plain[key] = tensor.float() * scale if key.endswith(".weight") and scale is not None else tensor.float()
    reference = SteadyDancerDiT(**COMMUNITY_DIT)
    reference.load_state_dict(plain)
    return reference.eval()


def no_float8_outside_block_linears(loaded: nn.Module) -> None:
    for name, module in loaded.named_modules():
        if isinstance(module, FP8Linear):
            assert name.startswith("blocks."), name
            continue
        for leaf, tensor in module.named_parameters(recurse=False):
            assert tensor.dtype not in FLOAT8, f"{name}.{leaf} is {tensor.dtype}"


# ---- FP8 ------------------------------------------------------------------------------------------

def test_kijai_fp8_file_has_the_real_counts_and_runs_with_pose_linears_dequantised(tmp_path, model) -> None:
    """Issue 14 failure 1: a scaled pose-module linear became an FP8Linear and its input was cast to
    float8 by pose_modules._as (forward: "add_stub" not implemented for Float8_e4m3fn)."""
    path = tmp_path / "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors"
    state = write_kijai_fp8(model, path)
    assert len(state) == KIJAI_FP8_TENSORS and len(model.state_dict()) == RELEASE_MODEL_TENSORS
    loaded = load_fp8_scaled(meta_model(fp8_file_shapes(path)), path, dtype=torch.float32)
    assert sum(isinstance(m, FP8Linear) for m in loaded.modules()) == len(block_linears(model)) == 480
    for name in POSE_LINEARS:
        assert type(loaded.get_submodule(name)) is nn.Linear
        assert loaded.get_submodule(name).weight.dtype == torch.float32
    no_float8_outside_block_linears(loaded)
    with torch.no_grad():
        got = loaded(**inputs())
        want = dequantised_by_hand(state)(**inputs())
        exact = model(**inputs())
    assert rel(got, want) < 1e-5
    assert 0 < rel(got, exact) < 0.1       # e4m3 rounding of every block weight


def test_unscaled_float8_tensors_are_dequantised_outside_block_linears(tmp_path, model) -> None:
    """Issue 14 failure 2: a float8 tensor without a scale (the FAAU's in_proj_weight, an unscaled
    fp8 file) stayed float8 in a plain module (forward: "compute_columns3d" not implemented)."""
    scaled = tmp_path / "in_proj_fp8.safetensors"
    state = write_kijai_fp8(model, scaled, in_proj_fp8=True)
    assert state["condition_embedding_align.cross_attn.in_proj_weight"].dtype == torch.float8_e4m3fn
    unscaled = tmp_path / "unscaled.safetensors"
    write_unscaled_fp8(model, unscaled)
    for path in (scaled, unscaled):
        loaded = load_fp8_scaled(meta_model(fp8_file_shapes(path)), path, dtype=torch.float32)
        no_float8_outside_block_linears(loaded)
        assert loaded.condition_embedding_align.cross_attn.in_proj_weight.dtype == torch.float32
        with torch.no_grad():
            out = loaded(**inputs())
        assert torch.isfinite(out).all()
    # the unscaled file: block linears stay FP8 with scale 1, and mean what the file holds
    loaded = load_fp8_scaled(meta_model(fp8_file_shapes(unscaled)), unscaled, dtype=torch.float32)
    layer = loaded.blocks[0].self_attn.q
    assert isinstance(layer, FP8Linear) and float(layer.scale_weight) == 1.0
    stored = load_file(str(unscaled))
    assert torch.equal(layer.dequantized_weight(torch.float32), stored["blocks.0.self_attn.q.weight"].float())
    patch = stored["patch_embedding.weight"]
    assert patch.dtype == torch.float8_e4m3fn and torch.equal(loaded.patch_embedding.weight, patch.float())
    # float8_e5m2 (Kijai's other fp8 mode): dequantised on load everywhere, the forward runs
    e5m2 = tmp_path / "unscaled_e5m2.safetensors"
    write_unscaled_fp8(model, e5m2, torch.float8_e5m2)
    loaded = load_fp8_scaled(meta_model(fp8_file_shapes(e5m2)), e5m2, dtype=torch.float32)
    assert not any(isinstance(m, FP8Linear) for m in loaded.modules())
    no_float8_outside_block_linears(loaded)
    with torch.no_grad():
        assert torch.isfinite(loaded(**inputs())).all()


@pytest.mark.parametrize("prefix,spelling,comfy_quant", [
    ("model.diffusion_model.", "scale_weight", False), ("model.", "weight_scale", False),
    ("diffusion_model.", "weight_scale", True), ("", "weight_scale", True)])
def test_other_scale_spellings_prefixes_and_comfy_quant_load_the_same_model(tmp_path, model, prefix, spelling,
                                                                          comfy_quant) -> None:
    """Issue 14 failure 3: ``.weight_scale``, ComfyUI's ``comfy_quant`` layout and the ``model.``
    prefix were refused as unexpected keys."""
    reference_path = tmp_path / "kj.safetensors"
    write_kijai_fp8(model, reference_path)
    path = tmp_path / "other.safetensors"
    write_kijai_fp8(model, path, prefix=prefix, scale_suffix=spelling, comfy_quant=comfy_quant,
                    with_marker=not comfy_quant)
    loaded = load_fp8_scaled(meta_model(fp8_file_shapes(path)), path, dtype=torch.float32)
    reference = load_fp8_scaled(meta_model(fp8_file_shapes(reference_path)), reference_path, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs()), reference(**inputs()))


def test_a_scale_applies_to_a_weight_stored_in_16_bits(tmp_path, model) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bf16_head_with_scale.safetensors"
    state = write_kijai_fp8(model, path)
    state["head.head.weight"] = model.head.head.weight.to(torch.bfloat16)
    state["head.head.scale_weight"] = torch.tensor(2.0)
    save_file(state, str(path))
    loaded = load_fp8_scaled(meta_model(fp8_file_shapes(path)), path, dtype=torch.float32)
    assert torch.equal(loaded.head.head.weight, 2 * model.head.head.weight.to(torch.bfloat16).float())


def test_comfy_quant_of_another_format_is_one_line(tmp_path, model) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "nvfp4.safetensors"
    state = write_kijai_fp8(model, path, comfy_quant=True, with_marker=False)
    state["blocks.0.self_attn.q.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(state, str(path))
    with pytest.raises(InputError, match=r"nvfp4\.safetensors: blocks\.0\.self_attn\.q\.comfy_quant says "
                                         r"format 'nvfp4'; only the float8 formats"):
        load_fp8_scaled(meta_model(fp8_file_shapes(path)), path)


# ---- architecture from the tensors (no config.json) -------------------------------------------------

def test_architecture_is_inferred_from_fp8_and_gguf_tensors(tmp_path, model) -> None:
    """Issue 14 failure 5: a GGUF/FP8 file alone could not be used (config.json was required)."""
    fp8 = tmp_path / "kj.safetensors"
    write_kijai_fp8(model, fp8)
    q8 = tmp_path / "q8.gguf"
    write_steadydancer_gguf(model, q8)
    for shapes in (fp8_file_shapes(fp8), gguf_file_shapes(q8)):
        config = infer_dit_config(shapes, "fixture")
        for key, value in COMMUNITY_DIT.items():
            assert config[key] == value, key
        assert config["patch_size"] == (1, 2, 2) and config["align_dim"] == 128
    # the release's shapes give the release's architecture
    with torch.device("meta"):
        release = SteadyDancerDiT(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36)
    config = infer_dit_config({k: tuple(v.shape) for k, v in release.state_dict().items()}, "release")
    assert (config["dim"], config["num_heads"], config["num_layers"], config["ffn_dim"], config["in_dim"],
            config["text_dim"], config["clip_dim"]) == (5120, 40, 40, 13824, 36, 4096, 1280)
    with pytest.raises(InputError, match="cannot infer the DiT's architecture without config.json"):
        infer_dit_config({"blocks.0.ffn.0.weight": (256, 128)}, "x.gguf")


# ---- GGUF -----------------------------------------------------------------------------------------

def test_steadydancer_gguf_layout_loads_and_equals_its_dequantised_weights(tmp_path, model) -> None:
    """Issue 14 failure 4: llama-quantize drops leading size-1 dims, so FAAU's norms [1,128,1,1]
    arrive as (128,1,1) and the strict shape check refused the file; real Wan files hold true 5-D
    F32 tensors without orig_shape metadata."""
    path = tmp_path / "SteadyDancer-Q8_0.gguf"
    stored = write_steadydancer_gguf(model, path, prefix="model.diffusion_model.")
    assert stored["condition_embedding_align.norm1.weight"] == ("F16", (128, 1, 1))
    assert stored["blocks.0.modulation"] == ("F16", (1, 6, 128))
    assert stored["patch_embedding_fuse.weight"] == ("F32", (128, 68, 1, 2, 2))
    assert stored["condition_embedding_temporal.0.spatial.weight"][0] == "F32"
    assert stored["blocks.0.ffn.0.weight"][0] == "Q8_0" and stored["text_embedding.0.weight"][0] == "F16"
    assert stored["condition_embedding_align.cross_attn.in_proj_weight"][0] == "Q8_0"
    reader = gguf.GGUFReader(str(path))
    assert len(reader.tensors) == RELEASE_MODEL_TENSORS
    assert not [f for f in reader.fields if f.startswith("comfy.gguf.orig_shape")]
    loaded = load_gguf(meta_model(gguf_file_shapes(path)), path, dtype=torch.float32)
    assert isinstance(loaded.blocks[0].ffn[0], GGUFLinear)
    assert type(loaded.condition_embedding_align.cross_attn.out_proj) is nn.Linear
    assert loaded.condition_embedding_align.norm1.weight.shape == (1, 128, 1, 1)
    # what the file means, dequantised by the gguf package itself
    plain = {}
    for tensor in reader.tensors:
        name = tensor.name[len("model.diffusion_model."):]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        plain[name] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(model.state_dict()[name].shape)
    reference = SteadyDancerDiT(**COMMUNITY_DIT)
    reference.load_state_dict(plain)
    with torch.no_grad():
        got = loaded(**inputs())
        assert rel(got, reference.eval()(**inputs())) < 1e-5
        assert 0 < rel(got, model(**inputs())) < 0.05


def test_gguf_orig_shape_metadata_read_without_reader_contents(tmp_path, monkeypatch) -> None:
    """Issue 14 failure 4: ``ReaderField.contents()`` does not exist in gguf 0.10, which pyproject allows."""
    from memory_helpers import TINY, tiny_dit
    from steadydancer.models.quant.gguf import save_gguf

    path = tmp_path / "ours.gguf"
    save_gguf(tiny_dit(), path)          # our writer: >4-D tensors flattened + comfy.gguf.orig_shape
    monkeypatch.delattr(gguf.gguf_reader.ReaderField, "contents", raising=False)
    with torch.device("meta"):
        fresh = SteadyDancerDiT(**TINY)
    load_gguf(fresh, path, dtype=torch.float32)
    assert fresh.patch_embedding.weight.dim() == 5


# ---- LoRA ----------------------------------------------------------------------------------------

def test_lightx2v_lora_merges_every_key_and_runs_on_fp8_weights(tmp_path, model) -> None:
    lora = tmp_path / "lightx2v.safetensors"
    state = write_lightx2v_lora(model, lora)
    merged = community_dit()
    assert apply_lora(merged, lora) > 0
    down = state["diffusion_model.blocks.3.cross_attn.k_img.lora_down.weight"].float()
    up = state["diffusion_model.blocks.3.cross_attn.k_img.lora_up.weight"].float()
    want = model.blocks[3].cross_attn.k_img.weight + (8.0 / 4) * up @ down
    assert torch.allclose(merged.blocks[3].cross_attn.k_img.weight, want, atol=1e-6)
    assert torch.allclose(merged.blocks[5].modulation,
                          model.blocks[5].modulation + state["diffusion_model.blocks.5.diff_m"].float())
    assert torch.allclose(merged.head.head.bias, model.head.head.bias + state["diffusion_model.head.head.diff_b"].float())
    assert torch.allclose(merged.blocks[1].norm3.weight,
                          model.blocks[1].norm3.weight + state["diffusion_model.blocks.1.norm3.diff"].float())
    # on FP8 block weights the low-rank path runs at each call
    fp8 = tmp_path / "kj.safetensors"
    fp8_state = write_kijai_fp8(model, fp8)
    loaded = load_fp8_scaled(meta_model(fp8_file_shapes(fp8)), fp8, dtype=torch.float32)
    apply_lora(loaded, lora)
    reference = dequantised_by_hand(fp8_state)
    apply_lora(reference, lora)
    with torch.no_grad():
        assert rel(loaded(**inputs()), reference(**inputs())) < 1e-5
