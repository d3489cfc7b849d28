"""Exact mean-variance optimization over the long-only, bounded simplex.

Every mean-variance objective of the engine (``min_volatility``, ``max_sharpe``,
``efficient_return``, ``efficient_risk``) is a point of the efficient frontier

    w(t) = argmin_w  1/2 w'Σw - t μ'w   s.t.  1'w = 1,  lower <= w <= upper,

for some risk tolerance ``t >= 0``. This module solves that parametric quadratic
program exactly with a primal active-set method (Nocedal & Wright, *Numerical
Optimization*, 2nd ed., Algorithm 16.3), specialised to simple bounds plus the
budget constraint, and walks along ``t``:

* for a fixed working set (free assets F, the others held at a bound) the solution
  is affine in ``t``: ``w(t) = w0 + t w1``, valid on an interval ``[t_lo, t_hi]``
  (a *segment* of Markowitz's critical line);
* on a segment ``w0'Σw1 = 0`` and ``w1'Σw1 = μ'w1 =: q2``, so return, variance and
  the Sharpe stationarity condition have closed forms:
  ``r(t) = r0 + t q2``, ``σ²(t) = q0 + t² q2`` and the Sharpe ratio
  ``(r(t) - rf) / σ(t)`` is maximal at ``t* = q0 / (r0 - rf)``;
* the target (maximum Sharpe, a return, a volatility) is monotone in ``t``, so a
  safeguarded Newton/bisection walk over segments, warm-starting the active set,
  lands on the segment that contains it, where the closed form is exact.

For speed the engine first tries a primal-dual active-set iteration (Hintermüller,
Ito & Kunisch, SIAM J. Optim. 13(3), 2002) that changes many bounds at once and picks
``t`` from the closed form of the current working set; it usually ends in 2-6 linear
solves. It is accepted only when its working set is primal and dual feasible at its
``t`` (which is the optimality certificate); otherwise the guaranteed primal active-set
walk above takes over from a feasible vertex.

The maximum-Sharpe point found this way is the global optimum: the problem is a
quasi-convex fractional program whose optimum lies on the frontier (the same point
as Cornuejols & Tütüncü's convex reformulation), and the KKT conditions are
verified on exit. Pure numpy; dense linear algebra on the free block only.
"""

import dataclasses
import math

import numpy as np
from scipy.linalg import lapack

from indico.error import OptimizationError

#: Relative tolerance for primal feasibility and for the sign of multipliers.
FEASIBILITY_TOLERANCE = 1e-11

#: Safeguard on the number of active-set iterations per solve (each iteration
#: adds or removes one bound; a cold start needs at most about ``n`` of each).
MAX_ACTIVE_SET_ITERATIONS_PER_ASSET = 20


@dataclasses.dataclass(frozen=True)
class Segment:
    """One piece of the critical line: the optimum for every ``t`` in ``[t_lo, t_hi]``.

    Attributes:
        t_lo, t_hi: the interval of risk tolerance on which the working set is optimal
            (``t_hi`` may be ``inf``).
        w0, w1: arrays of shape (n,); the optimum is ``w0 + t * w1``.
        q0: ``w0'Σw0``; the variance at ``t`` is ``q0 + t**2 * q2``.
        q2: ``w1'Σw1 == μ'w1`` (>= 0).
        r0: ``μ'w0``; the expected return at ``t`` is ``r0 + t * q2``.
    """

    t_lo: float
    t_hi: float
    w0: np.ndarray
    w1: np.ndarray
    q0: float
    q2: float
    r0: float

    def weights(self, t):
        """Return the optimal weights at ``t`` (shape (n,))."""
        return self.w0 + t * self.w1

    def expected_return(self, t):
        """Return ``μ'w(t)``."""
        return self.r0 + t * self.q2

    def variance(self, t):
        """Return ``w(t)'Σw(t)``."""
        return self.q0 + t * t * self.q2


