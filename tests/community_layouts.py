"""Small files in the layouts of the community SteadyDancer weights, for the loader tests.

None of the real files can be downloaded here, so each writer below imitates one layout from what
the code that makes or loads it says; every layout fact carries a comment naming its source. The
model is tiny (width 128 = one Wan head of 128 channels, FFN 256) but has the release's 40 blocks,
so the tensor counts are the real ones (1345 model tensors).

    python tests/community_layouts.py OUT_DIR      # writes every fixture into OUT_DIR
    python tests/community_layouts.py --accuracy   # each layout's output error vs float32 (docs/weights.md)

Sources (read with the project's code-search tools, not copied):
  [KJ-LOAD]  kijai/ComfyUI-WanVideoWrapper nodes_model_loading.py: strips ``model.diffusion_model.``
             or ``model.`` from the keys, renames ``.weight_scale`` -> ``.scale_weight``, detects a
             scaled file by the ``scaled_fp8`` key or any ``.scale_weight``, infers dim / in_dim from
             patch_embedding.weight, ffn_dim from blocks.0.ffn.0, heads from dim (5120 -> 40).
  [COMFY-Q]  ComfyUI native quantised checkpoints (as read by WanVideoWrapper comfy_quant_linear.py
             and other loaders): per layer ``<name>.weight`` float8, ``<name>.weight_scale`` float32,
             ``<name>.comfy_quant`` uint8 bytes of JSON ``{"format": "float8_e4m3fn"}``, optional
             ``<name>.input_scale``.
  [COMFY-OPS] ComfyUI scaled_fp8 ops: the ``scaled_fp8`` marker is an empty float8 tensor; the
             per-layer ``scale_weight`` is a float32 scalar.
  [ISSUE-14] the count of the Kijai SteadyDancer file: 1834 tensors = 1345 model tensors + 480
             block-linear scales + the marker + 8 more scales, most likely of pose-module weights
             (which 8 is not known: we scale the five pose-module linears and three SSAE 1x1 convs).
  [GGUF-CONV] city96/ComfyUI-GGUF tools/convert.py: prefixes ``model.diffusion_model.``/``model.``
             stripped; arch "wan" (keys blocks.0.self_attn.norm_q.weight, text_embedding.2.weight,
             head.modulation); source F16 (SteadyDancer-GGUF was made from Kijai's fp16 file) ->
             every tensor F16 (the F32 rules apply only to f32/bf16 sources); tensors of more than 4
             dims are set aside (handle_nd_tensor) and the file written without them; Wan has no
             shape_fix, so no ``comfy.gguf.orig_shape`` metadata.
  [LCPP]     city96/ComfyUI-GGUF tools/lcpp.patch (llama-quantize): for LLM_ARCH_WAN no tensor whose
             name contains modulation., patch_embedding., text_embedding., time_projection.,
             time_embedding., img_emb. or head. is quantised; only tensors of >= 2 dims are; a row
             (ne[0], the innermost dim) not divisible by the block size falls back to F16; a tensor
             is written with ggml's n_dims, which drops trailing (ggml order) size-1 dims, restored
             to 3 dims only for names containing ``.modulation``.
  [GGUF-5D]  city96/ComfyUI-GGUF tools/fix_5d_tensors.py: the set-aside 5-D tensors are added back
             after quantisation as plain F32 tensors with their 5 dims.
  [DIFF-LORA] diffusers lora_conversion_utils._convert_non_diffusers_wan_lora_to_diffusers and
             [KJ-LOAD] standardize_lora_key_format: lightx2v / Wan LoRAs carry ``diffusion_model.``
             keys, ``lora_down``/``lora_up`` (+ ``alpha``) for the block linears, head.head,
             text/time embeddings, time_projection.1 and img_emb.proj.1/3; ``diff_b`` bias deltas;
             ``.diff``/``.diff_b`` for norms; ``blocks.N.diff_m`` is the block's modulation delta.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from steadydancer.models.dit import SteadyDancerDiT
from steadydancer.models.quant.fp8 import FP8_DTYPE, FP8_MAX

# One 128-channel head (Wan's head width, so the architecture can be inferred without config.json),
# the release's 40 blocks, and the tiny encoders' widths (steadydancer.pipeline.tiny).
COMMUNITY_DIT = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=40, freq_dim=256, in_dim=36, in_dim_c=16,
                     out_dim=16, text_len=512, text_dim=32, clip_dim=64)
RELEASE_MODEL_TENSORS = 1345          # the 14B release's state dict (40 blocks x 32 + 65)
KIJAI_FP8_TENSORS = 1834              # [ISSUE-14]
POSE_LINEARS = ("condition_embedding_spatial.fc.0", "condition_embedding_spatial.fc.1.fc.0",
                "condition_embedding_spatial.fc_phi", "condition_embedding_spatial.fc_scale",
                "condition_embedding_align.cross_attn.out_proj")
POSE_CONVS = ("condition_embedding_spatial.conv", "condition_embedding_spatial.conv_q",
              "condition_embedding_spatial.conv_p")
KIJAI_EXTRA_SCALED = POSE_LINEARS + POSE_CONVS   # [ISSUE-14]: 8 scales beyond the blocks; our guess


def community_dit(seed: int = 0, num_layers: int = COMMUNITY_DIT["num_layers"]) -> SteadyDancerDiT:
    """The fixtures' DiT in float32, every weight non-zero (so each one matters to the output).
    Fewer ``num_layers`` for end-to-end runs, where 40 blocks over thousands of tokens are slow."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SteadyDancerDiT(**{**COMMUNITY_DIT, "num_layers": num_layers})
        with torch.no_grad():
            for param in model.parameters():
                if param.abs().max() == 0:
                    param.normal_(0.0, 0.02)
    return model.eval()


