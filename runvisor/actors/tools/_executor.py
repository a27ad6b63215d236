"""The tool executor: serves registered tools over ``rv.tool.<name>`` with retries, budgets and breakers (DESIGN §7).

::

    tools = ToolRegistry()

    @tools.tool(policy=ToolPolicy(timeout_s=10, max_attempts=4))
    async def search(q: str) -> str: ...

    await ToolExecutor(tools).run(stop)

Each tool is one queue-group subscription, so replicas share the load. A request runs in
its own task (at most ``max_concurrency`` per tool; beyond that, the subscription waits,
which is the backpressure). The deciding is the pure planner of ``runvisor.actors.retry``; this
module only wires it to NATS:

- every failed attempt that will be retried becomes two step events on ``rv.step.<run>``,
  a failed ``tool_result`` then the next ``tool_call`` (same ``call_id`` and ``seq``); the
  agent SDK publishes the first call and the final result itself;
- retry budgets per run (a bounded LRU) and per tool, kept in this process;
- circuit breakers per tool in KV ``rv_breakers``, judged on the wall clock so all
  replicas agree; KV trouble there fails open (a breaker protects, it must not stop work);
- results by idempotency key in KV ``rv_results``, claimed before the call so two replicas
  never run it twice; KV trouble there fails the request (a double run is worse than an error).

A sync tool runs in a thread; a thread cannot be interrupted, so its timeout ends the
attempt but not the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from runvisor.actors.endpoint import Endpoint, Role
from runvisor.actors.retry import (
    Admission,
    Backoff,
    Breaker,
    BreakerState,
    BudgetPolicy,
    Done,
    GiveUp,
    Outcome,
    RetryAfter,
    RetryBudget,
    RetryPlanner,
    Uniform,
)
from runvisor.actors.runtime import Actor
from runvisor.actors.tools._attempt import failure, retry_events, run_once
from runvisor.actors.tools._kv import Abandoned, BreakerStore, Claim, ResultStore, Snapshot
from runvisor.actors.tools._registry import Tool, ToolRegistry, clip, observation_text
from runvisor.protocols import codec, subjects
from runvisor.protocols.messages import StepEvent, ToolRequest, ToolResult

log = logging.getLogger(__name__)

#: Extra time a claim outlives its request's deadline before others may take it over.
CLAIM_GRACE_S = 5.0
#: How long a step event publish may wait for JetStream before it is dropped (and logged).
STEP_PUBLISH_TIMEOUT_S = 2.0


@dataclass(slots=True)
class _Served:
    """A tool and what this executor keeps for it: breaker rules, backoff, budget, concurrency slots."""

    tool: Tool
    breaker: Breaker
    backoff: Backoff
    budget: RetryBudget
    slots: asyncio.Semaphore
    sub: Subscription | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def finished(self, task: asyncio.Task[None]) -> None:
        """Done-callback of a request's task: forget it and free its slot."""
        self.tasks.discard(task)
        self.slots.release()