def check_bounds(lower, upper):
    """Check that bounds admit a fully invested portfolio.

    Args:
        lower, upper: arrays of shape (n,).

    Raises:
        OptimizationError: when a lower bound exceeds its upper bound, or when the
            bounds cannot sum to 1.
    """
    if (lower > upper).any():
        raise OptimizationError(
            "weightBounds: each lower bound must not exceed its upper bound."
        )
    low_sum, high_sum = float(lower.sum()), float(upper.sum())
    # Each case gets the advice that can help: more symbols only raise the least
    # total, and a higher upper bound does not lower it.
    if low_sum > 1.0 + 1e-12:
        raise OptimizationError(
            f"weightBounds cannot sum to 1: the lower bounds of the {lower.size} assets "
            f"total {low_sum:.6g}, more than 1. Lower the lower bounds (to at most "
            f"{1.0 / lower.size:.6g} each when they are equal), or drop symbols that have one."
        )
    if high_sum < 1.0 - 1e-12:
        raise OptimizationError(
            f"weightBounds cannot sum to 1: the upper bounds of the {lower.size} assets "
            f"total {high_sum:.6g}, less than 1. Raise the upper bounds (to at least "
            f"{1.0 / lower.size:.6g} each when they are equal), or add symbols."
        )


def extreme_return_portfolio(mu, lower, upper, maximize=True):
    """Return the feasible portfolio with the highest (or lowest) expected return.

    This is the linear program ``max μ'w s.t. 1'w = 1, lower <= w <= upper``, solved
    exactly by filling the budget left over by the lower bounds in order of
    expected return (a fractional knapsack).

    Args:
        mu: array of shape (n,).
        lower, upper: arrays of shape (n,), already checked by :func:`check_bounds`.
        maximize: highest return when True, lowest when False.

    Returns:
        array of shape (n,).
    """
    order = np.argsort(-mu if maximize else mu, kind="stable")
    return _fill_in_order(order, lower, upper)


def _fill_in_order(order, lower, upper):
    """Start from the lower bounds and pour the rest of the budget in ``order``."""
    weights = lower.astype(float)
    budget = 1.0 - weights.sum()
    room = (upper - lower)[order]
    taken = np.minimum(room, np.maximum(budget - np.concatenate(([0.0], np.cumsum(room)[:-1])), 0))
    weights[order] += taken
    return weights


