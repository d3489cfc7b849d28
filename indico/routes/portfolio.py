"""``/portfolio/<action>``: optimize, and the saved results.

``portfolio/optimize`` starts here: it takes the seed's body as it was written
(camelCase, dates ``MM-DD-YY``) and its snake_case spelling, and
:class:`OptimizeRequest` checks every rule of the request (at most
``INDICO_MAX_SYMBOLS`` symbols, each once; start before end, within
``INDICO_MAX_RANGE_YEARS``; the target an objective needs; bounds that can sum
to 1), with the limits from pydantic's validation context, before any work.
The normalized ``params`` (ISO dates, upper-case symbols) go to
:meth:`indico.services.jobs.JobService.optimize`, which creates, runs and waits
for the job and hands back the stored job: 200 when it is done, 202 while it
runs. ``portfolio/frontier`` takes the same fields but the objective, its
targets and ``wait`` (:class:`FrontierRequest`), and answers the efficient
frontier computed in the worker pool, saving nothing. ``portfolio/backtest``
takes optimize's fields but ``wait``, plus the walk-forward's
(:class:`BacktestRequest`), and always answers 202: the job runs in the
background (:meth:`indico.services.jobs.JobService.backtest`).
``portfolio/cancel`` ends a queued or running job of either kind. ``result``,
``list`` and ``delete`` read the saved results (both kinds, told apart by
``kind``) through :mod:`indico.services.portfolio`.
"""

import datetime
import math
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from config import Config
from indico import error
from indico.db.records import Job, JobKind
from indico.optimization import Objective, ReturnsModel, RiskModel, cardinality
from indico.optimization.backtest import (
    MAX_COST_BPS,
    MAX_LOOKBACK_DAYS,
    MAX_REBALANCE_DAYS,
    MIN_LOOKBACK_DAYS,
    MIN_REBALANCE_DAYS,
    Rebalance,
)
from indico.optimization.engine import (
    FRONTIER_DEFAULT_POINTS,
    FRONTIER_MAX_POINTS,
    FRONTIER_MIN_POINTS,
    check_groups_objective,
)
from indico.optimization.groups import MAX_GROUPS, parse_groups
from indico.routes.actions import ActionHandler, Reply, action
from indico.routes.models import Empty, Request, Symbol
from indico.services.portfolio import Position, decode_cursor

SEED_DATE_FORMAT = "%m-%d-%y"


def _date(value):
    """Accept ``YYYY-MM-DD`` or the seed's ``MM-DD-YY``; return an ISO date string."""
    if not isinstance(value, str):
        raise ValueError("give a date as YYYY-MM-DD or MM-DD-YY")
    for parse in (datetime.date.fromisoformat,
                  lambda text: datetime.datetime.strptime(text, SEED_DATE_FORMAT).date()):
        try:
            return parse(value.strip()).isoformat()
        except ValueError:
            continue
    raise ValueError(f"{value[:20]!r} is not a date; give YYYY-MM-DD or MM-DD-YY")


DATE_PATTERN = (r"^([1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
                r"|(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])-\d{2})$")
DateText = Annotated[str, BeforeValidator(_date), WithJsonSchema(
    {"type": "string", "pattern": DATE_PATTERN,
     "description": "YYYY-MM-DD, or the seed's MM-DD-YY", "examples": ["2012-01-01"]})]
JobId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _alias(*names):
    return Field(validation_alias=AliasChoices(*names))


def _config(info: ValidationInfo) -> Config:
    """The Config whose limits apply: the validation context's, else the defaults."""
    config = (info.context or {}).get("config")
    return config if config is not None else Config()


# Sums of bounds within this of 1 count as 1, as in the engine's own check
# (indico.optimization.frontier.check_bounds).
BOUNDS_TOLERANCE = 1e-12


