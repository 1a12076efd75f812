"""Task-preferred dynamic routes (ALGORITHM.md section 3.1, step 1): pure functions on tensors.

For a shared conv with weight W [O, I, k, k] and importance v_k [O, I] of every task k reaching it:

    p_k[o, i] = |v_k[o, i]| / (1 + 1e-4 * sum_i' |v_k[o, i']|) ** 0.75      (LRN-like, over inputs)
    G_t       = (c_t p_t + sum_{k != t} p_k) / (c_t + K - 1)
    W_eff     = G_t * W / ||W[o, i]||
"""

from __future__ import annotations

import torch

LRN_ALPHA, LRN_BETA = 1e-4, 0.75
NORM_EPS = 1e-12


def lrn_importance(v: torch.Tensor) -> torch.Tensor:
    """Local-response-normalised magnitude of the importance (normalised over the inputs i).

    Args:
        v: [O, I] importance of one task, or [K, O, I] of K tasks at once.
    Returns:
        p: same shape.
    """
    a = v.abs()
    return a / (1.0 + LRN_ALPHA * a.sum(dim=-1, keepdim=True)) ** LRN_BETA


def gate_weights(tasks: int, current: int | None, dominance: float, like: torch.Tensor) -> torch.Tensor:
    """c_k / sum_k c_k: [K] with c = dominance for the current task and 1 for the others."""
    c = torch.ones(tasks, dtype=like.dtype, device=like.device)
    if current is not None:
        c[current] = dominance
    return c / c.sum()


def route_gate(ps: torch.Tensor, current: int | None, dominance: float,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Blend the tasks' normalised importances toward the current task.

    Args:
        ps: [K, O, I] normalised importance of the K tasks reaching the layer.
        current: index in ``ps`` of the task being trained, or None if it does not reach the layer
            (then every task counts equally).
        dominance: c_t, the current task's weight (the others weigh 1).
        weights: precomputed ``gate_weights`` (they are the same at every step of a pass).
    Returns:
        G: [O, I].
    """
    c = weights if weights is not None else gate_weights(ps.shape[0], current, dominance, ps)
    return torch.einsum("k,koi->oi", c, ps)


def slice_norm(w: torch.Tensor) -> torch.Tensor:
    """L2 norm of every connection slice W[o, i]: [O, I, ...] -> [O, I]."""
    return w.flatten(2).norm(dim=2) if w.dim() > 2 else w.abs()


def effective_weight(w: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Weight-normalised slices with magnitudes from the gate.

    Args:
        w: [O, I, ...] raw weight.
        gate: [O, I] magnitude per connection.
    Returns:
        [O, I, ...] with W_eff[o, i] = gate[o, i] * W[o, i] / ||W[o, i]||.
    """
    scale = gate / slice_norm(w).clamp_min(NORM_EPS)
    return w * scale.view(*scale.shape, *([1] * (w.dim() - 2)))


def routed_weight(w: torch.Tensor, vs: torch.Tensor, current: int | None, dominance: float,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """W_eff of one shared conv for the task at index ``current`` of ``vs`` [K, O, I].

    ``weights`` may pass precomputed ``gate_weights`` (they are the same at every step of a pass).
    """
    return effective_weight(w, route_gate(lrn_importance(vs), current, dominance, weights))