class Frontier:
    """The efficient frontier of ``(mu, cov)`` under bounds, solved on demand.

    Args:
        mu: expected annual returns, shape (n,).
        cov: annual covariance, shape (n, n), positive definite (the caller adds a
            ridge when the sample covariance is singular).
        lower, upper: weight bounds, shape (n,), feasible (see :func:`check_bounds`).

    The object keeps the last working set and point, so successive calls to
    :meth:`solve` with nearby ``t`` cost a few active-set iterations each.
    """

    def __init__(self, mu, cov, lower, upper):
        self.mu = mu
        self.cov = cov
        self.lower = lower
        self.upper = upper
        self.n = mu.size
        self.iterations = 0
        # Assets whose bounds coincide never move; releasing them would cycle.
        self._movable = (upper - lower) > 1e-15
        self._all_movable = bool(self._movable.all())
        scale = float(np.abs(cov.diagonal()).max()) + float(np.abs(mu).max())
        self._tol_multiplier = FEASIBILITY_TOLERANCE * max(scale, 1e-300)
        self._tol_weight = FEASIBILITY_TOLERANCE
        # The primal method's cold start, a vertex (see _start_at_vertex), is built on
        # the first call to solve: the primal-dual path does not need it.
        self._w = None
        self._state = None
        # (working set as bytes, its affine solution) of the last answer.
        self._affine = None
        # Cold primal-dual starts have every movable asset free (or those the caller
        # names): the first linear solve is then the budget-only optimum, whose
        # negative weights seed the bounds.
        self._warm = False
        # (asset, its next state) whose condition ends the last segment at t_hi, or
        # None when t_hi is infinite (see _segment and solve_past).
        self._ending = None

    def _start_at_vertex(self):
        """Start the primal method from a vertex: the least volatile assets first.

        The cold start then sits close to the minimum-variance portfolio; exactly one
        asset is free.
        """
        order = np.argsort(np.diag(self.cov), kind="stable")
        self._w = _fill_in_order(order, self.lower, self.upper)
        self._state = self._vertex_state(self._w, order)

    def _vertex_state(self, w, order):
        """Working set for a vertex: every asset at a bound except one pivot."""
        state = np.where(w >= self.upper, 1, -1).astype(np.int8)
        partial = np.flatnonzero((w > self.lower) & (w < self.upper))
        # The asset filled last is the natural pivot; if the budget ran out exactly
        # on a bound, any asset can stay free (the step along it is then zero).
        pivot = partial[0] if partial.size else order[0]
        state[pivot] = 0
        return state

    def solve(self, t):
        """Solve the frontier problem at risk tolerance ``t`` and return its segment.

        Args:
            t: risk tolerance, ``t >= 0``.

        Returns:
            the :class:`Segment` containing ``t``.

        Raises:
            OptimizationError: when the active-set method does not converge (a
                numerical failure; the message says so).
        """
        cov, mu, lower, upper = self.cov, self.mu, self.lower, self.upper
        if self._w is None:
            self._start_at_vertex()
        w, state = self._w.copy(), self._state.copy()
        max_iterations = MAX_ACTIVE_SET_ITERATIONS_PER_ASSET * self.n + 50
        for _ in range(max_iterations):
            self.iterations += 1
            is_free = state == 0
            free = is_free.nonzero()[0]
            key = state.tobytes()
            if self._affine is not None and self._affine[0] == key:
                # The working set of the last answer (the walk's next solve starts
                # there): its affine solution depends on nothing else.
                w0, w1, eta0, eta1 = self._affine[1]
            else:
                w0, w1, eta0, eta1 = self._affine_solution(free, np.where(is_free, 0.0, w))
            w_free = w[free]
            target = w0[free] + t * w1[free]
            step = target - w_free
            if np.abs(step).max() > self._tol_weight:
                # Ratio test: walk towards the working-set optimum until a bound blocks.
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(
                        step < 0,
                        (lower[free] - w_free) / step,
                        np.where(step > 0, (upper[free] - w_free) / step, np.inf),
                    )
                blocking = int(ratio.argmin())
                alpha = ratio[blocking]
                if alpha < 1.0:
                    w[free] = w_free + max(alpha, 0.0) * step
                    index = free[blocking]
                    if step[blocking] < 0:
                        state[index], w[index] = -1, lower[index]
                    else:
                        state[index], w[index] = 1, upper[index]
                    continue
            w[free] = target
            # Stationary on the working set: a bound whose multiplier has the wrong
            # sign is released (lower bound: gradient - eta must be >= 0).
            g0, g1 = cov @ w0, cov @ w1 - mu
            multiplier = g0 + t * g1 - (eta0 + t * eta1)
            violation = np.where(state < 0, -multiplier, multiplier)
            violation[free] = -np.inf
            if not self._all_movable:
                violation[~self._movable] = -np.inf
            worst = int(violation.argmax())
            if violation[worst] > self._tol_multiplier:
                state[worst] = 0
                continue
            self._w, self._state, self._warm = w, state, True
            self._affine = (key, (w0, w1, eta0, eta1))
            return self._segment(free, w0, w1, eta0, eta1, g0, g1)
        raise OptimizationError(
            "The quadratic program did not converge (active-set iteration limit); "
            "the covariance is probably ill-conditioned. Use a longer date range or "
            "fewer, less similar symbols."
        )

    def solve_past(self, t):
        """Solve at ``t`` just past the end of the last segment by Markowitz's step.

        The condition that ends the last segment names one asset: a free one reaching
        a bound, or a fixed one whose multiplier changes sign. Moving that asset alone
        gives the next working set of the critical line (Markowitz 1956), one linear
        solve instead of :meth:`solve`'s ratio tests from the old working set.

        Args:
            t: risk tolerance just past the last segment's ``t_hi``.

        Returns:
            the :class:`Segment` containing ``t`` when that working set is primal and
            dual feasible at ``t`` (as :meth:`solve_by_rule` checks), else None: ties
            of several conditions, or a next segment shorter than the step to ``t``;
            the caller then uses :meth:`solve`.
        """
        if self._ending is None:
            return None
        asset, state = self._ending
        start = self._state.copy()
        start[asset] = state
        found = self.solve_by_rule(lambda q0, q2, r0: t, max_iterations=1, start=start)
        return None if found is None else found[0]

    def solve_by_rule(self, rule, max_iterations=30, start=None, cold_free=None):
        """Solve for the frontier point selected by ``rule`` with primal-dual active sets.

        Args:
            rule: ``rule(q0, q2, r0) -> t``: the risk tolerance wanted, given the closed
                form of the current working set (see :class:`Segment`); ``None`` when
                the working set gives no answer.
            max_iterations: number of working-set updates before giving up.
            start: the working set to start from (int8 array of shape (n,): -1 at the
                lower bound, 1 at the upper, 0 free); by default the last answer's, or
                on the first call the cold start below.
            cold_free: bool array of shape (n,): the assets free on a cold start, the
                others at their lower bounds; None (or no movable asset in it): every
                movable asset free.

        Returns:
            ``(segment, t)`` when the final working set is optimal at ``t`` (primal
            and dual feasible within tolerance), else ``None``: the caller then uses
            the guaranteed :meth:`solve` / :meth:`walk`.
        """
        cov, mu, lower, upper = self.cov, self.mu, self.lower, self.upper
        movable = self._movable
        if start is not None:
            state = start
        elif self._warm:
            state = self._state.copy()
        else:
            first = movable if cold_free is None else movable & cold_free
            state = np.where(first if first.any() else movable, _FREE, _AT_LOWER)
        tol_w, tol_m = self._tol_weight, self._tol_multiplier
        seen = set()
        single = False
        for _ in range(max_iterations):
            self.iterations += 1
            is_free = state == 0
            free = is_free.nonzero()[0]
            if free.size == 0:
                return None
            at_bound = np.where(state < 0, lower, upper)
            at_bound[free] = 0.0
            w0, w1, eta0, eta1 = self._affine_solution(free, at_bound)
            g0, g1 = cov @ w0, cov @ w1 - mu
            closed_form = float(w0 @ g0), max(float(mu @ w1), 0.0), float(mu @ w0)
            t = rule(*closed_form)
            if t is None or not math.isfinite(t) or t < 0:
                return None
            w = w0 + t * w1
            multiplier = g0 + t * g1 - (eta0 + t * eta1)
            # Violations, in units comparable to the tolerances: weights of free assets
            # beyond a bound, multipliers of fixed assets with the wrong sign.
            violation = np.where(
                is_free,
                np.maximum(lower - w, w - upper) / tol_w,
                multiplier * state / tol_m,  # state is -1 or 1 here: the signed multiplier
            )
            if not self._all_movable:
                violation[~is_free & ~movable] = -np.inf
            if violation.max() <= 1.0:
                self._w, self._state, self._warm = w, state, True
                self._affine = (state.tobytes(), (w0, w1, eta0, eta1))
                segment = self._segment(free, w0, w1, eta0, eta1, g0, g1, closed_form)
                return segment, min(max(t, segment.t_lo), segment.t_hi)
            seen.add(state.tobytes())
            change = violation > 1.0
            if not single:
                new_state = _apply_changes(state, change, w, lower)
                if new_state is not None and new_state.tobytes() not in seen:
                    state = new_state
                    continue
                # Block pivoting can cycle, or empty the free set: from here on change
                # only the worst violation that keeps an asset free (Murty's rule).
                single = True
            if free.size == 1:
                violation[free[0]] = -np.inf
            worst = int(np.argmax(violation))
            if violation[worst] <= 1.0:
                return None
            change = np.zeros(self.n, dtype=bool)
            change[worst] = True
            state = _apply_changes(state, change, w, lower)
        return None

    def _affine_solution(self, free, at_bound):
        """Solve the working-set problem for all ``t`` at once.

        With the fixed assets B at their bounds, the stationarity conditions on the
        free block are ``Σ_FF x = t μ_F - Σ_FB w_B + η 1`` and ``1'x = 1 - 1'w_B``.

        Args:
            free: indices of the free assets F, increasing, shape (f,).
            at_bound: shape (n,): the fixed assets' bounds ``w_B``, zeros on F.

        Returns:
            ``(w0, w1, eta0, eta1)``: arrays of shape (n,) with the fixed entries of
            ``w`` in ``w0`` and zeros in ``w1``, and the budget multiplier
            ``eta(t) = eta0 + t * eta1``.
        """
        rows = self.cov.take(free, axis=0)
        # Right-hand sides μ_F, 1 and -Σ_FB w_B (Σ_F. w_B, as w_B is zero on F),
        # in Fortran order for LAPACK.
        rhs = np.empty((free.size, 3), order="F")
        rhs[:, 0] = self.mu.take(free)
        rhs[:, 1] = 1.0
        np.negative(rows @ at_bound, out=rhs[:, 2])
        solution = _solve_block(rows.take(free, axis=1), rhs)
        p_mu, p_one, p_fixed = solution.T
        sums = solution.sum(axis=0)
        eta0 = (1.0 - at_bound.sum() - sums[2]) / sums[1]
        eta1 = -sums[0] / sums[1]
        w0 = at_bound.copy()
        w0[free] = p_fixed + eta0 * p_one
        w1 = np.zeros(self.n)
        w1[free] = p_mu + eta1 * p_one
        return w0, w1, eta0, eta1

    def _segment(self, free, w0, w1, eta0, eta1, g0, g1, closed_form=None):
        """Build the :class:`Segment` of the optimal working set just found.

        ``g0 = Σ w0`` and ``g1 = Σ w1 - μ``: the gradient at ``t`` is ``g0 + t g1``;
        ``closed_form``: ``(q0, q2, r0)`` when the caller has them.
        """
        mu, state = self.mu, self._state
        if closed_form is None:
            closed_form = float(w0 @ g0), max(float(mu @ w1), 0.0), float(mu @ w0)
        # Each condition reads  a + t*b >= 0; they bound t from below or above.
        # Free assets stay within their bounds; fixed ones keep multipliers of the
        # right sign. Assets whose bounds coincide never move: their multipliers
        # bound nothing (counting them cut segments short, so that max_sharpe with a
        # fixed weight stopped at a worse portfolio).
        fixed = ((state != 0) & self._movable).nonzero()[0]
        sign = state[fixed] * -1.0
        w0_free, w1_free = w0[free], w1[free]
        a = np.concatenate((
            w0_free - self.lower[free],
            self.upper[free] - w0_free,
            sign * (g0[fixed] - eta0),
        ))
        b = np.concatenate((w1_free, -w1_free, sign * (g1[fixed] - eta1)))
        with np.errstate(divide="ignore", invalid="ignore"):
            limits = -a / b
        t_lo = float(limits[b > 0].max(initial=0.0))
        ends = np.where(b < 0, limits, np.inf)
        ending = int(ends.argmin())
        t_hi = float(ends[ending])
        self._ending = None
        if t_hi < np.inf:
            # The asset whose condition ends the segment, and where it goes next.
            if ending < 2 * free.size:
                self._ending = (free[ending % free.size], -1 if ending < free.size else 1)
            else:
                self._ending = (fixed[ending - 2 * free.size], 0)
        q0, q2, r0 = closed_form
        return Segment(t_lo=max(t_lo, 0.0), t_hi=t_hi, w0=w0, w1=w1, q0=q0, q2=q2, r0=r0)

    def walk(self, root, below, t_start=0.0, segment=None, max_steps=200):
        """Find the segment where a monotone condition along the frontier is met.

        Args:
            root: ``root(segment) -> float``: where the condition holds if the
                segment's closed form is extended to all ``t`` (``inf`` or ``nan``
                when it has no root).
            below: ``below(segment, t) -> bool``: True when the target lies at a
                larger ``t`` than the given one.
            t_start: where to start; ``segment``, when given, is the segment there.
            max_steps: safeguard on the number of segments visited.

        Returns:
            ``(segment, t)`` with ``t`` inside the segment, or ``(segment, inf)``
            when the condition is still unmet on the last segment (``t_hi == inf``).

        Raises:
            OptimizationError: when the walk does not converge.
        """
        low, high = 0.0, np.inf
        t = t_start
        if segment is None:
            segment = self.solve(t)
        for _ in range(max_steps):
            candidate = root(segment)
            slack = 1e-12 * (1.0 + abs(segment.t_hi if np.isfinite(segment.t_hi) else t))
            if segment.t_lo - slack <= candidate <= segment.t_hi + slack:
                return segment, float(np.clip(candidate, segment.t_lo, segment.t_hi))
            if below(segment, t):
                if not np.isfinite(segment.t_hi):
                    return segment, np.inf
                low = max(low, segment.t_hi)
            else:
                high = min(high, segment.t_lo)
            if low < candidate < high:
                t = candidate
            elif np.isfinite(high):
                t = 0.5 * (low + high)
            else:
                t = 2.0 * low + 1e-12
            # Nudge off the shared end point so the solve lands on the next segment.
            t = max(t, low * (1 + 1e-12) + 1e-15) if t <= low else t
            segment = self.solve(t)
        raise OptimizationError(
            "The efficient-frontier search did not converge; the covariance is "
            "probably ill-conditioned. Use a longer date range or fewer symbols."
        )


