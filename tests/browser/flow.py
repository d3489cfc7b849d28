"""The page at ``/app/`` in a real headless Chromium, against a real indico server.

One ``python -m indico.server`` (embedded database, the shipped sample prices,
a data directory of its own) serves every test of the run; Playwright drives
Debian's Chromium (``/usr/bin/chromium``). The tests do what a person does:
sign up, optimize the seed's request, watch its progress, read the charts,
reload, reopen and delete the saved result, log out; an invalid field shows
the API's message beside it; a 360 px wide screen needs no horizontal scroll.
Issue 13's choices (``maxAssets``, the groups editor) reach the API and their
outcome is shown; issue 14's backtest runs with its progress bar, chart,
statistics and rebalances, its fields' errors sit beside them, and a running
backtest can be cancelled.

Every test fails on a browser console error or an uncaught exception (a CSP
violation is one) other than the failed requests it provokes on purpose
(:meth:`PageTest.expect_failed_request`). Screenshots go to
``build/screenshots/``. Without Chromium (and no way to install it:
:mod:`tests.browser.chromium`) the tests are skipped with that reason.

Run with ``python -m nose2 -c setup.cfg --top-level-directory . tests.browser.flow``
(``make test`` does, as a step of its own).
"""

import itertools
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import unittest
import urllib.error
import urllib.request
import uuid
from typing import ClassVar

from indico.db.embedded import _free_port as free_port
from tests.browser.chromium import CHROMIUM, missing_reason
from tests.browser.prefix_proxy import PrefixProxy
from tests.contract import post, start_server
from tests.processes import stop_process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCREENSHOTS = os.path.join(REPO, "build", "screenshots")
# Playwright's wait for anything the page shows: generous, on a shared two-core machine.
TIMEOUT_MS = 45_000
PASSWORD = "correct horse battery"
SEED_REQUEST = {"symbols": ["AAPL", "MSFT", "JPM"], "startDate": "01-01-12",
                "endDate": "03-20-16", "initialInvestment": 1000.0}
FAILED_RESOURCE = re.compile(r"^Failed to load resource: the server responded with a status "
                             r"of (\d{3})\b")

_run = {}


def setUpModule():
    reason = missing_reason()
    if reason:
        raise unittest.SkipTest(reason)
    from playwright.sync_api import sync_playwright

    directory = tempfile.mkdtemp(prefix="indico-browser-")
    _run["directory"] = directory
    _run["server"], _run["base"] = start_server(directory, free_port())
    _run["playwright"] = sync_playwright().start()
    _run["browser"] = _run["playwright"].chromium.launch(executable_path=CHROMIUM,
                                                         headless=True)
    os.makedirs(SCREENSHOTS, exist_ok=True)


def tearDownModule():
    if "browser" in _run:
        _run.pop("browser").close()
    if "playwright" in _run:
        _run.pop("playwright").stop()
    if "server" in _run:
        status = stop_process(_run.pop("server"))
        if status == 0:
            shutil.rmtree(_run["directory"], ignore_errors=True)
        else:
            print(f"browser tests: the server exited {status}; its files are in "
                  f"{_run['directory']}")


def new_email() -> str:
    return f"person-{uuid.uuid4().hex[:12]}@example.com"


def polyline_points(points: str) -> list[tuple[float, float]]:
    """An SVG ``points`` attribute ("x,y x,y ...") as pairs of floats."""
    return [tuple(float(v) for v in pair.split(",")) for pair in points.split()]


def linear_scale(values: list[float], pixels: list[float]) -> tuple[float, float, float]:
    """The straight line pixel = offset + slope * value through the pairs.

    Returns:
        (offset, slope, the largest distance in pixels of a pair from the line).
    """
    slope, offset = statistics.linear_regression(values, pixels)
    worst = max(abs(offset + slope * v - p) for v, p in zip(values, pixels, strict=True))
    return offset, slope, worst


def distance_to_polyline(point: tuple[float, float],
                         line: list[tuple[float, float]]) -> float:
    """The shortest distance from ``point`` to any segment of ``line``."""
    (px, py), best = point, math.inf
    for (ax, ay), (bx, by) in itertools.pairwise(line):
        dx, dy = bx - ax, by - ay
        along = ((px - ax) * dx + (py - ay) * dy) / ((dx * dx + dy * dy) or 1.0)
        along = min(1.0, max(0.0, along))
        best = min(best, math.hypot(px - ax - along * dx, py - ay - along * dy))
    return best


