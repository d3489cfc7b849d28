"""The engine's entry point: :func:`optimize` and its result.

``optimize`` validates the inputs once, converts the price frame to numpy once,
dispatches to one objective (all share the signature ``(data, context) -> weights``,
see ``_OBJECTIVES``), then computes statistics, the buy-and-hold path, the chart
series and the discrete allocation. Everything it returns is plain data, so results
cross process boundaries (``ProcessPoolExecutor``) and serialise to JSON. Each
objective's formula and reference is in the package docstring
(:mod:`indico.optimization`), or in the module that solves it.
"""

import dataclasses
import enum
import functools
import math
import os

import numpy as np

from indico.error import OptimizationError
from indico.optimization import (
    allocation,
    buy_and_hold,
    cardinality,
    cvar,
    estimators,
    frontier,
    groups,
    hrp,
    performance,
    risk_parity,
    simplex,
)
from indico.optimization.data import align_benchmark, parse_bounds, prepare_prices

#: BLAS threads per worker process; see :func:`configure_worker` and
#: docs/PERFORMANCE.md. The matrices here are small (n <= a few hundred), so
#: threading inside BLAS costs more in synchronisation than it gains, and the
#: process pool already uses every core.
WORKER_BLAS_THREADS = 1

#: Keyword options of :func:`optimize` that a stored job's params may carry, beyond
#: the seed's (absent in jobs stored before they existed: then the defaults apply).
ENGINE_OPTIONS = ("returns_model", "returns_span", "risk_model", "risk_span", "cvar_level",
                  "groups", "max_assets")

#: Weights closer than this to a bound are snapped onto it when cleaning.
WEIGHT_CLEAN_TOLERANCE = 1e-9

#: The same under groups: snapping moves a group's sum by as much as it moves
#: weights, and the constrained QP is exact to rounding, so only rounding is snapped.
GROUP_WEIGHT_CLEAN_TOLERANCE = 1e-13

#: Decimal places of the weights in :meth:`OptimizationResult.to_dict`.
WEIGHT_DECIMALS = 10


class Objective(enum.StrEnum):
    """What the optimizer maximises or minimises."""

    MAX_SHARPE = "max_sharpe"
    MIN_VOLATILITY = "min_volatility"
    EFFICIENT_RETURN = "efficient_return"
    EFFICIENT_RISK = "efficient_risk"
    BUY_AND_HOLD_SHARPE = "buy_and_hold_sharpe"
    RISK_PARITY = "risk_parity"
    EQUAL_WEIGHT = "equal_weight"
    HRP = "hrp"
    MIN_CVAR = "min_cvar"
    INVERSE_VOLATILITY = "inverse_volatility"
    MAX_DIVERSIFICATION = "max_diversification"


#: The objectives that take ``groups`` (sector constraints).
GROUP_OBJECTIVES = (Objective.MAX_SHARPE, Objective.MIN_VOLATILITY, Objective.EFFICIENT_RETURN,
                    Objective.EFFICIENT_RISK, Objective.MIN_CVAR)


def check_groups_objective(objective):
    """Check that ``objective`` takes ``groups``.

    Args:
        objective: an :class:`Objective`.

    Raises:
        OptimizationError: when it is not one of :data:`GROUP_OBJECTIVES`.
    """
    if objective not in GROUP_OBJECTIVES:
        raise OptimizationError(
            f"groups apply to objectives {', '.join(o.value for o in GROUP_OBJECTIVES)}, "
            f"not {objective.value}; remove groups or choose one of those.", field="groups")


@dataclasses.dataclass(frozen=True)
class OptimizationResult:
    """Weights, statistics, share allocation and chart series of one optimization.

    Attributes:
        objective: the :class:`Objective` solved.
        symbols: tuple of n symbols, in input order.
        weights: float array of shape (n,), within bounds, summing to 1 (1e-9).
        stats: ``expected_return``, ``volatility``, ``sharpe`` of the weights
            (annualised, from the chosen estimators; the sample moments by default),
            ``risk_contributions`` {symbol: share of ``w'Σw``} and ``cvar`` (daily
            historical CVaR at the chosen level, a positive loss fraction).
        portfolio: statistics of the buy-and-hold path (see
            :func:`indico.optimization.performance.path_statistics`).
        benchmark: the same for the benchmark index, or None.
        shares: int array of shape (n,), or None without an initial investment.
        leftover: cash left after buying ``shares``, or None.
        allocation_method: how shares were found (``milp``, ``milp_time_limit``,
            ``greedy``), or None.
        series_dates: datetime64 array of shape (k,), k <= 500.
        series_portfolio: portfolio value at those dates, shape (k,): in money when
            an initial investment is given, else starting at 1.0.
        series_benchmark: the benchmark on the same scale, shape (k,), or None.
    """

    objective: Objective
    symbols: tuple
    weights: np.ndarray
    stats: dict
    portfolio: dict
    benchmark: dict | None
    shares: np.ndarray | None
    leftover: float | None
    allocation_method: str | None
    series_dates: np.ndarray
    series_portfolio: np.ndarray
    series_benchmark: np.ndarray | None

    @property
    def allocations(self):
        """Weights by symbol (every input symbol, zero weights included)."""
        return {s: float(w) for s, w in zip(self.symbols, self.weights, strict=True)}

    def to_dict(self):
        """Return a JSON-serialisable dict (plain floats, ints and strings; no NaN).

        Returns:
            ``{"objective", "allocations", "shares", "leftover", "stats",
            "performance": {"portfolio", "benchmark", "series": {"dates",
            "portfolio", "benchmark"}}, "allocation_method"}``. ``shares`` is ``{}``
            and ``leftover`` None without an initial investment.
        """
        rounded = np.round(self.weights, WEIGHT_DECIMALS)
        dates = _date_texts(self.series_dates)
        return {
            "objective": self.objective.value,
            "allocations": {s: float(w) + 0.0 for s, w in zip(self.symbols, rounded, strict=True)},
            "shares": (
                {} if self.shares is None
                else {s: int(k) for s, k in zip(self.symbols, self.shares, strict=True)}
            ),
            "leftover": None if self.leftover is None else _plain(self.leftover),
            "allocation_method": self.allocation_method,
            "stats": dict(self.stats),
            "performance": {
                "portfolio": dict(self.portfolio),
                "benchmark": None if self.benchmark is None else dict(self.benchmark),
                "series": {
                    "dates": dates,
                    "portfolio": _plain_list(self.series_portfolio),
                    "benchmark": (
                        None if self.series_benchmark is None
                        else _plain_list(self.series_benchmark)
                    ),
                },
            },
        }


