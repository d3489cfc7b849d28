"""An exact dense quadratic program with general linear constraints, and its pieces.

The engine's fast path (:mod:`indico.optimization.frontier`) handles box bounds and
the budget only. Sector constraints (``groups``) add general rows, so the
objectives that take them solve

    min_x  1/2 x'Gx + c'x   s.t.  A_eq x = b_eq,  A_in x <= b_in,  lower <= x <= upper,

with ``G`` (n, n) symmetric positive definite, by the dual active-set method of
Goldfarb & Idnani (1983), "A numerically stable dual method for solving strictly
convex quadratic programs", *Math. Programming* 27:1-33 (the algorithm of R's and
Python's ``quadprog``). Written as ``N'x >= d`` (equalities first), it starts from
the unconstrained minimum ``x = -G⁻¹c`` and adds one violated constraint ``p`` at a
time, keeping the iterate optimal for the active set ``A``: with ``G = LL'``,
``J = L⁻ᵀQ`` and ``L⁻¹N_A = Q[R; 0]`` (QR), the primal step is ``z = J₂J₂'n_p`` and
the dual step ``r = R⁻¹J₁'n_p``; the step length is the smaller of the full step
``-s_p(x) / z'n_p`` and the partial step ``min u_j / r_j`` (``r_j > 0``) that drops
constraint ``j``. It ends when no constraint is violated (then ``x`` and the
multipliers ``u >= 0`` satisfy the KKT conditions, which :meth:`QuadraticProgram.solve`
verifies) or when a violated constraint cannot be added (the problem is
infeasible). The factorization is recomputed after each change of ``A`` (dense,
``O(n q²)``): the problems here have n <= a few hundred and the groups path is not
the engine's fast path.

For a fixed active set the KKT system is linear, so when the right-hand side moves
along ``d(ρ) = d0 + ρ d1`` (a target return, for instance) the solution is affine,
``x(ρ) = x0 + ρ x1``, on the interval of ``ρ`` where the inactive constraints hold
and the active inequalities keep multipliers ``>= 0`` (:func:`affine_piece`): a
segment of the critical line (Markowitz 1956; Best 1996, "An algorithm for the
solution of the parametric quadratic programming problem"), whose ends are the
corner portfolios.
"""

import dataclasses

import numpy as np
from scipy.linalg import solve_triangular

from indico.error import OptimizationError

#: Constraint violations (in units of the constraint's normal, scaled by the size
#: of ``x``) below this count as satisfied.
FEASIBILITY_TOLERANCE = 1e-12

#: A new row whose normal lies this close (relative, in the metric of G⁻¹) to the
#: span of the active ones counts as linearly dependent on them.
DEPENDENCE_TOLERANCE = 1e-11

#: Largest KKT residual accepted on exit, relative to the size of the gradient.
KKT_TOLERANCE = 1e-8

#: Iterations allowed per constraint (each adds or drops one constraint; Goldfarb
#: and Idnani's method is finite, so this only guards against cycling by rounding).
MAX_ITERATIONS_PER_CONSTRAINT = 10


@dataclasses.dataclass(frozen=True)
class Solution:
    """The optimum of a :class:`QuadraticProgram`.

    Attributes:
        x: shape (n,).
        active: indices of the active constraints, in the program's ``N'x >= d``
            rows (see :class:`QuadraticProgram`), equalities included.
        multipliers: shape (m,): ``u >= 0`` of every row (0 when inactive; of any
            sign for equalities), with ``Gx + c = N u``.
        iterations: how many constraints were added or dropped.
    """

    x: np.ndarray
    active: np.ndarray
    multipliers: np.ndarray
    iterations: int