def shared_bounds_problem(count: int, low: float, high: float, max_symbols: int) -> str | None:
    """Say why ``count`` weights within ``[low, high]`` cannot sum to 1, and what helps.

    Args:
        count: the number of symbols, n.
        low, high: the bounds of every weight, 0 <= low <= high <= 1.
        max_symbols: the most symbols a request may have.

    Returns:
        the message, or None when n·low <= 1 <= n·high.
    """
    if count * low > 1 + BOUNDS_TOLERANCE:
        # More symbols raise the least total; only a lower bound or fewer symbols help.
        fewest = math.floor((1 + BOUNDS_TOLERANCE) / low)
        return (f"weightBounds: with {count} symbols and a lower bound of {low:g} the weights "
                f"total at least {count * low:.6g}, more than 1; lower the lower bound to at "
                f"most {1 / count:.6g}, or give at most {fewest} "
                f"symbol{'s' * (fewest != 1)}")
    if count * high < 1 - BOUNDS_TOLERANCE:
        advice = f"raise the upper bound to at least {1 / count:.6g}"
        needed = math.ceil((1 - BOUNDS_TOLERANCE) / high) if high > 0 else None
        if needed is not None and needed <= max_symbols:
            advice += f", or give at least {needed} symbols"
        return (f"weightBounds: with {count} symbol{'s' * (count != 1)} and an upper bound "
                f"of {high:g} the weights total at most {count * high:.6g}, less than 1; "
                f"{advice}")
    return None


GroupName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class GroupRequest(Request):
    """One sector constraint: the weights of ``symbols`` sum within ``[min, max]``.

    The rules across fields (symbols among the request's, names unique, ``0 <= min
    <= max <= 1``) are checked by :class:`MarketRequest` with the engine's own
    :func:`indico.optimization.groups.parse_groups`, as 422s naming the group.
    """

    name: GroupName
    symbols: list[Symbol] = Field(min_length=1)
    low: float = Field(0.0, validation_alias="min", allow_inf_nan=False,
                       json_schema_extra={"minimum": 0, "maximum": 1},
                       description="least total weight of the group's symbols (default 0)")
    high: float = Field(1.0, validation_alias="max", allow_inf_nan=False,
                        json_schema_extra={"minimum": 0, "maximum": 1},
                        description="most total weight of the group's symbols (default 1)")

    def params(self) -> dict:
        """The group as stored with a job and passed to the engine."""
        return {"name": self.name, "symbols": list(self.symbols), "min": self.low,
                "max": self.high}


