"""simplex.py: the budget repair of one portfolio and of many at once."""

import unittest

import numpy as np
from numpy.testing import assert_array_equal

from indico.optimization.simplex import fix_budget, fix_budget_rows


class FixBudgetTest(unittest.TestCase):

    def test_the_residue_goes_to_assets_strictly_inside_their_bounds(self):
        lower, upper = np.zeros(3), np.full(3, 0.5)
        fixed = fix_budget(np.array([0.5, 0.3, 0.1]), lower, upper)
        # 0.1 missing; room above: 0.2 and 0.4 (the asset at its cap gets none).
        np.testing.assert_allclose(fixed, [0.5, 0.3 + 0.1 / 3, 0.1 + 0.2 / 3], rtol=1e-15)
        self.assertEqual(fixed[0], 0.5)

    def test_without_an_asset_inside_every_asset_takes_a_share(self):
        lower, upper = np.zeros(2), np.full(2, 0.6)
        fixed = fix_budget(np.array([0.0, 0.6]), lower, upper)
        np.testing.assert_allclose(fixed, [0.4, 0.6], rtol=1e-15)

    def test_rows_at_once_are_bit_for_bit_each_row_alone(self):
        # The frontier cleans its portfolios together: the same numbers as one by
        # one, for sums above and below 1, exact sums, weights on their bounds,
        # rows with no asset inside its bounds, and several sizes.
        rng = np.random.default_rng(7)
        for n in (1, 2, 5, 20):
            lower = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0, 0.5 / n, n))
            upper = np.maximum(lower, rng.uniform(1.0 / n, 1.0, n))
            rows = rng.dirichlet(np.ones(n), size=40)
            rows = np.clip(rows, lower, upper)
            rows[::3] += rng.normal(scale=1e-12, size=(len(rows[::3]), n))
            rows[1::5] = np.where(rng.random(n) < 0.5, lower, upper)
            rows[2::7] = rows[2::7] / rows[2::7].sum(axis=1)[:, None]
            expected = np.array([fix_budget(row, lower, upper) for row in rows])
            with self.subTest(n=n):
                assert_array_equal(fix_budget_rows(rows, lower, upper), expected)


if __name__ == "__main__":
    unittest.main()
