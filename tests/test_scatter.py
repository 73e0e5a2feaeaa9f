"""Scatter reductions (adex.scatter): the torch fallback against a loop reference, and
torch-scatter against the fallback (values and gradients), empty buckets included."""
from __future__ import annotations

import pytest
import torch

import adex.scatter as scatter
from adex.scatter import backend, scatter_max, scatter_mean, scatter_softmax, scatter_sum

HAS_TORCH_SCATTER = scatter._torch_scatter is not None
OPS = {"sum": scatter_sum, "mean": scatter_mean, "max": scatter_max, "softmax": scatter_softmax}
DIM_SIZE = 7  # buckets 1, 4 and 6 are empty (6: trailing)


def make_inputs(shape_tail: tuple[int, ...], dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    index = torch.tensor([0, 2, 3, 0, 5, 2, 3, 3, 0, 5, 2, 3], dtype=torch.long)
    src = torch.randn((len(index),) + shape_tail, generator=generator, dtype=dtype)
    src[index == 3] = -src[index == 3].abs() - 0.5  # an all-negative bucket: its max is not 0
    return src, index


def reference(op: str, src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Plain loops over buckets (autograd-friendly)."""
    if op == "softmax":
        out = torch.zeros_like(src)
        for b in range(dim_size):
            rows = index == b
            if rows.any():
                out = out.index_put((rows.nonzero().squeeze(1),), torch.softmax(src[rows], dim=0))
        return out
    parts = []
    for b in range(dim_size):
        rows = src[index == b]
        if len(rows) == 0:
            parts.append(torch.zeros(src.shape[1:], dtype=src.dtype))
        elif op == "sum":
            parts.append(rows.sum(0))
        elif op == "mean":
            parts.append(rows.mean(0))
        else:
            parts.append(rows.max(0).values)
    return torch.stack(parts)


def run(op: str, src: torch.Tensor, index: torch.Tensor, weights: torch.Tensor | None = None):
    """(output, gradient of a weighted sum of the output w.r.t. src)."""
    leaf = src.detach().clone().requires_grad_(True)
    fn = OPS[op] if op in OPS else None
    out = fn(leaf, index, DIM_SIZE) if fn else reference(op[4:], leaf, index, DIM_SIZE)
    if weights is None:
        weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


def test_backend_reads_env_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADEX_SCATTER_BACKEND", "torch")
    assert backend() == "torch"
    monkeypatch.delenv("ADEX_SCATTER_BACKEND")
    assert backend() == ("torch_scatter" if HAS_TORCH_SCATTER else "torch")


@pytest.mark.parametrize("tail", [(), (3,), (2, 2)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("op", list(OPS))
def test_fallback_matches_reference(monkeypatch: pytest.MonkeyPatch, op: str, tail: tuple[int, ...]) -> None:
    monkeypatch.setenv("ADEX_SCATTER_BACKEND", "torch")
    src, index = make_inputs(tail)
    out, grad = run(op, src, index)
    ref_out, ref_grad = run(f"ref_{op}", src, index)
    expected_shape = src.shape if op == "softmax" else (DIM_SIZE,) + tail
    assert out.shape == expected_shape
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    if op != "softmax":
        assert (out[[1, 4, 6]] == 0).all()  # empty buckets are 0
    if op == "max":
        assert (out[3] < 0).all()  # all-negative bucket keeps its (negative) maximum


@pytest.mark.parametrize("tail", [(), (3,)], ids=["1d", "2d"])
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.skipif(not HAS_TORCH_SCATTER, reason="torch-scatter is not installed: nothing to compare the fallback with")
def test_torch_scatter_matches_fallback(monkeypatch: pytest.MonkeyPatch, op: str, tail: tuple[int, ...]) -> None:
    src, index = make_inputs(tail, dtype=torch.float32, seed=1)
    monkeypatch.delenv("ADEX_SCATTER_BACKEND", raising=False)
    assert backend() == "torch_scatter"
    fast_out, fast_grad = run(op, src, index)
    monkeypatch.setenv("ADEX_SCATTER_BACKEND", "torch")
    assert backend() == "torch"
    slow_out, slow_grad = run(op, src, index)
    torch.testing.assert_close(fast_out, slow_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-5, atol=1e-6)


def test_softmax_normalised_and_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("torch", "default"):
        if name == "torch":
            monkeypatch.setenv("ADEX_SCATTER_BACKEND", "torch")
        else:
            monkeypatch.delenv("ADEX_SCATTER_BACKEND", raising=False)
        src, index = make_inputs((2,), dtype=torch.float32)
        src = src + 1000.0  # exp would overflow without the max shift
        out = scatter_softmax(src, index, DIM_SIZE)
        assert torch.isfinite(out).all()
        sums = scatter_sum(out, index, DIM_SIZE)
        torch.testing.assert_close(sums[[0, 2, 3, 5]], torch.ones(4, 2))


def test_fallback_empty_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADEX_SCATTER_BACKEND", "torch")
    src, index = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    for op in ("sum", "mean", "max"):
        out = OPS[op](src, index, 3)
        assert out.shape == (3, 4) and (out == 0).all(), op
    assert scatter_softmax(src, index, 3).shape == (0, 4)