def _plain(value):
    return value if math.isfinite(value) else None


@functools.lru_cache(maxsize=1 << 16)
def _day_text(day):
    """``YYYY-MM-DD`` of ``day``, an int: days since 1970-01-01."""
    return str(np.datetime64(day, "D"))


def _date_texts(dates):
    """``dates`` (datetime64 array) as ``YYYY-MM-DD`` strings, as ``datetime_as_string``.

    numpy's ``datetime_as_string`` formats every date anew: 0.13-0.2 ms for a
    result's 500, most of :meth:`OptimizationResult.to_dict` and a fifth of a
    ``max_sharpe`` (docs/PERFORMANCE.md). Results share their dates (trading days
    of a few decades), so each day's text is made once and looked up after that
    (65,536 days are about 180 years).
    """
    return list(map(_day_text, dates.astype("datetime64[D]").view(np.int64).tolist()))


def _plain_list(values):
    """``values`` (float array) as a list of floats, None for NaN and infinities.

    One vectorized check instead of one call a point: the series have up to
    500 points, and this ran for every job (docs/PERFORMANCE.md).
    """
    if np.isfinite(values).all():
        return values.tolist()
    return [_plain(v) for v in values.tolist()]


@dataclasses.dataclass(frozen=True)
class _Context:
    """Parameters every objective receives (validated)."""

    lower: np.ndarray
    upper: np.ndarray
    risk_free_rate: float
    target_return: float | None
    target_volatility: float | None
    cvar_level: float = cvar.DEFAULT_LEVEL
    groups: "groups.Constraints | None" = None