def block_linears(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and name.startswith("blocks.")]


def _quantise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn weight and its float32 scalar scale (amax / 448)."""
    scale = weight.float().abs().amax().clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale.reshape(())


def write_kijai_fp8(model: nn.Module, path: Path, prefix: str = "", scale_suffix: str = "scale_weight",
                    extra_scaled: tuple[str, ...] = KIJAI_EXTRA_SCALED, in_proj_fp8: bool = False,
                    comfy_quant: bool = False, with_marker: bool = True) -> dict[str, torch.Tensor]:
    """A Kijai / ComfyUI ``*_fp8_e4m3fn_scaled`` file of ``model``; returns what was written.

    Block linears and ``extra_scaled`` modules: float8 weight + float32 scalar scale
    ([COMFY-OPS]) spelled ``scale_suffix`` ([KJ-LOAD]: ``scale_weight`` or ``weight_scale``); with
    ``comfy_quant`` each also gets the JSON descriptor and an input scale ([COMFY-Q]). Norms and
    modulation in float32, other tensors bf16 (our assumption). ``in_proj_fp8``: the FAAU's
    in_proj_weight stored float8 without a scale (it has no module of its own to carry one).
    """
    from safetensors.torch import save_file

    state = {}
    quantised = set(block_linears(model)) | set(extra_scaled)
    for name, tensor in model.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if module in quantised and leaf == "weight":
            weight, scale = _quantise(tensor)
            state[prefix + name] = weight
            state[f"{prefix}{module}.{scale_suffix}"] = scale
            if comfy_quant:
                descriptor = json.dumps({"format": "float8_e4m3fn"}).encode()
                state[f"{prefix}{module}.comfy_quant"] = torch.tensor(list(descriptor), dtype=torch.uint8)
                state[f"{prefix}{module}.input_scale"] = torch.ones((), dtype=torch.float32)
        elif in_proj_fp8 and name.endswith("in_proj_weight"):
            state[prefix + name] = tensor.float().clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        elif "norm" in name or "modulation" in name:
            state[prefix + name] = tensor.float().contiguous()
        else:
            state[prefix + name] = tensor.to(torch.bfloat16).contiguous()
    if with_marker:
        state[prefix + "scaled_fp8"] = torch.empty(0, dtype=FP8_DTYPE)     # [COMFY-OPS]
    save_file(state, str(path), metadata={"format": "pt"})
    return state


def write_unscaled_fp8(model: nn.Module, path: Path, dtype: torch.dtype = FP8_DTYPE) -> None:
    """An unscaled fp8 file ([KJ-LOAD] "fp8_e4m3fn" / "fp8_e5m2" without ``scaled``): every >= 2-D
    weight except norms and modulation cast straight to ``dtype``, no scales, no marker."""
    from safetensors.torch import save_file

    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.dim() >= 2 and "norm" not in name and "modulation" not in name:
            state[name] = tensor.float().clamp(-FP8_MAX, FP8_MAX).to(dtype)
        else:
            state[name] = tensor.to(torch.bfloat16).contiguous()
    save_file(state, str(path), metadata={"format": "pt"})


# ---- GGUF -------------------------------------------------------------------------------------

_WAN_UNQUANTISED = ("modulation.", "patch_embedding.", "text_embedding.", "time_projection.",
                    "time_embedding.", "img_emb.", "head.")                           # [LCPP]


def _ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims of a torch-order shape: trailing size-1 dims in ggml order (= leading in torch
    order) do not count, at least 1."""
    ne = list(reversed(shape))
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return n


