"""umT5-XXL text encoder of Wan 2.1, loaded from the official ``models_t5_umt5-xxl-enc-bf16.pth``.

The network is transformers' ``UMT5EncoderModel``, which computes what the official encoder
computes: RMS layer norms (eps 1e-6) in float32, one relative-position table per layer
(bidirectional buckets, max distance 128), attention without 1/sqrt(d) scaling, and a
gated FFN ``wo(gelu_tanh(wi_0 x) * wi_1 x)``. Only the tensor names differ; ``_KEY_MAP``
renames the official ones.

Architecture numbers are read from tensor shapes: vocab and width from the token
embedding, attention width from ``q``, FFN width from ``fc1``, heads and buckets from the
relative-position table, depth from the block count.
"""

from __future__ import annotations

import html
import os
import re as _re
from pathlib import Path

import torch

from ..errors import InputError
from ._common import assign_state_dict, load_official_state_dict, require_keys

# Official per-block tensor names -> transformers' UMT5 names (block index substituted).
_BLOCK_KEY_MAP = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",     # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_MAX_DISTANCE = 128  # relative-position range of the official T5RelativeEmbedding
_LAYER_NORM_EPS = 1e-6


def clean_prompt(text: str) -> str:
    """The official 'whitespace' prompt cleaning: ftfy, double HTML unescape, collapse whitespace."""
    import ftfy
    import regex

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


def t5_arch_from_state(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict:
    """Constructor numbers of the official encoder, read from the tensors' shapes."""
    require_keys(state, ["token_embedding.weight", "norm.weight", "blocks.0.attn.q.weight",
                         "blocks.0.ffn.fc1.weight", "blocks.0.pos_embedding.embedding.weight"],
                 path, "umT5 encoder")
    if "pos_embedding.embedding.weight" in state:
        raise InputError(f"{path}: T5 with a shared position table (shared_pos=True) is not supported; "
                         "umT5-XXL has one table per layer")
    vocab, dim = state["token_embedding.weight"].shape
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    block_ids = {int(m.group(1)) for k in state if (m := _re.match(r"blocks\.(\d+)\.", k))}
    num_layers = max(block_ids) + 1
    if block_ids != set(range(num_layers)):
        raise InputError(f"{path}: T5 blocks are not numbered 0..{num_layers - 1}")
    return dict(vocab=int(vocab), dim=int(dim), dim_attn=int(state["blocks.0.attn.q.weight"].shape[0]),
                dim_ffn=int(state["blocks.0.ffn.fc1.weight"].shape[0]), num_heads=int(num_heads),
                num_layers=num_layers, num_buckets=int(num_buckets))


def _to_transformers_names(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    out = {"shared.weight": state["token_embedding.weight"],
           "encoder.embed_tokens.weight": state["token_embedding.weight"],
           "encoder.final_layer_norm.weight": state["norm.weight"]}
    for i in range(num_layers):
        for ours, theirs in _BLOCK_KEY_MAP.items():
            key = f"blocks.{i}.{ours}"
            if key in state:
                out[f"encoder.block.{i}.{theirs}"] = state[key]
    used = {"token_embedding.weight", "norm.weight"} | {
        f"blocks.{i}.{k}" for i in range(num_layers) for k in _BLOCK_KEY_MAP}
    for extra in sorted(set(state) - used):
        out[extra] = state[extra]  # reported as unexpected by assign_state_dict
    return out


def build_umt5(arch: dict):
    """transformers UMT5EncoderModel with the official numbers, on the current default device."""
    from transformers import UMT5Config, UMT5EncoderModel

    if arch["dim_attn"] % arch["num_heads"]:
        raise ValueError(f"attention width {arch['dim_attn']} not divisible by {arch['num_heads']} heads")
    config = UMT5Config(
        vocab_size=arch["vocab"], d_model=arch["dim"], d_kv=arch["dim_attn"] // arch["num_heads"],
        d_ff=arch["dim_ffn"], num_layers=arch["num_layers"], num_heads=arch["num_heads"],
        relative_attention_num_buckets=arch["num_buckets"], relative_attention_max_distance=_MAX_DISTANCE,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=_LAYER_NORM_EPS,
        is_encoder_decoder=False, use_cache=False, tie_word_embeddings=True)
    return UMT5EncoderModel(config)


class TextEncoder:
    """umT5 encoder plus its tokenizer: prompts -> hidden states trimmed to the real tokens.

    ``dtype`` is both the weight and the compute dtype (the official runs bfloat16 on GPU;
    float32 reproduces the parity outputs). Weights are cast tensor by tensor straight
    into a meta-device model, so the 11 GB bf16 file never becomes a float32 host copy.
    """

    def __init__(self, checkpoint_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                 text_len: int = 512) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else None
        self.device = torch.device(device)
        self.dtype = dtype
        self.text_len = int(text_len)

        state = load_official_state_dict(self.checkpoint_path, "umT5 text encoder")
        self.arch = t5_arch_from_state(state, self.checkpoint_path)
        with torch.device("meta"):
            model = build_umt5(self.arch)
        assign_state_dict(model, _to_transformers_names(state, self.arch["num_layers"]),
                          self.device, dtype, self.checkpoint_path, "umT5 encoder")
        del state
        self.model = model.eval().requires_grad_(False)
        # Without a tokenizer folder only encode_ids works (the parity cases give ids).
        self.tokenizer = load_tokenizer(self.tokenizer_path, "umT5") if self.tokenizer_path else None

    def to(self, device: torch.device | str) -> "TextEncoder":
        """Move the weights (e.g. back to the CPU to free GPU memory); returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned prompts -> (ids, mask), each int64 [B, text_len], padded and truncated."""
        if self.tokenizer is None:
            raise ValueError("TextEncoder was built without a tokenizer_path; use encode_ids")
        cleaned = [clean_prompt(p) for p in prompts]
        batch = self.tokenizer(cleaned, padding="max_length", truncation=True, max_length=self.text_len,
                               add_special_tokens=True, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [B, L] -> hidden states [B, L, C] (padded positions included)."""
        ids = ids.to(self.device)
        mask = mask.to(self.device)
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> one [L_i, C] tensor each, L_i = the prompt's real token count (<= text_len)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenize(list(prompts))
        hidden = self.encode_ids(ids, mask)
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [h[:n] for h, n in zip(hidden, lengths)]


def load_tokenizer(path: str | os.PathLike, what: str):
    """A tokenizer folder read with transformers' AutoTokenizer, offline only."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: {what} tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken folder is the user's input
        raise InputError(f"{path}: cannot load the {what} tokenizer ({exc.__class__.__name__}: {exc})") from exc
