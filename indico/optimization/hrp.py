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

import functools

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


#: Up to this many assets every cluster is weighed in one matrix product, a
#: (2(n - 1) x n) by (n x n) product: O(n³) work, cheap at these sizes. Above it,
#: each cut's two blocks alone (O(n² log n) work in all, but two products a cut).
ONE_PRODUCT_MAX = 128


@functools.lru_cache(maxsize=64)
def _bisection(n: int) -> tuple[tuple[int, int, int], ...]:
    """The cuts ``(start, middle, stop)`` of the recursive bisection of ``range(n)``.

    In the order :func:`hrp_weights` makes them: they depend on ``n`` alone, so
    every cluster the bisection will weigh is known before the first cut.
    """
    cuts, pending = [], [(0, n)]
    while pending:
        start, stop = pending.pop()
        if stop - start > 1:
            middle = start + (stop - start) // 2
            cuts.append((start, middle, stop))
            pending.append((start, middle))
            pending.append((middle, stop))
    return tuple(cuts)


@functools.lru_cache(maxsize=64)
def _halves(n: int) -> np.ndarray:
    """Which assets each half of each cut of :func:`_bisection` holds.

    Returns:
        read-only bool array of shape (2 (n - 1), n): row ``2k`` the left half of
        cut ``k``, row ``2k + 1`` its right half.
    """
    bounds = np.array([(start, middle, middle, stop) for start, middle, stop in _bisection(n)],
                      dtype=np.int64).reshape(-1, 2)
    assets = np.arange(n)
    halves = (assets >= bounds[:, :1]) & (assets < bounds[:, 1:])
    halves.flags.writeable = False
    return halves


def _cluster_variances(ordered: np.ndarray) -> tuple[list[float], list[float]]:
    """``V(L)`` and ``V(R)`` of every cut of :func:`_bisection`, in one pass.

    ``V(C) = u'Σ_CC u`` with ``u = s_C / Σ s_C`` and ``s = 1 / diag(Σ)``. Row ``k``
    of ``members`` is ``u`` of cluster ``k`` on its range (:func:`_halves`) and zero
    elsewhere, so the variances are the row sums of ``(members Σ) ∘ members``: one
    matrix product for the 2 (n - 1) clusters instead of two small products each
    (they took 0.25 ms of a 20-asset ``hrp``, docs/PERFORMANCE.md).

    Args:
        ordered: the covariance in the quasi-diagonal order, shape (n, n).

    Returns:
        ``(left, right)``: the variances of each cut's halves, in the order of the cuts.
    """
    n = ordered.shape[0]
    if n > ONE_PRODUCT_MAX:
        return _cluster_variances_by_block(ordered)
    members = _halves(n) / np.diag(ordered)
    members /= members.sum(axis=1)[:, None]
    variances = ((members @ ordered) * members).sum(axis=1).tolist()
    return variances[0::2], variances[1::2]


def _cluster_variances_by_block(ordered: np.ndarray) -> tuple[list[float], list[float]]:
    """:func:`_cluster_variances` one cut at a time, on each half's block of Σ."""
    inverse_variance = 1.0 / np.diag(ordered)

    def variance(start: int, stop: int) -> float:
        inverse = inverse_variance[start:stop] / inverse_variance[start:stop].sum()
        return float(inverse @ ordered[start:stop, start:stop] @ inverse)

    cuts = _bisection(ordered.shape[0])
    return ([variance(start, middle) for start, middle, _ in cuts],
            [variance(middle, stop) for _, middle, stop in cuts])


def hrp_weights(cov: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Hierarchical risk parity weights within ``lower <= w <= upper``.

    Args:
        cov: covariance, shape (n, n), positive diagonal.
        lower, upper: bounds, shape (n,), with ``Σ lower <= 1 <= Σ upper``.

    Returns:
        weights of shape (n,), within bounds, summing to 1.
    """
    order = quasi_diagonal_order(cov)
    n = len(order)
    # In the quasi-diagonal order every cluster of the bisection is a contiguous
    # range [start, stop) of assets, whatever the data: the cuts are known at once.
    ordered = cov[np.ix_(order, order)]
    cuts = _bisection(n)
    left_variances, right_variances = _cluster_variances(ordered)
    # Bounds (0, 1) never bind: every cut keeps HRP's share (no interval to clip to).
    unbounded = not lower.any() and bool(np.all(upper >= 1.0))
    # Prefix sums of the ordered bounds: a range's sum is a difference of two (to
    # rounding; the engine snaps weights within 1e-9 of a bound onto it).
    lower_sums = [0.0, *np.cumsum(lower[order]).tolist()]
    upper_sums = [0.0, *np.cumsum(upper[order]).tolist()]
    ordered_weights = [0.0] * n
    totals = {(0, n): 1.0}
    # Each cut depends only on its own cluster and total: a parent is cut before
    # its halves, and the order among the rest does not change the result.
    for (start, middle, stop), left_variance, right_variance in zip(
            cuts, left_variances, right_variances, strict=True):
        total = totals.pop((start, stop))
        alpha = 1.0 - left_variance / (left_variance + right_variance)
        if unbounded:
            left_total = alpha * total  # the interval below is [0, total] and 0 < α < 1
        else:
            low = max(lower_sums[middle] - lower_sums[start],
                      total - (upper_sums[stop] - upper_sums[middle]))
            high = min(upper_sums[middle] - upper_sums[start],
                       total - (lower_sums[stop] - lower_sums[middle]))
            left_total = min(max(alpha * total, low), high)
        for first, last, share in ((start, middle, left_total), (middle, stop, total - left_total)):
            if last - first == 1:
                ordered_weights[first] = share
            else:
                totals[(first, last)] = share
    if n == 1:
        ordered_weights[0] = 1.0
    weights = np.empty(n)
    weights[order] = ordered_weights
    return weights
