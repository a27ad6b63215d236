"""Healthy runs that naive detectors stop, for ``bench.synth`` (DESIGN §4, "false stops seen").

Each ``healthy_*`` function takes the run's :class:`~bench._synth_workspace.Workspace` and the
number of actions the run should take, and yields the run's actions; the run then submits (a
``final`` event). The rest of each run is :meth:`Workspace.healthy` work.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator

from bench._synth_workspace import SWE_AGENT, Action, Workspace, clip, shell, swe_window

_TIMING = re.compile(r"in \d+\.\d+s")
_CASES = ("empty", "nested", "unicode", "strict", "none", "roundtrip", "default", "large", "invalid", "trailing",
          "whitespace", "bytes", "copy", "repr", "pickle", "equality")  # fmt: skip
_FORMAT_COMPLAINT = (
    "Please always provide EXACTLY ONE action in triple backticks, found {k} actions.\n\nPlease format your action in "
    "triple backticks as shown in <response_example>.\n\n<response_example>\nHere are some thoughts about why you want "
    "to perform the action.\n\n```bash\n<action>\n```\n</response_example>\n\nIf you have completed your assignment, "
    "please consult the first message about how to\nsubmit your solution (you will not be able to continue working on "
    "this task after that)."
)


def _looking(ws: Workspace, seen: Counter[tuple[str, str | None]]) -> Action:
    """A read, search or listing that changes nothing, and no more than twice with the same result."""
    for _ in range(20):
        action = ws.rng.choice((ws.grep, ws.read, ws.read, ws.look, ws.cat))()
        if seen[action.command, action.observation] < 2:
            break
    else:
        action = ws.grep()  # random hits: never seen before
    seen[action.command, action.observation] += 1
    return action


def healthy_rerun_after_edits(ws: Workspace, actions: int) -> Iterator[Action]:
    """A test or reproduction script re-run 4-5 times with the same failing output (a test's timing
    aside), spread over the run, with real edits between (each new, each succeeding); then the fix
    lands and the output changes."""
    r = ws.rng
    times = r.randint(4, 5)
    seen: Counter[tuple[str, str | None]] = Counter()
    script = r.random() < 0.5
    setup = [ws.write_repro()] if script else []
    failing = ws.run_repro() if script else ws.run_tests()  # before any edit: what each re-run shows until the fix

    def rerun() -> Action:
        timing = f"in {r.uniform(0.2, 3.0):.2f}s"  # a script's output has none
        return Action(failing.command, _TIMING.sub(timing, failing.observation or ""), ok=False, error=failing.error)

    tests = 8 + len(ws.func)
    if script:
        passing = shell("python reproduce.py", f"{ws.func}({ws.arg}) -> {ws.noun}(ok)\nOK")
    else:
        passing = shell(failing.command, f"{'.' * tests} [100%]\n{tests} passed in {r.uniform(0.2, 3.0):.2f}s")
    # Slots between the re-runs: each has its edits, and the run's other actions spread over them.
    slots: list[list[str]] = [[]] + [["edit"] * r.randint(1, 2) for _ in range(times - 1)] + [["edit"]]
    spare = max(0, actions - len(setup) - times - sum(map(len, slots)) - 3)
    for _ in range(spare):
        slots[r.randrange(len(slots))].append("look")
    for slot in slots:
        r.shuffle(slot)
    yield from setup
    for number, slot in enumerate(slots):
        for step in slot:
            yield ws.edit() if step == "edit" else _looking(ws, seen)
        yield rerun() if number < times else passing
    yield shell(
        f"python -m pytest {ws.tests[0]} -q", f"{'.' * tests} [100%]\n{tests} passed in {r.uniform(0.2, 3.0):.2f}s"
    )
    yield ws.diff_action()


def healthy_format_recovered(ws: Workspace, actions: int) -> Iterator[Action]:
    """A run going well with 2-3 format errors in it: mini-swe-agent's harness rejects a response with
    several bash blocks (or none), and the agent's very next action is a proper one (its first block)."""
    r = ws.rng
    slips: set[int] = set()
    wanted = r.randint(2, 3)
    for _ in range(100):
        at = r.randrange(2, actions - 1)
        if not slips & {at - 2, at - 1, at, at + 1, at + 2}:
            slips.add(at)
        if len(slips) == wanted:
            break
    for i in range(actions):
        action = ws.healthy(i / actions)
        if i in slips:
            yield _slip(ws, action)
        yield action


