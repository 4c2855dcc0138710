"""SageAttention as an optional attention backend: refusal reasons, layout, fallback (issue 23).

The package and a GPU are not here: a stand-in module records the call and computes exact
attention, and CUDA facts are patched where a refusal depends on them."""

from __future__ import annotations

import types

import pytest
import torch

import steadydancer.models.attention as kernels
from steadydancer.errors import InputError
from steadydancer.models.memory import check_attention_option


@pytest.fixture
def fake_sage(monkeypatch):
    calls = []

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, **kwargs):
        calls.append({"layout": tensor_layout, "causal": is_causal, "shape": tuple(q.shape)})
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    monkeypatch.setattr(kernels, "_sage", types.SimpleNamespace(sageattn=sageattn))
    return calls


def test_refusal_reasons_are_one_line(monkeypatch, fake_sage):
    assert "needs an NVIDIA GPU; the device is cpu" in kernels.sage_refusal("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert kernels.sage_refusal("cuda") == "SageAttention needs CUDA capability >= 8.0; Tesla V100 has 7.0"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert kernels.sage_refusal("cuda") is None
    assert "fp16/bf16" in kernels.sage_refusal("cuda", torch.float32, 128)
    assert "head_dim [64, 96, 128], not 32" in kernels.sage_refusal("cuda", torch.bfloat16, 32)
    assert kernels.sage_refusal("cuda", torch.bfloat16, 128) is None


def test_not_installed_is_the_reason_and_the_flag_stops_with_it(monkeypatch):
    monkeypatch.setattr(kernels, "_sage", None)
    assert "sageattention package is not installed" in kernels.sage_refusal("cuda")
    with pytest.raises(InputError, match=r"^--attention sage: the sageattention package is not installed"):
        check_attention_option("sage", "cpu")
    check_attention_option("auto", "cpu")          # auto and sdpa never stop a run
    check_attention_option("sdpa", "cpu")


def test_sage_gets_the_nhd_layout_and_matches_exact_attention(fake_sage):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 7, 4, 64) for _ in range(3))
    got = kernels._run_backend("sage", q, k, v)
    assert fake_sage == [{"layout": "NHD", "causal": False, "shape": (2, 7, 4, 64)}]
    assert torch.allclose(got, kernels._run_backend("sdpa", q, k, v), atol=1e-6)


def test_forced_sage_on_the_cpu_raises_and_auto_skips_it(fake_sage):
    q = torch.randn(1, 5, 2, 64)
    with kernels.attention_backend("sage"):
        with pytest.raises(RuntimeError, match="attention backend sage was forced but SageAttention needs an NVIDIA GPU"):
            kernels.attention(q, q, q)
    assert kernels._auto_candidates(q) == ["sdpa"] and fake_sage == []
    assert kernels.available_backends()[0] == "sage"
