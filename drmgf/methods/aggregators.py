"""Gradient aggregators: pure functions from task gradients G [T, P] to one update direction [P].

Every aggregator here returns a direction in the span of the task gradients, d = w^T G, and its
weights w [T] depend on G only through the Gram matrix M = G G^T [T, T]. Each method therefore
has two functions: ``<method>_weights(M, ...) -> w [T]`` (the solver, float64) and
``<method>(G, ...) -> d [P]``. Solving on M keeps the solvers exact and cheap (T x T in float64
whatever the number of parameters) and lets the training loop log w.

No convex-solver library is used: the small problems are solved here in float64 and every
iterative solver checks a convergence certificate; a solver that fails raises ``SolverError``
naming the method instead of falling back to a plain sum of the gradients.
"""

from __future__ import annotations

import math

import torch

from drmgf.errors import UserError

__all__ = [
    "SolverError", "cagrad", "cagrad_weights", "combine", "gram", "imtl", "imtl_weights", "mgda",
    "mgda_weights", "min_norm_weights", "nash_mtl", "nash_mtl_weights", "pcgrad", "pcgrad_weights",
]


class SolverError(UserError):
    """An aggregation problem could not be solved to its tolerance (the message names the method)."""


def gram(G: torch.Tensor) -> torch.Tensor:
    """M = G G^T in float64.

    Args:
        G: [T, P] task gradients (one row per task).
    Returns:
        [T, T] float64.
    """
    G64 = G.detach().to(torch.float64)
    return G64 @ G64.T


