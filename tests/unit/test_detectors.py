"""Each failure mode of DESIGN §4 reproduced with realistic events, and the shapes that are not loops."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.actors.supervisor.detection import (
    Budget,
    ConsecutiveFailures,
    Cycle,
    ExactRepeat,
    FruitlessSearch,
    NearDuplicate,
    NoProgress,
    RetryStorm,
    RunWindow,
    SameError,
    StallTimers,
    _ring,
    check_stall,
    is_hidden_failure,
)
from runvisor.actors.supervisor.detection._negative import _NOTHING, negative_key, says_nothing
from runvisor.actors.supervisor.detection.classify import Origin, content_required, failure_origin
from runvisor.actors.supervisor.detection.detectors import ACTION_DETECTORS, Recurrence, RejectedInput
from runvisor.actors.supervisor.detection.window import NAVIGATION_TOOLS
from runvisor.protocols.messages import StepEvent
from runvisor.protocols.policy import Policy
from runvisor.protocols.reasons import StopReason

POLICY = Policy()


class Script:
    """Builds a run's events the way the agent SDK reports them: tool_call then tool_result."""

    def __init__(self, policy: Policy = POLICY, run_id: str = "run-1") -> None:
        self.window = RunWindow(run_id, policy)
        self.run_id = run_id
        self.seq = 0
        self.ts = 1_700_000_000.0

    def event(self, kind: str, **fields: Any) -> StepEvent:
        self.seq += 1
        self.ts += 1.0
        event = StepEvent.model_validate(
            {"run_id": self.run_id, "seq": self.seq, "ts": self.ts, "kind": kind, **fields}
        )
        self.window.observe(event, self.ts)
        return event

    def act(self, command: str, observation: str, ok: bool = True, tool: str | None = None) -> int:
        """One shell action; returns the seq of its tool_call."""
        call_id = f"c{self.seq + 1}"
        name = tool or command.split(maxsplit=1)[0]
        call = self.event("tool_call", tool=name, call_id=call_id, args={"command": command})
        self.event("tool_result", tool=name, call_id=call_id, observation=observation, ok=ok)
        return call.seq

    def fired(self, detector: Any, policy: Policy = POLICY) -> bool:
        return detector.check(self.window, policy) is not None


def loop_findings(script: Script, policy: Policy = POLICY) -> list[str]:
    return [d.name for d in ACTION_DETECTORS if d.reason is StopReason.LOOP_DETECTED and script.fired(d, policy)]


# ---------------------------------------------------------------- loops


def test_exact_repeat_names_the_steps() -> None:
    s = Script()
    seqs = [s.act("find_file JsonParser", "No matches found for JsonParser in /repo") for _ in range(3)]
    verdict = ExactRepeat().check(s.window, POLICY)
    assert verdict is not None
    assert verdict.reason is StopReason.LOOP_DETECTED
    assert verdict.evidence.seqs == tuple(seqs)
    assert f"seq {seqs[0]}-{seqs[-1]}" in verdict.evidence.summary
    assert "`find_file JsonParser` x3" in verdict.evidence.summary
    assert "No matches found" in verdict.evidence.summary


def test_exact_repeat_needs_the_threshold() -> None:
    s = Script()
    for _ in range(2):
        s.act("find_file JsonParser", "No matches found")
    assert not s.fired(ExactRepeat())
    assert ExactRepeat().check(s.window, POLICY, slack=1) is not None  # the early warning


@pytest.mark.parametrize("period", [2, 3, 8])
def test_cycle_of_any_period_up_to_the_bound(period: int) -> None:
    # An 8-10 step investigation block replayed verbatim (DESIGN §4), and short A-B-A-B cycles.
    s = Script()
    block = [(f"grep -n handler src/mod{i}.py", f"{i}:def handler_{i}(self):") for i in range(period)]
    for _ in range(3):
        for command, observation in block:
            s.act(command, observation)
    verdict = Cycle().check(s.window, POLICY)
    assert verdict is not None
    assert f"block of {period} actions repeated x3.0" in verdict.evidence.summary
    assert len(verdict.evidence.seqs) == 3 * period
    assert not s.fired(ExactRepeat())


