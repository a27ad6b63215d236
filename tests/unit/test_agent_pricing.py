"""Costs from tokens: the run's own prices, the genai-prices table, and unknown models left unknown (no server)."""

from __future__ import annotations

import logging
import math

import pytest

from runvisor.actors.agent._pricing import Pricing, Table, check_prices, genai_prices
from runvisor.errors import ConfigError


def fixed_table(known: dict[str, float]) -> Table:
    def cost(model: str, tokens_in: int, tokens_out: int) -> float | None:
        return known.get(model)

    return cost


async def test_the_runs_own_price_wins_and_matches_with_or_without_a_provider() -> None:
    pricing = Pricing({"my-finetune": (2.0, 8.0)}, table=lambda: fixed_table({"my-finetune": 99.0}))
    assert await pricing.cost("my-finetune", 1_000_000, 500_000) == 6.0
    assert await pricing.cost("acme:my-finetune", 1_000, 0) == 0.002


async def test_an_unknown_model_costs_none_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runvisor.actors.agent")
    pricing = Pricing(table=lambda: fixed_table({"gpt-x": 0.25}))
    assert await pricing.cost("gpt-x", 10, 10) == 0.25
    assert await pricing.cost("homegrown", 10, 10) is None
    assert await pricing.cost("homegrown", 20, 20) is None
    said = [r.getMessage() for r in caplog.records if "homegrown" in r.getMessage()]
    assert len(said) == 1
    assert "prices={" in said[0]


async def test_without_the_table_installed_only_the_runs_prices_count() -> None:
    pricing = Pricing({"m": (1.0, 1.0)}, table=lambda: None)
    assert await pricing.cost("gpt-4o", 1000, 100) is None
    assert await pricing.cost("m", 1_000_000, 0) == 1.0


async def test_missing_token_counts_leave_the_cost_unknown_without_loading_the_table() -> None:
    loads: list[int] = []

    def load() -> Table:
        loads.append(1)
        return fixed_table({"gpt-4o": 1.0})

    pricing = Pricing(table=load)
    assert await pricing.cost("gpt-4o", None, 100) is None
    assert await pricing.cost("gpt-4o", 100, None) is None
    assert loads == []


@pytest.mark.parametrize("price", [(-1.0, 1.0), (math.nan, 1.0), (1.0, math.inf), (1.0,), "cheap"])
def test_bad_prices_are_refused_with_the_model_named(price: object) -> None:
    with pytest.raises(ConfigError, match="my-model"):
        check_prices({"my-model": price})  # type: ignore[dict-item]


def test_the_genai_prices_table_knows_common_models_and_no_unknown_one() -> None:
    pytest.importorskip("genai_prices")
    table = genai_prices()
    assert table is not None
    bare = table("gpt-4o", 1000, 100)
    assert bare is not None
    assert bare > 0
    assert table("openai:gpt-4o", 1000, 100) == bare  # PydanticAI's provider:model names
    assert table("no-such-provider:gpt-4o", 1000, 100) is None
    assert table("a-model-nobody-sells", 1000, 100) is None
