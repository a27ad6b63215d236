"""Fitting agent data into the protocol's limits, and digesting tool arguments: pure, no server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runvisor.actors.agent._limits import args_digest, clip, fits, jsonable, step_args
from runvisor.actors.agent._store import OPEN_ARGS_KEY, pack_state, unpack_state
from runvisor.protocols.messages import MAX_ARGS_CHARS, MAX_OBSERVATION_CHARS, StepEvent


@given(st.text(max_size=300), st.integers(min_value=60, max_value=200))
def test_clip_never_exceeds_the_limit_and_keeps_short_text(text: str, limit: int) -> None:
    clipped = clip(text, limit)
    assert clipped is not None
    assert len(clipped) <= limit
    if len(text) <= limit:
        assert clipped == text
    else:
        assert clipped.endswith(f"[truncated from {len(text)} chars]")


def test_clipped_observation_is_a_valid_step_event() -> None:
    huge = "x" * (MAX_OBSERVATION_CHARS * 2)
    event = StepEvent(run_id="r", seq=1, ts=0.0, kind="message", observation=clip(huge, MAX_OBSERVATION_CHARS))
    assert event.observation is not None
    assert len(event.observation) == MAX_OBSERVATION_CHARS


def test_args_digest_ignores_key_order_but_not_values() -> None:
    assert args_digest({"a": 1, "b": [1, 2]}) == args_digest({"b": [1, 2], "a": 1})
    assert args_digest({"a": 1}) != args_digest({"a": 2})
    assert len(args_digest(None)) == 64


def test_oversized_args_become_a_preview_that_fits() -> None:
    args = {"blob": "y" * (MAX_ARGS_CHARS + 10)}
    assert not fits(args)
    shown = step_args(args)
    assert shown is not None
    assert fits(shown)
    assert shown["_digest"] == args_digest(args)
    assert StepEvent(run_id="r", seq=1, ts=0.0, kind="tool_call", args=shown).args == shown
    small = {"q": "JsonParser"}
    assert step_args(small) is small


def test_open_call_arguments_ride_in_the_state_and_come_back_out() -> None:
    state = {"notes": ["a"]}
    packed = pack_state(state, {"c1": {"path": "x"}, "c2": None})
    assert unpack_state(packed) == (state, {"c1": {"path": "x"}, "c2": None})
    assert pack_state(state, {}) == state


def test_the_one_open_call_of_an_older_checkpoint_keeps_its_arguments() -> None:
    # Checkpoints written before parallel calls kept the one open call's arguments under their own key.
    older = {"notes": ["a"], OPEN_ARGS_KEY: {"path": "x"}}
    assert unpack_state(older, "c7") == ({"notes": ["a"]}, {"c7": {"path": "x"}})


def test_jsonable_args_keep_json_and_name_the_rest() -> None:
    class Context:
        def __str__(self) -> str:
            return "<ctx>"

    assert jsonable({"q": "x", "n": (1, 2), "ctx": Context()}) == {"ctx": "<ctx>", "n": [1, 2], "q": "x"}
    assert jsonable(None) is None
    assert args_digest(jsonable({"n": (1, 2)})) == args_digest({"n": (1, 2)})