def test_cycle_longer_than_the_bound_is_not_a_cycle() -> None:
    policy = Policy(cycle_max_period=6)
    s = Script(policy)
    for _ in range(3):
        for i in range(7):
            s.act(f"cat f{i}.py", f"content {i}")
    assert not s.fired(Cycle(), policy)


def test_a_rerun_after_real_edits_with_the_same_result_is_not_a_recurrence() -> None:
    # DESIGN §4's false stop: the edits change the file, the script still prints the same thing.
    s = Script()
    for i in range(4):
        s.act("python3 test_valid_path.py", "Running quickstart... Error: Please enter a valid path name.")
        s.act(f"sed -i 's/timeout={i}/timeout={i + 1}/' test_valid_path.py", "")
    s.act("python3 test_valid_path.py", "Running quickstart... Error: Please enter a valid path name.")
    assert Recurrence().check(s.window, POLICY) is None
    assert loop_findings(s) == []


def test_recurrence_of_a_rerun_with_nothing_changed_in_between() -> None:
    # Reads in between change nothing: the same question, the same answer, four times.
    s = Script()
    calls = []
    for i in range(4):
        calls.append(
            s.act("python3 test_valid_path.py", "Running quickstart... Error: Please enter a valid path name.")
        )
        s.act(f"sed -n {10 * i + 1},{10 * i + 10}p test_valid_path.py", f"line {i}")
    verdict = Recurrence().check(s.window, POLICY)
    assert verdict is None  # the latest action is the read
    s.act("python3 test_valid_path.py", "Running quickstart... Error: Please enter a valid path name.")
    calls.append(s.seq - 1)
    verdict = Recurrence().check(s.window, POLICY)
    assert verdict is not None
    assert set(calls) <= set(verdict.evidence.seqs)


def test_near_duplicate_same_edit_while_the_file_grows() -> None:
    s = Script()
    edit = "cat >> src/parser.py <<'EOF'\ndef parse_json(text):\n    return json.loads(text)\nEOF\nwc -l src/parser.py"
    for lines in (120, 124, 128, 132):
        s.act(edit, f"{lines} src/parser.py\nFile updated; new definition at line {lines - 3}.")
    assert not s.fired(ExactRepeat())
    assert not s.fired(Recurrence())
    verdict = NearDuplicate().check(s.window, POLICY)
    assert verdict is not None
    assert "x4 with near-identical output" in verdict.evidence.summary


def test_same_error_after_each_variation_of_an_install() -> None:
    s = Script()
    error = "ERROR: Could not find a version that satisfies the requirement torch==1.2.0 (from versions: none)"
    for command in ("pip install torch==1.2.0", "pip3 install torch==1.2.0", "python -m pip install torch==1.2.0"):
        s.act(command, error, ok=False)
    assert not s.fired(SameError())
    s.act("pip install --no-cache-dir torch==1.2.0", error, ok=False)
    verdict = SameError().check(s.window, POLICY)
    assert verdict is not None
    assert "the same error x4" in verdict.evidence.summary


def test_same_error_from_prose_sent_to_the_shell() -> None:
    s = Script()
    for _ in range(4):
        s.act("I will now fix the parser", "bash: line 1: I: command not found", ok=False, tool="I")
    assert s.fired(SameError())
    assert s.fired(ExactRepeat())


def test_scattered_same_errors_are_not_a_loop() -> None:
    s = Script()
    for i in range(4):
        s.act("python -c 'import missing_mod'", "ModuleNotFoundError: No module named 'missing_mod'", ok=False)
        for j in range(6):
            s.act(f"sed -n '{i * 60 + j * 10},+9p' mod.py", f"line {i}-{j}: body {i * j}")
    s.act("python -c 'import missing_mod'", "ModuleNotFoundError: No module named 'missing_mod'", ok=False)
    assert not s.fired(SameError())


