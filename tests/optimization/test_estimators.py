"""The estimators of μ and Σ against their closed forms on the shipped sample prices.

Each is checked against an independent computation: pandas' recursive ``ewm`` (the
implementation PyPortfolioOpt calls), the per-observation sums of Ledoit & Wolf's
paper, small cases worked by hand; and the engine is checked to use the chosen
models everywhere while the defaults change nothing.
"""

import dataclasses
import itertools
import unittest

import numpy as np
from numpy.testing import assert_allclose

from indico.error import OptimizationError
from indico.optimization import efficient_frontier, estimators, optimize
from indico.optimization.data import prepare_prices
from indico.optimization.hrp import hrp_weights
from tests.optimization.sample import sample_prices

SYMBOLS = ["AAPL", "JNJ", "XOM", "MSFT", "KO"]


def window(start="2015-01-01", end="2019-12-31", symbols=SYMBOLS):
    return sample_prices().loc[start:end, symbols]


def daily_returns(prices):
    return prices.pct_change().dropna(how="all")


class ReturnsModelTest(unittest.TestCase):
    def test_ema_is_pandas_ewm_at_the_last_date_times_252(self):
        prices = window()
        returns = daily_returns(prices)
        for span in (2, 60, 500, 5000):
            with self.subTest(span=span):
                expected = returns.ewm(span=span).mean().iloc[-1].to_numpy() * 252
                found = estimators.ema_returns(returns.to_numpy(), span)
                assert_allclose(found, expected, rtol=1e-12)

    def test_ema_of_three_returns_by_hand(self):
        # span 3: alpha = 1/2, weights 1/4, 1/2, 1 normalised by 7/4.
        returns = np.array([[0.01], [0.02], [-0.04]])
        expected = 252 * (0.25 * 0.01 + 0.5 * 0.02 + 1.0 * -0.04) / 1.75
        assert_allclose(estimators.ema_returns(returns, 3), [expected], rtol=1e-14)

    def test_mean_is_the_sample_mean(self):
        data = prepare_prices(window())
        self.assertIs(estimators.estimate(data, "mean", 500, "sample", 180), data)