def write_steadydancer_gguf(model: nn.Module, path: Path, qtype_name: str = "Q8_0",
                            prefix: str = "") -> dict[str, tuple[str, tuple[int, ...]]]:
    """MCG-NJU/SteadyDancer-GGUF as convert.py + llama-quantize + fix_5d_tensors.py make it.

    Returns {name: (GGML type, stored torch-order shape)} for the checks.
    """
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(str(path), arch="wan")                                 # [GGUF-CONV]
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype_name == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0)
    stored: dict[str, tuple[str, tuple[int, ...]]] = {}
    set_aside = {}
    for name, tensor in model.state_dict().items():
        array = tensor.detach().to(torch.float16).numpy()                          # [GGUF-CONV] F16 source
        if array.ndim > 4:
            set_aside[name] = tensor.detach().float().numpy()                     # [GGUF-CONV] handle_nd_tensor
            continue
        n_dims = _ggml_n_dims(array.shape)
        if ".modulation" in prefix + name and n_dims < 3 and array.ndim == 3:
            n_dims = 3                                                              # [LCPP] Wan fix
        shape = tuple(array.shape[array.ndim - n_dims:])                            # [LCPP] squeezed
        array = array.reshape(shape)
        quantise = (n_dims >= 2 and name.endswith("weight")
                    and not any(part in name for part in _WAN_UNQUANTISED)
                    and shape[-1] % block_size == 0)                               # [LCPP] row fallback
        if quantise:
            writer.add_tensor(prefix + name, gguf.quants.quantize(array.astype(np.float32), qtype), raw_dtype=qtype)
            stored[name] = (qtype_name, shape)
        else:
            writer.add_tensor(prefix + name, array)
            stored[name] = ("F16", shape)
    for name, array in set_aside.items():                                           # [GGUF-5D]
        writer.add_tensor(prefix + name, array)
        stored[name] = ("F32", tuple(array.shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


# ---- LoRA -------------------------------------------------------------------------------------

def write_lightx2v_lora(model: nn.Module, path: Path, rank: int = 4, alpha: float = 8.0,
                        seed: int = 1) -> dict[str, torch.Tensor]:
    """A lightx2v-style Wan I2V LoRA ([DIFF-LORA]) for ``model``: ``diffusion_model.`` keys,
    lora_down/lora_up/alpha on every block linear and on head.head, text/time embeddings,
    time_projection.1, img_emb.proj.1/3; diff_b on their biases; norm3 diff/diff_b, the q/k
    RMS norms' diff, and blocks.N.diff_m. bf16 tensors, alpha float32 scalar."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)  # noqa: E731
    modules = dict(model.named_modules())
    targets = block_linears(model) + ["head.head", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                                      "time_embedding.2", "time_projection.1", "img_emb.proj.1", "img_emb.proj.3"]
    state = {}
    for name in targets:
        linear = modules[name]
        state[f"diffusion_model.{name}.lora_down.weight"] = randn(rank, linear.in_features)
        state[f"diffusion_model.{name}.lora_up.weight"] = randn(linear.out_features, rank)
        state[f"diffusion_model.{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
        state[f"diffusion_model.{name}.diff_b"] = randn(linear.out_features)
    for index, block in enumerate(model.blocks):
        state[f"diffusion_model.blocks.{index}.norm3.diff"] = randn(block.norm3.weight.numel())
        state[f"diffusion_model.blocks.{index}.norm3.diff_b"] = randn(block.norm3.bias.numel())
        for norm in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k"):
            state[f"diffusion_model.blocks.{index}.{norm}.diff"] = randn(block.self_attn.norm_q.weight.numel())
        state[f"diffusion_model.blocks.{index}.diff_m"] = randn(*block.modulation.shape)
    save_file(state, str(path))
    return state


def dit_inputs(seed: int = 1, frames: int = 2, h: int = 4, w: int = 4) -> dict[str, torch.Tensor]:
    """Random inputs of the fixture DiT (B = 1, 2 latent frames, 4x4 latent)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return dict(latents=rand(1, 16, frames, h, w), timestep=torch.tensor([500.0]),
                text_context=rand(1, 7, COMMUNITY_DIT["text_dim"]), clip_image=rand(1, 5, COMMUNITY_DIT["clip_dim"]),
                clip_pose=rand(1, 5, COMMUNITY_DIT["clip_dim"]), image_cond=rand(1, 20, frames, h, w),
                pose_latents=rand(1, 16, frames, h, w), ref_image=rand(1, 36, 1, h, w),
                ref_pose=rand(1, 36, 1, h, w))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def accuracy_report(out_dir: Path) -> list[str]:
    """One line per layout: relative error of the fixture DiT's output vs float32, file size."""
    from steadydancer.models.loading import build_meta_dit
    from steadydancer.models.quant.fp8 import fp8_file_shapes, load_fp8_scaled
    from steadydancer.models.quant.gguf import gguf_file_shapes, load_gguf

    out_dir.mkdir(parents=True, exist_ok=True)
    model = community_dit()
    lines = []
    with torch.no_grad():
        exact = model(**dit_inputs())
        fp8 = out_dir / "kj.safetensors"
        write_kijai_fp8(model, fp8)
        for dtype in (torch.float32, torch.bfloat16):
            loaded = load_fp8_scaled(build_meta_dit(out_dir / "none", fp8_file_shapes(fp8)), fp8, dtype=dtype)
            args = {k: v.to(dtype) if k != "timestep" else v for k, v in dit_inputs().items()}
            lines.append(f"FP8 e4m3 scaled (Kijai layout), {str(dtype)[6:]} compute: "
                         f"{rel(loaded(**args), exact):.4f}  ({fp8.stat().st_size / 2**20:.1f} MiB)")
        for qtype in ("Q8_0", "Q4_0"):
            path = out_dir / f"{qtype}.gguf"
            write_steadydancer_gguf(model, path, qtype)
            loaded = load_gguf(build_meta_dit(out_dir / "none", gguf_file_shapes(path)), path, dtype=torch.float32)
            lines.append(f"GGUF {qtype} (converter layout), float32 compute: {rel(loaded(**dit_inputs()), exact):.4f}"
                         f"  ({path.stat().st_size / 2**20:.1f} MiB)")
    return lines


def write_all(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = community_dit()
    write_kijai_fp8(model, out_dir / "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors")
    write_kijai_fp8(model, out_dir / "comfy_quant_fp8.safetensors", prefix="model.diffusion_model.",
                    scale_suffix="weight_scale", comfy_quant=True, with_marker=False)
    write_unscaled_fp8(model, out_dir / "unscaled_fp8_e4m3fn.safetensors")
    write_steadydancer_gguf(model, out_dir / "SteadyDancer-Q8_0.gguf")
    write_lightx2v_lora(model, out_dir / "lightx2v_lora_rank4.safetensors")


if __name__ == "__main__":
    if sys.argv[1:] == ["--accuracy"]:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            print("\n".join(accuracy_report(Path(scratch))))
    else:
        write_all(Path(sys.argv[1]))