def test_grep_without_matches_in_different_files_is_not_the_same_error() -> None:
    s = Script()
    for name in ("a", "b", "c", "d", "e"):
        s.act(f'grep "def is_cached" {name}.py', "<returncode>1</returncode>\n<output>\n</output>", ok=False)
    assert not s.fired(SameError())


def _no_match(term: str, path: str) -> tuple[str, str]:
    """SWE-agent's ``search_file``: the answer names the term and the file searched."""
    return f"search_file {term} {path}", f'No matches found for "{term}" in /testbed/{path}'


_EMPTY_RC1 = "<returncode>1</returncode>\n<output>\n</output>"
_FILES = ("src/pkg/core.py", "src/pkg/_internal/io.py", "src/pkg/backends/cli.py", "tests/test_core.py", "docs/api.py")


def test_fruitless_search_file_after_file_names_the_steps() -> None:
    s = Script()
    seqs = [s.act(*_no_match("FooAdapter", path)) for path in _FILES[:4]]
    verdict = FruitlessSearch().check(s.window, POLICY)
    assert verdict is not None
    assert verdict.reason is StopReason.LOOP_DETECTED
    assert verdict.evidence.seqs == tuple(seqs)
    assert f"seq {seqs[0]}-{seqs[-1]}" in verdict.evidence.summary
    assert "found nothing x4" in verdict.evidence.summary
    assert "No matches found" in verdict.evidence.summary


def test_fruitless_grep_with_empty_output_and_exit_status_1() -> None:
    s = Script()
    for path in _FILES[:3]:
        s.act(f'grep -n "FooAdapter" {path}', _EMPTY_RC1, ok=False)
    assert not s.fired(FruitlessSearch())  # three places: still an agent looking around
    assert FruitlessSearch().check(s.window, POLICY, slack=1) is not None  # ... and one short of a loop
    # The last stage of a pipeline asks the question; the flags do not change it.
    s.act(f'sed -n "1,400p" {_FILES[3]} | grep -w "FooAdapter"', _EMPTY_RC1, ok=False)
    assert loop_findings(s) == ["fruitless_search"]


def test_fruitless_search_counts_within_a_short_span() -> None:
    s = Script()
    for i, path in enumerate(_FILES[:4]):
        s.act(*_no_match("FooAdapter", path))
        for j in range(2):  # real work in between: each search is three actions apart
            s.act(f"sed -n '{i * 100 + j * 50 + 1},+49p' src/pkg/util.py", f"page {i}.{j}: def helper_{i}_{j}():")
    assert not s.fired(FruitlessSearch())


def test_checking_a_few_places_before_finding_it_is_not_a_loop() -> None:
    s = Script()
    for path in _FILES[:3]:
        s.act(f'grep -n "def parse_row" {path}', _EMPTY_RC1, ok=False)
        assert loop_findings(s) == []
    s.act(
        'grep -n "def parse_row" src/pkg/rows.py',
        "<returncode>0</returncode>\n<output>\n41:def parse_row(x):\n</output>",
    )
    assert loop_findings(s) == []
    s.act("sed -n '35,60p' src/pkg/rows.py", "def parse_row(x):\n    return x.split(',')")
    assert loop_findings(s) == []


def test_different_searches_finding_nothing_are_not_one_question() -> None:
    s = Script()
    for term, path in zip(
        ("def is_cached", "def __setattr__", "def __set__", "class Field", "_meta"), _FILES, strict=True
    ):
        s.act(f'grep "{term}" {path}', _EMPTY_RC1, ok=False)
    assert not s.fired(FruitlessSearch())