def optimize(
    prices,
    objective="max_sharpe",
    *,
    risk_free_rate=0.0,
    weight_bounds=(0.0, 1.0),
    target_return=None,
    target_volatility=None,
    initial_investment=None,
    benchmark=None,
    returns_model="mean",
    returns_span=estimators.DEFAULT_RETURNS_SPAN,
    risk_model="sample",
    risk_span=estimators.DEFAULT_RISK_SPAN,
    cvar_level=cvar.DEFAULT_LEVEL,
    groups=None,
    max_assets=None,
    time_limit=None,
):
    """Optimise a portfolio of the symbols in ``prices``.

    Args:
        prices: aligned adjusted closes, DataFrame of shape (T, n): DatetimeIndex,
            one float column per symbol (inner-joined by the caller); or the
            :class:`~indico.optimization.data.MarketData` that ``prepare_prices``
            made of such a frame, for a caller that optimizes one frame many times.
        objective: an :class:`Objective` or its value.
        risk_free_rate: annual risk-free rate (0.02 is 2 %).
        weight_bounds: ``(low, high)`` for every asset within [0, 1], or a mapping
            ``{symbol: (low, high)}`` (others get ``(0, 1)``).
        target_return: annual expected return, required by ``efficient_return``.
        target_volatility: annual volatility, required by ``efficient_risk``.
        initial_investment: money to invest (> 0) for shares, leftover and final
            values; None skips the allocation.
        benchmark: index levels (pandas Series by date) for comparison, or None.
        returns_model, returns_span, risk_model, risk_span: the estimators of μ and
            Σ that every objective and the statistics use (see
            :mod:`indico.optimization.estimators`).
        cvar_level: β of ``min_cvar`` and of ``stats["cvar"]``, within [0.5, 0.999].
        groups: sector constraints ``[{"name", "symbols", "min", "max"}, ...]``: the
            weights of each group's symbols sum within ``[min, max]`` (see
            :mod:`indico.optimization.groups`); only for :data:`GROUP_OBJECTIVES`.
            None or [] for none.
        max_assets: at most this many nonzero weights (an int >= 1; ``max_sharpe``
            and ``min_volatility`` only), lower bounds then applying to the assets
            held; ``stats`` gains ``optimal`` and ``gap`` (see
            :mod:`indico.optimization.cardinality`). None: no limit.
        time_limit: seconds this call may take (the job's time limit), which the
            ``max_assets`` search stays within; None: no limit.

    Returns:
        :class:`OptimizationResult`.

    Raises:
        OptimizationError: invalid input, infeasible bounds or groups, unreachable
            targets, no asset beating the risk-free rate for ``max_sharpe``, or a
            solver failure; the message says what to change.
    """
    objective = estimators.parse_choice(Objective, objective, "objective")
    if groups:
        check_groups_objective(objective)
    risk_free_rate = _finite_number(risk_free_rate, "riskFreeRate")
    if initial_investment is not None:
        initial_investment = _finite_number(initial_investment, "initialInvestment")
        if initial_investment <= 0:
            raise OptimizationError("initialInvestment must be greater than 0.")
    cvar_level = _finite_number(cvar_level, "cvarLevel")
    if not cvar.MIN_LEVEL <= cvar_level <= cvar.MAX_LEVEL:
        raise OptimizationError(
            f"cvarLevel must lie within [{cvar.MIN_LEVEL}, {cvar.MAX_LEVEL}], e.g. 0.95."
        )
    if max_assets is not None:
        cardinality.check_without_groups(groups)
        max_assets, goal = cardinality.parse_request(max_assets, objective)
    data = estimators.estimate(prepare_prices(prices), returns_model, returns_span,
                               risk_model, risk_span, risk_free_rate)
    lower, upper = parse_bounds(weight_bounds, data.symbols)
    if max_assets is None:
        frontier.check_bounds(lower, upper)
    else:
        cardinality.check_bounds(lower, upper, max_assets)
    context = _Context(
        groups=_constraints(groups, data.symbols, lower, upper),
        lower=lower,
        upper=upper,
        risk_free_rate=risk_free_rate,
        target_return=_optional_target(target_return, "targetReturn", objective,
                                       Objective.EFFICIENT_RETURN),
        target_volatility=_optional_target(target_volatility, "targetVolatility", objective,
                                           Objective.EFFICIENT_RISK),
        cvar_level=cvar_level,
    )
    benchmark_values = align_benchmark(benchmark, data)
    solvers = _OBJECTIVES if context.groups is None else _GROUP_SOLVERS
    if max_assets is None:
        weights = _clean_weights(solvers[objective](data, context), lower, upper,
                                 _snap_tolerance(context))
        return _build_result(objective, data, weights, context, initial_investment,
                             benchmark_values)
    search = cardinality.solve(_OBJECTIVES[objective], data, context, max_assets, goal,
                               time_limit=time_limit)
    weights = _clean_weights(search.weights, search.lower, search.upper)
    result = _build_result(objective, data, weights, context, initial_investment,
                           benchmark_values)
    return dataclasses.replace(result, stats={**result.stats, **search.stats()})


#: The fewest and most points of :func:`efficient_frontier`, and its default.
FRONTIER_MIN_POINTS, FRONTIER_MAX_POINTS, FRONTIER_DEFAULT_POINTS = 2, 200, 50

#: Relative nudge past a segment's end when walking the critical line; a gap left
#: between two segments is bisected (see :func:`_critical_line`).
_CORNER_NUDGE = 1e-9

#: Relative distance within which a segment starts where the last one ended.
_CORNER_JOINT = 1e-9


