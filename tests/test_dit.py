"""The DiT forward: parity with the official outputs, batching, attention backends."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import parity_cases
from steadydancer.models import attention as attention_module
from steadydancer.models.attention import attention, attention_backend, select_backend, set_attention_backend
from steadydancer.models.dit import SteadyDancerDiT, rope_frequencies
from steadydancer.models.loading import load_dit

TINY = dict(dim=32, ffn_dim=48, num_heads=2, num_layers=2, in_dim=36, in_dim_c=16, text_len=16,
            text_dim=24, clip_dim=40, align_dim=32)


def tiny_model(seed: int = 0) -> SteadyDancerDiT:
    torch.manual_seed(seed)
    return SteadyDancerDiT(**TINY).eval()


def tiny_inputs(batch: int, text_lens: list[int], frames: int = 2, h: int = 4, w: int = 6,
                clip_tokens: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    text = torch.zeros(batch, max(text_lens), TINY["text_dim"])
    for i, n in enumerate(text_lens):
        text[i, :n] = rand(n, TINY["text_dim"])
    return dict(latents=rand(batch, 16, frames, h, w), timestep=torch.rand(batch, generator=g) * 1000,
                text_context=text, clip_image=rand(batch, clip_tokens, TINY["clip_dim"]),
                clip_pose=rand(batch, clip_tokens, TINY["clip_dim"]), image_cond=rand(batch, 20, frames, h, w),
                pose_latents=rand(batch, 16, frames, h, w), ref_image=rand(batch, 36, 1, h, w),
                ref_pose=rand(batch, 36, 1, h, w))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("case", parity_cases("dit") or [None], ids=lambda c: c.name if c else "absent")
def test_forward_matches_official(case):
    if case is None:
        pytest.skip("no dit parity cases in shared/parity")
    io = load_file(str(case / "io.safetensors"))
    model = load_dit(case / "ckpt", dtype=torch.float32)
    with torch.no_grad():
        out = model(io["noise"][None], io["t"], io["context"][None], io["clip_x"][None], io["clip_c"][None],
                    io["y"][None], io["condition"][None], io["ref_x"][None], io["ref_c"][None])
    assert out.shape == (1, *io["forward_out"].shape)
    assert rel(out[0], io["forward_out"]) < 1e-4


def test_batch_equals_separate_calls():
    model = tiny_model()
    inputs = tiny_inputs(2, text_lens=[3, 9])
    with torch.no_grad():
        batched = model(**inputs)
        singles = [model(**{k: v[i:i + 1] for k, v in inputs.items()}) for i in range(2)]
    # The first sample's context as given is longer (zero-padded to 9); padding must not matter.
    with torch.no_grad():
        trimmed = dict({k: v[:1] for k, v in inputs.items()}, text_context=inputs["text_context"][:1, :3])
        assert rel(model(**trimmed), singles[0]) < 1e-6
    assert batched.shape == (2, 16, 2, 4, 6)
    for i in range(2):
        assert rel(batched[i:i + 1], singles[i]) < 1e-5
    assert rel(singles[0], singles[1]) > 1e-2  # the two samples really differ


def test_staged_forward_equals_forward():
    model = tiny_model()
    inputs = tiny_inputs(1, text_lens=[4])
    with torch.no_grad():
        emb = model.embed(**inputs)
        assert emb.grid == (2 + 2, 2, 3)  # F + ref image + ref pose frames, patches of 2x2
        assert emb.freqs.shape == (emb.tokens.shape[1], model.head_dim // 2)
        x = emb.tokens
        for block in model.blocks:
            x = block(x, emb.modulation, emb.freqs, emb.context)
        assert torch.equal(model.unembed(x, emb), model(**inputs))


def test_text_longer_than_text_len_is_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="text_len"):
        model(**tiny_inputs(1, text_lens=[TINY["text_len"] + 1]))


def test_bf16_forward_runs_and_stays_close():
    model = tiny_model()
    inputs = tiny_inputs(1, text_lens=[5])
    with torch.no_grad():
        ref = model(**inputs)
        out = model.to(torch.bfloat16)(**inputs)
    assert out.dtype == torch.bfloat16
    assert rel(out, ref) < 5e-2


def test_rope_frequencies_follow_the_grid():
    freqs = rope_frequencies((3, 2, 4), head_dim=32, device="cpu")
    assert freqs.shape == (24, 16) and freqs.dtype == torch.complex64
    grid = freqs.view(3, 2, 4, 16)
    # time channels (first 6) change only with the frame index, width channels (last 5) only with w
    assert torch.equal(grid[:, :1, :1, :6].expand(3, 2, 4, 6), grid[..., :6])
    assert torch.equal(grid[:1, :1, :, 11:].expand(3, 2, 4, 5), grid[..., 11:])
    assert torch.allclose(grid[0, 0, 0], torch.ones(16, dtype=torch.complex64))


def test_sdpa_attention_matches_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 8, generator=g) for n in (5, 7, 7))
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5, dim=-1)
    expected = torch.einsum("bhqk,bkhd->bqhd", weights, v)
    with attention_backend("sdpa"):
        out = attention(q, k, v)
    assert out.shape == (2, 5, 3, 8)
    assert torch.allclose(out, expected, atol=1e-5)


def test_backend_choice_and_forcing(monkeypatch):
    q = torch.randn(1, 4, 2, 8)
    assert select_backend(q) == "sdpa"  # CPU float32: flash never applies
    with attention_backend("flash2"), pytest.raises(RuntimeError, match="flash2"):
        attention(q, q, q)
    assert select_backend(q) == "sdpa"  # the context manager restored "auto"
    monkeypatch.setenv(attention_module.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        select_backend(q)
    monkeypatch.setenv(attention_module.ENV_VAR, "sdpa")
    assert select_backend(q) == "sdpa"
    with pytest.raises(ValueError):
        set_attention_backend("flash9")