def _slip(ws: Workspace, then: Action) -> Action:
    r = ws.rng
    blocks = r.choice((2, 2, 2, 3, 0))
    thought = r.choice(("Let me check the result and then run the tests.", f"Now I will look at {ws.func} again.",
                        "I'll run the script, then inspect the output.", "Next, the tests."))  # fmt: skip
    others = [c for c in ("python reproduce.py", f"python -m pytest {ws.tests[0]} -q", "git diff") if c != then.command]
    commands = [then.command, *others][:blocks]
    text = "THOUGHT: " + thought + "".join(f"\n\n```bash\n{c}\n```" for c in commands)
    return Action("", _FORMAT_COMPLAINT.format(k=blocks), ok=False, error=f"format_error: {blocks} bash blocks",
                  message=clip(text))  # fmt: skip


def healthy_paging(ws: Workspace, actions: int) -> Iterator[Action]:
    """A run that pages through a long file, each page new: ``sed -n '1,50p' f``, ``sed -n '51,100p' f``,
    ... (mini-swe-agent) or ``open f`` then ``scroll_down`` (SWE-agent, the same command each time)."""
    r = ws.rng
    start = int(actions * r.uniform(0.15, 0.4))
    path, wanted = max(ws.files, key=lambda f: ws.sizes[f]), r.randint(5, 12)
    ws.sizes[path] = total = max(ws.sizes[path], (wanted + 1) * 100)  # long enough for the pages wanted
    for i in range(start):
        yield ws.healthy(i / actions)
    pages = 0
    if ws.agent == SWE_AGENT:
        current = 50
        yield Action(f"open {path}", clip(swe_window(path, total, ws.code(100), 1, current)))
        while current + 50 < total and pages < wanted:
            current += 98  # SWE-agent's window (100) less its overlap (2)
            first = current - 49
            shown = ws.code(min(100, total - first + 1))
            yield Action("scroll_down", clip(swe_window(path, total, shown, first, current)))
            pages += 1
    else:
        first, size = 1, ws.page_size
        while first <= total and pages < wanted:
            end = first + size - 1
            command = f"nl -ba {path} | sed -n '{first},{end}p'" if ws.numbered else f"sed -n '{first},{end}p' {path}"
            yield shell(command, ws.page(path, first, ws.numbered))
            first, pages = end + 1, pages + 1
    for i in range(start + pages + (ws.agent == SWE_AGENT), actions):  # the pages (and SWE-agent's open) count
        yield ws.healthy(i / actions)


def healthy_test_by_test(ws: Workspace, actions: int) -> Iterator[Action]:
    """After the fix, tests run one at a time (``pytest file::test_a``, ``file::test_b``, ...), each
    passing with near-identical output."""
    r = ws.rng
    count = r.randint(6, 12)
    before = max(4, actions - count - 1)
    for i in range(before):
        yield ws.healthy(0.85 * i / before)
    while ws.edits < ws.fix_at:
        yield ws.edit()
    path, verbose = ws.tests[0], r.random() < 0.5
    for case in r.sample(_CASES, count):
        test = f"{path}::test_{ws.func}_{case}"
        took = f"1 passed in {r.uniform(0.01, 0.4):.2f}s"
        if verbose:
            out = f"{test} PASSED{' ' * max(1, 72 - len(test))}[100%]\n\n{'=' * 30} {took} {'=' * 30}"
        else:
            out = f".{' ' * 72}[100%]\n{took}"
        yield shell(f"python -m pytest {test} {'-v' if verbose else '-q'}", out)
    yield ws.diff_action()


HEALTHY: dict[str, Callable[[Workspace, int], Iterator[Action]]] = {
    "rerun_after_edits": healthy_rerun_after_edits, "format_recovered": healthy_format_recovered,
    "paging": healthy_paging, "test_by_test": healthy_test_by_test,
}  # fmt: skip

__all__ = [
    "HEALTHY", "healthy_format_recovered", "healthy_paging", "healthy_rerun_after_edits", "healthy_test_by_test",
]  # fmt: skip
