"""Property-based tests of the supervisor's event handling (issue 15): whatever valid events arrive,
in whatever order, the engine never raises, never stops a run twice, never judges a finished run again,
and its state stays encodable on the wire and in ``rv_runs`` (JSON).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runvisor.actors.supervisor.detection import Engine
from runvisor.protocols import codec
from runvisor.protocols.messages import (
    MAX_COST_PER_EVENT,
    MAX_COUNT,
    MAX_MONEY,
    MAX_TOKENS_PER_EVENT,
    Command,
    RunState,
    StepEvent,
)
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import RunStatus, StopReason

RUNS = ("r1", "r2", "r3")
# Small vocabularies, so that repeats, cycles, negative answers and errors actually happen.
COMMANDS = ("grep -n Foo src/a.py", "goto 12", "goto 40", "python repro.py", "sed -i s/a/b/ a.py", "ls", "")
OUTPUTS = (
    "",
    "No matches found",
    "bash: line 1: I: command not found",
    "Traceback (most recent call last):\nValueError: x",
    "Error: rate limited",
    "[File: a.py (12 lines total)]\n1:import os",
    "Usage: open <file>",
    "ok",
    "76.0",
)
_kind = st.sampled_from(["start", "llm", "tool_call", "tool_result", "message", "heartbeat", "final"])


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """One step event's fields; seq and ts are added in order by the test."""
    kind = draw(_kind)
    fields: dict[str, Any] = {"run_id": draw(st.sampled_from(RUNS)), "kind": kind}
    if kind in ("tool_call", "tool_result"):
        fields["call_id"] = draw(st.sampled_from(["c1", "c2", "c3"]))
        fields["tool"] = draw(st.sampled_from(["bash", "search", "get_user_details"]))
        fields["args"] = draw(st.sampled_from([{"command": c} for c in COMMANDS] + [{"q": "x"}, None]))
    if kind in ("tool_result", "message", "final"):
        fields["observation"] = draw(st.sampled_from(OUTPUTS))
        fields["ok"] = draw(st.none() | st.booleans())
        fields["error"] = draw(st.none() | st.sampled_from(["returncode 1", "format_error: 2 bash blocks"]))
    if kind == "llm":
        fields["tokens_in"] = draw(st.integers(0, MAX_TOKENS_PER_EVENT))
        fields["tokens_out"] = draw(st.integers(0, MAX_TOKENS_PER_EVENT))
        fields["cost_usd"] = draw(st.floats(0, MAX_COST_PER_EVENT, allow_nan=False))
    if kind == "heartbeat":
        fields["args"] = draw(st.sampled_from([None, {"status": "PAUSED"}, {"status": "RUNNING"}, {"status": "x"}]))
    if kind == "final":
        fields["args"] = draw(st.sampled_from([None, {"stop_reason": "AGENT_CRASHED"}, {"stop_reason": "COMPLETED"}]))
    if kind == "start":
        fields["policy"] = draw(st.sampled_from([None, Policy(window=8, loop_action="pause"), Policy(max_tokens=10)]))
    fields["progress"] = draw(st.none() | st.floats(-1e6, 1e6, allow_nan=False))
    return fields


_command = st.sampled_from(["pause", "resume", "kill", "stop"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(st.one_of(events(), st.tuples(st.sampled_from(RUNS), _command)), max_size=120))
def test_any_sequence_of_events_and_commands_is_handled(script: list[Any]) -> None:
    engine = Engine()
    stops: dict[str, int] = {}
    ended: set[str] = set()
    now = 1_700_000_000.0
    for seq, item in enumerate(script):
        now += 7.0
        if isinstance(item, tuple):
            run_id, cmd = item
            reason = StopReason.LOOP_DETECTED if cmd == "stop" else None
            engine.apply_command(run_id, Command(cmd=cmd, reason=reason), now)
        else:
            event = StepEvent.model_validate({**item, "seq": seq, "ts": now})
            verdicts = [*engine.observe(event, now), *engine.tick(now + 400.0)]
            for verdict in verdicts:
                assert verdict.run_id not in ended, "a finished run was judged again"
                if verdict.severity == "stop":
                    stops[verdict.run_id] = stops.get(verdict.run_id, 0) + 1
        for run_id in RUNS:
            state = engine.state(run_id)
            if state.status in (RunStatus.STOPPED, RunStatus.COMPLETED):
                ended.add(run_id)
    assert all(count == 1 for count in stops.values()), stops
    for run_id in RUNS:
        state = engine.state(run_id)
        assert codec.decode(RunState, codec.encode(state)) == state
        stored = json.loads(state.model_dump_json())
        assert 0 <= stored["counters"]["tokens"] <= MAX_COUNT
        assert 0 <= stored["counters"]["cost_usd"] <= MAX_MONEY