def _solve_block(block, rhs):
    """``block⁻¹ rhs`` for a principal block of the covariance, by LU (LAPACK ``dgesv``).

    The LAPACK routine that ``numpy.linalg.solve`` runs, called directly: the blocks
    are small (n <= a few hundred) and numpy's overhead per call is several times
    LAPACK's work here. LU as numpy's, so results stay bit-identical (Cholesky's
    different rounding ended a degenerate one-asset segment at ``t = 0`` in testing).

    Raises:
        OptimizationError: the block is singular.
    """
    if not rhs.shape[0]:
        return np.zeros(rhs.shape)  # no free asset (LAPACK refuses empty systems)
    _, _, solution, info = lapack.dgesv(block, rhs)
    if info == 0:
        return solution
    raise OptimizationError(
        "The covariance of the selected assets is singular; two symbols are "
        "probably duplicates or perfectly correlated. Remove one of them."
    )


#: The states of an asset in a working set (int8 arrays of shape (n,)).
_AT_LOWER, _FREE, _AT_UPPER = np.int8(-1), np.int8(0), np.int8(1)


def _apply_changes(state, change, weights, lower):
    """Move the flagged assets between free and bound; ``None`` if none stays free."""
    # Free assets go to the bound they crossed, fixed ones become free (0).
    bound = np.where(weights < lower, _AT_LOWER, _AT_UPPER)
    new_state = np.where(change, np.where(state == 0, bound, _FREE), state)
    if not (new_state == 0).any():
        return None
    return new_state