class PageTest(unittest.TestCase):
    """A fresh browser context (no storage) per test, watched for console errors."""

    viewport: ClassVar[dict[str, int]] = {"width": 1000, "height": 900}

    def setUp(self):
        from playwright.sync_api import expect

        self.expect = expect
        expect.set_options(timeout=TIMEOUT_MS)
        self.base = _run["base"]
        self.context = _run["browser"].new_context(viewport=self.viewport)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.problems = []
        self.allowed_failures = []
        self.page.on("console", self.on_console)
        self.page.on("pageerror", lambda exception: self.problems.append(
            f"uncaught exception: {exception}"))
        self.addCleanup(self.context.close)

    def tearDown(self):
        self.assertEqual(self.problems, [], "the browser console reported errors")

    def on_console(self, message):
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        failed = FAILED_RESOURCE.match(message.text)
        if failed and (int(failed.group(1)), url.removeprefix(self.base)) in self.allowed_failures:
            return
        self.problems.append(f"console error: {message.text} ({url})")

    def expect_failed_request(self, status: int, path: str) -> None:
        """Allow the console line Chromium writes for an answer ``status`` of ``path``."""
        self.allowed_failures.append((status, path))

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=os.path.join(SCREENSHOTS, name), full_page=True)

    def open_page(self) -> None:
        self.page.goto(self.base + "/app/")
        self.expect(self.page.locator("#auth-section")).to_be_visible()

    def sign_up(self, email: str) -> None:
        page = self.page
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_label("Name").fill("Ada")
        page.get_by_role("button", name="Sign up").click()
        self.expect(page.locator("#optimize-section")).to_be_visible()
        self.expect(page.locator("#who-email")).to_have_text(email)

    def log_in(self, email: str) -> None:
        page = self.page
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        self.expect(page.locator("#optimize-section")).to_be_visible()

    def choose_symbols(self, *symbols: str) -> None:
        """Type each symbol and press Enter, as a keyboard user does."""
        box = self.page.get_by_role("combobox", name="Symbols")
        # The suggestions come from prices/symbols, with each symbol's dates.
        self.expect(self.page.locator("#symbol-options option")).not_to_have_count(0)
        for symbol in symbols:
            box.fill(symbol)
            box.press("Enter")
        self.expect(self.page.locator("#symbol-chips li")).to_have_count(len(symbols))

    def no_horizontal_scroll(self) -> None:
        widths = self.page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        self.assertLessEqual(widths[0], widths[1], "the page scrolls sideways")

    def fill_dates(self, start: str = "2012-01-01", end: str = "2016-03-20") -> None:
        self.page.get_by_label("Start date").fill(start)
        self.page.get_by_label("End date").fill(end)

    def token_of(self, email: str) -> str:
        return post(self.base, "/auth/login", {"email": email, "password": PASSWORD})[
            "data"]["token"]


