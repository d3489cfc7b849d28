"""Hierarchical risk parity (HRP), within weight bounds.

López de Prado (2016), "Building diversified portfolios that outperform out of
sample", J. Portfolio Management 42(4), as PyPortfolioOpt's ``HRPOpt.optimize()``
with its defaults:

1. correlation distance ``d_ij = √((1 - ρ_ij) / 2)`` (clipped to [0, 1]);
2. single-linkage clustering of ``d`` (``scipy.cluster.hierarchy.linkage``);
3. quasi-diagonalisation: the leaves of the dendrogram in pre-order;
4. recursive bisection of that order: each list is cut into halves ``L`` and
   ``R`` (``L`` the first ``⌊k/2⌋``); with ``V(C) = u'Σ_CC u`` for the
   inverse-variance weights ``u ∝ 1/diag(Σ_CC)`` of a cluster, ``L`` receives the
   share ``α = 1 - V(L) / (V(L) + V(R))`` of the parent's weight and ``R`` the rest.

Bounds (which PyPortfolioOpt's HRP ignores) are honoured inside the bisection: a
cluster ``C`` holding the total weight ``B_C`` can only be filled when
``Σ_C lower <= B_C <= Σ_C upper``. At every cut the HRP share ``α B`` is moved to the
nearest value of the interval that keeps both halves fillable,
``B_L ∈ [max(Σ_L lower, B - Σ_R upper), min(Σ_L upper, B - Σ_R lower)]``, and
``B_R = B - B_L``. The interval is never empty when the parent is fillable, and the
root (``B = 1``) is whenever the bounds can sum to 1, so every leaf ends within its
bounds and the weights sum to 1. When no bound binds this is exactly HRP; when one
does, only the cuts above the bound asset change, by the least amount possible.
Σ and ρ come from the chosen risk model (``ρ = Σ_ij / √(Σ_ii Σ_jj)``).
"""

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform


def quasi_diagonal_order(cov: np.ndarray) -> list[int]:
    """The assets in the order of the single-linkage dendrogram of ``√((1 - ρ)/2)``.

    Args:
        cov: covariance, shape (n, n), positive diagonal.

    Returns:
        the n asset indices, leaves in pre-order.
    """
    n = cov.shape[0]
    if n == 1:
        return [0]
    scale = 1.0 / np.sqrt(np.diag(cov))
    correlation = cov * scale[:, None] * scale[None, :]
    distance = np.sqrt(np.clip((1.0 - correlation) / 2.0, 0.0, 1.0))
    links = hierarchy.linkage(squareform(distance, checks=False), "single")
    return [int(i) for i in hierarchy.to_tree(links, rd=False).pre_order()]


def _cluster_variance(cov: np.ndarray, items: list[int]) -> float:
    block = cov[np.ix_(items, items)]
    inverse = 1.0 / np.diag(block)
    inverse /= inverse.sum()
    return float(inverse @ block @ inverse)


def hrp_weights(cov: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Hierarchical risk parity weights within ``lower <= w <= upper``.

    Args:
        cov: covariance, shape (n, n), positive diagonal.
        lower, upper: bounds, shape (n,), with ``Σ lower <= 1 <= Σ upper``.

    Returns:
        weights of shape (n,), within bounds, summing to 1.
    """
    order = quasi_diagonal_order(cov)
    weights = np.zeros(cov.shape[0])
    # Breadth-first over the bisection, as López de Prado's listing (the order of the
    # cuts does not matter: each depends only on its own cluster and total).
    pending = [(order, 1.0)]
    while pending:
        cluster, total = pending.pop()
        if len(cluster) == 1:
            weights[cluster[0]] = total
            continue
        half = len(cluster) // 2
        left, right = cluster[:half], cluster[half:]
        left_variance = _cluster_variance(cov, left)
        right_variance = _cluster_variance(cov, right)
        alpha = 1.0 - left_variance / (left_variance + right_variance)
        low = max(lower[left].sum(), total - upper[right].sum())
        high = min(upper[left].sum(), total - lower[right].sum())
        left_total = min(max(alpha * total, low), high)
        pending.append((left, left_total))
        pending.append((right, total - left_total))
    return weights
