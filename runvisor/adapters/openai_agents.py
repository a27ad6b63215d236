"""runvisor for the OpenAI Agents SDK (``pip install 'runvisor[openai-agents]'``): one line to attach.

    from runvisor import Run
    from runvisor.adapters.openai_agents import runvisor_hooks, supervised

    agent = Agent(name="coder", model="gpt-4o", tools=[supervised(function_tool(search))])  # supervised: optional
    async with Run.start(goal="find the parser") as run:
        result = await Runner.run(agent, "Where is JsonParser?", hooks=runvisor_hooks(run))

What the hooks (the SDK's ``RunHooks``) map onto the run:

- each model response is an ``llm`` step with its usage and the model's name (``Agent(model="gpt-4o")``,
  or a ``Model`` object's ``.model``; ``runvisor_hooks(run, model=...)`` names it otherwise), so its
  cost comes from the price table. A response reporting no tokens leaves them unknown, not zero;
- each tool call is an in-process call of the run (``run.tool``) under the SDK's tool call id: a
  ``tool_call`` step and its intent checkpointed before the tool runs, a ``tool_result`` after
  (judged for hidden failures, including the SDK's own "An error occurred while running the
  tool" answer), so ``Run.resume`` after a crash reports what was in flight by the SDK's ids;
- a pause holds before the next model request or tool call; a kill or stop ends the run there (a
  model request under way is not cut short: hooks cannot reach the SDK's call);
- a handoff is a ``message`` step (``handoff: triage -> billing``) of the same run.

``supervised(tool)`` makes a ``FunctionTool`` run *inside* its supervised call (a copy of the tool
whose ``on_invoke_tool`` is wrapped), so a kill cancels its body at once. A tool left as it is
is held open by the hooks from ``on_tool_start`` to ``on_tool_end`` instead (in a task of their
own): a kill records it as cancelled at once, but its body, which the SDK runs, goes on until
it returns, and the run ends after that. Either way the agent gets its tool's value unchanged.

Decisions worth knowing:

- **How the run's end reaches the agent.** Raised from a model hook or ``on_agent_end``, an
  exception leaves ``Runner.run`` as it is; raised anywhere in a tool call, the SDK wraps it in
  its ``UserError``, and the ``Run`` block would see a crash instead of the kill or stop. So the
  tool side never raises the run's end: a call cut short answers the SDK with a line saying the
  run ended, and the next model request, or ``on_agent_end`` when the SDK would stop on a tool's
  output, raises ``RunKilled`` or ``RunStopped`` (the run's own error, with its reason and
  evidence) out of ``Runner.run``. That answer never reaches a model.
- **Handoffs stay in the run**, rather than starting a child ``Run(parent=...)``: in this SDK a
  handoff passes the conversation on for good (the handed-to agent never returns to the first),
  so a parent run would sit silent while its child works, and be stopped for a stall.
- **Which run a supervised tool reports to**: ``supervised(tool, run=run)``'s, else the run whose
  ``async with`` block ``Runner.run`` is called in (``Run.current()``), as ``@supervised_tool``;
  outside any run the tool just runs. The hooks report to the run they were made with.
- ``Runner.run_streamed`` calls the same hooks; there the run's end is raised from ``stream_events()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
from typing import Any

try:
    from agents import (
        Agent,
        AgentHookContext,
        FunctionTool,
        ItemHelpers,
        ModelResponse,
        RunContextWrapper,
        RunHooks,
        Tool,
        TResponseInputItem,
        default_tool_error_function,
    )
    from agents.tool_context import ToolContext
except ImportError as exc:  # the framework is an optional extra
    raise ImportError(
        "runvisor.adapters.openai_agents needs the OpenAI Agents SDK: pip install 'runvisor[openai-agents]'"
    ) from exc

from runvisor.actors.agent import Run, ToolCall
from runvisor.actors.retry import DefaultClassifier, FailureClassifier
from runvisor.errors import RunKilled, RunStopped

#: The run's end, raised by its steps: the tool side of the hooks never lets the SDK see it (module doc).
_ENDS = (RunKilled, RunStopped)
#: Marks the ``on_invoke_tool`` of a tool made by ``supervised``, which the hooks leave to it.
_SUPERVISED = "__runvisor_supervised__"
#: What the SDK tells the model when a tool raised (its default ``failure_error_function``).
_SDK_TOOL_ERROR = default_tool_error_function(RunContextWrapper(context=None), Exception())
#: The executors' hidden-failure rules, plus the SDK's answer for a tool that raised.
SDK_CLASSIFIER = DefaultClassifier(extra_patterns={"ToolRaised": re.escape(_SDK_TOOL_ERROR)})


class RunvisorHooks(RunHooks[Any]):
    """The SDK's ``RunHooks`` that report an agent's run to a runvisor ``Run`` and obey its commands.

    Pass it as ``Runner.run(..., hooks=RunvisorHooks(run))`` (or ``runvisor_hooks(run)``). To add
    hooks of your own, subclass it and call ``super()`` in the methods you override.
    """

    def __init__(self, run: Run, *, model: str | None = None, classifier: FailureClassifier | None = None) -> None:
        """Args:
        run: the run to report to, entered (``async with``).
        model: the model's name for pricing, when the agent's ``model`` does not say it (an
            agent without one uses the ``RunConfig``'s, which hooks cannot see).
        classifier: finds failures hidden in the results of tools the hooks hold open;
            ``SDK_CLASSIFIER`` when None.
        """
        self.run = run
        self.model = model
        self.classifier = classifier or SDK_CLASSIFIER
        self._held: dict[str, list[_HeldCall]] = {}

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        await self.run.obey()  # holds while paused; raises the run's end out of Runner.run

    async def on_llm_end(self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse) -> None:
        usage = response.usage
        reported = bool(usage.input_tokens or usage.output_tokens)
        texts = (ItemHelpers.extract_last_text(item) for item in response.output)
        await self.run.llm(
            tokens_in=usage.input_tokens if reported else None,
            tokens_out=usage.output_tokens if reported else None,
            text="\n".join(text for text in texts if text) or None,
            model=self.model or model_name(agent),
        )

    async def on_tool_start(self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool) -> None:
        if is_supervised(tool):
            return  # its own call is the step boundary and the report
        call_id, args = _call_of(context)
        call = self.run.tool(_tool_name(tool, context), args, call_id=call_id, classifier=self.classifier)
        held = _HeldCall(call, self.run.stopping)
        self._held.setdefault(_key(tool, context), []).append(held)
        # Raised here, the run's end would be wrapped in the SDK's UserError: its next step raises it.
        with contextlib.suppress(*_ENDS):
            await held.opened()

    async def on_tool_end(self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object) -> None:
        waiting = self._held.get(_key(tool, context))
        if not waiting:
            return
        held = waiting.pop(0)
        if not waiting:
            del self._held[_key(tool, context)]
        with contextlib.suppress(*_ENDS):  # killed while the tool ran: recorded; the next step raises it
            await held.close(result)

    async def on_handoff(self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]) -> None:
        await self.run.message(f"handoff: {from_agent.name} -> {to_agent.name}")

    async def on_agent_end(self, context: AgentHookContext[Any], agent: Agent[Any], output: Any) -> None:
        # The SDK may end on a tool's output without asking the model again: the run's end, if it
        # came during that tool call, must still reach the agent's code.
        await self.run.obey()


def runvisor_hooks(run: Run, *, model: str | None = None) -> RunvisorHooks:
    """The hooks that attach ``run`` to ``Runner.run(agent, input, hooks=runvisor_hooks(run))``.

    Args:
        run: the run to report to, entered (``async with``).
        model: the model's name for pricing, when the agent's ``model`` does not say it.
    """
    return RunvisorHooks(run, model=model)


def supervised(
    tool: FunctionTool,
    *,
    run: Run | None = None,
    idempotent: bool = False,
    classifier: FailureClassifier | None = None,
) -> FunctionTool:
    """A copy of ``tool`` whose every call runs inside a supervised in-process call (``run.tool``).

    Use it over ``@function_tool`` (``@supervised`` above it) or on a tool object. The call's id is
    the SDK's tool call id; a kill cancels the tool's body (see the module doc for how the run's
    end then reaches the agent). The copy runs the original's invoker, so its schema, guardrails,
    timeout and failure policy are the original's.

    Args:
        tool: the SDK's function tool.
        run: the run that supervises it; the run current where it is called when None.
        idempotent: whether running a call again is safe: a call with the id of one in flight when
            the run's last process ended is run again only then (``Run.tool``).
        classifier: finds failures hidden in results; ``SDK_CLASSIFIER`` when None.
    """
    if not isinstance(tool, FunctionTool):
        raise TypeError(f"supervised() takes the SDK's FunctionTool (put it above @function_tool), got {tool!r}")
    inner = tool.on_invoke_tool
    name, rules = tool.name, classifier or SDK_CLASSIFIER

    # The SDK passes a ToolContext (which carries the call id) because of this annotation.
    async def invoke(ctx: ToolContext[Any], arguments: str) -> Any:
        supervisor = run if run is not None else Run.current()
        if supervisor is None:
            return await inner(ctx, arguments)
        try:
            call_args = _parse(arguments)
            async with supervisor.tool(
                name, call_args, call_id=ctx.tool_call_id, idempotent=idempotent, classifier=rules
            ) as call:
                call.result = await inner(ctx, arguments)
        except _ENDS as ended:
            if ended.run_id != supervisor.run_id:
                raise  # another run's end (a sub-agent's, raised by the tool itself) is the tool's own error
            return f"runvisor: {ended}"  # never read by a model: the run's next step raises it (module doc)
        return call.result

    setattr(invoke, _SUPERVISED, True)
    wrapped = copy.copy(tool)
    wrapped.on_invoke_tool = invoke
    return wrapped


def is_supervised(tool: Tool) -> bool:
    """Whether ``tool`` was made by :func:`supervised`."""
    return isinstance(tool, FunctionTool) and bool(getattr(tool.on_invoke_tool, _SUPERVISED, False))


def model_name(agent: Agent[Any]) -> str | None:
    """The agent's model name: ``Agent(model="gpt-4o")``, or a ``Model`` object's ``model``; else None."""
    model = agent.model
    name = model if isinstance(model, str) else getattr(model, "model", None)
    return name if isinstance(name, str) and name else None


class ToolEndNotReported(Exception):  # noqa: N818 - recorded as the call's error type: it names what happened
    """A tool call the hooks held open whose end the SDK never reported before the run ended."""


class _HeldCall:
    """A tool call the hooks hold open from ``on_tool_start`` to ``on_tool_end``.

    The SDK runs the tool between two hooks, not inside a block of ours, so the ``run.tool``
    block waits in a task of its own: a kill cancels that task (the call is recorded as
    cancelled at once), never the SDK's. A call whose end never comes (the tool raised out of
    ``Runner.run``) is recorded as failed when the run's block ends, so no task outlives it.
    """

    def __init__(self, call: ToolCall, run_ending: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = loop.create_future()
        self._result: asyncio.Future[object] = loop.create_future()
        self._task = asyncio.create_task(self._hold(call, run_ending), name=f"runvisor-tool-{call.call_id}")
        self._task.add_done_callback(_retrieve)

    async def _hold(self, call: ToolCall, run_ending: asyncio.Event) -> None:
        async with call:
            self._opened.set_result(None)
            ending = asyncio.ensure_future(run_ending.wait())
            try:
                await asyncio.wait((self._result, ending), return_when=asyncio.FIRST_COMPLETED)
            finally:
                ending.cancel()
            if not self._result.done():
                raise ToolEndNotReported("the SDK did not report the end of this call before the run ended")
            call.result = self._result.result()

    async def opened(self) -> None:
        """Wait until the call is open (held while the run is paused); raise why it could not be."""
        await asyncio.wait((self._task, self._opened), return_when=asyncio.FIRST_COMPLETED)
        if not self._opened.done():
            self._task.result()

    async def close(self, result: object) -> None:
        """Record the tool's result and close the call; raise ``RunKilled`` if it was killed meanwhile."""
        if not self._result.done():
            self._result.set_result(result)
        await self._task


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a held call's end as seen: the hooks raise the run's end at its next step instead."""
    if not task.cancelled():
        task.exception()


def _call_of(context: RunContextWrapper[Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The SDK's call id and arguments, from a function or custom tool's ``ToolContext``; else none."""
    if isinstance(context, ToolContext):
        return context.tool_call_id, _parse(context.tool_arguments)
    return None, None


def _key(tool: Tool, context: RunContextWrapper[Any]) -> str:
    # Tools run without a ToolContext (computer, shell) have no call id: their calls pair in order.
    return context.tool_call_id if isinstance(context, ToolContext) else f"{tool.name}@{id(tool)}"


def _tool_name(tool: Tool, context: RunContextWrapper[Any]) -> str:
    return context.tool_name if isinstance(context, ToolContext) else tool.name


def _parse(arguments: str) -> dict[str, Any]:
    """The model's JSON arguments as a dict (anything else under one key), as ``run.tool`` records them."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"input": value}


__all__ = ["SDK_CLASSIFIER", "RunvisorHooks", "is_supervised", "model_name", "runvisor_hooks", "supervised"]