def test_quiet_successes_and_navigation_are_not_negative_answers() -> None:
    s = Script()
    for i, path in enumerate(_FILES):
        s.act(f"sed -i '{i + 1}s/old/new/' {path}", "<returncode>0</returncode>\n<output>\n</output>")
        s.act(
            f"ls {path.rsplit('/', 1)[0]}/build 2>/dev/null",
            "<returncode>2</returncode>\n<output>\n</output>",
            ok=False,
        )
        s.act(f"cd /testbed/{path.rsplit('/', 1)[0]}", "")
    assert list(s.window.neg) == [0] * len(s.window.neg)
    assert loop_findings(s) == []


def test_reading_file_after_file_is_not_a_fruitless_search() -> None:
    s = Script()
    for path in _FILES:
        s.act(f"cat {path}", f"# {path}\nimport os\n\n\ndef main():\n    return os.getcwd()\n")
    assert not s.fired(FruitlessSearch())


@pytest.mark.parametrize(
    ("command", "observation", "failed"),
    [
        ('grep -rn "Foo" src/a/', _EMPTY_RC1, True),
        ("find . -name '*Foo*'", "<returncode>0</returncode>\n<output>\n</output>", False),
        ("grep -n Foo src/a.py", "grep: src/a.py: No such file or directory", True),
        ("search_dir Foo src/a", 'No matches found for "Foo" in /testbed/src/a', False),
    ],
)
def test_negative_answers_mask_the_place_searched(command: str, observation: str, failed: bool) -> None:
    key = negative_key(command, observation, failed, NAVIGATION_TOOLS)
    assert key != 0
    elsewhere = (command.replace("src/a", "lib/b"), observation.replace("src/a", "lib/b"))
    assert negative_key(*elsewhere, failed, NAVIGATION_TOOLS) == key
    assert (
        negative_key(command.replace("Foo", "Bar"), observation.replace("Foo", "Bar"), failed, NAVIGATION_TOOLS) != key
    )


# ---------------------------------------------------------------- not loops


def test_rerunning_a_test_between_edits_is_not_a_loop() -> None:
    s = Script()
    outcomes = [
        "FAILED tests/test_parse.py::test_nested - KeyError: 'items'\n1 failed, 11 passed in 0.42s",
        "FAILED tests/test_parse.py::test_unicode - UnicodeDecodeError at byte 17\n1 failed, 11 passed",
        "FAILED tests/test_parse.py::test_empty - AssertionError: assert None == []\n1 failed, 11 passed",
        "12 passed in 0.40s",
        "12 passed in 0.39s",
    ]
    for i, outcome in enumerate(outcomes):
        s.act(f"sed -i '{40 + i}s/old/new/' src/parse.py", "")
        s.act("pytest tests/test_parse.py -q", outcome)
        assert loop_findings(s) == []


def test_numbers_only_changes_of_a_rerun_between_edits_are_not_a_loop() -> None:
    s = Script()
    for i in range(6):
        s.act(f"sed -i 's/scale = {i}/scale = {i + 1}/' lib/axes.py", "")
        s.act("python reproduce_issue.py", f"DEBUG: _update_patch_limits ymax={i * 3.5} ymin=0\nheight {10 + i}")
        assert loop_findings(s) == []


def test_paging_through_a_file_is_not_a_loop() -> None:
    s = Script()
    words = ["parse", "render", "load", "store", "check", "merge", "split", "encode", "decode", "fetch", "send"]
    nouns = ["token", "header", "record", "config", "cache", "schema", "buffer", "index", "stream", "query"]
    lines = [f"def {words[n % 11]}_{nouns[n // 11 % 10]}_{n}(x):\n    return {nouns[n % 10]}(x)" for n in range(400)]
    for page in range(12):
        body = "\n".join(lines[page * 30 : page * 30 + 30])
        s.act("scroll_down", f"[File: src/big.py (400 lines total)]\n{body}", tool="scroll_down")
        assert loop_findings(s) == []
        s.act(f"sed -n '{page * 50 + 1},{page * 50 + 50}p' src/big.py", "\n".join(lines[page * 5 : page * 5 + 5]))
        assert loop_findings(s) == []