def efficient_frontier(
    prices,
    *,
    points=FRONTIER_DEFAULT_POINTS,
    risk_free_rate=0.0,
    weight_bounds=(0.0, 1.0),
    returns_model="mean",
    returns_span=estimators.DEFAULT_RETURNS_SPAN,
    risk_model="sample",
    risk_span=estimators.DEFAULT_RISK_SPAN,
    groups=None,
):
    """The exact efficient frontier of ``prices`` within ``weight_bounds``.

    The frontier problem ``min 1/2 w'Σw - t μ'w`` s.t. ``1'w = 1``, ``lower <= w <=
    upper`` is solved for every ``t >= 0`` at once by walking Markowitz's critical
    line (Markowitz 1956, *Naval Res. Logist. Q.* 3; the segments of
    :class:`indico.optimization.frontier.Frontier`): on each segment the set of
    assets at a bound is fixed and ``w(t) = w0 + t w1``, ``μ'w(t) = r0 + t q2``. A
    *corner portfolio* is where one segment ends and the next begins (the set of
    weights at a bound changes); between two consecutive corners the weights are
    linear in the target return. The frontier point for a return ``r`` is
    ``w((r - r0) / q2)`` on the segment whose returns contain ``r``: the exact
    minimum-volatility portfolio with return ``r`` (the ``efficient_return``
    portfolio), no solve per point. With ``groups`` the same walk runs over the
    target return on the constrained QP (see :mod:`indico.optimization.groups`):
    its pieces, corners and points are exact in the same sense.

    Args:
        prices: aligned adjusted closes, DataFrame (dates x symbols), or its
            ``MarketData``, as for :func:`optimize`.
        points: how many points, evenly spaced in expected return from the
            minimum-volatility portfolio to the maximum-return one (2-200).
        risk_free_rate: annual; for the Sharpe ratios and ``max_sharpe``.
        weight_bounds: as for :func:`optimize`.
        returns_model, returns_span, risk_model, risk_span: the estimators of μ
            and Σ (see :mod:`indico.optimization.estimators`).
        groups: sector constraints, as for :func:`optimize`.

    Returns:
        ``{"points": [...], "min_volatility": {...}, "max_sharpe": {...} or None,
        "corners": [...]}``, each portfolio ``{"expected_return", "volatility",
        "sharpe", "weights": {symbol: w}}`` (annualised); ``max_sharpe`` is None
        when no portfolio's expected return exceeds ``risk_free_rate``; corners in
        increasing return, from the minimum-volatility portfolio to the
        maximum-return one.

    Raises:
        OptimizationError: invalid input or infeasible bounds or groups; the
            message says what to change.
    """
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or not (
            FRONTIER_MIN_POINTS <= points <= FRONTIER_MAX_POINTS):
        raise OptimizationError(
            f"points must be an integer within [{FRONTIER_MIN_POINTS}, {FRONTIER_MAX_POINTS}].")
    risk_free_rate = _finite_number(risk_free_rate, "riskFreeRate")
    data = estimators.estimate(prepare_prices(prices), returns_model, returns_span,
                               risk_model, risk_span, risk_free_rate)
    lower, upper = parse_bounds(weight_bounds, data.symbols)
    frontier.check_bounds(lower, upper)
    context = _Context(lower=lower, upper=upper, risk_free_rate=risk_free_rate,
                       target_return=None, target_volatility=None,
                       groups=_constraints(groups, data.symbols, lower, upper))

    tolerance = _snap_tolerance(context)

    def portfolios(rows):
        # Cleaned and summarised together: one call a portfolio cost more than the
        # critical-line walk (76 portfolios in a 50-point frontier of 20 assets).
        cleaned = _clean_weights(rows, lower, upper, tolerance) + 0.0  # no -0.0
        statistics = performance.weight_statistics_rows(cleaned, data.mu, data.cov,
                                                        risk_free_rate)
        return [{**summary, "weights": dict(zip(data.symbols, weights, strict=True))}
                for summary, weights in zip(statistics, cleaned.tolist(), strict=True)]

    def portfolio(weights):
        return portfolios(weights[np.newaxis])[0]

    if context.groups is not None:
        return _grouped_frontier(data, context, points, portfolio)
    if _single_portfolio(context):
        only = portfolio(frontier.extreme_return_portfolio(data.mu, lower, upper))
        best = only if only["expected_return"] > risk_free_rate else None
        return {"points": [only] * points, "min_volatility": only, "max_sharpe": best,
                "corners": [only]}
    segments = _critical_line(data, context)
    end = segments[-1].w0
    low = segments[0].r0
    high = float(data.mu @ frontier.extreme_return_portfolio(data.mu, lower, upper))
    curve = _on_critical_line(segments, np.linspace(low, high, points), end)
    corners = [segments[0].w0]
    for segment in segments:
        if math.isfinite(segment.t_hi):
            corner = segment.weights(segment.t_hi)
            if np.max(np.abs(corner - corners[-1])) > 1e-12:
                corners.append(corner)
    try:
        best = portfolio(_tangency_on_critical_line(data, context, segments))
    except OptimizationError:
        best = None  # nothing beats the risk-free rate: no tangency portfolio
    found = portfolios(np.vstack([curve, *corners]))
    return {"points": found[:points], "min_volatility": found[0], "max_sharpe": best,
            "corners": found[points:]}


def _grouped_frontier(data, context, points, portfolio):
    """:func:`efficient_frontier` under groups: each point on its piece (exact)."""
    solver = _grouped(data, context)
    least = solver.min_volatility()
    pieces = solver.pieces()
    try:
        best = portfolio(_max_sharpe_with_groups(data, context))
    except OptimizationError:
        best = None  # nothing beats the risk-free rate: no tangency portfolio
    first = portfolio(least)
    if not pieces:
        return {"points": [first] * points, "min_volatility": first, "max_sharpe": best,
                "corners": [first]}
    low, high = float(data.mu @ least), solver.reachable()[1]
    joint = 1e-9 * (high - low)
    curve = [first]
    for target in np.linspace(low, high, points)[1:]:
        piece = next((p for p in pieces if target <= p.hi + joint), pieces[-1])
        curve.append(portfolio(piece.x(float(target))))
    corners = [least]
    for piece in pieces:
        corner = piece.x(min(piece.hi, high))
        if np.max(np.abs(corner - corners[-1])) > 1e-12:
            corners.append(corner)
    return {"points": curve, "min_volatility": first, "max_sharpe": best,
            "corners": [portfolio(corner) for corner in corners]}


