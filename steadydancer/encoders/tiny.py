"""Writers of tiny random-weight encoder files in the official layout and tensor names.

They let tests and demos run the whole pipeline offline in seconds: every file loads through
the very same code path as the release files (architecture read from shapes plus the release
constants, no arch.json). Defaults give a few MB in all:

- ``write_tiny_t5``: umT5 encoder, bf16 (as the release file), width 32, vocab = the tiny
  tokenizer's (``TINY_VOCAB``).
- ``write_tiny_clip``: vision tower at the release 224 px / patch 14 (257 tokens), width 64 with
  the release 16 heads (the loader takes 16 when no arch.json says otherwise), plus a
  one-block text tower so that the file has the official layout.
- ``write_tiny_vae``: Wan 2.1 VAE layout (multipliers 1,2,4,4, two residual blocks per level,
  temporal downsampling in the last two levels, 16 latent channels) at base width 4.
- ``write_tiny_tokenizers``: ``google/umt5-xxl/`` and ``xlm-roberta-large/`` folders with small
  BPE tokenizers trained locally on English text and Wan's Chinese negative prompt.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
from pathlib import Path

import torch

from ..fileio import atomic_dir, atomic_path

TINY_VOCAB = 384
# The default negative prompt of the SteadyDancer I2V config (Wan's, with the camera-shake prefix):
# the tiny tokenizers are trained on it so that it splits into real tokens, not <unk>.
_NEGATIVE_PROMPT = ("镜头晃动，色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，"
                    "最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，"
                    "畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
_ENGLISH = ("A person dances in a bright studio, full body, smooth natural motion, the camera is still. "
            "A woman and a man wearing a dress, shirt, jeans and shoes are dancing on the street.")


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _save(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
    return path


def write_tiny_t5(path: str | os.PathLike, vocab: int = TINY_VOCAB, dim: int = 32, dim_ffn: int = 64,
                  num_heads: int = 4, num_layers: int = 2, num_buckets: int = 32, seed: int = 0) -> Path:
    """Tiny umT5 encoder as ``models_t5_umt5-xxl-enc-bf16.pth`` (bf16, official names)."""
    state: dict[str, torch.Tensor] = {}
    with _seeded(seed):
        state["token_embedding.weight"] = torch.randn(vocab, dim)
        for i in range(num_layers):
            p = f"blocks.{i}."
            state[p + "norm1.weight"] = 1 + 0.1 * torch.randn(dim)
            for name in ("q", "k", "v"):
                state[p + f"attn.{name}.weight"] = torch.randn(dim, dim) * dim ** -0.5 * (0.5 if name == "q" else 1)
            state[p + "attn.o.weight"] = torch.randn(dim, dim) * dim ** -0.5
            state[p + "norm2.weight"] = 1 + 0.1 * torch.randn(dim)
            state[p + "ffn.gate.0.weight"] = torch.randn(dim_ffn, dim) * dim ** -0.5
            state[p + "ffn.fc1.weight"] = torch.randn(dim_ffn, dim) * dim ** -0.5
            state[p + "ffn.fc2.weight"] = torch.randn(dim, dim_ffn) * dim_ffn ** -0.5
            state[p + "pos_embedding.embedding.weight"] = torch.randn(num_buckets, num_heads) * 0.5
        state["norm.weight"] = 1 + 0.1 * torch.randn(dim)
    return _save({k: v.to(torch.bfloat16) for k, v in state.items()}, path)


def write_tiny_clip(path: str | os.PathLike, vision_dim: int = 64, vision_layers: int = 2,
                    image_size: int = 224, patch_size: int = 14, embed_dim: int = 32,
                    text_dim: int = 32, text_vocab: int = TINY_VOCAB, max_text_len: int = 32,
                    seed: int = 0) -> Path:
    """Tiny XLM-RoBERTa CLIP (vision + text towers, float32, official names).

    ``vision_dim`` must be a multiple of 16, the release head count that the loader
    assumes without an arch.json. Output features: [B, (image_size/patch)^2 + 1, vision_dim].
    """
    if vision_dim % 16:
        raise ValueError("vision_dim must be a multiple of 16 (the release head count)")
    tokens = (image_size // patch_size) ** 2 + 1
    mlp = 4 * vision_dim
    state: dict[str, torch.Tensor] = {}
    with _seeded(seed):
        gain = vision_dim ** -0.5
        state["log_scale"] = torch.tensor(2.6593)
        state["visual.cls_embedding"] = gain * torch.randn(1, 1, vision_dim)
        state["visual.pos_embedding"] = gain * torch.randn(1, tokens, vision_dim)
        state["visual.head"] = gain * torch.randn(vision_dim, embed_dim)
        state["visual.patch_embedding.weight"] = torch.randn(vision_dim, 3, patch_size, patch_size) * (
            3 * patch_size * patch_size) ** -0.5
        state["visual.pre_norm.weight"] = torch.ones(vision_dim)
        state["visual.pre_norm.bias"] = torch.zeros(vision_dim)
        for i in range(vision_layers):
            p = f"visual.transformer.{i}."
            state[p + "norm1.weight"] = 1 + 0.1 * torch.randn(vision_dim)
            state[p + "norm1.bias"] = 0.1 * torch.randn(vision_dim)
            state[p + "attn.to_qkv.weight"] = torch.randn(3 * vision_dim, vision_dim) * gain
            state[p + "attn.to_qkv.bias"] = 0.1 * torch.randn(3 * vision_dim)
            state[p + "attn.proj.weight"] = torch.randn(vision_dim, vision_dim) * gain
            state[p + "attn.proj.bias"] = 0.1 * torch.randn(vision_dim)
            state[p + "norm2.weight"] = 1 + 0.1 * torch.randn(vision_dim)
            state[p + "norm2.bias"] = 0.1 * torch.randn(vision_dim)
            state[p + "mlp.0.weight"] = torch.randn(mlp, vision_dim) * gain
            state[p + "mlp.0.bias"] = 0.1 * torch.randn(mlp)
            state[p + "mlp.2.weight"] = torch.randn(vision_dim, mlp) * mlp ** -0.5
            state[p + "mlp.2.bias"] = 0.1 * torch.randn(vision_dim)
        state["visual.post_norm.weight"] = torch.ones(vision_dim)
        state["visual.post_norm.bias"] = torch.zeros(vision_dim)
        # Text tower (unused by the pipeline; present because the official file has it).
        t = "textual."
        state[t + "token_embedding.weight"] = 0.02 * torch.randn(text_vocab, text_dim)
        state[t + "type_embedding.weight"] = 0.02 * torch.randn(1, text_dim)
        state[t + "pos_embedding.weight"] = 0.02 * torch.randn(max_text_len, text_dim)
        b = t + "blocks.0."
        for name in ("q", "k", "v", "o"):
            state[b + f"attn.{name}.weight"] = 0.02 * torch.randn(text_dim, text_dim)
            state[b + f"attn.{name}.bias"] = torch.zeros(text_dim)
        state[b + "norm1.weight"], state[b + "norm1.bias"] = torch.ones(text_dim), torch.zeros(text_dim)
        state[b + "ffn.0.weight"] = 0.02 * torch.randn(4 * text_dim, text_dim)
        state[b + "ffn.0.bias"] = torch.zeros(4 * text_dim)
        state[b + "ffn.2.weight"] = 0.02 * torch.randn(text_dim, 4 * text_dim)
        state[b + "ffn.2.bias"] = torch.zeros(text_dim)
        state[b + "norm2.weight"], state[b + "norm2.bias"] = torch.ones(text_dim), torch.zeros(text_dim)
        state[t + "norm.weight"], state[t + "norm.bias"] = torch.ones(text_dim), torch.zeros(text_dim)
        mid = (text_dim + embed_dim) // 2
        state[t + "head.0.weight"] = 0.02 * torch.randn(mid, text_dim)
        state[t + "head.2.weight"] = 0.02 * torch.randn(embed_dim, mid)
    return _save(state, path)


def official_vae_keys(dim: int, z_dim: int = 16, dim_mult: tuple[int, ...] = (1, 2, 4, 4),
                      num_res_blocks: int = 2,
                      temperal_downsample: tuple[bool, ...] = (False, True, True)) -> list[str]:
    """Tensor names of the official WanVAE_ (no attention in the down/up blocks)."""
    def residual(prefix: str, in_dim: int, out_dim: int) -> list[str]:
        names = [prefix + n for n in ("residual.0.gamma", "residual.2.weight", "residual.2.bias",
                                      "residual.3.gamma", "residual.6.weight", "residual.6.bias")]
        if in_dim != out_dim:
            names += [prefix + "shortcut.weight", prefix + "shortcut.bias"]
        return names

    def middle(part: str, width: int) -> list[str]:
        return (residual(f"{part}.middle.0.", width, width)
                + [f"{part}.middle.1.{n}" for n in ("norm.gamma", "to_qkv.weight", "to_qkv.bias",
                                                     "proj.weight", "proj.bias")]
                + residual(f"{part}.middle.2.", width, width))

    def head(part: str) -> list[str]:
        return [f"{part}.head.0.gamma", f"{part}.head.2.weight", f"{part}.head.2.bias"]

    levels = len(dim_mult)
    keys = ["encoder.conv1.weight", "encoder.conv1.bias"]
    dims = [dim * m for m in (1, *dim_mult)]
    index = 0
    for level in range(levels):
        in_dim = dims[level]
        for _ in range(num_res_blocks):
            keys += residual(f"encoder.downsamples.{index}.", in_dim, dims[level + 1])
            in_dim = dims[level + 1]
            index += 1
        if level != levels - 1:
            keys += [f"encoder.downsamples.{index}.resample.1.weight", f"encoder.downsamples.{index}.resample.1.bias"]
            if temperal_downsample[level]:
                keys += [f"encoder.downsamples.{index}.time_conv.weight",
                         f"encoder.downsamples.{index}.time_conv.bias"]
            index += 1
    keys += middle("encoder", dims[-1]) + head("encoder")
    keys += ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
             "decoder.conv1.weight", "decoder.conv1.bias"]
    dims_up = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
    keys += middle("decoder", dims_up[0])
    temperal_upsample = tuple(temperal_downsample)[::-1]
    index = 0
    for level in range(levels):
        in_dim = dims_up[level] // 2 if level > 0 else dims_up[level]
        for _ in range(num_res_blocks + 1):
            keys += residual(f"decoder.upsamples.{index}.", in_dim, dims_up[level + 1])
            in_dim = dims_up[level + 1]
            index += 1
        if level != levels - 1:
            keys += [f"decoder.upsamples.{index}.resample.1.weight", f"decoder.upsamples.{index}.resample.1.bias"]
            if temperal_upsample[level]:
                keys += [f"decoder.upsamples.{index}.time_conv.weight",
                         f"decoder.upsamples.{index}.time_conv.bias"]
            index += 1
    return keys + head("decoder")


def write_tiny_vae(path: str | os.PathLike, dim: int = 4, z_dim: int = 16, seed: int = 0) -> Path:
    """Tiny Wan 2.1 VAE as ``Wan2.1_VAE.pth`` (float32, official names, release layout at width ``dim``)."""
    from diffusers import AutoencoderKLWan

    from .vae import official_to_diffusers_names

    arch = dict(dim=dim, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                temperal_downsample=[False, True, True])
    with _seeded(seed):
        model = AutoencoderKLWan(base_dim=dim, z_dim=z_dim, dim_mult=arch["dim_mult"], num_res_blocks=2,
                                 attn_scales=[], temperal_downsample=arch["temperal_downsample"])
        reference = model.state_dict()
        # RMS-norm gains start at one; give them some spread so that the test model is not degenerate.
        for name, tensor in reference.items():
            if name.endswith("gamma"):
                tensor.add_(0.1 * torch.randn_like(tensor))
    keys = official_vae_keys(dim, z_dim, tuple(arch["dim_mult"]), 2, tuple(arch["temperal_downsample"]))
    renamed = official_to_diffusers_names(dict.fromkeys(keys), arch)
    if set(renamed) != set(reference):
        raise RuntimeError("official VAE layout and diffusers' AutoencoderKLWan disagree: "
                           f"{sorted(set(renamed) ^ set(reference))[:4]}")
    inverse = {new: old for old, new in zip(keys, renamed)}
    return _save({inverse[name]: tensor.clone() for name, tensor in reference.items()}, path)


def _train_bpe(corpus: list[str], specials: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = sorted(set("".join(corpus)) | set(string.printable.strip()) | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def _write_tokenizer_folder(folder: Path, tokenizer, config: dict) -> None:
    with atomic_dir(folder) as tmp:
        tokenizer.save(str(Path(tmp) / "tokenizer.json"))
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the usual folder mode


def write_tiny_tokenizers(ckpt_dir: str | os.PathLike, vocab_size: int = TINY_VOCAB) -> tuple[Path, Path]:
    """Create ``google/umt5-xxl/`` and ``xlm-roberta-large/`` tokenizer folders in ``ckpt_dir``.

    Small BPE vocabularies (<= ``vocab_size``) trained here on English text, the printable
    ASCII characters and Wan's Chinese negative prompt; special tokens with the ids of the
    real tokenizers (umT5: pad 0, eos 1, unk 2; XLM-R: <s> 0, pad 1, </s> 2, unk 3).
    """
    from tokenizers import processors

    ckpt_dir = Path(ckpt_dir)
    corpus = [_NEGATIVE_PROMPT, _ENGLISH, string.ascii_letters + string.digits + string.punctuation]

    umt5 = _train_bpe(corpus, ["<pad>", "</s>", "<unk>"], vocab_size)
    umt5.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", umt5.token_to_id("</s>"))])
    umt5_dir = ckpt_dir / "google" / "umt5-xxl"
    _write_tokenizer_folder(umt5_dir, umt5, {
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 512, "padding_side": "right"})

    xlmr = _train_bpe(corpus, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], vocab_size)
    xlmr.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", xlmr.token_to_id("<s>")), ("</s>", xlmr.token_to_id("</s>"))])
    xlmr_dir = ckpt_dir / "xlm-roberta-large"
    _write_tokenizer_folder(xlmr_dir, xlmr, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": 512,
        "padding_side": "right"})
    return umt5_dir, xlmr_dir