def combine(weights: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """d = sum_t w_t g_t. weights: [T]; G: [T, P] -> [P] in G's dtype."""
    return weights.to(dtype=G.dtype, device=G.device) @ G


def _scale(M: torch.Tensor, method: str) -> float:
    """Largest squared gradient norm, used to make tolerances relative; must be finite."""
    if not bool(torch.isfinite(M).all()):
        raise SolverError(f"{method}: the task gradients contain NaN or infinite values")
    return float(M.diagonal().max())


# ---------------------------------------------------------------------------------------------
# PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1)
# ---------------------------------------------------------------------------------------------


def pcgrad_weights(M: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """PCGrad in coefficient space.

    For each task i, g_i^PC starts at g_i; for every other task j in a random order, when
    g_i^PC . g_j < 0 it is projected onto the normal plane of g_j:
    g_i^PC -= (g_i^PC . g_j) / ||g_j||^2 g_j. The update is sum_i g_i^PC. Each g_i^PC stays in the
    span of G, so it is tracked as coefficients c_i with g_i^PC = c_i^T G and dots c_i^T M e_j.

    Args:
        M: [T, T] Gram matrix of the task gradients.
        gen: generator of the random task orders (one permutation of the others per task).
    Returns:
        [T] float64 weights w with d = w^T G = sum_i g_i^PC.
    """
    M = M.to(torch.float64)
    T, _ = M.shape[0], _scale(M, "pcgrad")
    coef = torch.eye(T, dtype=torch.float64, device=M.device)
    for i in range(T):
        others = [j for j in range(T) if j != i]
        for k in torch.randperm(len(others), generator=gen).tolist():
            j = others[k]
            dot = coef[i] @ M[:, j]
            if dot < 0 and M[j, j] > 0:
                coef[i, j] -= dot / M[j, j]
    return coef.sum(0)


def pcgrad(G: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """PCGrad direction. G: [T, P] -> [P]; see ``pcgrad_weights``."""
    return combine(pcgrad_weights(gram(G), gen), G)


# ---------------------------------------------------------------------------------------------
# MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)
# ---------------------------------------------------------------------------------------------


def _min_norm_two(m11: float, m12: float, m22: float) -> float:
    """gamma in [0, 1] minimising ||gamma g1 + (1 - gamma) g2||^2 (Sener & Koltun, Algorithm 1)."""
    denom = m11 + m22 - 2.0 * m12
    if denom <= 0.0:  # g1 == g2: every point of the segment is the same vector
        return 0.5
    return min(1.0, max(0.0, (m22 - m12) / denom))


def _affine_min(K: torch.Tensor, support: list[int]) -> torch.Tensor:
    """Weights [T] (zero off ``support``) of the minimum-norm point of the affine hull of the support.

    Solves [K_SS 1; 1^T 0] [u; -lambda] = [0; 1] by least squares (robust when nearly singular).
    """
    n = len(support)
    system = torch.ones(n + 1, n + 1, dtype=K.dtype, device=K.device)
    system[:n, :n] = K[support][:, support]
    system[n, n] = 0.0
    rhs = torch.zeros(n + 1, 1, dtype=K.dtype, device=K.device)
    rhs[n] = 1.0
    sol = torch.linalg.lstsq(system, rhs, driver="gelsd").solution[:n, 0]
    u = torch.zeros(K.shape[0], dtype=K.dtype, device=K.device)
    u[support] = sol
    return u


def _wolfe_minor(K: torch.Tensor, w: torch.Tensor, support: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Wolfe's minor cycle: move to the support's affine minimiser, dropping points that leave the hull."""
    for _ in range(len(support) + 1):
        u = _affine_min(K, support)
        if bool((u[support] > 0).all()):
            return u, support
        shrink = [i for i in support if u[i] <= 0 and w[i] > u[i]]
        theta = min(float(w[i] / (w[i] - u[i])) for i in shrink) if shrink else 0.0
        w = w + theta * (u - w)
        w = torch.where(w > 1e-15, w, torch.zeros_like(w))
        support = [i for i in support if w[i] > 0]
        w = w / w.sum()
    return w, support


def min_norm_weights(K: torch.Tensor, method: str, tol: float = 1e-12) -> torch.Tensor:
    """Wolfe's algorithm for the minimum-norm point of the convex hull of T points (Gram form).

    Wolfe, "Finding the nearest point in a polytope", Math. Programming 11 (1976): a finite
    active-set method. Converged when the Frank-Wolfe gap w^T K w - min_i (K w)_i, an upper bound
    on the distance to the optimum of 1/2 w^T K w, is at most ``tol`` times the largest K_ii.

    Args:
        K: [T, T] Gram matrix of the points (float64, positive semi-definite).
        method: name used in error messages.
    Returns:
        [T] float64 weights on the simplex.
    """
    T, scale = K.shape[0], float(K.diagonal().max())
    first = int(K.diagonal().argmin())
    w = torch.zeros(T, dtype=torch.float64, device=K.device)
    w[first], support = 1.0, [first]
    gap = math.inf
    for _ in range(10 * T + 10):
        Kw = K @ w
        j = int(Kw.argmin())
        gap = float(w @ Kw - Kw[j])
        if gap <= tol * scale:
            return w
        if j in support:  # rounding: the best vertex is already used, Wolfe cannot improve further
            break
        w, support = _wolfe_minor(K, w, support + [j])
    if gap <= 1e3 * tol * scale:
        return w
    raise SolverError(f"{method}: the minimum-norm-point solver stopped with Frank-Wolfe gap "
                      f"{gap / max(scale, 1e-300):.3g} (relative) > {tol:.3g}")


def mgda_weights(M: torch.Tensor, tol: float = 1e-12) -> torch.Tensor:
    """Weights of the minimum-norm point of the convex hull of the task gradients.

    w = argmin_{w in simplex} ||w^T G||^2 = argmin w^T M w, on the raw (unnormalised) gradients.
    Two tasks use the closed form of Sener & Koltun's Algorithm 1; more tasks use Wolfe's exact
    active-set algorithm (``min_norm_weights``) instead of their Frank-Wolfe loop, with the
    Frank-Wolfe gap as convergence certificate.

    Args:
        M: [T, T] Gram matrix.
    Returns:
        [T] float64 weights on the simplex; d = w^T G.
    """
    M = M.to(torch.float64)
    T, scale = M.shape[0], _scale(M, "mgda")
    if T == 1 or scale == 0.0:
        return torch.full((T,), 1.0 / T, dtype=torch.float64, device=M.device)
    if T == 2:
        gamma = _min_norm_two(float(M[0, 0]), float(M[0, 1]), float(M[1, 1]))
        return torch.tensor([gamma, 1.0 - gamma], dtype=torch.float64, device=M.device)
    return min_norm_weights(M / scale, "mgda", tol)


def mgda(G: torch.Tensor) -> torch.Tensor:
    """MGDA direction (minimum-norm point of conv{g_t}). G: [T, P] -> [P]."""
    return combine(mgda_weights(gram(G)), G)


# ---------------------------------------------------------------------------------------------
# CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021)
# ---------------------------------------------------------------------------------------------


def cagrad_weights(M: torch.Tensor, c: float, tol: float = 1e-8, max_iter: int = 200) -> torch.Tensor:
    """Coefficients of the CAGrad direction d = g0 + sqrt(phi) / ||g_w|| g_w.

    g0 is the mean gradient, phi = c^2 ||g0||^2 and
    w = argmin_{w in simplex} F(w) = g_w^T g0 + sqrt(phi) ||g_w||, with g_w = w^T G.

    Solver: with r = sqrt(phi), r ||x|| = min_{s > 0} ||x||^2 / (2 s) + r^2 s / 2, so for fixed s
    the minimisation over the hull is the minimum-norm point of conv{g_i + s g0} (exact, Wolfe),
    and the optimal s solves ||g_w(s)|| = r s, where ||g_w(s)|| / s decreases in s (the reduced
    function of s is convex): found by regula falsi with log-scale bisection as safeguard.
    Certified by the primal-dual gap F(w) - min_i g_i^T d(w) >= F(w) - F*, because every d with
    ||d - g0|| <= r satisfies min_i g_i^T d <= F* (the dual of max_d min_i g_i^T d); the gap must
    fall below ``tol`` times the largest ||g_t||^2 (the authors' code uses SLSQP's default 1e-6 on
    the objective). Degenerate optima with g_w = 0, where the formula is 0/0, return the primal
    optimum instead: g0 when it certifies, else (c >= 1, 0 in the hull) the zero direction.
    c = 0 gives the mean gradient without solving. No rescaling by 1 / (1 + c^2) as in the
    authors' code (the paper's Algorithm 1 has none).

    Args:
        M: [T, T] Gram matrix.
        c: radius factor (``--cagrad-c``), c >= 0.
    Returns:
        [T] float64 coefficients a with d = a^T G.
    """
    if c < 0:
        raise ValueError(f"cagrad: c must be >= 0, got {c}")
    M = M.to(torch.float64)
    T, scale = M.shape[0], _scale(M, "cagrad")
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64, device=M.device)
    g0_sq = float(mean @ M @ mean)
    if c == 0.0 or g0_sq <= 1e-30 * scale:
        return mean
    A = M / scale
    b = A @ mean
    r = c * math.sqrt(float(mean @ b))
    state = {"best": mean, "gap": math.inf}

    def excess(s: float) -> float:
        """||g_w(s)|| - r s (decreasing in s; zero at the optimum); records the best certificate."""
        w = min_norm_weights(A + s * (b[:, None] + b[None, :]) + s * s * float(mean @ b), "cagrad")
        norm = math.sqrt(max(float(w @ A @ w), 0.0))
        coef, gap = _cagrad_certificate(A, b, r, w, norm)
        if gap < state["gap"]:
            state["best"], state["gap"] = coef, gap
        return norm - r * s

    _illinois(excess, 1e-14 / r, 1.0 / r, lambda: state["gap"] <= tol, max_iter)
    best, best_gap = state["best"], state["gap"]
    if best_gap > tol:
        raise SolverError(f"cagrad: the solver did not reach the optimum (primal-dual gap {best_gap:.3g} > "
                          f"{tol:.3g} relative); the task gradients are degenerate (a zero gradient, or 0 in "
                          "their convex hull)")
    return best


def _illinois(fun, lo: float, hi: float, done, max_iter: int) -> None:
    """Root of a decreasing ``fun`` on [lo, hi] by regula falsi (Illinois), bisecting in log scale
    when the bracket shrinks too slowly or holds no sign change; stops as soon as ``done()``."""
    f_lo, f_hi = fun(lo), fun(hi)
    side = 0
    for _ in range(max_iter):
        if done() or hi / lo < 1 + 1e-15:
            return
        s = (lo * f_hi - hi * f_lo) / (f_hi - f_lo) if f_lo > 0.0 > f_hi else math.nan
        if side == 2 or not lo < s < hi:  # two one-sided steps in a row, or no bracket: bisect
            s, side = math.sqrt(lo * hi), 0
        value = fun(s)
        if value > 0.0:
            lo, f_lo = s, value
            f_hi, side = (f_hi / 2, 2) if side == 1 else (f_hi, 1)
        else:
            hi, f_hi = s, value
            f_lo, side = (f_lo / 2, 2) if side == -1 else (f_lo, -1)


def _cagrad_certificate(A: torch.Tensor, b: torch.Tensor, r: float, w: torch.Tensor,
                        norm: float) -> tuple[torch.Tensor, float]:
    """Direction coefficients and the primal-dual gap F(w) - min_i g_i^T d (scaled units).

    The primal candidate is d(w) = g0 + r g_w / ||g_w||; when r >= ||g0|| (c >= 1) the zero
    direction is also feasible, with value 0, and is the primal optimum when F* = 0 (0 in the hull,
    where g_w = 0 leaves d(w) undefined).
    """
    T = A.shape[0]
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64, device=A.device)
    coef = mean + (r / norm) * w if norm > 1e-12 * r else mean
    value = float(w @ b) + r * norm
    primal = float((A @ coef).min())
    if r * r >= float(mean @ b) and 0.0 > primal:
        return torch.zeros_like(mean), value
    return coef, value - primal


def cagrad(G: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad direction. G: [T, P] -> [P]; see ``cagrad_weights``."""
    return combine(cagrad_weights(gram(G), c), G)


# ---------------------------------------------------------------------------------------------
# IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021)
# ---------------------------------------------------------------------------------------------


def imtl_weights(M: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """IMTL-G weights: d = sum_t a_t g_t with sum_t a_t = 1 and equal projections d^T u_t.

    With u_t = g_t / ||g_t||, the conditions d^T u_t = kappa for all t and 1^T a = 1 are the
    linear system [N M, -1; 1^T, 0] [a; kappa] = [0; 1] with N = diag(1/||g_t||): the paper's
    closed form a_{2:T} = g_1 U^T (D U^T)^{-1}, a_1 = 1 - sum a_{2:T}, written symmetrically in the
    tasks. A singular system (linearly dependent gradients) is solved by least squares and
    accepted only if it meets the conditions to ``tol`` (relative).

    Args:
        M: [T, T] Gram matrix.
    Returns:
        [T] float64 weights summing to 1.
    """
    M = M.to(torch.float64)
    T, scale = M.shape[0], _scale(M, "imtl")
    norms = M.diagonal().clamp_min(0.0).sqrt()
    zero = torch.nonzero(norms <= 1e-12 * math.sqrt(max(scale, 0.0))).flatten().tolist()
    if zero or scale <= 0.0:
        raise SolverError(f"imtl: task gradient(s) {zero} are zero, so their unit gradients are undefined")
    system = torch.zeros(T + 1, T + 1, dtype=torch.float64, device=M.device)
    system[:T, :T] = M / norms[:, None] / math.sqrt(scale)
    system[:T, T] = -1.0
    system[T, :T] = 1.0
    rhs = torch.zeros(T + 1, dtype=torch.float64, device=M.device)
    rhs[T] = 1.0
    sol = torch.linalg.lstsq(system, rhs[:, None], driver="gelsd").solution[:, 0]
    residual = float((system @ sol - rhs).abs().max())
    if not math.isfinite(residual) or residual > tol:
        raise SolverError(f"imtl: no weights give equal projections on the unit task gradients "
                          f"(residual {residual:.3g} > {tol:.3g})")
    return sol[:T]


def imtl(G: torch.Tensor) -> torch.Tensor:
    """IMTL-G direction. G: [T, P] -> [P]."""
    return combine(imtl_weights(gram(G)), G)


# ---------------------------------------------------------------------------------------------
# Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022)
# ---------------------------------------------------------------------------------------------


def _nash_objective(A: torch.Tensor, alpha: torch.Tensor) -> float:
    return 0.5 * float(alpha @ A @ alpha) - float(torch.log(alpha).sum())


def nash_mtl_weights(M: torch.Tensor, tol: float = 1e-11, max_iter: int = 200,
                     ridge: float = 1e-9) -> torch.Tensor:
    """Nash bargaining weights: alpha > 0 with M alpha = 1 / alpha elementwise.

    alpha minimises the strictly convex f(alpha) = 1/2 alpha^T M alpha - sum_i log alpha_i on
    alpha > 0, whose stationarity condition is exactly M alpha = 1/alpha. Solved by Newton's method
    (Hessian M + diag(1/alpha^2), positive definite) with a line search that keeps alpha > 0, on
    M scaled to unit largest diagonal (alpha scales back by 1/sqrt(scale)). When M is singular
    (smallest eigenvalue <= 1e-12 of the largest) a ridge ``ridge`` * scale * I is added so that a
    solution exists (e.g. for exactly opposite gradients). Converged when
    max_i |alpha_i (M alpha)_i - 1| <= ``tol`` plus the float64 rounding of that cancelling sum
    (1e3 eps max_i alpha_i (|M| alpha)_i, which only matters for ill-conditioned M). The authors'
    code solves a normalised M / ||M||_F (scaling d by ||M||_F^{1/2}); this follows the paper's
    G G^T alpha = 1/alpha, so ||d||^2 = alpha^T M alpha = T.

    Args:
        M: [T, T] Gram matrix.
    Returns:
        [T] float64, positive; d = alpha^T G.
    """
    M = M.to(torch.float64)
    T, scale = M.shape[0], _scale(M, "nash_mtl")
    if scale <= 0.0:
        raise SolverError("nash_mtl: all task gradients are zero; the bargaining solution is undefined")
    A = M / scale
    eig = torch.linalg.eigvalsh(A)
    if float(eig.min()) <= 1e-12 * float(eig.max()):
        A = A + ridge * torch.eye(T, dtype=torch.float64, device=M.device)
    alpha = A.diagonal().rsqrt()
    for _ in range(max_iter):
        Aa = A @ alpha
        residual = float((alpha * Aa - 1.0).abs().max())
        # alpha_i (A alpha)_i sums terms that cancel when A is ill-conditioned: allow their rounding
        noise = 1e3 * torch.finfo(torch.float64).eps * float((alpha * (A.abs() @ alpha)).max())
        if residual <= tol + noise:
            return alpha / math.sqrt(scale)
        grad = Aa - 1.0 / alpha
        step = -torch.linalg.solve(A + torch.diag(alpha.pow(-2)), grad)
        alpha = _positive_line_search(A, alpha, step, grad)
    raise SolverError(f"nash_mtl: Newton's method did not converge in {max_iter} iterations "
                      f"(max |alpha_i (M alpha)_i - 1| = {residual:.3g} > {tol + noise:.3g})")


def _positive_line_search(A: torch.Tensor, alpha: torch.Tensor, step: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Backtracking along ``step`` that keeps every alpha_i > 0.

    A trial is accepted when it decreases f enough (Armijo) or, once f stops resolving the
    progress in float64, when it halves the stationarity residual max |alpha_i (A alpha)_i - 1|.
    """
    t, f0, slope = 1.0, _nash_objective(A, alpha), float(grad @ step)
    res0 = float((alpha * (A @ alpha) - 1.0).abs().max())
    while t > 1e-20:
        trial = alpha + t * step
        if bool((trial > 0).all()):
            if _nash_objective(A, trial) <= f0 + 1e-4 * t * slope:
                return trial
            if float((trial * (A @ trial) - 1.0).abs().max()) <= 0.5 * res0:
                return trial
        t *= 0.5
    raise SolverError("nash_mtl: the Newton line search failed to decrease the objective")


def nash_mtl(G: torch.Tensor) -> torch.Tensor:
    """Nash-MTL direction d = G^T alpha. G: [T, P] -> [P]."""
    return combine(nash_mtl_weights(gram(G)), G)
