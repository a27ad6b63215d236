"""What a model call cost, from its tokens: the run's own prices, else the genai-prices table.

``run.llm(model=..., tokens_in=..., tokens_out=...)`` fills ``cost_usd`` from here when the
caller does not give it. The table is `genai-prices <https://github.com/pydantic/genai-prices>`_
(MIT, kept up to date by Pydantic: prices per provider, with their history and the tiers some
models charge past a context length), an optional extra: ``pip install 'runvisor[prices]'``.

A model that is neither in the run's prices nor in the table leaves the cost unknown (None):
a guessed cost would make a budget stop runs for money they did not spend, or let them spend
money it did not see. The same without the extra installed (logged once per model).

Model names are the table's (``gpt-4o``, ``claude-sonnet-4-5``; dated versions match their
model); ``provider:model`` (PydanticAI's ``openai:gpt-4o``) also names the provider, and an
unknown provider leaves the cost unknown. The run's prices match the name as given, or the part
after ``provider:``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Callable, Mapping

from runvisor.errors import ConfigError

log = logging.getLogger("runvisor.actors.agent")

#: A model's price: US dollars per million input tokens, and per million output tokens.
Price = tuple[float, float]
#: Prices by model name.
Prices = Mapping[str, Price]
#: What the table says a call cost: ``(model, tokens_in, tokens_out) -> dollars``, None when unknown.
Table = Callable[[str, int, int], float | None]


class Pricing:
    """Costs of one run's model calls."""

    def __init__(self, prices: Prices | None = None, *, table: Callable[[], Table | None] | None = None) -> None:
        """Args:
        prices: the run's own prices, which win over the table's.
        table: loads the table (None: not installed); genai-prices when None.
        """
        self.prices = check_prices(prices or {})
        self._load = table or genai_prices
        self._table: Table | None = None
        self._loaded = False
        self._unknown: set[str] = set()

    async def cost(self, model: str, tokens_in: int | None, tokens_out: int | None) -> float | None:
        """Dollars for ``tokens_in`` and ``tokens_out`` of ``model``; None when either count or the price is unknown."""
        if tokens_in is None or tokens_out is None:
            return None
        price = self.prices.get(model) or self.prices.get(model.partition(":")[2])
        if price is not None:
            return (tokens_in * price[0] + tokens_out * price[1]) / 1e6
        if not self._loaded:
            # The first load imports the table and reads its data (about half a second): not in the loop.
            self._table, self._loaded = await asyncio.to_thread(self._load), True
        cost = self._table(model, tokens_in, tokens_out) if self._table is not None else None
        if cost is None and model not in self._unknown:
            self._unknown.add(model)
            where = "in genai-prices" if self._table is not None else "(pip install 'runvisor[prices]' for a table)"
            log.info("no price for model %r %s: its cost stays unknown; pass prices={...} to Run", model, where)
        return cost


def check_prices(prices: Prices) -> dict[str, Price]:
    """``prices`` as a dict, each price two finite non-negative numbers; else ``ConfigError``."""
    checked: dict[str, Price] = {}
    for model, price in prices.items():
        try:
            per_in, per_out = (float(p) for p in price)
        except (TypeError, ValueError):
            raise ConfigError(f"price of {model!r} must be ($ per Mtok in, $ per Mtok out), got {price!r}") from None
        if not all(math.isfinite(p) and p >= 0 for p in (per_in, per_out)):
            raise ConfigError(f"price of {model!r} must be finite and not negative, got {price!r}")
        checked[model] = (per_in, per_out)
    return checked


@functools.cache
def genai_prices() -> Table | None:
    """The genai-prices table, loaded once per process; None when the package is not installed."""
    try:
        from genai_prices import Usage, calc_price  # noqa: PLC0415 - an optional extra, imported when first needed
    except ImportError:
        return None

    def cost(model: str, tokens_in: int, tokens_out: int) -> float | None:
        provider, _, ref = model.partition(":") if ":" in model else ("", "", model)
        try:
            found = calc_price(
                Usage(input_tokens=tokens_in, output_tokens=tokens_out), ref, provider_id=provider or None
            )
        except LookupError:
            return None
        return float(found.total_price)

    cost("gpt-4o", 1, 1)  # reads the data now, once, rather than at the first call in the event loop
    return cost


__all__ = ["Price", "Prices", "Pricing", "Table", "check_prices", "genai_prices"]