class QuadraticProgram:
    """``min 1/2 x'Gx + c'x`` s.t. ``A_eq x = b_eq``, ``A_in x <= b_in``, bounds.

    Args:
        hessian: G, shape (n, n), symmetric positive definite.
        linear: c, shape (n,), or None for zeros.
        eq_matrix, eq_rhs: shapes (k, n) and (k,), or None.
        in_matrix, in_rhs: shapes (m, n) and (m,), or None.
        lower, upper: shape (n,) (``-inf`` / ``inf`` where unbounded), or None.

    The constraints are kept as rows ``N'x >= d`` (``normals`` of shape (M, n),
    ``rhs`` of shape (M,)): the ``k`` equalities first, then ``-A_in x >= -b_in``,
    then ``x_i >= lower_i`` and ``-x_i >= -upper_i`` for every finite bound, in
    that order (``rows`` says which is which).

    Raises:
        OptimizationError: when ``G`` is not positive definite.
    """

    def __init__(self, hessian, linear=None, eq_matrix=None, eq_rhs=None, in_matrix=None,
                 in_rhs=None, lower=None, upper=None):
        n = hessian.shape[0]
        self.hessian = hessian
        self.linear = np.zeros(n) if linear is None else np.asarray(linear, dtype=float)
        identity = np.eye(n)
        blocks, rhs, kinds = [], [], []

        def add(matrix, values, kind):
            if matrix is not None and len(values):
                blocks.append(np.atleast_2d(matrix))
                rhs.append(np.asarray(values, dtype=float))
                kinds.extend(kind(i) for i in range(len(values)))

        add(eq_matrix, [] if eq_rhs is None else eq_rhs, lambda i: ("eq", i))
        add(None if in_matrix is None else -np.atleast_2d(in_matrix),
            [] if in_rhs is None else -np.asarray(in_rhs, dtype=float), lambda i: ("in", i))
        for bound, sign, kind in ((lower, 1.0, "lower"), (upper, -1.0, "upper")):
            if bound is None:
                continue
            finite = np.flatnonzero(np.isfinite(bound))
            add(sign * identity[finite], sign * np.asarray(bound, dtype=float)[finite],
                lambda i, finite=finite, kind=kind: (kind, int(finite[i])))
        self.normals = np.vstack(blocks) if blocks else np.zeros((0, n))
        self.rhs = np.concatenate(rhs) if rhs else np.zeros(0)
        #: (kind, index) of every row: kind is ``eq``, ``in``, ``lower`` or ``upper``.
        self.rows = tuple(kinds)
        self.equalities = 0 if eq_matrix is None or eq_rhs is None else len(eq_rhs)
        try:
            factor = np.linalg.cholesky(hessian)
        except np.linalg.LinAlgError as e:
            raise OptimizationError(
                "The covariance is not positive definite; two symbols are probably "
                "duplicates or perfectly correlated. Remove one of them.") from e
        # J0 J0' = G⁻¹.
        self._j0 = solve_triangular(factor, identity, lower=True).T

    def solve(self):
        """Solve the program exactly (Goldfarb-Idnani dual active set).

        Returns:
            :class:`Solution`.

        Raises:
            OptimizationError: when the constraints cannot all hold (infeasible),
                or when the method stops without a verified optimum (rounding on
                an ill-conditioned covariance); the message says what to change.
        """
        normals, rhs, j0 = self.normals, self.rhs, self._j0
        count = rhs.size
        x = -(j0 @ (j0.T @ self.linear))
        scale = _scale(x, rhs)
        norms = np.maximum(np.linalg.norm(normals, axis=1), 1e-300)
        active = []       # row indices
        signs = []        # +1, or -1 for an equality entered as -n'x >= -d
        u = np.zeros(0)   # multipliers of the active rows
        iterations = 0
        limit = MAX_ITERATIONS_PER_CONSTRAINT * (count + 1) + 50
        factor = _Factor(j0, normals, active, signs)
        while True:
            slack = normals @ x - rhs
            pending = [i for i in range(self.equalities) if i not in active]
            if pending:
                p = pending[0]
                sign = -1.0 if slack[p] > 0 else 1.0
            else:
                scaled = slack / norms
                if active:
                    scaled[active] = np.inf
                p = int(np.argmin(scaled)) if count else 0
                if not count or scaled[p] >= -FEASIBILITY_TOLERANCE * scale:
                    break
                sign = 1.0
            normal = sign * normals[p]
            u_plus = np.append(u, 0.0)
            while True:
                iterations += 1
                if iterations > limit:
                    raise OptimizationError(
                        "The constrained quadratic program did not converge (iteration "
                        "limit); the covariance is probably ill-conditioned. Use a longer "
                        "date range, fewer or less similar symbols, or wider groups.")
                z, r = factor.steps(normal)
                s_p = sign * (normals[p] @ x - rhs[p])
                droppable = [j for j in range(len(active)) if active[j] >= self.equalities
                             and r[j] > 1e-14 * max(1.0, np.abs(r).max())]
                t1, drop = np.inf, None
                for j in droppable:
                    if u_plus[j] / r[j] < t1:
                        t1, drop = u_plus[j] / r[j], j
                t2 = np.inf if z is None else max(-s_p, 0.0) / float(z @ normal)
                if not np.isfinite(t1) and not np.isfinite(t2):
                    raise _infeasible()
                step = min(t1, t2)
                if np.isfinite(t2):
                    x = x + step * z
                u_plus[:-1] -= step * r
                u_plus[-1] += step
                if np.isfinite(t2) and t2 <= t1:
                    active.append(p)
                    signs.append(sign)
                    u = u_plus
                    factor = _Factor(j0, normals, active, signs)
                    break
                del active[drop], signs[drop]
                u_plus = np.delete(u_plus, drop)
                factor = _Factor(j0, normals, active, signs)
        multipliers = np.zeros(count)
        for row, sign, value in zip(active, signs, u, strict=True):
            multipliers[row] = sign * value
        solution = Solution(x=x, active=np.array(active, dtype=int), multipliers=multipliers,
                            iterations=iterations)
        residual = self.kkt_residual(solution)
        if residual > KKT_TOLERANCE:
            raise OptimizationError(
                f"The constrained quadratic program ended without a verified optimum (KKT "
                f"residual {residual:.1e}); the covariance is probably ill-conditioned. Use "
                "a longer date range, or fewer or less similar symbols.")
        return solution

    def kkt_residual(self, solution):
        """The largest violation of the KKT conditions at ``solution``.

        Stationarity ``Gx + c - N u``, primal feasibility ``N'x >= d`` (equalities
        ``=``), dual feasibility ``u >= 0`` on inequalities and complementary
        slackness ``u_i (n_i'x - d_i) = 0``, each relative to the size of the
        gradient and of ``x``.

        Args:
            solution: a :class:`Solution` of this program.

        Returns:
            float.
        """
        x, u = solution.x, solution.multipliers
        gradient = self.hessian @ x + self.linear
        size = max(1.0, float(np.abs(gradient).max(initial=0.0)),
                   float(np.abs(self.normals.T @ np.abs(u)).max(initial=0.0)))
        slack = self.normals @ x - self.rhs
        scale = _scale(x, self.rhs)
        eq = slice(0, self.equalities)
        inequality = slice(self.equalities, None)
        return max(
            float(np.abs(gradient - self.normals.T @ u).max(initial=0.0)) / size,
            float(np.abs(slack[eq]).max(initial=0.0)) / scale,
            float(np.maximum(-slack[inequality], 0.0).max(initial=0.0)) / scale,
            float(np.maximum(-u[inequality], 0.0).max(initial=0.0)) / size,
            float(np.abs(u[inequality] * slack[inequality]).max(initial=0.0)) / (size * scale),
        )


