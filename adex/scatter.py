"""Scatter reductions: torch-scatter when installed, ``Tensor.scatter_reduce`` otherwise.

All functions reduce ``src`` [n, ...] along dim 0 into ``dim_size`` buckets given by
``index`` [n] (LongTensor). Empty buckets give 0 (sum/mean/max alike), as in torch-scatter.
Set ``ADEX_SCATTER_BACKEND=torch`` to force the fallback (tests compare both backends).
"""
from __future__ import annotations

import os

import torch

try:  # pragma: no cover - depends on the environment
    import torch_scatter as _torch_scatter
except Exception:  # ImportError, or a build that does not match the torch ABI
    _torch_scatter = None


def backend() -> str:
    """Name of the active backend: ``"torch_scatter"`` or ``"torch"``."""
    if _torch_scatter is not None and os.environ.get("ADEX_SCATTER_BACKEND", "") != "torch":
        return "torch_scatter"
    return "torch"


def _expand_index(index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    if src.dim() == 1:
        return index
    shape = [index.shape[0]] + [1] * (src.dim() - 1)
    return index.view(shape).expand_as(src)


def _out(src: torch.Tensor, dim_size: int) -> torch.Tensor:
    return src.new_zeros((dim_size,) + tuple(src.shape[1:]))


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum of ``src`` rows per bucket: [dim_size, ...]."""
    if backend() == "torch_scatter":
        return _torch_scatter.scatter_sum(src, index, dim=0, dim_size=dim_size)
    return _out(src, dim_size).index_add_(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of ``src`` rows per bucket (0 for an empty bucket): [dim_size, ...]."""
    if backend() == "torch_scatter":
        return _torch_scatter.scatter_mean(src, index, dim=0, dim_size=dim_size)
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp(min=1).to(src.dtype)
    return total / count.view([-1] + [1] * (src.dim() - 1))


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Element-wise maximum per bucket (0 for an empty bucket): [dim_size, ...]."""
    if backend() == "torch_scatter":
        return _torch_scatter.scatter_max(src, index, dim=0, dim_size=dim_size)[0]
    out = _out(src, dim_size).scatter_reduce(
        0, _expand_index(index, src), src, reduce="amax", include_self=False
    )
    return out


def scatter_softmax(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Softmax of ``src`` within each bucket (numerically stabilised): same shape as src."""
    shifted = src - scatter_max(src, index, dim_size).index_select(0, index)
    exp = shifted.exp()
    norm = scatter_sum(exp, index, dim_size).index_select(0, index)
    return exp / norm.clamp(min=torch.finfo(src.dtype).tiny)
