"""runvisor for LangChain v1 agents (``create_agent``) and LangGraph graphs: one line to attach.

    from runvisor import Run
    from runvisor.adapters.langgraph import RunvisorMiddleware

    agent = create_agent(model, tools, middleware=[RunvisorMiddleware()], checkpointer=InMemorySaver())
    async with Run.start(goal="find the parser"):
        result = await agent.ainvoke({"messages": [("user", "find the parser")]}, {"configurable": {"thread_id": "t1"}})

:class:`RunvisorMiddleware` is an ``AgentMiddleware``. It supervises the run given, else the one
whose ``async with`` block the agent runs in (``Run.current()``); with neither it does nothing.
Each model response is reported as an ``llm`` step with its ``usage_metadata`` and its model's
name (``response_metadata["model_name"]``, else the chat model's), so its cost is filled in from
the price table; each tool call runs as a supervised in-process call (``run.tool``) whose
``call_id`` is LangChain's tool call id, so parallel tool calls are all checkpointed, a kill
cancels them, and after a crash ``Run.resume`` names them by the ids in the graph's messages.
The agent's messages and result are never changed. List it first in ``middleware`` (outermost),
so that a retry middleware never retries runvisor's kill or stop.

Pause, kill and stop are obeyed before each model request, after each model response (so a
pause never costs a second model call) and before each tool call:

- **Pause**, where the graph has a checkpointer, is LangGraph's ``interrupt()``: the graph saves
  its state and ``ainvoke`` returns with ``"__interrupt__"`` (a payload ``{"runvisor": "pause",
  "run_id", "reason", ...}``; :func:`is_pause`). The run is marked ``suspended``: leaving the
  ``async with`` block leaves it PAUSED, so the process may end. To go on, wait for the
  operator's resume (``await run.obey()`` holds until then; in a new process, enter
  ``Run.resume(run_id)`` first), then invoke the graph with :func:`resume_command` and the same
  thread and checkpointer. A graph resumed while the run is still paused holds at that boundary
  until the operator resumes. Without a checkpointer a pause holds in place, as the SDK does.
- **Kill** and **stop** raise ``RunKilled`` / ``RunStopped`` (the reason and evidence) out of
  ``ainvoke``; a kill also cancels the tool calls under way (a model call under way is let finish).

After a crash, a tool call that was in flight is not run again when the graph resumes (it may
have taken effect): ``ainvoke`` raises ``RunError`` naming it, unless the tool is listed in
``idempotent_tools``; ``run.abandon_open_intent(call_id)`` closes it. The hooks are async: use
``ainvoke``/``astream``.

For a graph built by hand, :class:`RunvisorCallbackHandler` (``config={"callbacks": [...]}``)
reports what callbacks can see: model responses and tool calls as steps; it obeys at each model
or tool start, a pause holding in place, and a kill ends the run when the tool call returns.
"""

from __future__ import annotations

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
    from langchain_core.callbacks import AsyncCallbackHandler
    from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, LLMResult
    from langgraph.config import get_config
    from langgraph.constants import CONFIG_KEY_CHECKPOINTER
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.runtime import Runtime
    from langgraph.types import Command, Interrupt, interrupt
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"runvisor.adapters.langgraph needs LangGraph and LangChain ({exc.name} is missing): "
        "pip install 'runvisor[langgraph]'"
    ) from exc

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any
from uuid import UUID

from runvisor.actors.agent import Run, ToolCall
from runvisor.actors.retry import DefaultClassifier, Failure, FailureClassifier
from runvisor.actors.retry.classify import MAX_MESSAGE_CHARS

#: The key of a runvisor pause in an interrupt's value.
PAUSE_KEY = "runvisor"
#: What :func:`resume_command` answers a runvisor pause with (``interrupt()`` returns it).
RESUMED = "resumed"
#: Where chat model integrations name the model that answered, in ``response_metadata``.
_MODEL_KEYS = ("model_name", "model", "model_id")
_RULES = DefaultClassifier()


class RunvisorMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Supervises a ``create_agent`` agent with runvisor (see the module doc).

    Args:
        run: the run to report to; when None, the one current where the agent runs (``Run.current()``).
        idempotent_tools: names of tools safe to run twice: a call of one that was in flight at a
            crash runs again (under the same idempotency key) when the graph resumes.
        classifier: finds failures hidden in tool results; the executors' default rules when None.
    """

    def __init__(
        self,
        run: Run | None = None,
        *,
        idempotent_tools: Collection[str] = (),
        classifier: FailureClassifier | None = None,
    ) -> None:
        super().__init__()
        self.run = run
        self.idempotent_tools = frozenset(idempotent_tools)
        self.classifier = classifier or _RULES
        # The chat model's name by response message id, for responses that do not name theirs.
        self._models: dict[str, str] = {}

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]
    ) -> ModelResponse[Any]:
        run = self._supervising()
        if run is not None:  # an interrupt here comes before the model is asked: on resume it is asked once
            await _obey(run, "model request")
        response = await handler(request)
        name = _model_name_of(request.model)
        if name is not None and run is not None:
            for message in response.result:
                if isinstance(message, AIMessage) and message.id and _model_name(message) is None:
                    self._models[message.id] = name
        return response

    async def aafter_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        run = self._supervising()
        message = next((m for m in reversed(state["messages"]) if isinstance(m, AIMessage)), None)
        if run is None or message is None:
            return None
        # Reported here, in a node of its own, so that a pause that came during the model call
        # interrupts after it: on resume only this node runs again, not the model.
        await _obey(run, "model response")
        model = _model_name(message) or (self._models.pop(message.id, None) if message.id else None)
        usage = message.usage_metadata
        await run.llm(
            tokens_in=usage["input_tokens"] if usage else None,
            tokens_out=usage["output_tokens"] if usage else None,
            text=str(message.text) or None,
            model=model,
        )
        return None

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]]
    ) -> ToolMessage | Command[Any]:
        run = self._supervising()
        if run is None:
            return await handler(request)
        tool_call = request.tool_call
        name, call_id = tool_call["name"], tool_call.get("id")
        await _obey(run, f"tool call {name}", call_id)
        judge = _ToolOutput(self.classifier)
        call = run.tool(
            name, tool_call["args"], call_id=call_id, idempotent=name in self.idempotent_tools, classifier=judge
        )
        async with call:
            output = await handler(request)
            call.result = judge.read(output, call_id)
        return output

    async def aafter_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        run = self._supervising()
        if run is not None:
            run.suspended = False  # the graph ran to its end: nothing is left to continue
        return None

    # A run is async: a graph run with ``invoke``/``stream`` is passed through when none supervises it.

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> ModelResponse[Any]:
        self._not_supervising()
        return handler(request)

    def after_model(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        self._not_supervising()
        return None

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]]
    ) -> ToolMessage | Command[Any]:
        self._not_supervising()
        return handler(request)

    def after_agent(self, state: AgentState[Any], runtime: Runtime[Any]) -> dict[str, Any] | None:
        self._not_supervising()
        return None

    def _supervising(self) -> Run | None:
        return self.run if self.run is not None else Run.current()

    def _not_supervising(self) -> None:
        if self._supervising() is not None:
            raise RuntimeError(
                "runvisor supervises a LangChain agent run with ainvoke or astream, not invoke or stream"
            )


class RunvisorCallbackHandler(AsyncCallbackHandler):
    """Reports a hand-built graph's model responses and tool calls to a run (see the module doc).

    Pass it in the graph's config: ``graph.ainvoke(inputs, {"callbacks": [RunvisorCallbackHandler()]})``.
    Not together with :class:`RunvisorMiddleware`, which reports the same calls.

    Args:
        run: the run to report to; when None, the one current where the graph runs.
        classifier: finds failures hidden in tool results; the executors' default rules when None.
    """

    # Errors must reach the graph (a kill ends it), and events be handled in order, in the caller's task.
    raise_error = True
    run_inline = True

    def __init__(self, run: Run | None = None, *, classifier: FailureClassifier | None = None) -> None:
        self.run = run
        self.classifier = classifier or _RULES
        self._open: dict[UUID, _OpenCall] = {}

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        await self._obey()

    async def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        await self._obey()

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._supervising()
        if run is None:
            return
        output = response.llm_output or {}
        fallback = next((str(output[key]) for key in _MODEL_KEYS if output.get(key)), None)
        for generations in response.generations:
            for generation in generations:
                message = generation.message if isinstance(generation, ChatGeneration) else None
                usage = message.usage_metadata if isinstance(message, AIMessage) else None
                await run.llm(
                    tokens_in=usage["input_tokens"] if usage else None,
                    tokens_out=usage["output_tokens"] if usage else None,
                    text=generation.text or None,
                    model=(_model_name(message) if message is not None else None) or fallback,
                )

    async def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._supervising()
        if run is None:
            return
        name = str(kwargs.get("name") or serialized.get("name") or "tool")
        args = inputs if inputs is not None else {"input": input_str}
        judge = _ToolOutput(self.classifier)
        call_id = kwargs.get("tool_call_id")
        opened = _OpenCall(run.tool(name, args, call_id=call_id, classifier=judge), judge, call_id)
        await opened.start()
        self._open[run_id] = opened

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        opened = self._open.pop(run_id, None)
        if opened is not None:
            await opened.end(output)

    async def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        opened = self._open.pop(run_id, None)
        if opened is not None:
            await opened.fail(error)

    async def _obey(self) -> None:
        run = self._supervising()
        if run is not None:
            await run.obey()

    def _supervising(self) -> Run | None:
        return self.run if self.run is not None else Run.current()


class _OpenCall:
    """A ``run.tool`` block held open from a tool's start callback to its end callback.

    The block runs in a task of its own, so a kill cancels that task rather than the tool: the
    tool's end callback then raises ``RunKilled`` (callbacks cannot cancel what they observe).
    """

    def __init__(self, call: ToolCall, judge: _ToolOutput, call_id: str | None) -> None:
        self._call = call
        self._judge = judge
        self._call_id = call_id
        loop = asyncio.get_running_loop()
        self._entered: asyncio.Future[None] = loop.create_future()
        self._output: asyncio.Future[Any] = loop.create_future()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Enter the block (obeying a pause, a kill or a stop first)."""
        self._task = asyncio.create_task(self._hold(), name=f"runvisor-tool-{self._call.call_id}")
        await self._entered

    async def end(self, output: Any) -> None:
        if not self._output.done():  # else a kill cancelled the wait for it
            self._output.set_result(output)
        await self._closed()

    async def fail(self, error: BaseException) -> None:
        if not self._output.done():
            self._output.set_exception(error)
        try:
            await self._closed()
        except BaseException as exc:
            if exc is not error:  # the tool's own error goes on through LangChain, not from here
                raise

    async def _closed(self) -> None:
        if self._task is not None:
            await self._task

    async def _hold(self) -> None:
        try:
            async with self._call as call:
                self._entered.set_result(None)
                call.result = self._judge.read(await self._output, self._call_id)
        except BaseException as exc:
            if not self._entered.done():
                self._entered.set_exception(exc)
                return
            raise


