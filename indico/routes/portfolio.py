"""``/portfolio/<action>``: optimize, and the saved results.

``portfolio/optimize`` takes the seed's body as it was written (camelCase,
dates ``MM-DD-YY``) and its snake_case spelling; both are normalized into the
``params`` stored with the job (ISO dates, upper-case symbols).
"""

import datetime
from typing import Annotated

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from indico.optimization import Objective
from indico.routes.actions import ActionHandler, Reply, action
from indico.routes.models import Empty, Request, Symbol

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


class OptimizeRequest(Request):
    """The seed's request, plus the engine's options."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)

    symbols: list[Symbol] = Field(min_length=1)
    start_date: DateText = _alias("startDate", "start_date")
    end_date: DateText = _alias("endDate", "end_date")
    initial_investment: float = Field(
        validation_alias=AliasChoices("initialInvestment", "initial_investment", "principle"),
        gt=0, le=1e12, allow_inf_nan=False)
    # Not strict: an enum's JSON form is its value, which strict mode refuses.
    objective: Objective = Field(Objective.MAX_SHARPE, strict=False)
    risk_free_rate: float = Field(0.0, ge=-1, le=1, allow_inf_nan=False,
                                  validation_alias=AliasChoices("riskFreeRate", "risk_free_rate"))
    weight_bounds: list[float] = Field(
        [0.0, 1.0], min_length=2, max_length=2,
        validation_alias=AliasChoices("weightBounds", "weight_bounds"))
    target_return: float | None = Field(
        None, ge=-10, le=10, allow_inf_nan=False,
        validation_alias=AliasChoices("targetReturn", "target_return"))
    target_volatility: float | None = Field(
        None, gt=0, le=10, allow_inf_nan=False,
        validation_alias=AliasChoices("targetVolatility", "target_volatility"))
    wait: bool = True

    @field_validator("weight_bounds")
    @classmethod
    def _bounds(cls, bounds):
        low, high = bounds
        if not (0 <= low <= high <= 1):
            raise ValueError("give [low, high] with 0 <= low <= high <= 1 (no short selling)")
        return bounds

    def params(self):
        """The normalized parameters stored with the job."""
        return {
            "symbols": list(self.symbols), "start_date": self.start_date,
            "end_date": self.end_date, "initial_investment": self.initial_investment,
            "objective": self.objective.value, "risk_free_rate": self.risk_free_rate,
            "weight_bounds": list(self.weight_bounds), "target_return": self.target_return,
            "target_volatility": self.target_volatility,
        }


class IdRequest(Request):
    id: JobId


class ListRequest(Request):
    limit: int = Field(20, ge=1, le=1000)
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class JobPublic(BaseModel):
    """A job as clients see it; the result fields are filled when it is done."""

    id: str
    status: str
    objective: str
    params: dict
    created: datetime.datetime
    updated: datetime.datetime
    error: str | None = None
    allocations: dict[str, float] | None = None
    shares: dict[str, int] | None = None
    leftover: float | None = None
    stats: dict | None = None
    performance: dict | None = None

    @classmethod
    def from_document(cls, job, summary=False):
        """Build the public shape; ``summary`` leaves out the bulky performance series."""
        result = job.get("result") or {}
        return cls(
            id=job["_id"], status=job["status"], objective=job["params"]["objective"],
            params=job["params"], created=job["created"],
            updated=datetime.datetime.fromtimestamp(job["updated"], datetime.timezone.utc),
            error=job.get("error"), allocations=result.get("allocations"),
            shares=result.get("shares"), leftover=result.get("leftover"),
            stats=result.get("stats"),
            performance=None if summary else result.get("performance"),
        )


class JobList(BaseModel):
    results: list[JobPublic]
    cursor: str | None


class PortfolioHandler(ActionHandler):
    """Optimizations and their saved results; every action is the caller's own."""

    resource = "portfolio"

    @property
    def owner(self):
        return str(self.user["_id"])

    @action(request=OptimizeRequest, response=JobPublic, errors=(422, 429))
    async def optimize(self, body):
        """Optimize a portfolio and save the result.

        Answers 200 with the result, or 202 with the job's id and status when
        ``wait`` is false or the job outlasts the configured wait; follow it
        with portfolio/result or the /ws/jobs WebSocket.
        """
        status, job = await self.services.portfolio.optimize(self.owner, body.params(),
                                                             wait=body.wait)
        return Reply(status, JobPublic.from_document(job))

    @action(request=IdRequest, response=JobPublic)
    async def result(self, body):
        """Return one saved result (or the job's status while it runs)."""
        return JobPublic.from_document(
            await self.services.portfolio.get_result(self.owner, body.id))

    @action("list", request=ListRequest, response=JobList)
    async def list_results(self, body):
        """The caller's results, newest first; pass ``cursor`` for the next page."""
        page, cursor = await self.services.portfolio.list_results(self.owner, body.limit,
                                                                  body.cursor)
        return JobList(results=[JobPublic.from_document(job, summary=True) for job in page],
                       cursor=cursor)

    @action("delete", request=IdRequest, response=Empty)
    async def delete_result(self, body):
        """Delete one saved result."""
        await self.services.portfolio.delete_result(self.owner, body.id)
        return {}