def _critical_line(data, context):
    """The segments of the critical line from ``t = 0`` to the maximum-return end.

    Each next segment is found just past the end of the last one, first by moving
    the one asset whose condition ends it (:meth:`Frontier.solve_past`, one linear
    solve: how every corner of the 20-asset sample is crossed); when that declines
    (ties), by solving there, the step bisected until the segment found starts where
    the last one ends (a step too long jumps over a short segment).

    Returns:
        list of :class:`indico.optimization.frontier.Segment`, consecutive in
        ``t``, the last one with ``t_hi == inf`` (constant: the maximum return).

    Raises:
        OptimizationError: the walk did not close up (a numerical failure).
    """
    first, solver = _min_volatility_segment(data, context)
    segments = [first]
    for _ in range(20 * data.mu.size + 50):
        last = segments[-1]
        if not math.isfinite(last.t_hi):
            return segments
        joint = last.t_hi * (1 + _CORNER_JOINT) + 1e-15
        step = last.t_hi * _CORNER_NUDGE + 1e-12
        following = solver.solve_past(last.t_hi + step)
        if following is not None and following.t_lo <= joint < following.t_hi:
            segments.append(following)
            continue
        # Just past a corner the solver's tolerances may still accept the last
        # working set; too far past it a short segment is jumped over. Bracket
        # the step between the two and bisect until the next segment is found.
        same, gap = 0.0, None
        for _ in range(200):
            following = solver.solve(last.t_hi + step)
            if following.t_lo > joint:
                gap = step
            elif following.t_hi <= joint:
                same = step
            else:
                break
            step = 4.0 * step if gap is None else 0.5 * (same + gap)
        else:
            break
        segments.append(following)
    raise OptimizationError(
        "The efficient-frontier walk did not converge; the covariance is probably "
        "ill-conditioned. Use a longer date range or fewer symbols.")


def _on_critical_line(segments, targets, end):
    """The weights on the critical line whose expected returns are ``targets``.

    Args:
        segments: as :func:`_critical_line` returns them.
        targets: expected returns, shape (k,), within the frontier's range.
        end: the maximum-return portfolio, shape (n,), for targets beyond every
            rising segment.

    Returns:
        array of shape (k, n): for each target, the first rising segment whose
        returns reach it, at the ``t`` that gives that return.
    """
    rising = [segment for segment in segments if segment.q2 > 0]
    weights = np.tile(end, (targets.size, 1))
    if not rising:
        return weights
    r0, q2, t_lo, t_hi = (np.array([getattr(s, name) for s in rising])
                          for name in ("r0", "q2", "t_lo", "t_hi"))
    t = (targets[:, np.newaxis] - r0) / q2
    reached = t <= t_hi * (1 + 1e-12) + 1e-15
    on = np.flatnonzero(reached.any(axis=1))
    first = reached[on].argmax(axis=1)
    chosen = np.minimum(np.maximum(t[on, first], t_lo[first]), t_hi[first])
    w0 = np.array([s.w0 for s in rising])
    w1 = np.array([s.w1 for s in rising])
    weights[on] = w0[first] + chosen[:, np.newaxis] * w1[first]
    return weights


def _tangency_on_critical_line(data, context, segments):
    """The maximum-Sharpe weights, read off the segments of the critical line.

    The segment whose own peak ``t = q0 / (r0 - rf)`` lies within it holds the
    global maximum (the ratio is unimodal along the frontier, see :func:`_tangency`),
    so no search is needed once the line is walked.

    Raises:
        OptimizationError: no portfolio beats the risk-free rate.
    """
    _best_beating_risk_free(data, context)
    rf = context.risk_free_rate
    for segment in segments:
        if segment.r0 > rf:
            t = segment.q0 / (segment.r0 - rf)
            if segment.t_lo <= t <= segment.t_hi:
                return segment.weights(t)
    return _tangency(data, context)  # the peak fell between segments by rounding


def configure_worker():
    """Prepare a worker process for optimization (a ProcessPoolExecutor initializer).

    Limits BLAS/OpenMP threads to :data:`WORKER_BLAS_THREADS` in this process, both
    for libraries already loaded (via threadpoolctl) and, through the environment,
    for any loaded later.

    Returns:
        None.
    """
    value = str(WORKER_BLAS_THREADS)
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = value
    # Imported here: only worker processes need it, and it scans loaded libraries.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=WORKER_BLAS_THREADS)


# --- objectives: (data, context) -> weights of shape (n,) ---------------------------


def _max_sharpe(data, context):
    best = _best_beating_risk_free(data, context)
    if _single_portfolio(context):
        return best
    return _tangency(data, context)


def _best_beating_risk_free(data, context):
    """The maximum-return portfolio, checked to beat the risk-free rate.

    Raises:
        OptimizationError: it does not (so no portfolio has a positive Sharpe ratio).
    """
    rf = context.risk_free_rate
    best = frontier.extreme_return_portfolio(data.mu, context.lower, context.upper)
    best_return = float(data.mu @ best)
    if best_return <= rf + 1e-12 * max(1.0, abs(rf)):
        raise OptimizationError(
            f"max_sharpe needs a portfolio whose expected return exceeds riskFreeRate "
            f"({rf:.4%}); the best reachable within weightBounds is {best_return:.4%}. "
            "Use objective min_volatility, or a lower riskFreeRate.",
            best_expected_return=best_return,
        )
    return best