class RiskModelTest(unittest.TestCase):
    def test_ledoit_wolf_against_the_papers_per_observation_sums(self):
        returns = daily_returns(window("2018-01-01", "2018-12-31")).to_numpy()
        count, n = returns.shape
        x = returns - returns.mean(axis=0)
        sample = x.T @ x / count
        # Ledoit & Wolf (2004) with the norm ||A||^2 = tr(AA')/n.
        def norm(a):
            return np.trace(a @ a.T) / n

        m = np.trace(sample) / n
        d2 = norm(sample - m * np.eye(n))
        b2_bar = sum(norm(np.outer(row, row) - sample) for row in x) / count**2
        b2 = min(b2_bar, d2)
        expected = (b2 / d2) * m * np.eye(n) + ((d2 - b2) / d2) * sample
        found, shrinkage = estimators.ledoit_wolf(returns)
        assert_allclose(found, 252 * expected, rtol=1e-12)
        assert_allclose(shrinkage, b2 / d2, rtol=1e-12)
        self.assertTrue(0 < shrinkage < 1)

    def test_ledoit_wolf_of_identical_uncorrelated_noise_shrinks_hard(self):
        rng = np.random.default_rng(5)
        returns = rng.normal(0, 0.01, size=(60, 30))
        _, shrinkage = estimators.ledoit_wolf(returns)
        self.assertGreater(shrinkage, 0.5)

    def test_exp_cov_is_pandas_ewm_of_centred_products(self):
        returns = daily_returns(window())
        for span in (2, 180, 5000):
            with self.subTest(span=span):
                expected = np.empty((len(SYMBOLS),) * 2)
                for i, a in enumerate(SYMBOLS):
                    for j, b in enumerate(SYMBOLS):
                        product = (returns[a] - returns[a].mean()) * (
                            returns[b] - returns[b].mean())
                        expected[i, j] = product.ewm(span=span).mean().iloc[-1] * 252
                found = estimators.exp_cov(returns.to_numpy(), span)
                assert_allclose(found, expected, rtol=1e-10)

    def test_semicovariance_by_hand(self):
        returns = np.array([[0.01, -0.02], [-0.03, 0.01], [0.02, -0.01], [-0.01, -0.02]])
        benchmark = 0.0
        # Drops below 0: [0, -.02], [-.03, 0], [0, -.01], [-.01, -.02].
        expected = 252 / 4 * np.array([[0.03**2 + 0.01**2, 0.01 * 0.02],
                                       [0.01 * 0.02, 0.02**2 + 0.01**2 + 0.02**2]])
        assert_allclose(estimators.semicovariance(returns, benchmark), expected, rtol=1e-13)

    def test_semicovariance_benchmark_is_the_rate_over_252(self):
        data = prepare_prices(window())
        estimated = estimators.estimate(data, risk_model="semicovariance", risk_free_rate=0.05)
        drops = np.fmin(daily_returns(window()) - 0.05 / 252, 0)
        assert_allclose(estimated.cov, (drops.T @ drops).to_numpy() / len(drops) * 252,
                        rtol=1e-12)
        assert_allclose(estimated.mu, data.mu, rtol=0)

    def test_every_matrix_is_symmetric_positive_definite_here(self):
        data = prepare_prices(window())
        for model in estimators.RiskModel:
            with self.subTest(model=model.value):
                cov = estimators.estimate(data, risk_model=model).cov
                self.assertTrue(np.array_equal(cov, cov.T))
                self.assertGreater(np.linalg.eigvalsh(cov).min(), 0)

    def test_bad_models_and_spans_say_what_to_give(self):
        data = prepare_prices(window())
        cases = [
            ({"returns_model": "median"},
             "Unknown returnsModel 'median'; use one of: mean, ema."),
            ({"risk_model": "shrunk"},
             ("Unknown riskModel 'shrunk'; use one of: sample, ledoit_wolf, exp_cov, "
              "semicovariance.")),
            ({"returns_model": "ema", "returns_span": 1},
             "returnsSpan must be a whole number of days from 2 to 5000."),
            ({"risk_model": "exp_cov", "risk_span": 180.0},
             "riskSpan must be a whole number of days from 2 to 5000."),
            ({"risk_model": "exp_cov", "risk_span": True},
             "riskSpan must be a whole number of days from 2 to 5000."),
        ]
        for options, message in cases:
            with self.subTest(options=options):
                with self.assertRaises(OptimizationError) as caught:
                    estimators.estimate(data, **options)
                self.assertEqual(str(caught.exception), message)

    def test_semicovariance_without_downside_names_the_symbols(self):
        prices = window("2012-01-03", "2012-01-12", ["AAPL", "MSFT", "JPM"])
        with self.assertRaises(OptimizationError) as caught:
            optimize(prices, "min_volatility", risk_model="semicovariance", risk_free_rate=-1)
        self.assertIn("gives no variance to AAPL", str(caught.exception))
        self.assertEqual(caught.exception.details, {"symbols": ["AAPL"]})


