"""Global maximisation of the Sharpe ratio of a never-rebalanced portfolio.

The seed's objective: buy ``w_i`` of each asset on the first day and hold. With prices
normalised to 1 on the first day (``N = P / P[0]``, shape (T, n)) the value is
``V_t = N_t · w`` and the daily return ``r_t = V_t / V_{t-1} - 1`` is a ratio of two
linear functions of ``w``:

    r_t = (x_t · w) / (y_t · w),   x_t = N_t - N_{t-1},   y_t = N_{t-1}.

The objective ``f(w) = √252 · mean(r - rf/252) / std(r)`` (``std`` with ddof 1) is
invariant to scaling ``w`` and is *not* concave: over long windows the drift of the
holdings creates several local maxima (for example one dominated by a stock that grew
400-fold and one that is diversified). The seed ran SLSQP with finite differences from
``1/n`` and kept whatever local maximum it reached.

Method (deterministic, seeded):

1. **Starting points**: ``1/n`` (the seed's start); the mean-variance tangency
   portfolio; the tangency portfolio corrected for drift (``w_i ∝ h_i / mean_t N_i,t``,
   so that the *average* holding matches the tangency holding ``h``); the best
   vertices (one asset, or the bounded-simplex point nearest to it), all screened
   by their exact values in one matrix product; and the best of a batch of
   Dirichlet-random points, screened the same way.
2. **Local solves**: from the best start, then from every start that fails a
   hill-valley test against the maxima found so far (a dip in the objective on the
   segment between them means a different hill), a projected Newton method with the
   exact analytic gradient and Hessian (a few matrix products of size T × k × k per
   iteration, k = assets off their bounds), with eigenvalue modification where the
   reduced Hessian is not negative definite and an Armijo line search; it stops on
   the first-order KKT conditions (reduced gradient and multiplier signs).
3. The best local maximum wins. The tests and ``benchmarks/optimization_bench.py``
   cross-check it against dozens of random-start SLSQP runs and against the seed.

Shapes: ``T`` dates, ``n`` assets; weights are arrays of shape (n,).
"""

import functools

import numpy as np

from indico.error import OptimizationError
from indico.optimization.simplex import project_to_bounded_simplex

#: Trading days per year, for annualising the daily Sharpe ratio.
TRADING_DAYS = 252

#: Stop when the reduced gradient (in Sharpe units per unit weight) is this small.
GRADIENT_TOLERANCE = 1e-9

#: Number of Dirichlet-random points screened, and how many of the best are starts.
RANDOM_SCREEN = 64
RANDOM_STARTS = 2

#: Vertices (single-asset portfolios) used as starts, best first by exact value.
VERTEX_STARTS = 2

#: Two starting points closer than this (max-norm on weights) are the same point.
SAME_POINT = 1e-6

#: Interior points of the hill-valley test between a start and a known maximum.
HILL_POINTS = 8

MAX_NEWTON_ITERATIONS = 100

#: Points whose returns and moments are kept (a few per concurrent climb).
CACHE_SIZE = 16


