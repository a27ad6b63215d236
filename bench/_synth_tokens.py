"""Tokens and cost of a synthetic run's llm calls, for ``bench.synth``: models, a replayable
schedule per run, and the ``max_cost_usd`` a budget run crosses."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    name: str
    usd_in: float  # per input token
    usd_out: float  # per output token


MODELS = (Model("gemini-3-pro", 2e-6, 12e-6), Model("gpt-4o", 2.5e-6, 10e-6), Model("claude-sonnet", 3e-6, 15e-6))
HEAVY = Model("claude-opus", 15e-6, 75e-6)


class Tokens:
    """A run's token and cost schedule from its own random stream, so it can be replayed.

    Like real agents, each call sends the whole conversation: ``tokens_in`` grows by every
    reply and observation. A ``heavy`` run pastes long outputs into its context.
    """

    def __init__(self, seed: int, model: Model, heavy: bool) -> None:
        self._rng = random.Random(seed)
        self.model = model
        self.heavy = heavy
        self.context = self._rng.randint(1500, 3000)
        self.spent = 0.0

    def next(self) -> tuple[int, int, float]:
        """``tokens_in``, ``tokens_out`` and ``cost_usd`` of the next llm call."""
        tokens_in, tokens_out = self.context, self._rng.randint(30, 300)
        cost = round(tokens_in * self.model.usd_in + tokens_out * self.model.usd_out, 7)
        seen = self._rng.randint(2000, 9000) if self.heavy else int(self._rng.lognormvariate(5.3, 0.8))
        self.context += tokens_out + seen + 20
        self.spent += cost
        return tokens_in, tokens_out, cost


def budget_limit(seed: int, model: Model, actions: int, rng: random.Random) -> float:
    """A round ``max_cost_usd`` that the heavy schedule of ``seed`` crosses 40-70% into the run."""
    sim = Tokens(seed, model, heavy=True)
    totals = [sim.next() and sim.spent for _ in range(actions)]
    # Crossed 40-70% in, and at least three calls before the run ends: a runaway, not a last step.
    at = rng.randint(max(1, int(actions * 0.4)), max(1, min(int(actions * 0.7), actions - 4)))
    low, high = totals[at - 1], totals[at]
    limit = float(f"{high * 0.999:.2g}")  # people set round budgets
    return limit if low < limit < high else round((low + high) / 2, 6)


__all__ = ["HEAVY", "MODELS", "Model", "Tokens", "budget_limit"]