class WholeFlowTest(PageTest):

    def test_sign_up_optimize_watch_reload_reopen_delete_log_out(self):
        page, expect = self.page, self.expect
        # Every portfolio/frontier answer the page receives, to check its chart against.
        self.frontier_answers = []
        page.on("response", self.keep_frontier_answer)
        self.open_page()
        email = new_email()
        self.sign_up(email)
        self.choose_symbols("aapl", "MSFT", "JPM")
        chips = page.locator("#symbol-chips li")
        expect(chips.first).to_contain_text("AAPL")
        expect(chips.first).to_contain_text("1990-01-02 to 2022-12-28")
        # The dates default to the range the three share.
        expect(page.get_by_label("Start date")).to_have_value("1990-01-02")
        expect(page.get_by_label("End date")).to_have_value("2022-12-28")
        page.get_by_label("Start date").fill("2012-01-01")
        page.get_by_label("End date").fill("2016-03-20")
        page.get_by_label("Investment").fill("1000")
        page.get_by_role("button", name="Optimize").click()

        # Progress from /ws/jobs: each event in the log, the steps reached in turn.
        log = page.locator("#progress-log li")
        expect(log).to_have_count(3)
        expect(log.nth(0)).to_contain_text("queued")
        expect(log.nth(1)).to_contain_text("running")
        expect(log.nth(2)).to_contain_text("done")
        expect(page.locator("#steps li.reached")).to_have_count(3)
        expect(page.locator("#progress-message")).to_have_text("Done.")

        # The result, as the API computed it (tests/contract.py saves the same one).
        [expected] = post(self.base, "/portfolio/list", {},
                          self.token_of(email))["data"]["results"]
        self.check_result(expected)
        self.screenshot("result.png")  # the README's picture, docs/app.png, is a copy

        # A reload keeps the session (sessionStorage) and lists the saved result.
        self.assertNotIn("token", page.url)
        page.reload()
        expect(page.locator("#optimize-section")).to_be_visible()
        self.assertEqual(page.evaluate("localStorage.length"), 0)
        self.assertNotIn("token", page.url)
        saved = page.locator("#saved-list li")
        expect(saved).to_have_count(1)
        expect(saved.first).to_contain_text("AAPL, MSFT, JPM")
        expect(page.locator("#result-section")).to_be_hidden()
        saved.first.get_by_role("button", name="Open").click()
        self.check_result(expected)

        saved.first.get_by_role("button", name="Delete").click()
        expect(saved).to_have_count(0)
        expect(page.locator("#saved-empty")).to_be_visible()
        expect(page.locator("#result-section")).to_be_hidden()
        token = page.evaluate("sessionStorage.getItem('indico.token')")
        self.assertEqual(post(self.base, "/portfolio/list", {}, token)["data"]["results"], [])

        page.get_by_role("button", name="Log out").click()
        expect(page.locator("#auth-section")).to_be_visible()
        expect(page.locator("#notice")).to_have_text("You are logged out.")
        self.assertIsNone(page.evaluate("sessionStorage.getItem('indico.token')"))
        with self.assertRaises(urllib.error.HTTPError) as refused:
            post(self.base, "/auth/check", {}, token)
        self.assertEqual(refused.exception.code, 401)
        page.reload()
        expect(page.locator("#auth-section")).to_be_visible()

    def check_result(self, expected: dict) -> None:
        page, expect = self.page, self.expect
        expect(page.locator("#result-section")).to_be_visible()
        rows = page.locator("#weights-table tbody tr")
        expect(rows).to_have_count(3)
        ordered = sorted(expected["allocations"].items(), key=lambda item: -item[1])
        for index, (symbol, weight) in enumerate(ordered):
            risk = expected["stats"]["risk_contributions"][symbol]
            expect(rows.nth(index)).to_have_text(re.compile(
                rf"^{symbol}\s*{weight * 100:.2f} %\s*{expected['shares'][symbol]}"
                rf"\s*{risk * 100:.2f} %$"))
        expect(page.locator("#leftover")).to_contain_text(f"{expected['leftover']:.2f}")
        expect(page.locator("#stats-table")).to_contain_text(
            f"{expected['stats']['sharpe']:.3f}")
        expect(page.locator("#stats-table")).to_contain_text(
            f"{expected['stats']['cvar'] * 100:.2f} %")
        expect(page.locator("#allocation-chart svg rect.bar")).to_have_count(3)
        for line in ("polyline.portfolio", "polyline.index"):
            expect(page.locator(f"#value-chart svg {line}")).to_have_count(1)
        expect(page.locator("#drawdown-chart svg polygon.drawdown")).to_have_count(1)
        points = page.locator("#value-chart svg polyline.portfolio").get_attribute("points")
        self.assertEqual(len(points.split()), 500)  # the result's whole series
        # The frontier of the same symbols, dates and bounds, with this result on it.
        expect(page.locator("#frontier-chart svg polyline.frontier")).to_have_count(1)
        expect(page.locator("#frontier-chart svg circle.chosen")).to_have_count(1)
        curve = page.locator("#frontier-chart svg polyline.frontier").get_attribute("points")
        self.assertEqual(len(curve.split()), 50)
        self.assertGreaterEqual(page.locator("#frontier-chart svg circle.corner").count(), 2)
        self.check_chosen_dot(expected)

    def keep_frontier_answer(self, response) -> None:
        if response.url.endswith("/portfolio/frontier") and response.request.method == "POST":
            self.frontier_answers.append(response)

    def check_chosen_dot(self, expected: dict) -> None:
        """The chosen dot sits at the result's (volatility, expected return).

        The chart sets no data attributes, so its two linear scales are recovered
        from the polyline: its 50 points are the frontier answer's points, drawn
        at 0.1 px. A max_sharpe result is a frontier portfolio, so its dot is also
        on the polyline (to a pixel: the chord between two of the 50 points).
        """
        chart = self.page.locator("#frontier-chart svg")
        line = polyline_points(chart.locator("polyline.frontier").get_attribute("points"))
        # The chart is drawn from the last answer; the dot's presence says it has come.
        frontier = self.frontier_answers[-1].json()["data"]
        volatilities = [p["volatility"] for p in frontier["points"]]
        returns = [p["expected_return"] for p in frontier["points"]]
        x_offset, x_slope, x_worst = linear_scale(volatilities, [x for x, _ in line])
        y_offset, y_slope, y_worst = linear_scale(returns, [y for _, y in line])
        # Rounding to 0.1 px leaves about 0.05 px (0.06 seen) off the fitted line; far
        # more would mean the line is not these points.
        self.assertLess(max(x_worst, y_worst), 0.1, "the polyline is not the frontier's points")
        self.assertGreater(x_slope, 0, "volatility should grow to the right")
        self.assertLess(y_slope, 0, "expected return should grow upwards")
        dot = chart.locator("circle.chosen")
        drawn = (float(dot.get_attribute("cx")), float(dot.get_attribute("cy")))
        stats = expected["stats"]
        wanted = (x_offset + x_slope * stats["volatility"],
                  y_offset + y_slope * stats["expected_return"])
        self.assertLessEqual(math.dist(drawn, wanted), 1.0,
                             f"the chosen dot is at {drawn}, the result's stats put it at "
                             f"{wanted}")
        if expected["objective"] == "max_sharpe":
            self.assertLessEqual(distance_to_polyline(drawn, line), 1.0,
                                 "a max_sharpe result's dot is off the frontier")