class _ToolOutput:
    """Reads what a LangChain tool returned: its text for the step, and a failure it reports.

    A ``ToolMessage`` with ``status="error"`` (LangChain's own report of a failed call) is a
    failure; any other output is judged on its content by ``rules``.
    """

    def __init__(self, rules: FailureClassifier) -> None:
        self.rules = rules
        self.error: str | None = None

    def read(self, output: object, call_id: str | None) -> object:
        """The content the agent reads from ``output`` (a ``ToolMessage``, a ``Command``, a value)."""
        message = output if isinstance(output, ToolMessage) else None
        if isinstance(output, Command) and isinstance(output.update, Mapping):
            found = [m for m in output.update.get("messages", ()) if isinstance(m, ToolMessage)]
            message = next((m for m in found if m.tool_call_id == call_id), found[0] if found else None)
        if message is None:
            return output if not isinstance(output, Command) else repr(output)
        if message.status == "error":
            self.error = str(message.text)
        return message.content

    def __call__(self, value: object, /) -> Failure | None:
        if self.error is not None:
            return Failure(error_type="ToolError", message=self.error[:MAX_MESSAGE_CHARS])
        return self.rules(value)


async def _obey(run: Run, where: str, call_id: str | None = None) -> None:
    """Obey the run's commands at a boundary of the graph: interrupt it for a pause where it has a
    checkpointer (the first time; once resumed, ``interrupt`` returns), then hold while the run is
    still paused, and raise once it has ended."""
    if run.paused and _has_checkpointer():
        run.suspended = True
        interrupt(_pause(run, where, call_id))
    await run.obey()


def _has_checkpointer() -> bool:
    # LangGraph's interrupt needs a checkpointer to save the graph's state at; the config of the
    # node being run names it (langgraph.constants keeps this key for its users).
    return get_config().get("configurable", {}).get(CONFIG_KEY_CHECKPOINTER) is not None


def _pause(run: Run, where: str, call_id: str | None) -> dict[str, Any]:
    command = run.last_command
    reason = command.reason.value if command is not None and command.reason is not None else "USER_PAUSED"
    pause: dict[str, Any] = {PAUSE_KEY: "pause", "run_id": run.run_id, "reason": reason, "at": where}
    if call_id is not None:
        pause["call_id"] = call_id
    if command is not None:
        pause.update(issuer=command.issuer, note=command.note)
    return pause


def is_pause(item: Interrupt) -> bool:
    """Whether an interrupt of the graph (``result["__interrupt__"]``, ``state.interrupts``) is a runvisor pause."""
    return isinstance(item.value, Mapping) and item.value.get(PAUSE_KEY) == "pause"


def resume_command(interrupts: Iterable[Interrupt]) -> Command[Any]:
    """The ``Command`` that continues a graph interrupted for runvisor pauses (one per parallel tool call).

    Args:
        interrupts: the graph's pending interrupts: ``result["__interrupt__"]``, or
            ``(await graph.aget_state(config)).interrupts`` in a new process.

    Raises:
        ValueError: none of them is a runvisor pause (answer the others as their graph expects).
    """
    ids = {item.id: RESUMED for item in interrupts if is_pause(item)}
    if not ids:
        raise ValueError("no runvisor pause among the graph's interrupts: nothing to resume")
    return Command(resume=ids)


def _model_name(message: BaseMessage) -> str | None:
    meta = message.response_metadata
    return next((str(meta[key]) for key in _MODEL_KEYS if isinstance(meta.get(key), str) and meta[key]), None)


def _model_name_of(model: object) -> str | None:
    for attribute in ("model_name", "model"):
        name = getattr(model, attribute, None)
        if isinstance(name, str) and name:
            return name
    return None


__all__ = ["PAUSE_KEY", "RESUMED", "RunvisorCallbackHandler", "RunvisorMiddleware", "is_pause", "resume_command"]