class ToolExecutor(Actor):
    """The ``runvisor tools`` actor: serves every tool of a registry.

    Args:
        tools: The tools to serve.
        endpoint: Where and as whom to connect (role ``tool``); discovered when ``None``.
        nc: An existing connection to use instead.
        clock: Monotonic seconds for deadlines and retry budgets.
        sleep: Awaited for backoff delays and claim polls (tests record instead of sleeping).
        rng: Jitter source for backoff (``random.Random`` or a callable in ``[0, 1)``).
        wall: Wall-clock seconds for breakers, claims and step timestamps (shared across processes).
        max_concurrency: Requests handled at once per tool.
        run_budget: Retry budget policy of each run.
        max_runs: Run budgets kept (least recently used are dropped).
        claim_wait_s: How long a request waits for another executor's run of the same idempotency key.
        name: Connection name.
        graceful_s: Time in-flight requests get to finish on stop.
    """

    role: ClassVar[Role] = "tool"

    def __init__(
        self,
        tools: ToolRegistry,
        endpoint: Endpoint | None = None,
        *,
        nc: Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | Uniform | None = None,
        wall: Callable[[], float] = time.time,
        max_concurrency: int = 32,
        run_budget: BudgetPolicy | None = None,
        max_runs: int = 10_000,
        claim_wait_s: float = 5.0,
        name: str | None = None,
        graceful_s: float = 5.0,
    ) -> None:
        super().__init__(endpoint, nc=nc, name=name, graceful_s=graceful_s)
        if max_concurrency < 1 or max_runs < 1:
            raise ValueError("max_concurrency and max_runs must be at least 1")
        self.tools = tools
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self.claim_wait_s = claim_wait_s
        self.run_budget = run_budget or BudgetPolicy()
        self.max_runs = max_runs
        self._run_budgets: OrderedDict[str, RetryBudget] = OrderedDict()
        self._served = [self._serve_tool(tool, rng, max_concurrency) for tool in tools]
        self._breakers: BreakerStore | None = None
        self._results: ResultStore | None = None

    def _serve_tool(self, tool: Tool, rng: random.Random | Uniform | None, max_concurrency: int) -> _Served:
        policy = tool.policy
        return _Served(
            tool=tool,
            breaker=Breaker(policy.breaker),
            backoff=Backoff.from_policy(policy.backoff, rng=rng),
            budget=RetryBudget.from_policy(policy.budget, clock=self._clock, name=f"tool:{tool.name}"),
            slots=asyncio.Semaphore(max_concurrency),
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        """Open the buckets, then subscribe every tool in its queue group."""
        js = self.nc.jetstream()
        self._breakers = BreakerStore(await js.key_value(subjects.BREAKERS_BUCKET))
        self._results = ResultStore(
            await js.key_value(subjects.RESULTS_BUCKET),
            owner=self.name,
            wall=self._wall,
            clock=self._clock,
            sleep=self._sleep,
        )
        for served in self._served:
            served.sub = await self.nc.subscribe(
                subjects.tool(served.tool.name),
                queue=subjects.tool_queue(served.tool.name),
                cb=functools.partial(self._on_request, served),
            )
        # Once flushed the server knows the subscriptions, so a request sent after start is served.
        await self.nc.flush()
        log.info("serving tools: %s", ", ".join(s.tool.name for s in self._served))

    async def on_stop(self) -> None:
        """Stop taking requests, give the in-flight ones ``graceful_s``, cancel the rest."""
        for served in self._served:
            if served.sub is not None:
                # Drain rather than unsubscribe: requests already delivered still get an answer.
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await asyncio.wait_for(served.sub.drain(), self.graceful_s)  # type: ignore[no-untyped-call]
        tasks = [task for served in self._served for task in served.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.graceful_s)
            await _cancel(pending)

    async def on_failure(self, exc: BaseException) -> None:
        """Cancel in-flight requests, then log the crash."""
        await _cancel({task for served in self._served for task in served.tasks})
        await super().on_failure(exc)

    # -- requests ----------------------------------------------------------------------

    async def _on_request(self, served: _Served, msg: Msg) -> None:
        # Waiting here (not in the task) holds back the subscription: bounded work in flight.
        await served.slots.acquire()
        task = asyncio.create_task(self._serve(served, msg), name=f"tool:{served.tool.name}")
        served.tasks.add(task)
        task.add_done_callback(served.finished)

    async def _serve(self, served: _Served, msg: Msg) -> None:
        try:
            request = codec.decode(ToolRequest, msg.data)
        except codec.DecodeError as exc:
            log.warning("undecodable request: %s", exc, extra={"tool": served.tool.name})
            await self._reply(msg, failure("", "BadRequest", str(exc), attempts=0))
            return
        try:
            result = await self._handle(served, request)
        except Exception as exc:  # the caller must get an answer whatever broke here
            log.exception("request failed in the executor", extra={"tool": served.tool.name, "run_id": request.run_id})
            result = failure(request.call_id, "ExecutorError", f"the tool executor failed: {exc!r}", attempts=0)
        await self._reply(msg, result)

    async def _reply(self, msg: Msg, result: ToolResult) -> None:
        if not msg.reply:
            return  # a plain publish, not a request: nobody is waiting
        if not subjects.is_inbox(msg.reply):
            # A caller naming a subject of its own choosing as the reply (`$KV...`, `rv.step...`)
            # would have this executor write there for it: answers go to inboxes only.
            log.warning("not answering call %s on %r: not an inbox", result.call_id, msg.reply)
            return
        try:
            await self.nc.publish(msg.reply, codec.encode(result), headers=codec.MSGPACK_HEADERS)
        except nats.errors.Error as exc:
            log.warning("could not reply to call %s: %s", result.call_id, exc)

    async def _handle(self, served: _Served, request: ToolRequest) -> ToolResult:
        """One decoded request: check its arguments, de-duplicate it, run it."""
        problem = served.tool.check_args(request.args or {})
        if problem is not None:
            return failure(request.call_id, "BadArguments", problem, attempts=0)
        if not request.idempotency_key:
            return await self._execute(served, request)
        assert self._results is not None
        got = await self._results.begin(
            request.idempotency_key,
            lease_s=request.timeout_s + CLAIM_GRACE_S,
            wait_s=min(request.timeout_s, self.claim_wait_s),
            take_abandoned=served.tool.policy.idempotent,
        )
        if isinstance(got, Abandoned):
            # Its executor died mid-call: the charge, the email, the booking may have happened.
            message = (
                f"executor {got.owner or '?'} died while running this call, which may have taken effect; "
                f"{served.tool.name} is not idempotent, so it is not run again: check its effect by hand"
            )
            result = failure(request.call_id, "InDoubt", message, attempts=0)
            await self._results.settle(got, result)
            log.warning("call %s in doubt: %s", request.call_id, message, extra={"run_id": request.run_id})
            return result
        if isinstance(got, ToolResult):
            return got.model_copy(update={"call_id": request.call_id, "replayed": True})
        if got is None:
            message = "another executor is running this call (same idempotency key); ask again later"
            return failure(request.call_id, "InProgress", message, attempts=0)
        return await self._execute_claimed(served, request, got)

    async def _execute_claimed(self, served: _Served, request: ToolRequest, claim: Claim) -> ToolResult:
        assert self._results is not None
        try:
            result = await self._execute(served, request)
        except BaseException:
            # Cancelled (stop) or crashed before a result: free the key so a retry can run.
            await asyncio.shield(self._results.release(claim))
            raise
        if result.attempts == 0:
            await self._results.release(claim)  # the tool never ran (breaker open): nothing to replay
        else:
            await self._results.record(claim, result)
        return result

    async def _execute(self, served: _Served, request: ToolRequest) -> ToolResult:
        """The retry loop of ``runvisor.actors.retry.attempts``, with the breaker shared through KV."""
        assert self._breakers is not None
        tool, args = served.tool, request.args or {}
        deadline = self._clock() + request.timeout_s
        planner = RetryPlanner(tool.policy, served.backoff, (self._run_budget(request.run_id), served.budget))
        planner.begin()
        attempt = 0
        while True:
            admission, snapshot = await self._admit(served)
            refused = planner.admit(admission)
            if refused is not None:
                return self._gave_up(request, refused, attempt, None)
            attempt += 1
            outcome = await run_once(tool, args, min(tool.policy.timeout_s, deadline - self._clock()))
            with _breaker_trouble(tool.name):
                await self._breakers.record(
                    tool.name, served.breaker, outcome.ok, self._wall(),
                    generation=admission.generation, last=snapshot,
                )  # fmt: skip
            match planner.plan(attempt, outcome, remaining_s=deadline - self._clock()):
                case Done(value):
                    return ToolResult(call_id=request.call_id, ok=True, observation=observation_text(value),
                                      attempts=attempt)  # fmt: skip
                case GiveUp() as stop:
                    return self._gave_up(request, stop, attempt, outcome)
                case RetryAfter(delay_s):
                    await self._report_retry(request, outcome, attempt)
                    await self._sleep(delay_s)

    async def _admit(self, served: _Served) -> tuple[Admission, Snapshot]:
        assert self._breakers is not None
        name = served.tool.name
        try:
            return await self._breakers.admit(name, served.breaker, self._wall())
        except (nats.errors.Error, TimeoutError) as exc:
            # Fail open: a breaker protects the tool, it must not stop work when KV is unreachable.
            log.warning("breaker state unavailable, letting the call through: %s", exc, extra={"tool": name})
            fresh = BreakerState()
            return Admission(True, None, fresh), Snapshot(fresh, None)

    def _gave_up(self, request: ToolRequest, stop: GiveUp, attempts: int, last: Outcome | None) -> ToolResult:
        retry_after = stop.retry_after_s(self._wall())
        message = stop.message
        if retry_after is not None:
            message += f"; it lets a call through again in {retry_after:.1f}s"
        hidden = last is not None and last.hidden
        return ToolResult(
            call_id=request.call_id,
            ok=False,
            observation=observation_text(last.value) if hidden and last is not None else None,
            error=clip(message),
            error_type=stop.error_type,
            attempts=attempts,
            stop_reason=stop.stop_reason,
            retry_after_s=retry_after,
        )

    def _run_budget(self, run_id: str) -> RetryBudget:
        budget = self._run_budgets.get(run_id)
        if budget is None:
            budget = RetryBudget.from_policy(self.run_budget, clock=self._clock, name=f"run:{run_id}")
            self._run_budgets[run_id] = budget
            if len(self._run_budgets) > self.max_runs:
                self._run_budgets.popitem(last=False)
        else:
            self._run_budgets.move_to_end(run_id)
        return budget

    # -- step events -------------------------------------------------------------------

    async def _report_retry(self, request: ToolRequest, outcome: Outcome, attempt: int) -> None:
        """Publish the failed attempt and the next one, so supervisors see retries as they happen."""
        failed, again = retry_events(request, outcome, attempt, self._wall())
        base = f"{request.run_id}:{request.call_id}:{attempt}"
        await self._publish_step(failed, f"{base}:result")
        await self._publish_step(again, f"{base}:retry")

    async def _publish_step(self, event: StepEvent, msg_id: str) -> None:
        headers = {**codec.MSGPACK_HEADERS, Header.MSG_ID: msg_id}
        try:
            await self.nc.jetstream().publish(
                subjects.step(event.run_id), codec.encode(event), timeout=STEP_PUBLISH_TIMEOUT_S, headers=headers
            )
        except (nats.errors.Error, TimeoutError) as exc:
            # The call matters more than its report: log and carry on.
            log.warning("could not publish a retry step: %s", exc, extra={"run_id": event.run_id, "seq": event.seq})


@contextlib.contextmanager
def _breaker_trouble(tool: str) -> Iterator[None]:
    try:
        yield
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("could not record the outcome in the breaker: %s", exc, extra={"tool": tool})


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


__all__ = ["ToolExecutor"]
