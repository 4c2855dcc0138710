"""Load and save the DiT in the released checkpoint layout.

Layout (as MCG-NJU/SteadyDancer-14B ships it): ``config.json`` (a diffusers ``WanModel``
config), ``diffusion_pytorch_model-0000N-of-0000M.safetensors`` and
``diffusion_pytorch_model.safetensors.index.json`` (or one ``diffusion_pytorch_model.safetensors``).

Loading builds the model on the meta device and streams tensors one at a time, cast to the
target dtype and moved to the target device as soon as each is read: host memory never holds a
float32 copy of the model, nor a whole shard. We read each tensor's bytes with plain file reads
instead of safetensors' memory map, because pages touched through a map stay in the process's
resident set until the whole file is closed (a 14B shard is ~10 GB).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import struct
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors.torch import save_file

from ..errors import InputError
from ..fileio import atomic_path
from ..progress import progress
from .dit import SteadyDancerDiT

CONFIG_NAME = "config.json"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# checkpoints smaller than this load in well under a second: no progress bar
LOAD_BAR_MIN_BYTES = 256 << 20
SINGLE_NAME = "diffusion_pytorch_model.safetensors"
# What the official WanModel writes into config.json (its other constructor fields are ignored).
OFFICIAL_CONFIG_FIELDS = ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "in_dim_c", "model_type",
                          "num_heads", "num_layers", "out_dim", "text_len")
OFFICIAL_DIFFUSERS_VERSION = "0.42.1"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsEntry:
    """Where one tensor's bytes lie in a .safetensors file."""

    def __init__(self, path: Path, dtype: str, shape: list[int], start: int, end: int):
        self.path, self.dtype, self.shape, self.start, self.end = path, dtype, tuple(shape), start, end


def read_safetensors_header(path: Path) -> dict[str, SafetensorsEntry]:
    """Tensor entries of a .safetensors file, from its JSON header only."""
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > file_size:
                raise ValueError(f"header of {length} bytes in a file of {file_size}")
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise InputError(f"{path}: not a readable .safetensors file ({exc})") from None
    data_start = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise InputError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        itemsize = torch.empty(0, dtype=_SAFETENSORS_DTYPES[info["dtype"]]).element_size()
        if end - begin != itemsize * math.prod(info["shape"]):
            raise InputError(f"{path}: tensor {name} has {end - begin} bytes, expected {info['shape']} "
                             f"{info['dtype']}")
        if data_start + end > file_size:
            raise InputError(f"{path}: file is truncated ({file_size} bytes; tensor {name} ends at byte "
                             f"{data_start + end}); download it again")
        entries[name] = SafetensorsEntry(path, info["dtype"], info["shape"], data_start + begin, data_start + end)
    return entries