#: Times :func:`_tangency` resumes the primal-dual search past a working set where the
#: Sharpe ratio still rises, before the guaranteed walk: each round at least doubles the
#: risk tolerance, so a few cover any frontier.
_TANGENCY_ROUNDS = 60


def _tangency(data, context):
    """Global maximum-Sharpe weights (the caller checked that one beats rf)."""
    rf = context.risk_free_rate
    solver = frontier.Frontier(
        data.mu, data.solver_covariance(), context.lower, context.upper
    )
    guess = [0.0]

    def rule(q0, q2, r0):
        # On a working set the Sharpe ratio peaks at t = q0 / (r0 - rf); when the
        # working set's line has no peak, aim further along the frontier.
        if r0 - rf > 0:
            guess[0] = q0 / (r0 - rf)
        elif q2 > 0:
            guess[0] = max(2.0 * guess[0], math.sqrt(q0 / q2))
        else:
            return None
        return guess[0]

    # Cold start with the assets that beat the risk-free rate free and the others at
    # their lower bounds (where the tangency portfolio mostly holds them): from every
    # asset free, block pivoting overshoots (the 20 x 5 y sample: 3 linear solves, not
    # 5). Only the path changes; the answer is certified the same way.
    found = solver.solve_by_rule(rule, cold_free=data.mu > rf)
    for _ in range(_TANGENCY_ROUNDS):
        if found is None:
            break
        segment, t = found
        if segment.r0 - rf > 0:
            # The working set is optimal at its own peak t = q0 / (r0 - rf): on the
            # frontier the Sharpe ratio is unimodal, so this is the global maximum.
            return segment.weights(t)
        # A guess of the doubling branch that happened to be optimal for its working
        # set, where the ratio still rises with t: the peak lies further along. Go on
        # from this working set (solve_by_rule starts warm), the guess doubling.
        found = solver.solve_by_rule(rule)
    segment, t = solver.walk(
        root=lambda s: s.q0 / (s.r0 - rf) if s.r0 > rf else np.inf,
        below=lambda s, t: t * (s.expected_return(t) - rf) - s.variance(t) < 0,
    )
    return segment.w0 if math.isinf(t) else segment.weights(t)


def _min_volatility(data, context):
    if _single_portfolio(context):
        return frontier.extreme_return_portfolio(data.mu, context.lower, context.upper)
    return _min_volatility_segment(data, context)[0].w0


def _min_volatility_segment(data, context):
    solver = frontier.Frontier(
        data.mu, data.solver_covariance(), context.lower, context.upper
    )
    found = solver.solve_by_rule(lambda q0, q2, r0: 0.0)
    segment = found[0] if found is not None else solver.solve(0.0)
    return segment, solver


def _efficient_return(data, context):
    target = context.target_return
    lowest = frontier.extreme_return_portfolio(data.mu, context.lower, context.upper, False)
    highest = frontier.extreme_return_portfolio(data.mu, context.lower, context.upper)
    low, high = float(data.mu @ lowest), float(data.mu @ highest)
    tol = 1e-9 * max(1.0, abs(high))
    if not low - tol <= target <= high + tol:
        raise OptimizationError(
            f"targetReturn {target:.4%} is outside what these assets can reach within "
            f"weightBounds: between {low:.4%} and {high:.4%} a year.",
            reachable=[low, high],
        )
    if _single_portfolio(context):
        return highest
    segment, solver = _min_volatility_segment(data, context)
    if target <= segment.r0:
        # The minimum-volatility portfolio already returns at least the target.
        return segment.w0
    if target >= high - tol:
        target = high
    found = solver.solve_by_rule(
        lambda q0, q2, r0: max((target - r0) / q2, 0.0) if q2 > 0 else None
    )
    if found is not None and abs(found[0].expected_return(found[1]) - target) <= tol:
        return found[0].weights(found[1])
    segment, t = solver.walk(
        root=lambda s: (target - s.r0) / s.q2 if s.q2 > 0 else np.inf,
        below=lambda s, t: s.expected_return(t) < target,
        segment=segment,
    )
    return segment.w0 if math.isinf(t) else segment.weights(t)


def _efficient_risk(data, context):
    target = context.target_volatility
    if _single_portfolio(context):
        only = frontier.extreme_return_portfolio(data.mu, context.lower, context.upper)
        volatility = math.sqrt(float(only @ data.cov @ only))
        if target < volatility * (1 - 1e-9):
            raise OptimizationError(
                f"targetVolatility {target:.4%} is below the only portfolio weightBounds "
                f"allow ({volatility:.4%}).",
                reachable=[volatility, volatility],
            )
        return only
    segment, solver = _min_volatility_segment(data, context)
    lowest = math.sqrt(max(segment.q0, 0.0))
    highest_weights = frontier.extreme_return_portfolio(data.mu, context.lower, context.upper)
    highest = math.sqrt(float(highest_weights @ data.cov @ highest_weights))
    if target < lowest * (1 - 1e-9):
        raise OptimizationError(
            f"targetVolatility {target:.4%} is below the lowest volatility these assets "
            f"can reach within weightBounds ({lowest:.4%}). Choose at least {lowest:.4%}; "
            f"targets of {highest:.4%} or more give the maximum-return portfolio.",
            reachable=[lowest, highest],
        )
    variance = target * target
    if target < highest:
        found = solver.solve_by_rule(
            lambda q0, q2, r0: math.sqrt(max(variance - q0, 0.0) / q2) if q2 > 0 else None
        )
        if found is not None and abs(found[0].variance(found[1]) - variance) <= 1e-9 * variance:
            return found[0].weights(found[1])
    segment, t = solver.walk(
        root=lambda s: math.sqrt((variance - s.q0) / s.q2)
        if s.q2 > 0 and variance >= s.q0 else np.inf,
        below=lambda s, t: s.variance(t) < variance,
        segment=segment,
    )
    return segment.w0 if math.isinf(t) else segment.weights(t)