class MarketRequest(Request):
    """The fields optimize and frontier share: symbols, dates, estimators, bounds.

    Rules of one field are pydantic errors (400, naming the field as sent).
    Rules across fields raise indico's own errors, which pydantic lets through
    (it collects only ValueError, AssertionError and its own errors), so that
    they name the wire field they are about and keep their status: bounds that
    cannot sum to 1 are the same 422 ``OptimizationError`` as the engine's.
    Limits come from ``context["config"]`` (the defaults without a context).
    """

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)

    symbols: list[Symbol] = Field(min_length=1)
    start_date: DateText = _alias("startDate", "start_date")
    end_date: DateText = _alias("endDate", "end_date")
    initial_investment: float = Field(
        validation_alias=AliasChoices("initialInvestment", "initial_investment", "principle"),
        gt=0, le=1e12, allow_inf_nan=False)
    risk_free_rate: float = Field(0.0, ge=-1, le=1, allow_inf_nan=False,
                                  validation_alias=AliasChoices("riskFreeRate", "risk_free_rate"))
    weight_bounds: list[float] = Field(
        [0.0, 1.0], min_length=2, max_length=2,
        validation_alias=AliasChoices("weightBounds", "weight_bounds"))
    returns_model: ReturnsModel = Field(
        ReturnsModel.MEAN, strict=False,
        validation_alias=AliasChoices("returnsModel", "returns_model"),
        description="estimator of expected returns: mean, or ema (span returnsSpan)")
    returns_span: int = Field(
        500, ge=2, le=5000, validation_alias=AliasChoices("returnsSpan", "returns_span"),
        description="span in days of returnsModel ema")
    risk_model: RiskModel = Field(
        RiskModel.SAMPLE, strict=False, validation_alias=AliasChoices("riskModel", "risk_model"),
        description="estimator of the covariance: sample, ledoit_wolf, exp_cov (span "
                    "riskSpan), or semicovariance (below riskFreeRate/252)")
    risk_span: int = Field(
        180, ge=2, le=5000, validation_alias=AliasChoices("riskSpan", "risk_span"),
        description="span in days of riskModel exp_cov")
    cvar_level: float = Field(
        0.95, ge=0.5, le=0.999, allow_inf_nan=False,
        validation_alias=AliasChoices("cvarLevel", "cvar_level"),
        description="confidence level of objective min_cvar and of stats.cvar")
    groups: list[GroupRequest] | None = Field(
        None, max_length=MAX_GROUPS,
        description="sector constraints: the weights of each group's symbols sum within "
                    "[min, max]; a symbol may be in several groups or none. For objectives "
                    "max_sharpe, min_volatility, efficient_return, efficient_risk, min_cvar "
                    "and the frontier")

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, symbols, info: ValidationInfo):
        limit = _config(info).max_symbols
        if len(symbols) > limit:
            raise PydanticCustomError(
                "too_many_symbols", "at most {limit} symbols per request (got {count})",
                {"limit": limit, "count": len(symbols)})
        duplicates = sorted({symbol for symbol in symbols if symbols.count(symbol) > 1})
        if duplicates:
            raise PydanticCustomError("duplicate_symbols", "listed more than once: {symbols}",
                                      {"symbols": ", ".join(duplicates)})
        return symbols

    @field_validator("weight_bounds")
    @classmethod
    def _bounds(cls, bounds):
        low, high = bounds
        if not (0 <= low <= high <= 1):
            raise ValueError("give [low, high] with 0 <= low <= high <= 1 (no short selling)")
        return bounds

    @model_validator(mode="after")
    def _across_fields(self, info: ValidationInfo):
        config = _config(info)
        start, end = self.start_date, self.end_date
        if start >= end:
            raise error.ValidationError(f"startDate ({start}) must be before endDate ({end})",
                                        field="startDate")
        span = (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days
        if span > 366 * config.max_range_years:
            raise error.ValidationError(
                f"endDate: the range may span at most {config.max_range_years} years",
                field="endDate")
        self._check_bounds(config)
        parse_groups(self.group_params(), self.symbols)
        return self

    def _check_bounds(self, config: Config) -> None:
        """Refuse bounds no portfolio of the symbols fits (a subclass may relax the rule)."""
        problem = shared_bounds_problem(len(self.symbols), *self.weight_bounds,
                                        config.max_symbols)
        if problem:
            raise error.OptimizationError(problem, field="weightBounds")

    def group_params(self) -> list[dict] | None:
        """The groups as the engine takes them, or None when none were given."""
        return None if self.groups is None else [group.params() for group in self.groups]

    def params(self) -> dict:
        """The normalized parameters (ISO dates, upper-case symbols, enum values)."""
        return {
            "symbols": list(self.symbols), "start_date": self.start_date,
            "end_date": self.end_date, "initial_investment": self.initial_investment,
            "risk_free_rate": self.risk_free_rate,
            "weight_bounds": list(self.weight_bounds),
            "returns_model": self.returns_model.value, "returns_span": self.returns_span,
            "risk_model": self.risk_model.value, "risk_span": self.risk_span,
            "cvar_level": self.cvar_level, "groups": self.group_params(),
        }


class OptimizeRequest(MarketRequest):
    """The seed's request, plus the engine's options, and every rule of the request."""

    # Not strict: an enum's JSON form is its value, which strict mode refuses.
    objective: Objective = Field(Objective.MAX_SHARPE, strict=False)
    target_return: float | None = Field(
        None, ge=-10, le=10, allow_inf_nan=False,
        validation_alias=AliasChoices("targetReturn", "target_return"))
    target_volatility: float | None = Field(
        None, gt=0, le=10, allow_inf_nan=False,
        validation_alias=AliasChoices("targetVolatility", "target_volatility"))
    # At most 1000, the most symbols INDICO_MAX_SYMBOLS may allow: a larger limit
    # cannot bind, and the stored params must fit BSON's 64-bit integers.
    max_assets: int | None = Field(
        None, ge=1, le=1000, validation_alias=AliasChoices("maxAssets", "max_assets"),
        description="at most this many nonzero weights, solved exactly; the lower bound "
                    "then applies to the assets held. For objectives "
                    f"{' and '.join(goal.value for goal in cardinality.Goal)}; not with "
                    "groups. portfolio/optimize searches within INDICO_JOB_TIME_LIMIT "
                    "(stats.optimal says whether optimality was proven, stats.gap bounds "
                    "the distance to it); a backtest searches at every rebalance")
    wait: bool = True

    def _check_bounds(self, config: Config) -> None:
        """Under ``maxAssets`` the lower bound applies to the assets held, not to all.

        ``maxAssets``' own rules (an objective that takes it, no groups) come first:
        its bounds rule means nothing otherwise.
        """
        if self.max_assets is None:
            return super()._check_bounds(config)
        cardinality.parse_request(self.max_assets, self.objective)
        cardinality.check_without_groups(self.group_params())
        count = len(self.symbols)
        low, high = self.weight_bounds
        cardinality.check_bounds([low] * count, [high] * count, self.max_assets,
                                 config.max_symbols)

    @model_validator(mode="after")
    def _targets(self):
        for needed, value, field in (
                (Objective.EFFICIENT_RETURN, self.target_return, "targetReturn"),
                (Objective.EFFICIENT_RISK, self.target_volatility, "targetVolatility")):
            if self.objective == needed and value is None:
                raise error.ValidationError(f"{field}: required by objective {needed.value}",
                                            field=field)
        if self.groups:
            check_groups_objective(self.objective)
        return self

    def params(self) -> dict:
        """The normalized parameters stored with the job."""
        return {**super().params(), "objective": self.objective.value,
                "target_return": self.target_return,
                "target_volatility": self.target_volatility, "max_assets": self.max_assets}


class FrontierRequest(MarketRequest):
    """optimize's fields without ``objective``, the targets and ``wait``, plus ``points``.

    ``initialInvestment`` is accepted, as optimize's, but optional: the frontier
    has no share allocation.
    """

    initial_investment: float | None = Field(
        None, validation_alias=AliasChoices("initialInvestment", "initial_investment",
                                            "principle"),
        gt=0, le=1e12, allow_inf_nan=False)
    points: int = Field(FRONTIER_DEFAULT_POINTS, ge=FRONTIER_MIN_POINTS,
                        le=FRONTIER_MAX_POINTS,
                        description="how many frontier points, evenly spaced in expected "
                                    "return")
    # optimize's field, understood but not offered here: a 422 that says so, not
    # the 400 of an unknown field; left out of the OpenAPI document.
    max_assets: SkipJsonSchema[Any] = Field(
        None, exclude=True, validation_alias=AliasChoices("maxAssets", "max_assets"))

    @model_validator(mode="after")
    def _no_max_assets(self):
        """Refuse ``maxAssets`` (once the request's other rules hold), saying what to do instead."""
        if self.max_assets is not None:
            goals = " or ".join(goal.value for goal in cardinality.Goal)
            raise error.OptimizationError(
                "maxAssets: portfolio/frontier has no limit on the number of assets (each "
                "point is the exact minimum-volatility portfolio of all the symbols); remove "
                f"maxAssets, or ask portfolio/optimize for {goals} with it", field="maxAssets")
        return self

    def params(self) -> dict:
        """The normalized parameters of the frontier."""
        return {**super().params(), "points": self.points}


REBALANCE_RULE = (f"give {', '.join(choice.value for choice in Rebalance)}, or a whole number "
                  f"of trading days from {MIN_REBALANCE_DAYS} to {MAX_REBALANCE_DAYS}")


def _rebalance(value):
    """A :class:`Rebalance` period, or a whole number of trading days within the range."""
    if isinstance(value, str) and value in tuple(Rebalance):
        return Rebalance(value)
    if (isinstance(value, int) and not isinstance(value, bool)
            and MIN_REBALANCE_DAYS <= value <= MAX_REBALANCE_DAYS):
        return value
    raise PydanticCustomError("rebalance", REBALANCE_RULE)


RebalanceChoice = Annotated[Rebalance | int, BeforeValidator(_rebalance), WithJsonSchema({
    "oneOf": [{"type": "string", "enum": [choice.value for choice in Rebalance]},
              {"type": "integer", "minimum": MIN_REBALANCE_DAYS,
               "maximum": MAX_REBALANCE_DAYS}],
    "description": "on the first trading day of each month, quarter or year, or every so "
                   "many trading days"})]


class BacktestRequest(OptimizeRequest):
    """optimize's request without ``wait`` (a backtest always answers 202), plus the walk-forward.

    Every rule of optimize's fields holds (the objective's target, bounds that
    can sum to 1, the limits); what the stored prices allow (enough history
    before the first rebalance) is checked by the service, before any job exists.
    """

    # Inherited from OptimizeRequest but not a field here: refused as an unknown
    # field would be, and left out of the OpenAPI document.
    wait: SkipJsonSchema[bool] = Field(True, exclude=True)
    lookback_days: int = Field(
        252, ge=MIN_LOOKBACK_DAYS, le=MAX_LOOKBACK_DAYS,
        validation_alias=AliasChoices("lookbackDays", "lookback_days"),
        description="trading days of history each rebalance optimizes on")
    rebalance: RebalanceChoice = Rebalance.MONTHLY
    cost_bps: float = Field(
        10.0, ge=0, le=MAX_COST_BPS, allow_inf_nan=False,
        validation_alias=AliasChoices("costBps", "cost_bps"),
        description="transaction cost in basis points of the traded value")

    @field_validator("wait", mode="before")
    @classmethod
    def _no_wait(cls, value):
        raise PydanticCustomError("extra_forbidden", "a backtest always answers 202")

    def params(self) -> dict:
        """The normalized parameters stored with the job."""
        rebalance = self.rebalance
        return {**super().params(), "lookback_days": self.lookback_days,
                "rebalance": rebalance.value if isinstance(rebalance, Rebalance) else rebalance,
                "cost_bps": self.cost_bps}


class IdRequest(Request):
    id: JobId


class ListRequest(Request):
    limit: int = Field(20, ge=1, le=1000)
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None

    # The cursor decoded, once, by the validator below.
    _position: Position | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _a_cursor_of_ours(self):
        if self.cursor:
            try:
                self._position = decode_cursor(self.cursor)
            except ValueError as exc:
                raise error.ValidationError(f"cursor: {exc}", field="cursor") from None
        return self

    def position(self) -> Position | None:
        """Where the page starts: after the job the cursor names; None for the first page."""
        return self._position


class Progress(BaseModel):
    """A backtest's rebalances computed so far, of all."""

    done: int
    total: int


class JobPublic(BaseModel):
    """A job as clients see it; the result fields of its kind are filled when it is done.

    An optimization has ``allocations``, ``shares``, ``leftover``, ``stats`` and
    ``performance``; a backtest ``rebalances``, ``series`` and ``stats`` (of the
    strategy and of equal weight), and ``progress`` while it runs.
    """

    id: str
    status: str
    kind: JobKind
    objective: str
    params: dict
    created: datetime.datetime
    updated: datetime.datetime
    error: str | None = None
    progress: Progress | None = None
    allocations: dict[str, float] | None = None
    shares: dict[str, int] | None = None
    leftover: float | None = None
    stats: dict | None = None
    performance: dict | None = None
    rebalances: list[dict] | None = None
    series: dict | None = None

    @classmethod
    def from_record(cls, job: Job, summary: bool = False) -> "JobPublic":
        """Build the public shape; ``summary`` leaves out the bulky series and rebalances."""
        result = job.result or {}
        return cls(
            id=job.id, status=job.status, kind=job.kind, objective=job.params["objective"],
            params=job.params, created=job.created, updated=job.updated,
            error=job.error,
            progress=Progress(**job.progress) if job.progress else None,
            allocations=result.get("allocations"),
            shares=result.get("shares"), leftover=result.get("leftover"),
            stats=result.get("stats"),
            performance=None if summary else result.get("performance"),
            rebalances=None if summary else result.get("rebalances"),
            series=None if summary else result.get("series"),
        )


class FrontierPortfolio(BaseModel):
    """One portfolio of the frontier: annualised statistics and its weights."""

    expected_return: float
    volatility: float
    sharpe: float | None
    weights: dict[str, float]


class Frontier(BaseModel):
    """The efficient frontier: points, its two special portfolios and its corners."""

    points: list[FrontierPortfolio]
    min_volatility: FrontierPortfolio
    max_sharpe: FrontierPortfolio | None
    corners: list[FrontierPortfolio]


class JobList(BaseModel):
    results: list[JobPublic]
    cursor: str | None


class PortfolioHandler(ActionHandler):
    """Optimizations and their saved results; every action is the caller's own."""

    resource = "portfolio"

    @property
    def owner(self):
        return self.user.id

    @action(request=OptimizeRequest, response=JobPublic, errors=(422, 429))
    async def optimize(self, body):
        """Optimize a portfolio and save the result.

        Answers 200 with the result, or 202 with the job's id and status when
        ``wait`` is false or the job outlasts the configured wait; follow it
        with portfolio/result or the /ws/jobs WebSocket.
        """
        job = await self.services.jobs.optimize(self.owner, body.params(), wait=body.wait)
        return Reply(200 if job.status == "done" else 202, JobPublic.from_record(job))

    @action(request=FrontierRequest, response=Frontier, errors=(422,))
    async def frontier(self, body):
        """The exact efficient frontier of the symbols within weightBounds (not saved).

        ``points`` portfolios evenly spaced in expected return from the
        minimum-volatility portfolio to the maximum-return one, each the exact
        minimum-volatility portfolio for its return; ``min_volatility``;
        ``max_sharpe`` (null when no portfolio returns more than riskFreeRate);
        and the corner portfolios of the critical line, in increasing return.
        Computed in the optimization worker pool under ``INDICO_JOB_TIME_LIMIT``.
        """
        return await self.services.jobs.frontier(body.params())

    @action(request=BacktestRequest, response=JobPublic, status=202, errors=(422, 429))
    async def backtest(self, body):
        """Start a walk-forward backtest of the objective; answers 202 with the job.

        Re-optimizes on the ``lookbackDays`` trading days before each rebalance
        date (``rebalance``), holds until the next, pays ``costBps`` of the traded
        value, against equal weight and the index. Follow the job's progress
        on /ws/jobs; portfolio/result gives the result (``kind: backtest``).
        """
        return JobPublic.from_record(
            await self.services.jobs.backtest(self.owner, body.params()))

    @action(request=IdRequest, response=JobPublic, errors=(409,))
    async def cancel(self, body):
        """Stop a queued or running job of the caller's: it ends failed, "cancelled".

        A job that has ended already answers 409.
        """
        return JobPublic.from_record(await self.services.jobs.cancel(self.owner, body.id))

    @action(request=IdRequest, response=JobPublic)
    async def result(self, body):
        """Return one saved result (or the job's status while it runs)."""
        return JobPublic.from_record(
            await self.services.portfolio.get_result(self.owner, body.id))

    @action("list", request=ListRequest, response=JobList)
    async def list_results(self, body):
        """The caller's results, newest first; pass ``cursor`` for the next page."""
        page, cursor = await self.services.portfolio.list_results(self.owner, body.limit,
                                                                  body.position())
        return JobList(results=[JobPublic.from_record(job, summary=True) for job in page],
                       cursor=cursor)

    @action("delete", request=IdRequest, response=Empty)
    async def delete_result(self, body):
        """Delete one saved result."""
        await self.services.portfolio.delete_result(self.owner, body.id)
        return {}