class FieldErrorTest(PageTest):

    def test_a_wrong_field_shows_the_apis_message_beside_it(self):
        page, expect = self.page, self.expect
        self.open_page()
        # Sign-up's own validation: both fields named by the API, each beside its input.
        self.expect_failed_request(400, "/auth/signup")
        page.get_by_label("Email").fill("not an email")
        page.get_by_label("Password").fill("short")
        page.get_by_role("button", name="Sign up").click()
        expect(page.locator("#auth-email-error")).to_contain_text(
            "email: Value error, not a valid email address")
        expect(page.locator("#auth-password-error")).to_have_text(
            "password: String should have at least 8 characters")
        expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")

        self.sign_up(new_email())
        self.choose_symbols("AAPL", "MSFT")
        self.expect_failed_request(400, "/portfolio/optimize")
        page.get_by_label("Investment").fill("-5")
        page.get_by_role("button", name="Optimize").click()
        error = page.locator("#investment-error")
        expect(error).to_have_text("initialInvestment: Input should be greater than 0")
        expect(page.get_by_label("Investment")).to_have_attribute("aria-invalid", "true")
        expect(page.get_by_label("Investment")).to_be_focused()
        expect(page.locator("#start-date-error")).to_be_empty()
        self.screenshot("field-error.png")

        # Bounds that cannot sum to 1: the API's 422 names weightBounds.
        self.expect_failed_request(422, "/portfolio/optimize")
        page.get_by_label("Investment").fill("1000")
        page.get_by_label("Highest").fill("0.2")
        page.get_by_role("button", name="Optimize").click()
        expect(page.locator("#bounds-error")).to_contain_text(
            "weightBounds: with 2 symbols and an upper bound of 0.2")
        expect(error).to_be_empty()

        # A target the assets cannot reach: the job fails, and the page says why.
        page.get_by_label("Highest").fill("1")
        page.get_by_label("Objective").select_option("efficient_return")
        page.get_by_label("Target return").fill("5")
        page.get_by_role("button", name="Optimize").click()
        expect(page.locator("#progress-message")).to_contain_text(
            "The optimization failed: targetReturn 500.0000% is outside what these assets "
            "can reach")
        expect(page.locator("#steps li.failed")).to_have_text("failed")
        expect(page.locator("#bounds-error")).to_be_empty()


class EstimatorsTest(PageTest):

    def test_the_new_objectives_and_estimators_reach_the_api(self):
        page, expect = self.page, self.expect
        self.open_page()
        email = new_email()
        self.sign_up(email)
        self.choose_symbols("AAPL", "MSFT", "JPM", "KO")
        page.get_by_label("Start date").fill("2012-01-01")
        page.get_by_label("End date").fill("2016-03-20")
        page.get_by_label("Objective").select_option("hrp")
        expect(page.get_by_label("Risk span")).to_be_hidden()
        page.get_by_label("Risk model").select_option("exp_cov")
        expect(page.get_by_label("Risk span")).to_be_visible()
        page.get_by_label("Risk span").fill("60")
        expect(page.get_by_label("Returns span")).to_be_hidden()
        page.get_by_label("Expected returns").select_option("ema")
        page.get_by_label("Returns span").fill("1")
        page.get_by_label("CVaR level").fill("0.9")

        # A span out of range: the API's 400 names returnsSpan, shown beside it.
        self.expect_failed_request(400, "/portfolio/optimize")
        page.get_by_role("button", name="Optimize").click()
        expect(page.locator("#returns-span-error")).to_contain_text("returnsSpan")
        page.get_by_label("Returns span").fill("250")
        page.get_by_role("button", name="Optimize").click()
        expect(page.locator("#progress-message")).to_have_text("Done.")
        [saved] = post(self.base, "/portfolio/list", {},
                       self.token_of(email))["data"]["results"]
        self.assertEqual(
            {key: saved["params"][key] for key in ("objective", "returns_model",
                                                    "returns_span", "risk_model", "risk_span",
                                                    "cvar_level")},
            {"objective": "hrp", "returns_model": "ema", "returns_span": 250,
             "risk_model": "exp_cov", "risk_span": 60, "cvar_level": 0.9})
        expect(page.locator("#result-summary")).to_contain_text("Hierarchical risk parity")
        expect(page.locator("#stats-table")).to_contain_text("CVaR at 0.9 (a day)")
        expect(page.locator("#stats-table")).to_contain_text(
            f"{saved['stats']['cvar'] * 100:.2f} %")
        expect(page.locator("#weights-table tbody tr")).to_have_count(4)