def kkt_residual(weights, mu, cov, lower, upper, t):
    """Return the largest violation of the KKT conditions of the frontier problem.

    Used by tests and as an exit check: at an optimum of
    ``1/2 w'Σw - t μ'w`` over the bounded simplex, the gradient minus a common
    budget multiplier is >= 0 at lower bounds, <= 0 at upper bounds and 0 between.

    Args:
        weights, mu, lower, upper: arrays of shape (n,).
        cov: array of shape (n, n).
        t: the risk tolerance.

    Returns:
        float, in units of the gradient.
    """
    gradient = cov @ weights - t * mu
    tol = 1e-9
    at_lower = weights <= lower + tol
    at_upper = weights >= upper - tol
    between = ~(at_lower | at_upper)
    if between.any():
        eta = float(np.median(gradient[between]))
    else:
        # Any eta between the multipliers works: take the most favourable one.
        eta = 0.5 * (
            float(np.min(gradient[at_lower], initial=np.inf))
            + float(np.max(gradient[at_upper], initial=-np.inf))
        )
        if not np.isfinite(eta):
            eta = float(np.min(gradient[at_lower], initial=0.0)) if at_lower.any() else float(
                np.max(gradient[at_upper], initial=0.0)
            )
    residual = np.zeros_like(weights)
    residual[between] = np.abs(gradient[between] - eta)
    residual[at_lower & ~at_upper] = np.maximum(eta - gradient[at_lower & ~at_upper], 0.0)
    residual[at_upper & ~at_lower] = np.maximum(gradient[at_upper & ~at_lower] - eta, 0.0)
    return float(residual.max(initial=0.0))
