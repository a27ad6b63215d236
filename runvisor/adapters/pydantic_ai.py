"""runvisor for PydanticAI agents: one capability, and every model call and tool call is supervised.

    from pydantic_ai import Agent
    from runvisor import Run
    from runvisor.adapters.pydantic_ai import runvisor_capability

    agent = Agent("openai:gpt-4o", capabilities=[runvisor_capability()])  # at import time, as usual
    async with Run.start(goal="find the parser"):
        result = await agent.run("Where is the JSON parser defined?")

``pip install 'runvisor[pydantic-ai]'``. It is a PydanticAI capability (``AbstractCapability``;
written against pydantic-ai-slim 2.68) on the framework's own hooks:

- ``before_run``: one ``message`` step names PydanticAI's run id, so an operator can find the
  framework's own trace of a runvisor run.
- ``wrap_model_request``: the run obeys its commands first (a pause holds here, before the model
  is asked; a stop or kill raises), then the response is reported as an ``llm`` step with its
  ``RequestUsage`` tokens and model name. The cost is PydanticAI's own when it has one (it prices
  each response from genai-prices, knowing the provider and the cached tokens that two token
  counts cannot carry); else the run's price for the model (``run.llm(model=...)``: the run's
  ``prices``, then genai-prices), so ``Run(prices=...)`` prices models PydanticAI does not know.
- ``wrap_tool_execute``: each function tool call runs inside ``run.tool(name, args,
  call_id=<PydanticAI's tool_call_id>)``: checkpointed before it runs, reported as call and
  result, hidden failures classified. Parallel tool calls are each their own open intent.
  Output tools (the final result) are not tools the agent acts with, and PydanticAI does not
  pass them through this hook.

How a run ends inside PydanticAI: a stop raises ``RunStopped`` (reason and evidence) at the next
model request or tool call, and it leaves ``agent.run()`` as it is. A kill cancels the model
request or tool calls in flight at once and raises ``RunKilled`` in their place, the way
``asyncio.timeout`` raises ``TimeoutError``; PydanticAI cancels the sibling tool calls as it
does for any failing tool. PydanticAI's own cancellation (``RunContext.cancel()``,
``CancellationToken``) is not used for this: it ends the run with ``RunCancelled``, which
carries no reason, and the agent's ``async with Run`` block would then record a crash over the
kill.

``runvisor_capability()`` finds the run when the agent acts (``Run.current()``: the run whose
``async with`` block the agent runs in), so an agent defined at import time serves every run;
outside any run it does nothing, and the agent does exactly what it would without it.
``runvisor_capability(run)`` binds it to one run instead. Either way the agent's results are
its own: tool values and model responses go through unchanged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any

try:
    from pydantic_ai import RunContext
    from pydantic_ai.capabilities import AbstractCapability, CapabilityOrdering
    from pydantic_ai.capabilities.abstract import ValidatedToolArgs, WrapModelRequestHandler, WrapToolExecuteHandler
    from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, SkipToolExecution
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models import ModelRequestContext
    from pydantic_ai.tools import AgentDepsT, ToolDefinition
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        f"runvisor.adapters.pydantic_ai needs PydanticAI ({exc}): pip install 'runvisor[pydantic-ai]'"
    ) from exc

from runvisor.actors.agent import Run

#: What a tool call that PydanticAI defers (approval, an external result) or skips raises: the
#: call did not fail, it did not run.
_NOT_RUN = (ApprovalRequired, CallDeferred, SkipToolExecution)


@dataclass
class RunvisorCapability(AbstractCapability[AgentDepsT]):
    """A PydanticAI capability that reports an agent's model and tool calls to a runvisor run
    and makes the agent obey the run's commands (see the module doc).

    Attributes:
        run: the run to report to; the run current where the agent acts when None.
    """

    run: Run | None = None

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live Run: not for agent specs

    def get_ordering(self) -> CapabilityOrdering:
        # Outermost: a pause holds before any other capability does work for the step, and a
        # tool call is checkpointed before any of their hooks act on it.
        return CapabilityOrdering(position="outermost")

    def supervising(self) -> Run | None:
        """The run this agent reports to now, or None (the agent then runs unsupervised)."""
        return self.run if self.run is not None else Run.current()

    async def before_run(self, ctx: RunContext[AgentDepsT]) -> None:
        run = self.supervising()
        if run is not None:
            await run.message(f"pydantic-ai run {ctx.run_id}")

    async def wrap_model_request(
        self, ctx: RunContext[AgentDepsT], *, request_context: ModelRequestContext, handler: WrapModelRequestHandler
    ) -> ModelResponse:
        run = self.supervising()
        if run is None:
            return await handler(request_context)
        await run.obey()  # a pause holds before the model is asked
        async with _KillCancels(run):
            response = await handler(request_context)
        usage = response.usage
        unmeasured = bool(usage.unmeasured_requests) and not usage.has_values()  # the provider said nothing
        await run.llm(
            tokens_in=None if unmeasured else usage.input_tokens,
            tokens_out=None if unmeasured else usage.output_tokens,
            cost_usd=float(usage.cost) if usage.cost is not None else None,
            text=response.text,
            model=response.model_name or request_context.model.model_name,
        )
        return response

    async def wrap_tool_execute(
        self,
        ctx: RunContext[AgentDepsT],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: ValidatedToolArgs,
        handler: WrapToolExecuteHandler,
    ) -> Any:
        run = self.supervising()
        if run is None:
            return await handler(args)
        not_run: BaseException | None = None
        # The model's own arguments (JSON), so equal calls digest the same.
        async with run.tool(call.tool_name, call.args_as_dict(), call_id=call.tool_call_id) as supervised:
            try:
                supervised.result = await handler(args)
            except _NOT_RUN as deferred:
                not_run, supervised.result = deferred, f"not run: {type(deferred).__name__}"
        if not_run is not None:
            raise not_run
        return supervised.result


def runvisor_capability(run: Run | None = None) -> RunvisorCapability[Any]:
    """The capability that supervises a PydanticAI agent: ``Agent(model, capabilities=[runvisor_capability()])``.

    Args:
        run: the run to report to; None: the run whose ``async with`` block the agent runs in,
            looked up at each model request and tool call (and none outside a run).
    """
    return RunvisorCapability(run)


class _KillCancels:
    """``async with``: a kill of ``run`` cancels the task in the block, and ``RunKilled`` is raised in
    place of the cancellation (``asyncio.timeout``'s pattern; ``run.tool`` does the same for tools)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._killed = run.killed
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._fired = False

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch(), name=f"runvisor-model-request-{self._run.run_id}")

    async def _watch(self) -> None:
        await self._killed.wait()
        if self._task is not None:
            self._fired = True
            self._task.cancel(f"run {self._run.run_id} was killed")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._fired and self._task is not None:
            self._task.uncancel()
            await self._run.obey()  # raises RunKilled


__all__ = ["RunvisorCapability", "runvisor_capability"]