class BehindAPrefixTest(PageTest):

    def test_the_page_works_at_backend_app_as_behind_nginx(self):
        page, expect = self.page, self.expect
        proxy = PrefixProxy(self.base).start()
        self.addCleanup(proxy.stop)
        requests, sockets = [], []
        page.on("request", lambda request: requests.append(request.url))
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.goto(proxy.base + "/app")  # redirected, relatively, to /backend/app/
        self.assertEqual(page.url, proxy.base + "/app/")
        expect(page.locator("#auth-section")).to_be_visible()
        self.sign_up(new_email())
        self.choose_symbols("AAPL", "MSFT", "JPM")
        page.get_by_label("Start date").fill("2012-01-01")
        page.get_by_label("End date").fill("2016-03-20")
        page.get_by_role("button", name="Optimize").click()
        expect(page.locator("#progress-log li")).to_have_count(3)  # from /backend/ws/jobs
        expect(page.locator("#value-chart svg polyline.index")).to_have_count(1)
        # The requests that follow a result (the frontier, the saved list) end
        # before the proxy stops.
        expect(page.locator("#frontier-chart svg polyline.frontier")).to_have_count(1)
        expect(page.locator("#saved-list li")).to_have_count(1)
        outside = [url for url in requests if not url.startswith(proxy.base + "/")]
        self.assertEqual(outside, [])
        self.assertIn(proxy.base + "/portfolio/optimize", requests)
        self.assertIn(proxy.base + "/portfolio/frontier", requests)
        self.assertEqual(sockets, [proxy.base.replace("http:", "ws:") + "/ws/jobs"])


class SavedListTest(PageTest):

    def test_saved_results_are_listed_newest_first_five_a_page(self):
        page, expect = self.page, self.expect
        email = new_email()
        token = post(self.base, "/auth/signup", {"email": email, "password": PASSWORD})[
            "data"]["token"]
        # Seven results, told apart by their first symbol.
        firsts = ["AAPL", "MSFT", "JPM", "HD", "JNJ", "GE", "CVX"]
        for first in firsts:
            post(self.base, "/portfolio/optimize",
                 {**SEED_REQUEST, "symbols": [first, "BAC"], "objective": "equal_weight"}, token)
        newest_first = [f"{first}, BAC" for first in reversed(firsts)]
        self.open_page()
        self.log_in(email)
        items = page.locator("#saved-list li strong")
        expect(items).to_have_text(newest_first[:5])
        expect(page.get_by_role("button", name="Newer")).to_be_disabled()
        page.get_by_role("button", name="Older").click()
        expect(items).to_have_text(newest_first[5:])
        expect(page.get_by_role("button", name="Older")).to_be_disabled()
        # Deleting the last of a page shows the page before it.
        page.locator("#saved-list li").first.get_by_role("button", name="Delete").click()
        expect(items).to_have_text(newest_first[6:])
        page.locator("#saved-list li").first.get_by_role("button", name="Delete").click()
        expect(items).to_have_text(newest_first[:5])
        expect(page.get_by_role("button", name="Newer")).to_be_disabled()
        expect(page.get_by_role("button", name="Older")).to_be_disabled()


