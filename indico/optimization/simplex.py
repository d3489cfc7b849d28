"""The bounded simplex ``{w : 1'w = total, lower <= w <= upper}``: projection and repair.

Shared by the buy-and-hold search (projected Newton steps, starting points) and by
the engine (equal weights under per-symbol bounds, cleaning solver output).
"""

import numpy as np


def project_to_bounded_simplex(point, lower, upper, total=1.0):
    """Euclidean projection onto ``{w : 1'w = total, lower <= w <= upper}``.

    The projection is ``clip(point - tau, lower, upper)`` for the ``tau`` that makes
    the sum ``total``. The sum is piecewise linear and non-increasing in ``tau`` with
    breakpoints ``point - lower`` and ``point - upper``, so ``tau`` is found exactly
    by evaluating it at every breakpoint and interpolating.

    Args:
        point, lower, upper: arrays of shape (n,); the set must be non-empty.
        total: the sum of the projected weights.

    Returns:
        array of shape (n,).
    """
    breakpoints = np.sort(np.concatenate((point - lower, point - upper)))
    sums = np.clip(point[None, :] - breakpoints[:, None], lower, upper).sum(axis=1)
    index = int(np.searchsorted(-sums, -total, side="left"))
    if index == 0:
        tau = breakpoints[0]
    elif index == breakpoints.size:
        tau = breakpoints[-1]
    else:
        high_sum, low_sum = sums[index - 1], sums[index]
        left, right = breakpoints[index - 1], breakpoints[index]
        tau = right if high_sum == low_sum else left + (high_sum - total) * (right - left) / (
            high_sum - low_sum
        )
    return fix_budget(np.clip(point - tau, lower, upper), lower, upper, total)


def fix_budget(weights, lower, upper, total=1.0):
    """Spread the rounding residue of the budget over assets strictly inside bounds.

    Assets exactly at a bound stay there, so the active set is not blurred by
    values like 1e-17.

    Args:
        weights, lower, upper: arrays of shape (n,).
        total: the sum wanted.

    Returns:
        array of shape (n,).
    """
    residue = total - weights.sum()
    if residue != 0.0:
        room = (upper - weights) if residue > 0 else (weights - lower)
        inside = (weights > lower) & (weights < upper)
        room = np.where(inside, room, 0.0)
        room_total = room.sum()
        if room_total <= 0:
            room = (upper - weights) if residue > 0 else (weights - lower)
            room_total = room.sum()
        if room_total > 0:
            weights = weights + residue * room / room_total
    return weights


def fix_budget_rows(weights, lower, upper, total=1.0):
    """:func:`fix_budget` of every row of ``weights`` at once (the same operations).

    A frontier cleans all its portfolios together (76 for 50 points of 20 assets):
    one call a row cost more than the critical-line walk that found them
    (docs/PERFORMANCE.md).

    Args:
        weights: array of shape (k, n); lower, upper: arrays of shape (n,).
        total: the sum wanted of each row.

    Returns:
        array of shape (k, n).
    """
    residue = total - weights.sum(axis=1)
    gain = (residue > 0)[:, None]
    room_all = np.where(gain, upper - weights, weights - lower)
    inside = (weights > lower) & (weights < upper)
    room = np.where(inside, room_all, 0.0)
    room_total = room.sum(axis=1)
    # A row with no asset strictly inside its bounds spreads over all of them.
    none_inside = room_total <= 0
    if none_inside.any():
        room = np.where(none_inside[:, None], room_all, room)
        room_total = np.where(none_inside, room_all.sum(axis=1), room_total)
    spread = (residue != 0.0) & (room_total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fixed = weights + residue[:, None] * room / room_total[:, None]
    return np.where(spread[:, None], fixed, weights)