def test_cd_and_ls_with_empty_output_are_not_a_loop() -> None:
    s = Script()
    for _ in range(6):
        s.act("cd /repo", "")
        assert loop_findings(s) == []
    for _ in range(6):
        s.act("ls build/", "<returncode>0</returncode>\n<output>\n</output>")
        assert loop_findings(s) == []


# ---------------------------------------------------------------- failures and retries


@pytest.mark.parametrize(
    "observation",
    [
        "Error: payment amount does not add up",
        "Traceback (most recent call last):\n  File 'x.py', line 1",
        "bash: line 1: rg: command not found",
        "cat: foo.txt: No such file or directory",
        '{"ok": false, "reason": "rate limited"}',
        '{"error": "upstream timed out", "data": null}',
        "<returncode>0</returncode>\n<output>\nValueError: bad input\n</output>",
    ],
)
def test_hidden_failures_are_recognised(observation: str) -> None:
    assert is_hidden_failure(observation)


@pytest.mark.parametrize(
    "observation",
    [
        "12 passed in 0.40s",
        '{"ok": true, "items": []}',
        "def handle_error(self):\n    log.error('x')",
        '{"error": null, "data": [1]}',
        "",
    ],
)
def test_ordinary_outputs_are_not_failures(observation: str) -> None:
    assert not is_hidden_failure(observation)


def test_empty_output_fails_only_where_content_is_required() -> None:
    assert is_hidden_failure("", content_required=True)
    assert not is_hidden_failure("  ")


def test_an_empty_result_from_a_data_tool_is_a_failure() -> None:
    assert content_required("export_orders_data")
    assert content_required("get_user_details")
    assert not content_required("think")
    assert not content_required("grep")
    assert not content_required(None)
    s = Script()
    for day in range(1, 6):
        s.act("", "", tool="export_orders_data") if day % 2 else s.act("", "Error: rate limited", tool="get_order")
    assert s.fired(ConsecutiveFailures())


def test_an_empty_thought_is_not_a_failure() -> None:
    s = Script()
    for _ in range(5):
        s.act("", "", tool="think")
    assert s.window.consecutive_failures == 0


def test_consecutive_failures_include_hidden_ones() -> None:
    s = Script()
    seqs = [
        s.act(f"curl -s api/orders?page={i}", '{"ok": false, "error": "upstream 503"}', tool="http") for i in range(5)
    ]
    verdict = ConsecutiveFailures().check(s.window, POLICY)
    assert verdict is not None
    assert verdict.reason is StopReason.TOOL_FAILURE
    assert verdict.evidence.seqs == tuple(seqs)


def test_a_success_breaks_the_failure_streak() -> None:
    s = Script()
    for i in range(4):
        s.act(f"curl api/{i}", "Error: 503", tool="http")
    s.act("curl api/ok", '{"ok": true}', tool="http")
    s.act("curl api/5", "Error: 503", tool="http")
    assert not s.fired(ConsecutiveFailures())


def test_retry_storm_over_the_budget() -> None:
    policy = Policy(retry_budget_floor=2, retry_budget_ratio=0.1, max_consecutive_failures=50)
    s = Script(policy)
    for i in range(10):
        s.act(f"ls dir{i}", f"entry{i}")
    for _ in range(4):
        s.act("http GET /flaky", "Error: 503 Service Unavailable", ok=False, tool="http")
    assert not s.fired(RetryStorm(), policy)  # 3 retries in 14 calls: within 0.1 x 14 + 2
    s.act("http GET /flaky", "Error: 503 Service Unavailable", ok=False, tool="http")
    verdict = RetryStorm().check(s.window, policy)
    assert verdict is not None
    assert verdict.reason is StopReason.RETRY_LIMIT_REACHED
    assert "4 retries in the last 15 calls" in verdict.evidence.summary


def test_retries_within_the_budget_are_fine() -> None:
    s = Script()
    s.act("http GET /flaky", "Error: 503", ok=False, tool="http")
    s.act("http GET /flaky", "Error: 503", ok=False, tool="http")
    s.act("http GET /flaky", "200 OK", tool="http")
    assert not s.fired(RetryStorm())