def _buy_and_hold_sharpe(data, context):
    if _single_portfolio(context):
        return frontier.extreme_return_portfolio(data.mu, context.lower, context.upper)
    tangency = None
    best = frontier.extreme_return_portfolio(data.mu, context.lower, context.upper)
    if float(data.mu @ best) > context.risk_free_rate:
        tangency = _tangency(data, context)
    weights, _ = buy_and_hold.global_maximum(
        data.prices, context.lower, context.upper, context.risk_free_rate, tangency
    )
    if weights is None:
        raise OptimizationError(
            "buy_and_hold_sharpe found no portfolio with varying value; choose another "
            "date range."
        )
    return weights


def _risk_parity(data, context):
    return risk_parity.bounded_risk_parity(
        data.solver_covariance(), context.lower, context.upper
    )


def _equal_weight(data, context):
    n = len(data.symbols)
    equal = np.full(n, 1.0 / n)
    if np.all(equal >= context.lower) and np.all(equal <= context.upper):
        return equal
    # Per-symbol bounds exclude 1/n: take the nearest portfolio they allow.
    return simplex.project_to_bounded_simplex(equal, context.lower, context.upper)


def _hrp(data, context):
    return hrp.hrp_weights(data.cov, context.lower, context.upper)


def _min_cvar(data, context):
    return cvar.min_cvar_weights(data.returns, context.lower, context.upper,
                                 context.cvar_level)


def _inverse_volatility(data, context):
    inverse = 1.0 / np.sqrt(np.diag(data.cov))
    return simplex.project_to_bounded_simplex(inverse / inverse.sum(), context.lower,
                                              context.upper)


def _max_diversification(data, context):
    # w'σ / √(w'Σw) is the Sharpe ratio with μ = σ and rf = 0 (Choueifaty & Coignard,
    # 2008), so the exact maximum-Sharpe solver finds it; σ > 0 makes it exist.
    volatility = np.sqrt(np.diag(data.cov))
    diversified = dataclasses.replace(data, mu=volatility)
    zero_rate = dataclasses.replace(context, risk_free_rate=0.0)
    if _single_portfolio(context):
        return frontier.extreme_return_portfolio(volatility, context.lower, context.upper)
    return _tangency(diversified, zero_rate)


def _grouped(data, context):
    return groups.GroupedFrontier(data.mu, data.solver_covariance(), context.groups,
                                  context.lower, context.upper)


def _min_volatility_with_groups(data, context):
    return _grouped(data, context).min_volatility()


def _max_sharpe_with_groups(data, context):
    return groups.max_sharpe(data.mu, data.solver_covariance(), context.groups, context.lower,
                             context.upper, context.risk_free_rate)


def _efficient_return_with_groups(data, context):
    target = context.target_return
    solver = _grouped(data, context)
    low, high = solver.reachable()
    tol = 1e-9 * max(1.0, abs(high))
    if not low - tol <= target <= high + tol:
        raise OptimizationError(
            f"targetReturn {target:.4%} is outside what these assets can reach within "
            f"weightBounds and groups: between {low:.4%} and {high:.4%} a year.",
            reachable=[low, high],
        )
    return solver.efficient_return(target)


def _efficient_risk_with_groups(data, context):
    return _grouped(data, context).efficient_risk(context.target_volatility)


def _min_cvar_with_groups(data, context):
    return cvar.min_cvar_weights(data.returns, context.lower, context.upper,
                                 context.cvar_level, context.groups.inequality())


#: The solvers of :data:`GROUP_OBJECTIVES` when groups are given (the others'
#: fast paths know only bounds and the budget).
_GROUP_SOLVERS = {
    Objective.MAX_SHARPE: _max_sharpe_with_groups,
    Objective.MIN_VOLATILITY: _min_volatility_with_groups,
    Objective.EFFICIENT_RETURN: _efficient_return_with_groups,
    Objective.EFFICIENT_RISK: _efficient_risk_with_groups,
    Objective.MIN_CVAR: _min_cvar_with_groups,
}


_OBJECTIVES = {
    Objective.MAX_SHARPE: _max_sharpe,
    Objective.MIN_VOLATILITY: _min_volatility,
    Objective.EFFICIENT_RETURN: _efficient_return,
    Objective.EFFICIENT_RISK: _efficient_risk,
    Objective.BUY_AND_HOLD_SHARPE: _buy_and_hold_sharpe,
    Objective.RISK_PARITY: _risk_parity,
    Objective.EQUAL_WEIGHT: _equal_weight,
    Objective.HRP: _hrp,
    Objective.MIN_CVAR: _min_cvar,
    Objective.INVERSE_VOLATILITY: _inverse_volatility,
    Objective.MAX_DIVERSIFICATION: _max_diversification,
}