def read_safetensors_tensor(handle, entry: SafetensorsEntry, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Read one tensor's bytes into a CPU tensor of its own dtype.

    With ``scratch`` (a uint8 buffer of at least the tensor's byte size) the result is a view of
    it, valid until the next read: reusing one buffer keeps the transient stored-dtype copies from
    fragmenting the heap between the kept (converted) tensors, which otherwise lets peak host
    memory drift towards twice the converted model.
    """
    dtype = _SAFETENSORS_DTYPES[entry.dtype]
    nbytes = entry.end - entry.start
    out = torch.empty(nbytes, dtype=torch.uint8) if scratch is None else scratch[:nbytes]
    handle.seek(entry.start)
    if nbytes and handle.readinto(memoryview(out.numpy())) != nbytes:
        raise InputError(f"{entry.path}: file is truncated")
    return out.view(dtype).reshape(entry.shape)


def index_checkpoint(ckpt_dir: Path) -> dict[str, SafetensorsEntry]:
    """Tensor name -> entry over all shards, checking that every shard named exists."""
    index_path = ckpt_dir / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{index_path}: not a safetensors index with a weight_map ({exc})") from None
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not (ckpt_dir / shard).is_file():
                raise InputError(f"{ckpt_dir}: shard {shard} named in {INDEX_NAME} is missing")
        entries: dict[str, SafetensorsEntry] = {}
        for shard in shards:
            in_shard = read_safetensors_header(ckpt_dir / shard)
            for name, shard_of_name in weight_map.items():
                if shard_of_name == shard and name not in in_shard:
                    raise InputError(f"{ckpt_dir / shard}: tensor {name} listed in {INDEX_NAME} is not in the file")
            entries.update(in_shard)
        return entries
    if (ckpt_dir / SINGLE_NAME).is_file():
        return read_safetensors_header(ckpt_dir / SINGLE_NAME)
    raise InputError(f"{ckpt_dir}: no {INDEX_NAME} or {SINGLE_NAME} (expected the DiT weights)")


def read_dit_config(ckpt_dir: str | os.PathLike) -> dict:
    """The constructor arguments of the checkpoint's DiT from its config.json (defaults = official)."""
    path = Path(ckpt_dir) / CONFIG_NAME
    if not path.is_file():
        raise InputError(f"{path}: missing (expected the DiT's config.json)")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object")
    known = set(inspect.signature(SteadyDancerDiT.__init__).parameters) - {"self"}
    return {k: v for k, v in raw.items() if k in known}


def _shape(value) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", value))


def _shapes_from_tensors(tensors: Mapping[str, object]) -> dict:
    """Widths the config does not carry, read from tensor shapes (so tiny encoders load too).

    ``tensors``: name -> SafetensorsEntry or shape tuple (torch order)."""
    found = {}
    if "text_embedding.0.weight" in tensors:
        found["text_dim"] = _shape(tensors["text_embedding.0.weight"])[1]
    if "img_emb.proj.0.weight" in tensors:
        found["clip_dim"] = _shape(tensors["img_emb.proj.0.weight"])[0]
    if "condition_embedding_align.proj_p.weight" in tensors:
        found["align_dim"] = _shape(tensors["condition_embedding_align.proj_p.weight"])[0]
    if "patch_embedding.weight" in tensors:
        patch = _shape(tensors["patch_embedding.weight"])[2:]
        if len(patch) == 3:  # a GGUF file may hold it flattened; then the config's value stands
            found["patch_size"] = patch
    return found


# Wan 2.1 uses 128 channels per attention head in every size (1.3B: 1536 / 12, 14B: 5120 / 40);
# the tensors do not record the head count, so without config.json it is dim / 128, as Kijai's
# WanVideoWrapper and ComfyUI assume for the sizes they know.
WAN_HEAD_DIM = 128


def infer_dit_config(tensors: Mapping[str, object], source: str) -> dict:
    """The DiT's constructor arguments from its tensor shapes alone (no config.json).

    ``tensors``: official tensor name -> SafetensorsEntry or torch-order shape. ``source`` names
    the file in errors. Fields no tensor carries take Wan 2.1's values: text_len 512, eps 1e-6,
    ``num_heads = dim / 128``. InputError when a tensor the inference needs is missing.
    """
    needed = ("patch_embedding.weight", "patch_embedding_ref_c.weight", "time_embedding.0.weight",
              "head.head.weight", "blocks.0.ffn.0.weight")
    absent = [name for name in needed if name not in tensors]
    if absent:
        raise InputError(f"{source}: cannot infer the DiT's architecture without config.json "
                         f"(no {', '.join(absent)}); is it a SteadyDancer DiT?")
    patch_weight = _shape(tensors["patch_embedding.weight"])
    dim, in_dim = patch_weight[0], patch_weight[1]
    if dim % WAN_HEAD_DIM:
        raise InputError(f"{source}: width {dim} is not a multiple of Wan's {WAN_HEAD_DIM}-channel heads, "
                         f"so the head count cannot be inferred; put the model's config.json in --ckpt_dir")
    config = {
        "model_type": "i2v", "dim": dim, "in_dim": in_dim, "num_heads": dim // WAN_HEAD_DIM,
        "in_dim_c": _shape(tensors["patch_embedding_ref_c.weight"])[1],
        "freq_dim": _shape(tensors["time_embedding.0.weight"])[1],
        "ffn_dim": _shape(tensors["blocks.0.ffn.0.weight"])[0],
        "num_layers": len({name.split(".")[1] for name in tensors if name.startswith("blocks.")}),
        "text_len": 512, "eps": 1e-6,
    }
    config.update(_shapes_from_tensors(tensors))
    patch = config.get("patch_size", (1, 2, 2))
    config["out_dim"] = _shape(tensors["head.head.weight"])[0] // math.prod(patch)
    return config


def assign_tensor(module: torch.nn.Module, leaf: str, value: torch.Tensor) -> None:
    """Put ``value`` in place of ``module``'s parameter (frozen) or buffer named ``leaf``."""
    if leaf in module._parameters:
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise KeyError(f"{type(module).__name__} has no parameter or buffer {leaf!r}")


def build_meta_dit(ckpt_dir: str | os.PathLike, tensors: Mapping[str, object] | None = None,
                   source: str | os.PathLike | None = None) -> SteadyDancerDiT:
    """The DiT on the meta device.

    With ``config.json`` in ``ckpt_dir``: its fields plus the widths that ``tensors`` (name ->
    SafetensorsEntry or shape, e.g. :func:`index_checkpoint`) carry; None: the config alone.
    Without it: the architecture inferred from ``tensors`` (a GGUF or FP8 file standing in for
    the shards; ``source`` names that file in errors). InputError for a config the DiT refuses.
    """
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / CONFIG_NAME).is_file() or tensors is None:
        config = read_dit_config(ckpt_dir)
        if tensors is not None:
            config.update(_shapes_from_tensors(tensors))
        origin = ckpt_dir / CONFIG_NAME
    else:
        origin = source or ckpt_dir
        config = infer_dit_config(tensors, str(origin))
    try:
        with torch.device("meta"):
            return SteadyDancerDiT(**config)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{origin}: {exc}") from None


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _block_index(name: str) -> int | None:
    """3 for ``blocks.3.self_attn.q.weight``; None for tensors outside the transformer blocks."""
    if not name.startswith("blocks."):
        return None
    return int(name.split(".", 2)[1])


def load_dit(ckpt_dir: str | os.PathLike, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.bfloat16,
             on_block_loaded: Callable[[torch.nn.Module], None] | None = None) -> SteadyDancerDiT:
    """Load the DiT of a checkpoint folder, tensor by tensor, straight to ``device`` in ``dtype``.

    ``on_block_loaded(block)`` is called on each transformer block as soon as its last tensor is
    in (it may change the block in place: quantise it, move it), so a transform of the blocks
    never needs the whole model in ``dtype`` at once.

    Returns the model in eval mode with requires_grad off. Raises InputError (one line) for a
    missing folder, config, index or shard, and for missing/unexpected tensors or wrong shapes.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise InputError(f"{ckpt_dir}: checkpoint folder not found")
    entries = index_checkpoint(ckpt_dir)
    model = build_meta_dit(ckpt_dir, entries)

    expected = dict(model.named_parameters())
    expected.update(model.named_buffers())
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    if missing:
        raise InputError(f"{ckpt_dir}: missing tensors {_short_list(missing)}")
    if unexpected:
        raise InputError(f"{ckpt_dir}: unexpected tensors {_short_list(unexpected)}")
    for name, tensor in expected.items():
        if tuple(tensor.shape) != entries[name].shape:
            raise InputError(f"{ckpt_dir}: tensor {name} has shape {list(entries[name].shape)}, "
                             f"expected {list(tensor.shape)} from config.json")

    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(entries[name].path, []).append(name)
    pending: dict[int, int] = {}  # block index -> tensors still to read
    for name in expected:
        index = _block_index(name)
        if index is not None:
            pending[index] = pending.get(index, 0) + 1
    scratch = torch.empty(max(e.end - e.start for e in entries.values()), dtype=torch.uint8)
    total_bytes = sum(entries[name].end - entries[name].start for name in expected)
    bar = progress(total=total_bytes, desc="load DiT", unit="B", unit_scale=True, unit_divisor=1024,
                   disable=total_bytes < LOAD_BAR_MIN_BYTES)
    for path, names in by_file.items():
        names.sort(key=lambda n: entries[n].start)  # sequential reads
        with open(path, "rb", buffering=0) as handle:
            for name in names:
                # copy=True: the read is a view of the scratch buffer, even when no cast is needed
                value = read_safetensors_tensor(handle, entries[name], scratch).to(device=device, dtype=dtype, copy=True)
                bar.update(entries[name].end - entries[name].start)
                owner, _, leaf = name.rpartition(".")
                # looked up each time (not from a dict built up front): a hook may have replaced
                # the modules of a finished block, and a stale reference would keep their tensors
                assign_tensor(model.get_submodule(owner), leaf, value)
                index = _block_index(name)
                if index is not None:
                    pending[index] -= 1
                    if pending[index] == 0 and on_block_loaded is not None:
                        on_block_loaded(model.blocks[index])
    bar.close()
    return model.eval().requires_grad_(False)


def official_config(model: SteadyDancerDiT) -> dict:
    """config.json contents as the official WanModel writes them."""
    config = {"_class_name": "WanModel", "_diffusers_version": OFFICIAL_DIFFUSERS_VERSION}
    config.update({k: model.config[k] for k in OFFICIAL_CONFIG_FIELDS})
    return config


def save_dit_checkpoint(model: SteadyDancerDiT, out_dir: str | os.PathLike, num_shards: int = 1,
                        tensor_source: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> Path:
    """Write ``model`` in the released layout (config.json, N shards, index) into ``out_dir``.

    Tensors keep their dtype and are split into ``num_shards`` shards of similar size in
    state_dict order. Other files in ``out_dir`` (encoders, tokenizers) are left alone; DiT
    shards of an earlier save are replaced. Each file is written atomically, shards first and
    config.json last, so an interrupted save never looks complete. Widths the official config
    omits (text_dim, CLIP width) are carried by the tensor shapes, which :func:`load_dit` reads.

    ``tensor_source(name, tensor)`` gives the CPU tensor to write for each entry of the state dict,
    one shard at a time (default: the model's own); with it ``model`` may live on the meta device,
    e.g. to write random weights of a model larger than host memory.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if tensor_source is None:
        tensor_source = lambda name, tensor: tensor.detach().to("cpu").contiguous()  # noqa: E731
    state = dict(model.state_dict())
    total = sum(t.numel() * t.element_size() for t in state.values())
    count = max(1, min(num_shards, len(state)))
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    written, shard = 0, -1
    for i, (name, tensor) in enumerate(state.items()):
        # Fill shard k until the running total passes (k+1)/N of the bytes, never skipping a
        # shard and leaving at least one tensor for each shard still to come.
        by_size = min(count - 1, written * count // max(total, 1))
        shard = min(shard + 1, max(shard, by_size, count - (len(state) - i)))
        shards[shard][name] = tensor
        written += tensor.numel() * tensor.element_size()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_NAME).unlink(missing_ok=True)  # the folder is incomplete until the end
    weight_map = {}
    filenames = []
    for i, shard in enumerate(shards):
        filename = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        with atomic_path(out_dir / filename) as tmp:
            save_file({name: tensor_source(name, tensor) for name, tensor in shard.items()}, str(tmp),
                      metadata={"format": "pt"})
        weight_map.update({name: filename for name in shard})
        filenames.append(filename)
    for stale in out_dir.glob("diffusion_pytorch_model*.safetensors"):
        if stale.name not in filenames:
            stale.unlink()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with atomic_path(out_dir / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n")
    with atomic_path(out_dir / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(official_config(model), indent=2, sort_keys=True) + "\n")
    return out_dir