class EngineUsesTheModelsTest(unittest.TestCase):
    def test_defaults_change_nothing(self):
        prices = window()
        for objective in ("max_sharpe", "min_volatility", "risk_parity"):
            with self.subTest(objective=objective):
                plain = optimize(prices, objective)
                explicit = optimize(prices, objective, returns_model="mean", returns_span=500,
                                    risk_model="sample", risk_span=180)
                self.assertTrue(np.array_equal(plain.weights, explicit.weights))

    def test_objectives_and_stats_use_the_chosen_mu_and_sigma(self):
        symbols = ["AAPL", "AMD", "BBY", "LLY", "WMT"]
        prices = window(symbols=symbols)
        data = prepare_prices(prices)
        mu = estimators.ema_returns(data.returns, 250)
        cov = estimators.ledoit_wolf(data.returns)[0]
        result = optimize(prices, "min_volatility", returns_model="ema", returns_span=250,
                          risk_model="ledoit_wolf")
        # The minimum of w'Σw for the shrunk Σ, long only: check against the closed form
        # when no bound binds.
        inverse = np.linalg.solve(cov, np.ones(len(symbols)))
        closed = inverse / inverse.sum()
        self.assertTrue(np.all(closed > 0))
        assert_allclose(result.weights, closed, atol=1e-10)
        assert_allclose(result.stats["expected_return"], mu @ result.weights, rtol=1e-12)
        assert_allclose(result.stats["volatility"] ** 2, result.weights @ cov @ result.weights,
                        rtol=1e-12)
        sharpe = optimize(prices, "max_sharpe", returns_model="ema", returns_span=250)
        plain = optimize(prices, "max_sharpe")
        self.assertGreater(np.abs(sharpe.weights - plain.weights).max(), 1e-3)
        assert_allclose(sharpe.stats["expected_return"], mu @ sharpe.weights, rtol=1e-12)

    # Each objective below is run under riskModel ledoit_wolf and exp_cov (returnsModel
    # ema where it reads μ) and checked against an independent computation on the
    # estimators' own μ and Σ, and against its result under the default models: an
    # objective that read the sample moments would fail both.
    RISK_MODELS = ({"risk_model": "ledoit_wolf"}, {"risk_model": "exp_cov", "risk_span": 60})
    RETURNS_MODEL = {"returns_model": "ema", "returns_span": 250}

    def moments(self, prices, **models):
        """The μ and Σ of the chosen models, from the estimators themselves."""
        data = estimators.estimate(prepare_prices(prices), **models)
        return data.mu, data.cov

    def assert_differs(self, found, default):
        # The chosen models move these weights by 1e-3 or more here; the checks are
        # exact to 1e-10, so an objective reading the sample moments cannot pass.
        self.assertGreater(np.abs(found - default).max(), 1e-4)

    def test_hrp_is_hrp_of_the_chosen_sigma(self):
        prices = window()
        default = optimize(prices, "hrp").weights
        for models in self.RISK_MODELS:
            with self.subTest(**models):
                _, cov = self.moments(prices, **models)
                found = optimize(prices, "hrp", **models).weights
                assert_allclose(found, hrp_weights(cov, np.zeros(5), np.ones(5)),
                                rtol=1e-12, atol=1e-15)
                self.assert_differs(found, default)

    def test_inverse_volatility_is_one_over_the_chosen_sigmas(self):
        prices = window()
        default = optimize(prices, "inverse_volatility").weights
        for models in self.RISK_MODELS:
            with self.subTest(**models):
                _, cov = self.moments(prices, **models)
                inverse = 1 / np.sqrt(np.diag(cov))
                found = optimize(prices, "inverse_volatility", **models).weights
                assert_allclose(found, inverse / inverse.sum(), rtol=1e-12)
                self.assert_differs(found, default)

    def test_risk_parity_equalises_contributions_to_the_chosen_sigma(self):
        prices = window()
        default = optimize(prices, "risk_parity").weights
        for models in self.RISK_MODELS:
            with self.subTest(**models):
                _, cov = self.moments(prices, **models)
                found = optimize(prices, "risk_parity", **models).weights
                assert_allclose(found * (cov @ found) / (found @ cov @ found), np.full(5, 0.2),
                                rtol=1e-9)
                self.assert_differs(found, default)

    def test_max_diversification_is_the_closed_form_of_the_chosen_sigma(self):
        prices = window()
        default = optimize(prices, "max_diversification").weights
        for models in self.RISK_MODELS:
            with self.subTest(**models):
                _, cov = self.moments(prices, **models)
                # Budget-only optimum Σ^-1 σ / 1'Σ^-1 σ; positive here, so no bound binds.
                raw = np.linalg.solve(cov, np.sqrt(np.diag(cov)))
                self.assertTrue(np.all(raw > 0))
                found = optimize(prices, "max_diversification", **models).weights
                assert_allclose(found, raw / raw.sum(), rtol=1e-10)
                self.assert_differs(found, default)

    def assert_efficient(self, weights, mu, cov):
        """KKT of min w'Σw s.t. μ'w = r, 1'w = 1, 0 <= w <= 1 on the upper frontier.

        (Σw)_i = λ + γ μ_i with γ >= 0 where 0 < w_i < 1, and >= where w_i = 0; at
        least three free assets, so the equalities are not met by any (λ, γ).
        """
        free = (weights > 1e-9) & (weights < 1 - 1e-9)
        self.assertGreaterEqual(free.sum(), 3)
        gradient = cov @ weights
        basis = np.column_stack((np.ones(5), mu))
        (level, slope), *_ = np.linalg.lstsq(basis[free], gradient[free], rcond=None)
        residual = gradient - basis @ (level, slope)
        scale = np.abs(gradient).max()
        assert_allclose(residual[free], 0, atol=1e-10 * scale)
        self.assertTrue(np.all(residual[weights <= 1e-9] >= -1e-10 * scale))
        self.assertGreater(slope, 0)

    def test_efficient_return_is_efficient_for_the_chosen_mu_and_sigma(self):
        prices = window()
        target = 0.25
        for models in self.RISK_MODELS:
            with self.subTest(**models):
                mu, cov = self.moments(prices, **self.RETURNS_MODEL, **models)
                result = optimize(prices, "efficient_return", target_return=target,
                                  **self.RETURNS_MODEL, **models)
                weights = result.weights
                self.assert_efficient(weights, mu, cov)
                assert_allclose(mu @ weights, target, rtol=1e-10)
                assert_allclose(result.stats["expected_return"], mu @ weights, rtol=1e-12)
                assert_allclose(result.stats["volatility"], np.sqrt(weights @ cov @ weights),
                                rtol=1e-12)
                # The frontier of the same models holds it: its point at some return
                # is the efficient_return portfolio of that return.
                point = efficient_frontier(prices, points=5, **self.RETURNS_MODEL,
                                           **models)["points"][2]
                at_point = optimize(prices, "efficient_return",
                                    target_return=point["expected_return"],
                                    **self.RETURNS_MODEL, **models).weights
                assert_allclose(at_point, list(point["weights"].values()), atol=1e-10)
                self.assert_differs(weights, optimize(prices, "efficient_return",
                                                      target_return=target,
                                                      **self.RETURNS_MODEL).weights)
                self.assert_differs(weights, optimize(prices, "efficient_return",
                                                      target_return=target, **models).weights)

    def test_efficient_risk_is_efficient_for_the_chosen_mu_and_sigma(self):
        prices = window()
        target = 0.13
        for models in self.RISK_MODELS:
            with self.subTest(**models):
                mu, cov = self.moments(prices, **self.RETURNS_MODEL, **models)
                result = optimize(prices, "efficient_risk", target_volatility=target,
                                  **self.RETURNS_MODEL, **models)
                weights = result.weights
                self.assert_efficient(weights, mu, cov)
                assert_allclose(np.sqrt(weights @ cov @ weights), target, rtol=1e-10)
                assert_allclose(result.stats["volatility"], target, rtol=1e-10)
                assert_allclose(result.stats["expected_return"], mu @ weights, rtol=1e-12)
                self.assert_differs(weights, optimize(prices, "efficient_risk",
                                                      target_volatility=target,
                                                      **self.RETURNS_MODEL).weights)
                self.assert_differs(weights, optimize(prices, "efficient_risk",
                                                      target_volatility=target,
                                                      **models).weights)

    def test_max_assets_searches_with_the_chosen_mu_and_sigma(self):
        # Against every 3 of the 5 assets solved without the count on the model's
        # moments restricted to them (the engine on a MarketData carrying them).
        prices = window()
        data = prepare_prices(prices)

        def variance(weights, mu, cov):
            return weights @ cov @ weights

        def minus_sharpe(weights, mu, cov):
            return -(mu @ weights) / np.sqrt(weights @ cov @ weights)

        for objective, loss in (("min_volatility", variance), ("max_sharpe", minus_sharpe)):
            for models in self.RISK_MODELS:
                with self.subTest(objective=objective, **models):
                    mu, cov = self.moments(prices, **self.RETURNS_MODEL, **models)
                    candidates = []
                    for keep in itertools.combinations(range(5), 3):
                        keep = list(keep)
                        subset = dataclasses.replace(
                            data, symbols=tuple(data.symbols[i] for i in keep),
                            prices=data.prices[:, keep], returns=data.returns[:, keep],
                            mu=mu[keep], cov=cov[np.ix_(keep, keep)])
                        weights = np.zeros(5)
                        weights[keep] = optimize(subset, objective).weights
                        candidates.append(weights)
                    best = min(candidates, key=lambda w: loss(w, mu, cov))
                    result = optimize(prices, objective, max_assets=3, **self.RETURNS_MODEL,
                                      **models)
                    self.assertTrue(result.stats["optimal"])
                    unlimited = optimize(prices, objective, **self.RETURNS_MODEL, **models)
                    self.assertGreater(np.count_nonzero(unlimited.weights), 3)  # it binds
                    assert_allclose(result.weights, best, atol=1e-10)
                    self.assert_differs(result.weights,
                                        optimize(prices, objective, max_assets=3).weights)