class _Factor:
    """``L⁻¹N_A = Q[R; 0]`` for the active rows ``A`` (signed), and the GI steps."""

    def __init__(self, j0, normals, active, signs):
        self.q = len(active)
        n = j0.shape[0]
        if self.q:
            columns = (normals[active] * np.asarray(signs)[:, None]).T
            q, r = np.linalg.qr(j0.T @ columns, mode="complete")
            self.j = j0 @ q
            self.r = r[:self.q, :self.q]
        else:
            self.j = j0
            self.r = np.zeros((0, 0))
        self.n = n

    def steps(self, normal):
        """The primal step ``z = J₂J₂'n`` and the dual step ``r = R⁻¹J₁'n``.

        ``z`` is None when ``n`` lies in the span of the active normals (to
        rounding): then no primal step can satisfy the new row.
        """
        d = self.j.T @ normal
        outside = d[self.q:]
        dependent = np.linalg.norm(outside) <= DEPENDENCE_TOLERANCE * np.linalg.norm(d)
        z = None if dependent else self.j[:, self.q:] @ outside
        r = solve_triangular(self.r, d[:self.q]) if self.q else np.zeros(0)
        return z, r


def _scale(x, rhs):
    return max(1.0, float(np.abs(x).max(initial=0.0)), float(np.abs(rhs).max(initial=0.0)))