# --- helpers ------------------------------------------------------------------------


def _single_portfolio(context):
    """True when the bounds leave exactly one portfolio (they sum to 1 exactly)."""
    return abs(context.lower.sum() - 1.0) <= 1e-12 or abs(context.upper.sum() - 1.0) <= 1e-12


def _constraints(specification, symbols, lower, upper):
    """Validated, feasible groups as :class:`indico.optimization.groups.Constraints`.

    Returns:
        None when there are no groups.

    Raises:
        OptimizationError: a malformed group, or groups that cannot hold with the
            bounds and the budget (the message names them).
    """
    parsed = groups.parse_groups(specification, symbols)
    if not parsed:
        return None
    constraints = groups.Constraints.build(parsed, symbols)
    groups.check_feasible(constraints, lower, upper)
    return constraints


def _finite_number(value, name):
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise OptimizationError(f"{name} must be a number.") from e
    if not math.isfinite(number):
        raise OptimizationError(f"{name} must be a finite number.")
    return number


def _optional_target(value, name, objective, needed_by):
    if value is None:
        if objective is needed_by:
            raise OptimizationError(f"{needed_by.value} needs {name} (annual, e.g. 0.15).")
        return None
    return _finite_number(value, name)


def _snap_tolerance(context):
    return WEIGHT_CLEAN_TOLERANCE if context.groups is None else GROUP_WEIGHT_CLEAN_TOLERANCE


def _clean_weights(weights, lower, upper, tolerance=WEIGHT_CLEAN_TOLERANCE):
    """Snap near-bound weights onto their bounds and restore the budget exactly.

    Solvers leave values like -1e-17 or 0.30000000000000004; those are moved onto
    the bound, and the rounding residue of the sum is spread over assets strictly
    inside their bounds, so the weights sum to 1 within 1e-12 and stay in bounds.

    Args:
        weights: array of shape (n,), or (k, n) for k portfolios at once.
        lower, upper: arrays of shape (n,).
        tolerance: how close to a bound a weight is snapped onto it.

    Returns:
        array of the shape of ``weights``.

    Raises:
        OptimizationError: when the weights are not finite or not feasible (a
            solver failure that must not reach a client as a result).
    """
    if not np.isfinite(weights).all():
        raise OptimizationError("The solver returned invalid weights; try another objective.")
    weights = np.where(np.abs(weights - lower) <= tolerance, lower, weights)
    weights = np.where(np.abs(weights - upper) <= tolerance, upper, weights)
    # np.clip's result, without its dispatch overhead (the weights are finite here).
    weights = np.minimum(np.maximum(weights, lower), upper)
    if weights.ndim == 1:
        weights = simplex.fix_budget(weights, lower, upper)
    else:
        weights = simplex.fix_budget_rows(weights, lower, upper)
    # Array methods rather than np.any: its dispatch cost more than the checks.
    if (np.abs(weights.sum(axis=-1) - 1.0) > 1e-9).any() or (
        weights < lower - 1e-12
    ).any() or (weights > upper + 1e-12).any():
        raise OptimizationError(
            "The solver returned weights outside the constraints; try another objective."
        )
    return weights


def _build_result(objective, data, weights, context, initial_investment, benchmark_values):
    # The value of 1 invested on the first date: Σ w_i p_i(t) / p_i(0), one pass
    # over the prices instead of normalising them first.
    path = data.prices @ (weights / data.prices[0])
    scale = 1.0 if initial_investment is None else initial_investment
    portfolio = performance.path_statistics(path, context.risk_free_rate, initial_investment)
    benchmark_stats = None
    benchmark_series = None
    indices = performance.series_indices(path.size)
    if benchmark_values is not None:
        benchmark_path = benchmark_values / benchmark_values[0]
        benchmark_stats = performance.path_statistics(
            benchmark_path, context.risk_free_rate, initial_investment
        )
        benchmark_series = scale * benchmark_path[indices]
    shares = leftover = method = None
    if initial_investment is not None:
        shares, leftover, method = allocation.allocate_shares(
            weights, data.prices[-1], initial_investment
        )
        method = method.value
    return OptimizationResult(
        objective=objective,
        symbols=data.symbols,
        weights=weights,
        stats={
            **performance.weight_statistics(weights, data.mu, data.cov, context.risk_free_rate),
            "risk_contributions": dict(zip(
                data.symbols, cvar.risk_contributions(weights, data.cov).tolist(), strict=True)),
            "cvar": cvar.historical_cvar(data.returns @ weights, context.cvar_level),
        },
        portfolio=portfolio,
        benchmark=benchmark_stats,
        shares=shares,
        leftover=leftover,
        allocation_method=method,
        series_dates=data.dates[indices],
        series_portfolio=scale * path[indices],
        series_benchmark=benchmark_series,
    )