# ---------------------------------------------------------------- progress and budgets


def test_no_progress_without_novelty() -> None:
    policy = Policy(no_progress_steps=8)
    s = Script(policy)
    s.act("cat a.py", "alpha")
    s.act("cat b.py", "beta")
    for i in range(8):
        s.act(f"cat {'a' if i % 2 else 'b'}.py --number={i}", "alpha" if i % 2 else "beta")
    verdict = NoProgress().check(s.window, policy)
    assert verdict is not None
    assert "no new observation for 8 actions" in verdict.evidence.summary


def test_no_progress_from_a_flat_progress_value() -> None:
    policy = Policy(no_progress_steps=5)
    s = Script(policy)
    s.event("llm", progress=0.4)
    for i in range(5):
        s.event("llm", progress=0.4 - i * 0.01)
        s.act(f"search page {i}", f"result {i}")
    verdict = NoProgress().check(s.window, policy)
    assert verdict is not None
    assert "progress stuck" in verdict.evidence.summary


def test_novel_observations_are_progress() -> None:
    s = Script()
    for i in range(60):
        s.act(f"cat file{i}.py", f"contents of file {i}: class Thing{i}")
    assert not s.fired(NoProgress())


def test_default_budgets_never_fire() -> None:
    s = Script()
    for i in range(100):
        s.event("llm", tokens_in=100_000, tokens_out=5_000, cost_usd=1.5)
        s.act(f"cat f{i}", f"x{i}")
    assert not s.fired(Budget())


def test_budget_names_the_budget_the_figure_and_the_limit() -> None:
    policy = Policy(max_tokens=1_000)
    s = Script(policy)
    s.event("llm", tokens_in=700, tokens_out=150)
    assert Budget().check(s.window, policy) is None
    s.event("llm", tokens_in=200, tokens_out=10)
    verdict = Budget().check(s.window, policy)
    assert verdict is not None
    assert "tokens budget exceeded: 1060 of 1000 (policy max_tokens)" in verdict.evidence.summary


def test_wall_clock_budget_uses_event_time() -> None:
    policy = Policy(max_wall_s=5)
    s = Script(policy)
    for i in range(4):
        s.act(f"cat f{i}", f"x{i}")
    verdict = Budget().check(s.window, policy)
    assert verdict is not None
    assert "wall-clock seconds budget exceeded: 7" in verdict.evidence.summary


# ---------------------------------------------------------------- stalls


def test_stall_on_a_tool_call_without_result() -> None:
    s = Script()
    s.event("tool_call", tool="pytest", call_id="slow", args={"command": "pytest -x"})
    assert check_stall(s.window, POLICY, s.ts + 10) is None
    verdict = check_stall(s.window, POLICY, s.ts + POLICY.tool_timeout_s)
    assert verdict is not None
    assert verdict.reason is StopReason.TIMEOUT
    assert "`pytest -x` has had no result" in verdict.evidence.summary
    assert verdict.evidence.seqs == (s.seq,)


def test_stall_on_a_silent_run() -> None:
    s = Script()
    s.act("ls", "a b")
    assert check_stall(s.window, POLICY, s.ts + POLICY.stall_timeout_s - 1) is None
    verdict = check_stall(s.window, POLICY, s.ts + POLICY.stall_timeout_s)
    assert verdict is not None
    assert "no event for 300s" in verdict.evidence.summary


def test_stall_timers_report_due_runs_once() -> None:
    timers = StallTimers()
    timers.schedule("a", 10.0)
    timers.schedule("b", 5.0)
    timers.schedule("c", 7.0)
    timers.schedule("c", None)
    timers.schedule("a", 20.0)  # moved later: found at its true deadline, not the old one
    assert timers.due(4.0) == []
    assert timers.due(12.0) == ["b"]
    assert timers.due(19.0) == []
    assert timers.due(25.0) == ["a"]
    assert timers.due(100.0) == []
    assert len(timers) == 0


