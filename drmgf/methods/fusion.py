"""Fusion of task models (ALGORITHM.md section 3.2): pure functions on tensors.

Every fusion is an element-wise convex combination of the task models:
W_new = W0 + sum_t pi_t * Delta_t / (sum_t pi_t + 1e-20).
"""

from __future__ import annotations

import torch

FUSION_EPS = 1e-20


def convex_fuse(w0: torch.Tensor, deltas: torch.Tensor, pis: torch.Tensor) -> torch.Tensor:
    """Fuse task deltas with per-element weights.

    Args:
        w0: [O, ...] parameter at the start of the period.
        deltas: [K, O, ...] Delta_t = model_t - W0 for the K tasks reaching the parameter.
        pis: [K, O] or [K, O, I] non-negative weights, broadcast over the remaining dims of ``w0``.
    Returns:
        [O, ...] fused parameter.
    """
    pis = pis.view(*pis.shape, *([1] * (deltas.dim() - pis.dim())))
    return w0 + (pis * deltas).sum(0) / (pis.sum(0) + FUSION_EPS)


def importance_shares(vs: torch.Tensor) -> torch.Tensor:
    """|v_t[o, i]| / sum_i' |v_t[o, i']|: [K, O, I] -> [K, O, I] (constant during a fusion pass)."""
    a = vs.abs()
    return a / a.sum(dim=-1, keepdim=True).clamp_min(FUSION_EPS)


def connection_weights(vs: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """pi_t[o, i] = (|v_t[o, i]| / sum_i' |v_t[o, i']|) * |s_t[o, i]| for shared conv weights.

    Args:
        vs: [K, O, I] importance; ss: [K, O, I] fusion scales.
    Returns:
        [K, O, I].
    """
    return importance_shares(vs) * ss.abs()


def norm_weight_weights(vs: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """BN gamma: pi_t = |v_t| / sum |v_t| * |s_t| (v_t is fixed at ones). vs, ss: [K, C] -> [K, C]."""
    a = vs.abs()
    return a / a.sum(dim=-1, keepdim=True).clamp_min(FUSION_EPS) * ss.abs()


def norm_bias_weights(ss: torch.Tensor) -> torch.Tensor:
    """BN beta: pi_t = |s_t|. ss: [K, C] -> [K, C]."""
    return ss.abs()


def mean_fuse(w0: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """W0 + mean_t Delta_t (shared conv biases). deltas: [K, ...]."""
    return w0 + deltas.mean(0)


def bn_mixture(means: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments of the equal mixture of the task models' BN statistics.

    Args:
        means, variances: [K, C] running statistics of the K task models.
    Returns:
        (mu, var): mu = mean_t mu_t, var = mean_t (var_t + mu_t^2) - mu^2.
    """
    mu = means.mean(0)
    return mu, (variances + means**2).mean(0) - mu**2