class PhoneScreenTest(PageTest):

    viewport: ClassVar[dict[str, int]] = {"width": 360, "height": 740}

    def test_a_360_px_screen_needs_no_horizontal_scroll(self):
        page, expect = self.page, self.expect
        email = new_email()
        token = post(self.base, "/auth/signup", {"email": email, "password": PASSWORD})[
            "data"]["token"]
        post(self.base, "/portfolio/optimize", SEED_REQUEST, token)
        self.open_page()
        self.no_horizontal_scroll()
        self.log_in(email)
        self.no_horizontal_scroll()
        page.locator("#saved-list li").first.get_by_role("button", name="Open").click()
        expect(page.locator("#drawdown-chart svg")).to_be_visible()
        self.no_horizontal_scroll()
        self.screenshot("phone.png")

    def test_a_backtest_fits_a_360_px_screen(self):
        page, expect = self.page, self.expect
        email = new_email()
        token = post(self.base, "/auth/signup", {"email": email, "password": PASSWORD})[
            "data"]["token"]
        post(self.base, "/portfolio/backtest",
             {**SEED_REQUEST, "startDate": "01-01-14", "rebalance": "quarterly"}, token)
        self.open_page()
        self.log_in(email)
        # Opened from the list, running or done: the page follows it to its view.
        page.locator("#saved-list li").first.get_by_role("button", name="Open").click()
        expect(page.locator("#backtest-chart svg text.legend")).to_have_count(3)
        page.locator("#rebalances-table tbody tr").first.get_by_role("button").click()
        expect(page.locator("#rebalance-0-weights li")).to_have_count(3)
        self.no_horizontal_scroll()
        # The legend wraps rather than runs past the chart's edge.
        widths = page.locator("#backtest-chart svg").evaluate(
            "(svg) => [Math.max(...[...svg.querySelectorAll('text.legend')].map("
            "(t) => t.getBBox().x + t.getBBox().width)), svg.viewBox.baseVal.width]")
        self.assertLessEqual(widths[0], widths[1])
        self.screenshot("phone-backtest.png")

    def test_the_page_is_usable_by_keyboard(self):
        page, expect = self.page, self.expect
        email = new_email()
        post(self.base, "/auth/signup", {"email": email, "password": PASSWORD})
        self.open_page()
        page.keyboard.press("Tab")  # the skip link first
        expect(page.locator(".skip")).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.get_by_label("Email")).to_be_focused()
        page.keyboard.type(email)
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")  # the form's first button: Log in
        expect(page.locator("#optimize-section")).to_be_visible()
        expect(page.get_by_role("combobox", name="Symbols")).to_be_focused()
        page.keyboard.type("AAPL")
        page.keyboard.press("Enter")
        expect(page.locator("#symbol-chips li")).to_have_count(1)
        page.keyboard.press("Tab")  # Add
        page.keyboard.press("Tab")  # the chip's remove button
        expect(page.get_by_role("button", name="Remove AAPL")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#symbol-chips li")).to_have_count(0)
        # Every control has a label.
        unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, button')]
            .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
                           && !c.textContent.trim()).map((c) => c.id)""")
        self.assertEqual(unlabelled, [])


class HeadersTest(PageTest):

    def test_the_page_loads_under_its_csp_with_nothing_from_outside(self):
        requests = []
        self.page.on("request", lambda request: requests.append(request.url))
        response = self.page.goto(self.base + "/app/")
        self.assertIn("default-src 'self'", response.headers["content-security-policy"])
        self.expect(self.page.locator("#auth-section")).to_be_visible()
        self.assertTrue(requests)
        self.assertEqual([url for url in requests if not url.startswith(self.base + "/app/")],
                         [])
        self.assertEqual(json.loads(self.page.evaluate("JSON.stringify(Object.keys(sessionStorage))")),
                         [])


class GroupsAndMaxAssetsTest(PageTest):

    def test_max_assets_reaches_the_api_and_its_proof_is_shown(self):
        page, expect = self.page, self.expect
        self.open_page()
        email = new_email()
        self.sign_up(email)
        self.choose_symbols("AAPL", "MSFT", "JPM", "KO")
        self.fill_dates()
        # maxAssets applies to max_sharpe and min_volatility only.
        page.get_by_label("Objective").select_option("hrp")
        expect(page.get_by_label("Most assets held")).to_be_hidden()
        page.get_by_label("Objective").select_option("min_volatility")
        page.get_by_label("Most assets held").fill("2")
        page.get_by_role("button", name="Optimize").click()
        expect(page.locator("#progress-message")).to_have_text("Done.")
        [saved] = post(self.base, "/portfolio/list", {},
                       self.token_of(email))["data"]["results"]
        self.assertEqual(saved["params"]["max_assets"], 2)
        held = [symbol for symbol, weight in saved["allocations"].items() if weight > 0]
        self.assertLessEqual(len(held), 2)
        stats = page.locator("#stats-table")
        expect(stats).to_contain_text("At most 2 assets")
        expect(stats).to_contain_text(
            "proven optimal" if saved["stats"]["optimal"] else "not proven optimal")
        gap_row = stats.locator("tr", has_text="Optimality gap (at most, relative)")
        expect(gap_row).to_have_text(re.compile(r"\)\s*[0-9.e+-]+ %$"))
        shown_gap = float(re.search(r"([0-9.e+-]+) %$", gap_row.inner_text()).group(1))
        self.assertAlmostEqual(shown_gap, saved["stats"]["gap"] * 100,
                               delta=abs(saved["stats"]["gap"] * 100) * 5e-3)
        expect(page.locator("#weights-table tbody tr")).to_have_count(4)
        self.screenshot("max-assets.png")

    def test_groups_reach_the_api_and_each_groups_total_is_shown(self):
        page, expect = self.page, self.expect
        self.open_page()
        email = new_email()
        self.sign_up(email)
        self.choose_symbols("AAPL", "MSFT", "JPM", "KO")
        self.fill_dates()
        # Groups apply to max_sharpe (the default), not to equal weights.
        page.get_by_label("Objective").select_option("equal_weight")
        expect(page.locator("#groups-field")).to_be_hidden()
        page.get_by_label("Objective").select_option("max_sharpe")
        page.get_by_role("button", name="Add a group").click()
        group = page.locator("#group-rows fieldset").nth(0)
        expect(group.get_by_label("Group", exact=True)).to_be_focused()
        # One checkbox per chosen symbol; a symbol chosen later is offered too.
        expect(group.get_by_role("checkbox")).to_have_count(4)
        self.choose_symbols_more("PG")
        expect(group.get_by_role("checkbox")).to_have_count(5)
        page.get_by_role("button", name="Remove PG").click()
        expect(group.get_by_role("checkbox")).to_have_count(4)
        group.get_by_label("Group", exact=True).fill("Tech")
        group.get_by_label("AAPL").check()
        group.get_by_label("MSFT").check()
        group.get_by_label("Total at least").fill("0.2")
        group.get_by_label("Total at most").fill("1.5")

        # A total above 1: the API's 422 names the group, shown in that group's row.
        self.expect_failed_request(422, "/portfolio/optimize")
        page.get_by_role("button", name="Optimize").click()
        expect(group.locator(".error")).to_have_text(
            "group Tech: max must be a number within [0, 1].")
        expect(group.get_by_label("Total at most")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#groups-error")).to_be_empty()

        # A second group, removed again: the first keeps its place and its name.
        page.get_by_role("button", name="Add a group").click()
        expect(page.locator("#group-rows fieldset")).to_have_count(2)
        page.get_by_role("button", name="Remove group 2").click()
        expect(page.locator("#group-rows fieldset")).to_have_count(1)

        group.get_by_label("Total at most").fill("0.5")
        page.get_by_role("button", name="Optimize").click()
        expect(page.locator("#progress-message")).to_have_text("Done.")
        [saved] = post(self.base, "/portfolio/list", {},
                       self.token_of(email))["data"]["results"]
        self.assertEqual(saved["params"]["groups"],
                         [{"name": "Tech", "symbols": ["AAPL", "MSFT"], "min": 0.2, "max": 0.5}])
        tech = saved["allocations"]["AAPL"] + saved["allocations"]["MSFT"]
        self.assertTrue(0.2 - 1e-9 <= tech <= 0.5 + 1e-9, tech)

        # The page shows the group's total; the frontier is drawn with the same group.
        row = page.locator("#groups-table tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_have_text(re.compile(
            rf"^Tech\s*AAPL, MSFT\s*20\.00 % to 50\.00 %\s*{tech * 100:.2f} %$"))
        expect(page.locator("#frontier-chart svg circle.chosen")).to_have_count(1)
        self.screenshot("groups.png")

    def choose_symbols_more(self, symbol: str) -> None:
        box = self.page.get_by_role("combobox", name="Symbols")
        box.fill(symbol)
        box.press("Enter")


class BacktestTest(PageTest):

    def test_a_backtest_shows_its_progress_chart_statistics_and_rebalances(self):
        page, expect = self.page, self.expect
        self.open_page()
        email = new_email()
        self.sign_up(email)
        self.choose_symbols("AAPL", "MSFT", "JPM")
        self.fill_dates()
        page.get_by_label("Lookback").fill("126")
        page.get_by_label("Rebalance", exact=True).select_option("quarterly")
        page.get_by_label("Trading cost").fill("10")
        page.get_by_role("button", name="Run backtest").click()

        expect(page.locator("#progress-message")).to_have_text("Done.")
        [saved] = post(self.base, "/portfolio/list", {},
                       self.token_of(email))["data"]["results"]
        self.assertEqual(saved["kind"], "backtest")
        result = post(self.base, "/portfolio/result", {"id": saved["id"]},
                      self.token_of(email))["data"]
        total = len(result["rebalances"])
        self.assertGreater(total, 10)
        # The bar reached the total with the job's progress events.
        bar = page.locator("#backtest-progress")
        expect(page.locator("#backtest-progress-text")).to_have_text(
            f"{total} of {total} rebalances")
        self.assertEqual(bar.evaluate("(bar) => [bar.value, bar.max]"), [total, total])
        expect(page.locator("#steps li.reached")).to_have_count(3)
        self.check_backtest(result)
        self.screenshot("backtest.png")

        # Saved with its kind; a reload and Open show the same backtest view.
        page.reload()
        item = page.locator("#saved-list li").first
        expect(item).to_contain_text("Backtest")
        item.get_by_role("button", name="Open").click()
        self.check_backtest(result)
        expect(page.locator("#result-section")).to_be_hidden()

    def check_backtest(self, result: dict) -> None:
        page, expect = self.page, self.expect
        expect(page.locator("#backtest-section")).to_be_visible()
        expect(page.locator("#backtest-summary")).to_contain_text(
            "rebalanced quarterly on 126 trading days")
        chart = page.locator("#backtest-chart svg")
        for line in ("strategy", "equal", "index"):
            expect(chart.locator(f"polyline.{line}")).to_have_count(1)
            points = chart.locator(f"polyline.{line}").get_attribute("points")
            self.assertEqual(len(points.split()), len(result["series"]["dates"]))
        expect(chart.locator("text.legend")).to_have_text(["Strategy", "Equal weight", "Index"])
        strategy = result["stats"]["strategy"]
        equal = result["stats"]["equal_weight"]
        sharpe = page.locator("#backtest-stats tbody tr", has_text="Sharpe ratio")
        expect(sharpe).to_have_text(re.compile(
            rf"^Sharpe ratio\s*{strategy['sharpe']:.3f}\s*{equal['sharpe']:.3f}$"))
        expect(page.locator("#backtest-stats tbody tr")).to_have_count(9)
        rows = page.locator("#rebalances-table tbody tr:not(.weights-row)")
        expect(rows).to_have_count(len(result["rebalances"]))
        first = result["rebalances"][0]
        expect(rows.first).to_contain_text(first["date"])
        expect(rows.first).to_contain_text(f"{first['turnover'] * 100:.2f} %")
        # Weights on demand.
        show = rows.first.get_by_role("button", name=f"Weights chosen on {first['date']}")
        show.click()
        expect(show).to_have_attribute("aria-expanded", "true")
        weights = page.locator("#rebalance-0-weights li")
        expect(weights).to_have_count(len(first["weights"]))
        top = max(first["weights"], key=first["weights"].get)
        expect(weights.first).to_have_text(f"{top} {first['weights'][top] * 100:.2f} %")


class BacktestFieldErrorTest(PageTest):

    def test_a_wrong_backtest_field_shows_the_apis_message_beside_it(self):
        page, expect = self.page, self.expect
        self.open_page()
        self.sign_up(new_email())
        self.choose_symbols("AAPL", "MSFT")
        self.fill_dates()
        self.expect_failed_request(400, "/portfolio/backtest")
        page.get_by_label("Lookback").fill("5")
        page.get_by_role("button", name="Run backtest").click()
        expect(page.locator("#lookback-days-error")).to_contain_text("lookbackDays")
        expect(page.get_by_label("Lookback")).to_have_attribute("aria-invalid", "true")
        expect(page.get_by_label("Lookback")).to_be_focused()
        expect(page.locator("#rebalance-error")).to_be_empty()

        # Every so many trading days, too few of them: beside the rebalance choice.
        page.get_by_label("Lookback").fill("252")
        page.get_by_label("Rebalance", exact=True).select_option("days")
        page.get_by_label("Trading days between rebalances").fill("3")
        page.get_by_role("button", name="Run backtest").click()
        expect(page.locator("#rebalance-error")).to_contain_text("rebalance")
        expect(page.locator("#lookback-days-error")).to_be_empty()
        expect(page.get_by_label("Trading days between rebalances")).to_have_attribute(
            "aria-invalid", "true")
        self.screenshot("backtest-field-error.png")

        # The shared range's first day leaves no history before the first rebalance: the
        # API's 422 names the symbols and lookbackDays, and sits beside Lookback.
        self.expect_failed_request(422, "/portfolio/backtest")
        page.get_by_label("Rebalance", exact=True).select_option("monthly")
        self.fill_dates("1990-01-02", "2016-03-20")
        page.get_by_role("button", name="Run backtest").click()
        expect(page.locator("#lookback-days-error")).to_contain_text(
            "AAPL, MSFT have only 0 trading days of prices")
        expect(page.locator("#lookback-days-error")).to_contain_text("lookbackDays needs 252")
        expect(page.locator("#rebalance-error")).to_be_empty()
        expect(page.locator("#progress-section")).to_be_hidden()


class BacktestCancelTest(PageTest):

    def test_a_running_backtest_is_cancelled_from_the_page(self):
        page, expect = self.page, self.expect
        self.open_page()
        email = new_email()
        self.sign_up(email)
        # About 1,400 weekly min_cvar rebalances of ten symbols: seconds of work even on a
        # fast machine, so the job is still running when the first progress event shows.
        self.choose_symbols("AAPL", "MSFT", "JPM", "KO", "PG", "XOM", "WMT", "PEP", "JNJ", "HD")
        self.fill_dates("1995-01-01", "2022-12-28")
        page.get_by_label("Objective").select_option("min_cvar")
        page.get_by_label("Rebalance", exact=True).select_option("days")
        page.get_by_label("Trading days between rebalances").fill("5")
        page.get_by_role("button", name="Run backtest").click()
        expect(page.locator("#backtest-progress-text")).to_contain_text(" of ")
        page.get_by_role("button", name="Cancel the job").click()
        expect(page.locator("#progress-message")).to_contain_text(
            "The backtest failed: cancelled")
        expect(page.locator("#steps li.failed")).to_have_text("failed")
        expect(page.get_by_role("button", name="Cancel the job")).to_be_hidden()
        [saved] = post(self.base, "/portfolio/list", {},
                       self.token_of(email))["data"]["results"]
        self.assertEqual((saved["kind"], saved["status"]), ("backtest", "failed"))
        expect(page.locator("#saved-list li").first).to_contain_text("Backtest")
        expect(page.locator("#saved-list li").first).to_contain_text("failed")