class BuyAndHoldSharpe:
    """The buy-and-hold Sharpe ratio of a price matrix and its derivatives.

    Args:
        prices: array of shape (T, n), positive, T >= 3.
        risk_free_rate: annual risk-free rate; ``rf / 252`` is subtracted daily.
    """

    def __init__(self, prices, risk_free_rate=0.0):
        normalised = prices / prices[0]
        self.x = np.ascontiguousarray(normalised[1:] - normalised[:-1])
        self.y = np.ascontiguousarray(normalised[:-1])
        self.days = self.x.shape[0]
        self.daily_risk_free = risk_free_rate / TRADING_DAYS
        self.n = prices.shape[1]
        #: Number of distinct points evaluated (for tests and benchmarks).
        self.evaluations = 0
        self._cache = {}

    def batch_values(self, weights):
        """Return the objective for many portfolios at once.

        Args:
            weights: array of shape (n, k), each column a portfolio (any positive scale).

        Returns:
            array of shape (k,); ``-inf`` where the return series is constant.
        """
        returns = (self.x @ weights) / (self.y @ weights)
        mean = returns.mean(axis=0)
        std = returns.std(axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.sqrt(TRADING_DAYS) * (mean - self.daily_risk_free) / std
        return np.where(std > 0, value, -np.inf)

    def _basics(self, weights):
        """Daily returns and moments at ``weights``, cached for recent points.

        A line search evaluates a point and the next iteration differentiates at the
        same point (climbs take turns); the cache saves the T x n products.
        """
        key = weights.tobytes()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if len(self._cache) >= CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self.evaluations += 1
        inverse = 1.0 / (self.y @ weights)
        returns = (self.x @ weights) * inverse
        mean = returns.mean()
        deviation = returns - mean
        variance = deviation @ deviation / (self.days - 1)
        std = np.sqrt(variance)
        excess = mean - self.daily_risk_free
        value = np.sqrt(TRADING_DAYS) * excess / std if std > 0 else -np.inf
        self._cache[key] = cached = {
            "inverse": inverse, "returns": returns,
            "deviation": deviation, "variance": variance, "std": std, "excess": excess,
            "value": float(value), "gradient": None,
        }
        return cached

    def value(self, weights):
        """Return ``f(w)`` for one portfolio (shape (n,)); ``-inf`` if constant."""
        return self._basics(weights)["value"]

    def gradient(self, weights):
        """Return the gradient of ``f`` at ``weights``, shape (n,)."""
        basics = self._basics(weights)
        if basics["gradient"] is None:
            days, inverse = self.days, basics["inverse"]
            # d r_t / d w = (x_t - r_t y_t) / (y_t · w) =: d_t. Sums over t of c_t d_t
            # are two vector-matrix products: no T x n temporary.
            weights_x = np.stack((inverse / days, basics["deviation"] * inverse))
            weights_y = weights_x * basics["returns"]
            sums = weights_x @ self.x - weights_y @ self.y
            basics["grad_mean"] = sums[0]
            basics["grad_std"] = sums[1] / ((days - 1) * basics["std"])
            basics["gradient"] = np.sqrt(TRADING_DAYS) * (
                basics["grad_mean"] / basics["std"]
                - basics["excess"] * basics["grad_std"] / basics["variance"]
            )
        return basics["gradient"]

    def hessian(self, weights, block=None):
        """Return the Hessian of ``f`` at ``weights``.

        Args:
            weights: array of shape (n,).
            block: integer indices (shape (k,)) of the assets whose block is wanted;
                all assets when None.

        Returns:
            array of shape (k, k).
        """
        self.gradient(weights)
        basics = self._basics(weights)
        days, std = self.days, basics["std"]
        variance, excess = basics["variance"], basics["excess"]
        inverse, returns, deviation = basics["inverse"], basics["returns"], basics["deviation"]
        x, y = self.x, self.y
        grad_mean, grad_std = basics["grad_mean"], basics["grad_std"]
        if block is not None:
            x, y = x[:, block], y[:, block]
            grad_mean, grad_std = grad_mean[block], grad_std[block]
        # d² r_t / dw dw' = -(d_t y_t' + y_t d_t') / (y_t · w). The three sums over t
        # that the Hessian needs come from one product D' [D | Ỹ | dev·Ỹ].
        k = x.shape[1]
        stacked = np.empty((days, 3 * k))
        d_rows, y_scaled, weighted = stacked[:, :k], stacked[:, k:2 * k], stacked[:, 2 * k:]
        np.multiply(y, inverse[:, None], out=y_scaled)
        np.multiply(x, inverse[:, None], out=d_rows)
        d_rows -= returns[:, None] * y_scaled
        np.multiply(y_scaled, deviation[:, None], out=weighted)
        products = d_rows.T @ stacked
        dd, dy, dvy = products[:, :k], products[:, k:2 * k], products[:, 2 * k:]
        hess_mean = -(dy + dy.T) / days
        hess_variance = (2.0 / (days - 1)) * (
            dd - days * np.outer(grad_mean, grad_mean) - (dvy + dvy.T)
        )
        hess_std = hess_variance / (2 * std) - np.outer(grad_std, grad_std) / std
        cross = np.outer(grad_mean, grad_std)
        return np.sqrt(TRADING_DAYS) * (
            hess_mean / std
            - (cross + cross.T) / variance
            - excess * hess_std / variance
            + 2 * excess * np.outer(grad_std, grad_std) / (variance * std)
        )


@functools.lru_cache(maxsize=64)
def _null_space_of_ones(size):
    """Orthonormal basis, shape (size, size - 1), of the vectors summing to zero."""
    # Householder reflector mapping e_1 to the normalised ones vector; its other
    # columns span the orthogonal complement.
    v = np.full(size, 1.0 / np.sqrt(size))
    v[0] -= 1.0
    norm = v @ v
    if norm == 0.0:
        return np.eye(size)[:, 1:]
    reflector = np.eye(size) - 2.0 * np.outer(v, v) / norm
    return reflector[:, 1:]


class Climb:
    """One local ascent: a projected Newton method on the bounded simplex.

    Projected Newton method (Bertsekas, SIAM J. Control Optim. 20(2), 1982) on
    ``{1'w = 1, lower <= w <= upper}``: bounds whose multipliers say "stay" are held,
    a Newton step with the exact Hessian is taken on the other assets within the
    budget plane (the reduced Hessian made negative definite by flipping and flooring
    its eigenvalues, so the step ascends), and the step is projected back onto the
    feasible set with an Armijo test. Many bounds can become active in one step.

    Args:
        problem: a :class:`BuyAndHoldSharpe`.
        start: feasible weights, shape (n,).
        lower, upper: arrays of shape (n,), with ``lower >= 0``.
        tolerance: first-order optimality tolerance.
    """

    BOUND_GAP = 1e-12

    def __init__(self, problem, start, lower, upper, tolerance=GRADIENT_TOLERANCE):
        self.problem = problem
        self.lower, self.upper = lower, upper
        self.tolerance = tolerance
        self.movable = (upper - lower) > 1e-15
        self.weights = start.astype(float).copy()
        self.value = problem.value(self.weights)
        self.gradient = problem.gradient(self.weights)
        self.converged = False
        self.iterations = 0

    def step(self):
        """Take one Newton step, or set ``converged`` when the KKT conditions hold.

        Raises:
            OptimizationError: after ``MAX_NEWTON_ITERATIONS`` steps.
        """
        self.iterations += 1
        if self.iterations > MAX_NEWTON_ITERATIONS:
            raise OptimizationError(
                "buy_and_hold_sharpe did not converge; try a longer date range or another "
                "objective (max_sharpe is the convex, daily-rebalanced counterpart)."
            )
        w, gradient, lower, upper = self.weights, self.gradient, self.lower, self.upper
        movable, tolerance, gap = self.movable, self.tolerance, self.BOUND_GAP
        at_lower = movable & (w <= lower + gap)
        at_upper = movable & (w >= upper - gap) & ~at_lower
        interior = movable & ~at_lower & ~at_upper
        if interior.any():
            eta = gradient[interior].mean()
        else:
            # At a vertex: any eta between the best lower-bound and the worst
            # upper-bound gradient certifies it; otherwise the midpoint releases both.
            eta = 0.5 * (
                float(np.max(gradient[at_lower], initial=-np.inf))
                + float(np.min(gradient[at_upper], initial=np.inf))
            )
            if not np.isfinite(eta):
                eta = float(gradient[movable].mean())
        # A bound stays active when moving off it cannot increase f. Off the face's
        # stationary point eta is only an estimate, so a bound is released only when
        # its multiplier has the wrong sign by more than the face's own reduced
        # gradient; otherwise bounds would be dropped and re-hit in turn (zigzag).
        interior_gradient = gradient[interior]
        face_slope = (float(np.max(np.abs(interior_gradient - eta)))
                      if interior_gradient.size > 1 else 0.0)
        threshold = max(tolerance, face_slope)
        release = (at_lower & (gradient - eta > threshold)) | (
            at_upper & (gradient - eta < -threshold)
        )
        free = np.flatnonzero(interior | release)
        if free.size < 2:
            self.converged = True
            return
        basis = _null_space_of_ones(free.size)
        reduced_gradient = basis.T @ gradient[free]
        if not release.any() and np.max(np.abs(reduced_gradient)) <= tolerance:
            self.converged = True
            return
        # Only the free block of the Hessian is needed: near the optimum most assets
        # sit at a bound, so this is much cheaper than the full n x n matrix.
        reduced_hessian = basis.T @ self.problem.hessian(w, block=free) @ basis
        direction = np.zeros(w.size)
        direction[free] = basis @ _ascent_direction(reduced_hessian, reduced_gradient)
        step = 1.0
        while True:
            candidate = w + step * direction
            # The direction keeps the budget; when it crosses bounds, project the free
            # assets only (within their share of the budget), so that assets held at
            # a bound are not lifted off it by the projection's shift.
            if np.any(candidate[free] < lower[free]) or np.any(candidate[free] > upper[free]):
                candidate[free] = project_to_bounded_simplex(
                    candidate[free], lower[free], upper[free], float(w[free].sum())
                )
            candidate_value = self.problem.value(candidate)
            gain = float(gradient @ (candidate - w))
            if candidate_value >= self.value + 1e-4 * gain and candidate_value >= self.value:
                break
            step *= 0.5
            if step < 1e-14:
                # No ascent along the projected path: converged to rounding.
                self.converged = True
                return
        if (candidate_value - self.value <= 1e-14 * max(1.0, abs(self.value))
                and np.max(np.abs(candidate - w)) <= 1e-10):
            # Stalled at rounding level: the reduced gradient cannot get smaller.
            self.converged = True
            return
        self.weights, self.value = candidate, candidate_value
        self.gradient = self.problem.gradient(candidate)


def _ascent_direction(hessian, gradient):
    """Newton ascent step ``-H⁻¹ g``, with ``-H`` made positive definite if needed.

    Args:
        hessian: reduced Hessian, shape (k, k); gradient: shape (k,).

    Returns:
        array of shape (k,).
    """
    try:
        # Near a maximum -H is positive definite and Cholesky is the cheap path.
        factor = np.linalg.cholesky(-hessian)
        return np.linalg.solve(factor.T, np.linalg.solve(factor, gradient))
    except np.linalg.LinAlgError:
        eigenvalues, vectors = np.linalg.eigh(-hessian)
        floor = 1e-8 * max(1.0, float(np.max(np.abs(eigenvalues))))
        eigenvalues = np.maximum(np.abs(eigenvalues), floor)
        return vectors @ ((vectors.T @ gradient) / eigenvalues)


def local_maximum(problem, start, lower, upper, tolerance=GRADIENT_TOLERANCE):
    """Climb from ``start`` to a local maximum (see :class:`Climb`).

    Returns:
        ``(weights, value)`` with weights of shape (n,).
    """
    climb = Climb(problem, start, lower, upper, tolerance)
    while not climb.converged:
        climb.step()
    return climb.weights, climb.value


def same_hill(problem, start, maximum, start_value, maximum_value, points=HILL_POINTS):
    """Hill-valley test: is there no valley between ``start`` and a known maximum?

    When the objective along the segment from ``start`` to ``maximum`` never dips
    below the lower of the two end values, ``start`` is taken to lie on that
    maximum's hill and is not climbed again (Ursem, 2000, "Multinational
    evolutionary algorithms"; the same idea as Törn's clustering multistart). The
    interior points are evaluated in one matrix product.

    Args:
        problem: a :class:`BuyAndHoldSharpe`.
        start, maximum: arrays of shape (n,).
        start_value, maximum_value: the objective at both ends.
        points: interior points tested.

    Returns:
        bool.
    """
    fractions = np.linspace(0.0, 1.0, points + 2)[1:-1]
    segment = start[:, None] * (1.0 - fractions) + maximum[:, None] * fractions
    floor = min(start_value, maximum_value)
    return bool(np.all(problem.batch_values(segment) >= floor - 1e-12 * max(1.0, abs(floor))))


def starting_points(problem, lower, upper, tangency, seed=0):
    """Return the distinct starting points of the global search, best first.

    Args:
        problem: a :class:`BuyAndHoldSharpe`.
        lower, upper: arrays of shape (n,).
        tangency: the mean-variance tangency portfolio, shape (n,), or None.
        seed: seed of the random generator (the search is deterministic).

    Returns:
        list of arrays of shape (n,).
    """
    n = problem.n
    structured = [np.full(n, 1.0 / n)]
    if tangency is not None:
        structured.append(tangency)
        # Hold, on average over the window, what the tangency portfolio holds.
        mean_growth = problem.y.mean(axis=0)
        structured.append(tangency / mean_growth)
    structured = [project_to_bounded_simplex(s / s.sum(), lower, upper) for s in structured]
    # Vertices: exact values in one batch; keep the best few.
    if np.all(lower <= 0) and np.all(upper >= 1):
        vertices = np.eye(n)
    else:
        vertices = np.stack(
            [project_to_bounded_simplex(e, lower, upper) for e in np.eye(n)], axis=1
        )
    vertex_values = problem.batch_values(vertices)
    best_vertices = [vertices[:, i] for i in np.argsort(-vertex_values)[:VERTEX_STARTS]]
    # Random screen: one matrix product for all points.
    rng = np.random.default_rng(seed)
    random_points = rng.dirichlet(np.full(n, 0.5), size=RANDOM_SCREEN).T
    if np.any(lower > 0) or np.any(upper < 1):
        random_points = np.stack(
            [project_to_bounded_simplex(c, lower, upper) for c in random_points.T], axis=1
        )
    random_values = problem.batch_values(random_points)
    best_random = [random_points[:, i] for i in np.argsort(-random_values)[:RANDOM_STARTS]]
    candidates = structured + best_vertices + best_random
    # Best first: the first climb usually finds the global maximum, and the later
    # ones then stop early in its basin.
    values = problem.batch_values(np.stack(candidates, axis=1))
    starts = []
    for index in np.argsort(-values, kind="stable"):
        point = candidates[index]
        if all(np.max(np.abs(point - other)) > SAME_POINT for other in starts):
            starts.append(point)
    return starts


def global_maximum(prices, lower, upper, risk_free_rate=0.0, tangency=None, seed=0):
    """Return the best local maximum of the buy-and-hold Sharpe ratio over all starts.

    Args:
        prices: array of shape (T, n), positive.
        lower, upper: weight bounds, shape (n,), ``0 <= lower <= upper``, feasible.
        risk_free_rate: annual.
        tangency: mean-variance tangency weights (shape (n,)) to start from, or None.
        seed: seed of the random screen.

    Returns:
        ``(weights, value)``; weights of shape (n,).
    """
    problem = BuyAndHoldSharpe(prices, risk_free_rate)
    found = []
    # Best start first: on most windows its climb reaches the global maximum and
    # every other start then passes the hill-valley test without a climb.
    for start in starting_points(problem, lower, upper, tangency, seed):
        start_value = problem.value(start)
        if any(same_hill(problem, start, weights, start_value, value)
               for weights, value in found):
            continue
        found.append(local_maximum(problem, start, lower, upper))
    if not found:
        return None, -np.inf
    return max(found, key=lambda pair: pair[1])
