"""A per-tool circuit breaker as pure functions over an immutable, serializable state.

All executor replicas share a tool's breaker through KV ``rv_breakers`` with
compare-and-set, so nothing here holds state or reads a clock. The I/O layer does::

    state = load()                                 # BreakerState.from_dict(...)
    admission = breaker.allow(state, now)          # write admission.state if admission.changed
    ... call the tool ...
    cas_write(breaker.record(reloaded_state, ok, now, generation=admission.generation))

and on a lost CAS it reloads and recomputes: the functions are deterministic, so the
recomputed state is exactly what a serial order of the two replicas would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from runvisor.actors.retry.policy import MAX_BREAKER_WINDOW, BreakerPolicy

_Count = Annotated[int, Field(ge=0)]


class BreakerStatus(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerState(BaseModel):
    """A breaker's whole state; small and msgpack-able (str, ints, floats) for the KV bucket.

    The outcome window is a bitmask of the last ``count`` outcomes (bit 0 newest, 1 = failure),
    at most 64 bits so it stays one msgpack uint64.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    status: BreakerStatus = BreakerStatus.CLOSED
    failures: Annotated[int, Field(ge=0, lt=1 << MAX_BREAKER_WINDOW)] = 0
    count: Annotated[int, Field(ge=0, le=MAX_BREAKER_WINDOW)] = 0
    opened_at: float | None = None
    probes: _Count = 0
    last_probe_at: float | None = None
    #: Bumped on every status change, so outcomes of calls admitted earlier can be told apart.
    generation: _Count = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain values for msgpack or JSON."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BreakerState:
        """Validate a state read back from KV; raises ``pydantic.ValidationError`` on a bad one."""
        return cls.model_validate(data)


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call may go ahead, and the state to write back.

    Attributes:
        allowed: The call may run.
        retry_at: When refused, the clock time at which the breaker will let a call through.
        state: The state after this decision (probe slots taken, open -> half-open).
        changed: ``state`` differs from the one given, so it must be written (CAS).
    """

    allowed: bool
    retry_at: float | None
    state: BreakerState
    changed: bool = False

    @property
    def generation(self) -> int:
        """Pass to ``record`` so a late outcome from an earlier phase is not taken for a probe."""
        return self.state.generation


class Breaker:
    """The transition rules of one tool's breaker, configured by a ``BreakerPolicy``."""

    __slots__ = ("policy",)

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()

    def allow(self, state: BreakerState, now: float) -> Admission:
        """Decide whether a call may run now.

        Closed: always. Open: refused until ``opened_at + open_s``, then half-open with this call
        as the first probe. Half-open: up to ``half_open_probes`` calls; a probe whose outcome
        never came back (its replica died) frees its slot after ``open_s``.
        """
        p = self.policy
        if state.status is BreakerStatus.CLOSED:
            return Admission(True, None, state)
        if state.status is BreakerStatus.OPEN:
            retry_at = (state.opened_at or 0.0) + p.open_s
            if now < retry_at:
                return Admission(False, retry_at, state)
            probing = state.model_copy(
                update={
                    "status": BreakerStatus.HALF_OPEN,
                    "probes": 1,
                    "last_probe_at": now,
                    "generation": state.generation + 1,
                }
            )
            return Admission(True, None, probing, changed=True)
        last = state.last_probe_at if state.last_probe_at is not None else now
        if state.probes < p.half_open_probes:
            return Admission(True, None, _probe(state, state.probes + 1, now), changed=True)
        if now >= last + p.open_s:
            return Admission(True, None, _probe(state, 1, now), changed=True)
        return Admission(False, last + p.open_s, state)

    def record(self, state: BreakerState, ok: bool, now: float, *, generation: int | None = None) -> BreakerState:
        """Fold one call's outcome into the state.

        Args:
            state: The current state (reload it after a lost CAS and call again).
            ok: The call succeeded (hidden failures count as failures).
            now: Clock time of the outcome.
            generation: ``Admission.generation`` of the call; while half-open, an outcome from
                another generation is a straggler, not a probe, and is ignored.
        """
        if state.status is BreakerStatus.OPEN:
            # Calls admitted before the breaker opened say nothing new; they must not extend it.
            return state
        if state.status is BreakerStatus.HALF_OPEN:
            if generation is not None and generation != state.generation:
                return state
            return _closed(state) if ok else _opened(state, now)
        window = self.policy.window
        mask = (1 << window) - 1
        failures = ((state.failures << 1) | (0 if ok else 1)) & mask
        count = min(state.count + 1, window)
        # Divide rather than multiply the rate: 3/10 == 0.3 exactly, while 0.3 * 10 > 3 in floats.
        if count >= self.policy.min_calls and failures.bit_count() / count >= self.policy.failure_rate:
            return _opened(state, now)
        return state.model_copy(update={"failures": failures, "count": count})

    def retry_at(self, state: BreakerState) -> float | None:
        """When an open breaker lets the next probe through; ``None`` when not open."""
        if state.status is not BreakerStatus.OPEN:
            return None
        return (state.opened_at or 0.0) + self.policy.open_s


def _probe(state: BreakerState, probes: int, now: float) -> BreakerState:
    return state.model_copy(update={"probes": probes, "last_probe_at": now})


def _opened(state: BreakerState, now: float) -> BreakerState:
    return BreakerState(status=BreakerStatus.OPEN, opened_at=now, generation=state.generation + 1)


def _closed(state: BreakerState) -> BreakerState:
    # A fresh window: the failures that opened the breaker must not re-open it at once.
    return BreakerState(status=BreakerStatus.CLOSED, generation=state.generation + 1)
