"""Tiny official-layout writers: write -> load through the release code path -> run."""

from __future__ import annotations

import pytest
import torch

from steadydancer.encoders import tiny
from steadydancer.encoders.clip import ClipVisionEncoder
from steadydancer.encoders.t5 import TextEncoder
from steadydancer.encoders.vae import WanVAE

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VAE_FILE = "Wan2.1_VAE.pth"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    tiny.write_tiny_t5(folder / T5_FILE)
    tiny.write_tiny_clip(folder / CLIP_FILE)
    tiny.write_tiny_vae(folder / VAE_FILE)
    tiny.write_tiny_tokenizers(folder)
    return folder


def test_files_are_small_and_official_names(ckpt):
    total = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert total < 5_000_000
    assert (ckpt / "google" / "umt5-xxl" / "tokenizer.json").is_file()
    assert (ckpt / "xlm-roberta-large" / "tokenizer.json").is_file()
    t5_state = torch.load(ckpt / T5_FILE, weights_only=True)
    assert t5_state["blocks.0.attn.q.weight"].dtype == torch.bfloat16
    clip_state = torch.load(ckpt / CLIP_FILE, weights_only=True)
    assert any(k.startswith("textual.") for k in clip_state) and "visual.head" in clip_state


def test_writers_are_deterministic(tmp_path):
    a = torch.load(tiny.write_tiny_t5(tmp_path / "a.pth", seed=3), weights_only=True)
    b = torch.load(tiny.write_tiny_t5(tmp_path / "b.pth", seed=3), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_t5_round_trip_and_prompts_tokenize(ckpt):
    encoder = TextEncoder(ckpt / T5_FILE, ckpt / "google" / "umt5-xxl", dtype=torch.float32, text_len=512)
    negative = tiny._NEGATIVE_PROMPT
    ids, mask = encoder.tokenize(["A person dances.", negative])
    assert ids.shape == (2, 512) and int(ids.max()) < tiny.TINY_VOCAB
    unk = encoder.tokenizer.convert_tokens_to_ids("<unk>")
    eos = encoder.tokenizer.convert_tokens_to_ids("</s>")
    assert not (ids == unk).any()
    lengths = mask.sum(1).tolist()
    assert ids[0, lengths[0] - 1] == eos and ids[0, lengths[0]] == 0  # eos then padding (id 0)
    states = encoder.encode(["A person dances.", negative])
    assert [s.shape for s in states] == [(lengths[0], 32), (lengths[1], 32)]
    assert all(torch.isfinite(s).all() for s in states)
    # trimming keeps exactly the real tokens of the padded forward
    full = encoder.encode_ids(ids, mask)
    assert torch.allclose(states[1], full[1, :lengths[1]])


def test_t5_truncates_to_text_len_and_keeps_dtype(ckpt):
    encoder = TextEncoder(ckpt / T5_FILE, ckpt / "google" / "umt5-xxl", dtype=torch.bfloat16, text_len=8)
    (states,) = encoder.encode(["a very long prompt " * 20])
    assert states.shape == (8, 32) and states.dtype == torch.bfloat16
    assert not any(p.is_meta for p in encoder.model.parameters())


def test_clip_round_trip_gives_257_tokens(ckpt):
    encoder = ClipVisionEncoder(ckpt / CLIP_FILE, dtype=torch.float32)
    features = encoder.encode(torch.rand(2, 3, 96, 64) * 2 - 1)
    assert features.shape == (2, 257, 64) and torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])


def test_vae_round_trip_shapes(ckpt):
    vae = WanVAE(ckpt / VAE_FILE)
    video = torch.rand(3, 9, 16, 24) * 2 - 1
    latent = vae.encode(video)
    assert latent.shape == (16, 3, 2, 3) and torch.isfinite(latent).all()
    decoded = vae.decode(latent)
    assert decoded.shape == (3, 9, 16, 24)
    assert decoded.min() >= -1 and decoded.max() <= 1
    # causal: the first latent frame depends on the first frame only
    other = video.clone()
    other[:, 1:] = 0
    assert torch.allclose(vae.encode(other)[:, 0], latent[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="4n\\+1"):
        vae.encode(video[:, :8])


def test_missing_tokenizer_folder_names_it(ckpt, tmp_path):
    from steadydancer.errors import InputError

    with pytest.raises(InputError, match="no_such_tokenizer"):
        TextEncoder(ckpt / T5_FILE, tmp_path / "no_such_tokenizer")