def test_stall_timers_heap_stays_small_under_alternating_deadlines() -> None:
    timers = StallTimers()
    for t in range(1_000):
        timers.schedule("a", t + 120.0)  # a tool call: an early deadline
        timers.schedule("a", t + 300.5)  # its result: a later one
    assert timers.heap_size() == 1
    assert timers.due(1_119.0) == []
    assert timers.due(1_300.0) == ["a"]


def test_stall_timers_earlier_deadline_wins() -> None:
    timers = StallTimers()
    timers.schedule("a", 50.0)
    timers.schedule("a", 5.0)
    assert timers.due(6.0) == ["a"]
    assert timers.due(60.0) == []


def test_ring_lookup_ignores_matches_across_slots() -> None:
    ring = _ring.new_ring(4)
    _ring.put(ring, 0, _ring.key(0x11223344))
    _ring.put(ring, 1, _ring.key(0x99AABBCC))
    straddling = bytes(ring[2:6])  # the high half of slot 0 and the low half of slot 1
    assert _ring.slots_of(ring, straddling) == []
    assert not _ring.contains(ring, straddling)
    assert _ring.slots_of(ring, _ring.key(0x99AABBCC)) == [1]
    assert _ring.get(ring, 0) == 0x11223344
    # A slot keeps a digest's low 32 bits, never 0 (an empty slot).
    assert _ring.key(0x55AA_0000_0000) == _ring.key(1)


def test_evidence_seqs_survive_the_ring() -> None:
    # Seqs are kept as their low 32 bits; evidence must still name the real seqs.
    s = Script()
    s.seq = 5_000_000_000
    seqs = [s.act("find_file JsonParser", "No matches found for JsonParser in /repo") for _ in range(3)]
    verdict = ExactRepeat().check(s.window, POLICY)
    assert verdict is not None
    assert verdict.evidence.seqs == tuple(seqs)


_NOTHING_WORDS = st.lists(
    st.sampled_from(
        ["No", "no", "NO", "matches", "Match", "results", "result", "such", "file", "files", "not", "Not",
         "found", "FOUND", "does", "exist", "could", "cannot", "can't", "unable", "to", "find", "Find",
         "0", "10", "x", "é", "/testbed/a.py", "\n"]
    ),
    max_size=12,
)  # fmt: skip


@given(_NOTHING_WORDS, st.sampled_from([" ", "", "  ", "\t"]))
def test_the_phrase_prefilter_agrees_with_the_regex(words: list[str], sep: str) -> None:
    # ``says_nothing`` skips the regex when no hint is in the lowercased text: never a miss.
    body = sep.join(words)
    assert says_nothing(body) == (_NOTHING.search(body) is not None)


# ---------------------------------------------------------------- where a failure came from


@pytest.mark.parametrize(
    ("observation", "error", "shell", "origin"),
    [
        ("<returncode>127</returncode>\n<output>\nbash: line 1: I: command not found\n</output>", None, True, "AGENT"),
        ("bash: -c: line 1: syntax error near unexpected token `('", None, True, "AGENT"),
        ("cat: src/nope.py: No such file or directory", None, True, "AGENT"),
        ("Usage: find_file <file_name> [<dir>]", None, True, "AGENT"),
        ("Your proposed edit has introduced new syntax error(s).", "edit_syntax_error", False, "AGENT"),
        ("Error: user not found", None, False, "AGENT"),
        ("Invalid action!", "invalid_action", False, "AGENT"),
        (None, "TimeoutError: the attempt took longer than 10.00s", False, "TOOL"),
        ("curl: (28) Operation timed out after 30001 milliseconds", None, True, "TOOL"),
        ('{"ok": false, "error": "upstream 503"}', None, True, "TOOL"),
        ("Error: rate limited", None, False, "TOOL"),
        ("circuit breaker open: the tool has been failing", None, False, "TOOL"),
        ("Error: payment amount does not add up", None, False, "TOOL"),
        ("Traceback (most recent call last):\n  File x\nFileNotFoundError: No such file", None, True, "RAN"),
        ("===== test session starts =====\nFAILED tests/test_a.py::test_b", "returncode 1", True, "RAN"),
        ("Running quickstart... Error: Please enter a valid path name.", None, True, "RAN"),
    ],
)
def test_failures_are_classified_by_where_they_came_from(
    observation: str | None, error: str | None, shell: bool, origin: str
) -> None:
    assert failure_origin(observation, error, shell=shell) is Origin[origin]


