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
        the n asset indices, leaves in pre-order (as
        ``scipy.cluster.hierarchy.to_tree(links).pre_order()``).
    """
    n = cov.shape[0]
    if n == 1:
        return [0]
    scale = 1.0 / np.sqrt(np.diag(cov))
    correlation = cov * scale[:, None] * scale[None, :]
    distance = np.sqrt(np.clip((1.0 - correlation) / 2.0, 0.0, 1.0))
    links = hierarchy.linkage(squareform(distance, checks=False), "single")
    # Pre-order over the merge table directly: row k merges clusters links[k, 0] and
    # links[k, 1] into cluster n + k (left first). to_tree builds a Python object per
    # node, and leaves_list validates the table again; this walk is what both return.
    children = links[:, :2].astype(np.int64).tolist()
    order, pending = [], [2 * n - 2]
    while pending:
        node = pending.pop()
        if node < n:
            order.append(node)
        else:
            left, right = children[node - n]
            pending.append(right)
            pending.append(left)
    return order


def hrp_weights(cov: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Hierarchical risk parity weights within ``lower <= w <= upper``.

    Args:
        cov: covariance, shape (n, n), positive diagonal.
        lower, upper: bounds, shape (n,), with ``Σ lower <= 1 <= Σ upper``.

    Returns:
        weights of shape (n,), within bounds, summing to 1.
    """
    order = quasi_diagonal_order(cov)
    # In the quasi-diagonal order every cluster of the bisection is a contiguous
    # range [start, stop), so its block of Σ is a slice, not a gather.
    ordered = cov[np.ix_(order, order)]
    inverse_variance = 1.0 / np.diag(ordered)
    ordered_lower, ordered_upper = lower[order], upper[order]
    # Bounds (0, 1) never bind: every cut keeps HRP's share (no interval to clip to).
    unbounded = not lower.any() and bool(np.all(upper >= 1.0))

    def cluster_variance(start, stop):
        inverse = inverse_variance[start:stop] / inverse_variance[start:stop].sum()
        return float(inverse @ ordered[start:stop, start:stop] @ inverse)

    ordered_weights = np.zeros(cov.shape[0])
    # Breadth-first over the bisection, as López de Prado's listing (the order of the
    # cuts does not matter: each depends only on its own cluster and total).
    pending = [(0, len(order), 1.0)]
    while pending:
        start, stop, total = pending.pop()
        if stop - start == 1:
            ordered_weights[start] = total
            continue
        middle = start + (stop - start) // 2
        left_variance = cluster_variance(start, middle)
        right_variance = cluster_variance(middle, stop)
        alpha = 1.0 - left_variance / (left_variance + right_variance)
        if unbounded:
            left_total = alpha * total  # the interval below is [0, total] and 0 < α < 1
        else:
            low = max(ordered_lower[start:middle].sum(),
                      total - ordered_upper[middle:stop].sum())
            high = min(ordered_upper[start:middle].sum(),
                       total - ordered_lower[middle:stop].sum())
            left_total = min(max(alpha * total, low), high)
        pending.append((start, middle, left_total))
        pending.append((middle, stop, total - left_total))
    weights = np.empty_like(ordered_weights)
    weights[order] = ordered_weights
    return weights