def _infeasible():
    return OptimizationError(
        "The constraints cannot all hold together (weightBounds, groups, the budget and "
        "any target); widen the groups' [min, max] or the bounds, or change the target.")


@dataclasses.dataclass(frozen=True)
class Piece:
    """The optimum for every ``ρ`` in ``[lo, hi]`` with one active set: ``x0 + ρ x1``.

    Attributes:
        lo, hi: the interval of the parameter on which the active set is optimal.
        x0, x1: shape (n,).
    """

    lo: float
    hi: float
    x0: np.ndarray
    x1: np.ndarray

    def x(self, rho):
        """The optimum at ``rho`` (shape (n,))."""
        return self.x0 + rho * self.x1


def affine_piece(program, solution, rho, rhs_direction, keep=()):
    """The piece of the optimum around ``rho`` when ``d`` moves as ``d + (ρ' - ρ) d1``.

    The active set of ``solution`` (plus the rows in ``keep``, held as
    equalities) is fixed; its KKT system ``[G -N_A'; N_A 0][x; u] = [-c; d_A]``
    is solved for the constant and the ``ρ`` parts of the right-hand side, and
    the interval is where every inactive row holds and every active inequality
    keeps ``u >= 0``.

    Args:
        program: the :class:`QuadraticProgram` solved at ``rho``.
        solution: its :class:`Solution`.
        rho: the parameter's value at which ``program`` was built.
        rhs_direction: ``d1``, shape (M,) in the program's rows.
        keep: row indices to hold active even when ``solution`` has them inactive.

    Returns:
        :class:`Piece`, with ``lo <= rho <= hi`` (both ``rho`` when the active set
        is degenerate: its rows are linearly dependent).
    """
    normals, rhs = program.normals, program.rhs
    rows = sorted(set(solution.active.tolist()) | set(keep))
    n, q = normals.shape[1], len(rows)
    block = np.zeros((n + q, n + q))
    block[:n, :n] = program.hessian
    block[:n, n:] = -normals[rows].T
    block[n:, :n] = normals[rows]
    right = np.zeros((n + q, 2))
    right[:n, 0] = -program.linear
    right[n:, 0] = rhs[rows] - rho * rhs_direction[rows]
    right[n:, 1] = rhs_direction[rows]
    try:
        answer = np.linalg.solve(block, right)
    except np.linalg.LinAlgError:
        return Piece(lo=rho, hi=rho, x0=solution.x, x1=np.zeros(n))
    if not np.all(np.isfinite(answer)) or np.linalg.cond(block) > 1e12:
        return Piece(lo=rho, hi=rho, x0=solution.x, x1=np.zeros(n))
    x0, x1 = answer[:n, 0], answer[:n, 1]
    u0, u1 = answer[n:, 0], answer[n:, 1]
    inactive = np.setdiff1d(np.arange(rhs.size), rows)
    inequality = np.array([row >= program.equalities for row in rows], dtype=bool)
    # Each condition reads a + ρ b >= 0.
    base = rhs - rho * rhs_direction
    a = np.concatenate((normals[inactive] @ x0 - base[inactive], u0[inequality]))
    b = np.concatenate((normals[inactive] @ x1 - rhs_direction[inactive], u1[inequality]))
    tiny = 1e-13 * max(1.0, float(np.abs(b).max(initial=0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        limits = -a / b
    lo = float(np.max(limits[b > tiny], initial=-np.inf))
    hi = float(np.min(limits[b < -tiny], initial=np.inf))
    return Piece(lo=min(lo, rho), hi=max(hi, rho), x0=x0, x1=x1)