def test_the_agents_rejected_input_is_a_loop_not_a_tool_failure() -> None:
    s = Script()
    for word in ["I", "Let", "Now", "THOUGHT:", "The"]:
        s.act(f"{word} will check the parser next", f"bash: line 1: {word}: command not found", ok=False)
    assert not s.fired(ConsecutiveFailures())
    verdict = RejectedInput().check(s.window, POLICY)
    assert verdict is not None
    assert verdict.reason is StopReason.LOOP_DETECTED
    assert "rejected 5 times" in verdict.evidence.summary


def test_a_tool_timing_out_is_a_tool_failure_and_failing_tests_are_neither() -> None:
    s = Script()
    for page in range(5):
        s.act(f"pytest tests/test_{page}.py", f"=== 1 failed in 0.{page}s ===\nFAILED test_{page}", ok=False)
    assert not s.fired(ConsecutiveFailures())
    assert not s.fired(RejectedInput())
    for page in range(5):
        s.act(f"curl -s api/orders?page={page}", "curl: (28) Operation timed out after 30001 milliseconds", ok=False)
    verdict = ConsecutiveFailures().check(s.window, POLICY)
    assert verdict is not None
    assert verdict.reason is StopReason.TOOL_FAILURE
    assert "the tool failed 5 times in a row" in verdict.evidence.summary


def test_a_rejection_recovered_from_on_the_next_action_does_not_count() -> None:
    s = Script()
    for i in range(8):
        s.act(f"opne src/a.py {i}", f"bash: line 1: opne: command not found {i}", ok=False)
        s.act(f"sed -n {i * 10 + 1},{i * 10 + 10}p src/a.py", f"line {i} of the parser")
    assert not s.fired(RejectedInput())


# ---------------------------------------------------------------- what a loop cost, and the progress signal


def test_a_verdict_says_what_the_pattern_cost_since_its_onset() -> None:
    s = Script()
    s.event("llm", tokens_in=5_000, tokens_out=100, cost_usd=0.5)  # before the loop: not its cost
    s.act("cat setup.py", "from setuptools import setup")
    seqs = []
    for _ in range(3):
        s.event("llm", tokens_in=1_000, tokens_out=50, cost_usd=0.01)
        seqs.append(s.act("find_file JsonParser", "No matches found for JsonParser in /repo"))
    verdict = ExactRepeat().check(s.window, POLICY)
    assert verdict is not None
    assert verdict.evidence.spent is not None
    spent = verdict.evidence.spent
    assert (spent.since_seq, spent.steps, spent.tokens) == (seqs[0], 3, 3 * 1_050)
    assert spent.cost_usd == pytest.approx(0.03)
    assert "it cost 3 steps, 3,150 tokens, $0.03" in verdict.evidence.summary


def test_the_progress_signal_is_novelty_unless_the_agent_reports_progress() -> None:
    s = Script()
    for i in range(4):
        s.act(f"cat f{i}.py", f"body {i}")
    for _ in range(4):
        s.act("cat f0.py", "body 0")
    signal = s.window.signal()
    assert (signal.source, signal.value, signal.stale_actions, signal.window) == ("novelty", 0.5, 4, 8)
    s.event("message", observation="halfway", progress=0.4)
    s.act("cat f0.py", "body 0")
    signal = s.window.signal()
    assert (signal.source, signal.value, signal.stale_actions) == ("agent", 0.4, 1)
