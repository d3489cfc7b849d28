"""``/prices/<action>``: what the price store holds."""

import datetime

from pydantic import BaseModel

from indico.routes.actions import ActionHandler, action
from indico.routes.models import Request


class SymbolsRequest(Request):
    """``prices/symbols`` takes no arguments: ``{}``."""


class SymbolInfo(BaseModel):
    """One stored symbol: its first and last date and its number of prices."""

    symbol: str
    first: datetime.date
    last: datetime.date
    rows: int


class SymbolsResponse(BaseModel):
    """Every stored symbol, sorted."""

    symbols: list[SymbolInfo]


class PricesHandler(ActionHandler):
    """The market data behind the optimizations."""

    resource = "prices"

    @action(request=SymbolsRequest, response=SymbolsResponse)
    async def symbols(self, body):
        """List each stored symbol with its first date, last date and row count."""
        entries = await self.services.prices.list_symbols()
        return SymbolsResponse(symbols=[
            SymbolInfo(symbol=entry.symbol, first=entry.first, last=entry.last, rows=entry.rows)
            for entry in entries])
