"""The shapes of ``bench.synth``'s runs, and the failure shapes: what a run does from its failure's onset on.

Each generator takes the run's :class:`~bench._synth_workspace.Workspace` (its names and its
random stream) and yields actions for as long as the run asks; ``LOOPS`` maps each loop
shape in ``LOOP_SHAPES`` to its generator (the loops in which no action repeats are in
``bench._synth_loops``, ``bench._synth_rejected`` and ``bench._synth_holes``), and ``HEALTHY`` each
healthy shape but ``varied`` to its run. ``SHAPES`` gives every shape's label.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace

from bench._synth_healthy import HEALTHY
from bench._synth_holes import loop_env_hole, loop_rerun_rhythm
from bench._synth_loops import loop_empty_queries, loop_numbers_only, loop_replay_once
from bench._synth_rejected import loop_rejected_input
from bench._synth_workspace import MODULES, NOUNS, SWE_AGENT, VERBS, Action, Workspace, shell

#: The loops ``--mix loop`` draws from (the first five, so its figures stay comparable across versions).
MIX_LOOP_SHAPES = ("same_edit", "malformed", "replay_block", "missing_term", "install_hole")
#: Loops in which no action repeats (DESIGN §4, "more patterns seen in weak models' runs").
NEW_LOOP_SHAPES = ("empty_queries", "numbers_only", "replay_once", "rejected_input", "env_hole", "rerun_rhythm")
LOOP_SHAPES = MIX_LOOP_SHAPES + NEW_LOOP_SHAPES
#: ``varied`` is the healthy run ``--mix healthy`` makes; the others are false stops seen in real runs.
HEALTHY_SHAPES = ("varied", "rerun_after_edits", "format_recovered", "paging", "test_by_test")
#: Every shape and its run's label; the other kinds have one shape each, named after them.
SHAPES: dict[str, str] = {
    **dict.fromkeys(LOOP_SHAPES, "loop"), **dict.fromkeys(HEALTHY_SHAPES, "healthy"),
    **{kind: kind for kind in ("stall", "retry_storm", "hidden_failure", "budget")},
}  # fmt: skip
#: A loop that ends the run itself (its generator is finite) sits at the run's end.
ENDS_ITSELF = frozenset({"replay_once"})
_CODING = ("mini-swe-agent", SWE_AGENT)
#: The agents a run of a shape picked by name is drawn from (others: any); each writes in its agent's style.
AGENTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(NEW_LOOP_SHAPES + HEALTHY_SHAPES[1:], _CODING),
    "numbers_only": (SWE_AGENT,), "format_recovered": ("mini-swe-agent",),
}  # fmt: skip


def _numbered(start: int, lines: list[str]) -> str:
    return "\n".join(f"{n}:{line}" for n, line in zip(itertools.count(start), lines, strict=False))


def loop_same_edit(ws: Workspace) -> Iterator[Action]:
    """The same edit again and again; the file grows, so only the line counts change."""
    line, path, r = ws.bug_line, ws.target, ws.rng
    snippet = ws.code(r.randint(2, 4))
    above, below = ws.code(3), ws.code(3)
    total = ws.sizes[path]
    command = f"edit {line}:{line}\n" + "\n".join(snippet) + "\nend_of_edit"
    with_test = r.random() < 0.5  # edit, run, edit, run: a cycle of two with the same failure
    ws.wrote_repro = True  # the run in the cycle is the script's, never its creation
    failing = ws.run_repro()
    while True:
        total += len(snippet) - 1
        view = _numbered(line - 3, above + snippet + below)
        yield Action(
            command,
            f"[File: /testbed/{path} ({total} lines total)]\n({line - 4} more lines above)\n{view}\n"
            f"({total - line - len(snippet) - 2} more lines below)\nFile updated. Please review the changes and make "
            "sure they are correct (correct indentation, no duplicate lines, etc). Edit the file again if necessary.",
        )
        if with_test:
            yield failing


def loop_malformed(ws: Workspace) -> Iterator[Action]:
    """Prose (or bare Python) sent to the shell, failing with the same error every time."""
    r = ws.rng
    if r.random() < 0.6:
        text = r.choice((f"I will now inspect {ws.cls} to see how {ws.noun}s are parsed.",
                         f"Let me check the {ws.func} implementation before editing it.",
                         "THOUGHT: The fix looks right. Let me run the tests again."))  # fmt: skip
        action = shell(text, f"bash: line 1: {text.split()[0]}: command not found", rc=127)
    else:
        text = f"print({ws.func}({ws.arg}))"
        action = shell(text, f"bash: -c: line 1: syntax error near unexpected token `{ws.arg}'\n"
                             f"bash: -c: line 1: `{text}'", rc=2)  # fmt: skip
    return itertools.repeat(action)


def loop_replay_block(ws: Workspace) -> tuple[Iterator[Action], int]:
    """An 8-10-step investigation block replayed verbatim."""
    makers = (ws.look, ws.grep, ws.read, ws.read, ws.cat, ws.run_repro, ws.run_tests)
    block = [ws.rng.choice(makers)() for _ in range(ws.rng.randint(8, 10))]
    return itertools.cycle(block), 3 * len(block)


def loop_missing_term(ws: Workspace) -> Iterator[Action]:
    """File after file searched for a term that does not exist."""
    r = ws.rng
    term = ws.cls + r.choice(("Context", "Adapter", "Factory", "Visitor"))
    swe_style = r.random() < 0.5
    dirs = [f"src/{ws.pkg}", f"src/{ws.pkg}/_internal", f"src/{ws.pkg}/backends", "tests", "docs/api"]
    for i in itertools.count():
        where, mod = dirs[i % len(dirs)], MODULES[i % len(MODULES)]
        path = f"{where}/test_{mod}.py" if where == "tests" else f"{where}/{mod}.py"
        if swe_style:
            yield Action(f"search_file {term} {path}", f'No matches found for "{term}" in /testbed/{path}')
        else:
            yield shell(f'grep -n "{term}" {path}', "", rc=1)


def loop_install_hole(ws: Workspace) -> Iterator[Action]:
    """Variations of one install, each ending in the same error."""
    r = ws.rng
    name = r.choice(("pyarrow", "mysqlclient", "pygraphviz", "psycopg2", "lxml", "tensorflow"))
    pin = f"{name}=={r.choice(('0.17.1', '1.15.0', '2.7.3', '4.2.5'))}"
    variants = [f"pip install {pin}", f"pip install --no-cache-dir {pin}", f"pip3 install --user {pin}",
                f"python -m pip install {pin} --index-url https://pypi.org/simple", f"pip install {pin} --pre",
                f"pip install --no-build-isolation {pin}", f"pip install {name}"]  # fmt: skip
    error = r.choice((
        f"ERROR: Could not find a version that satisfies the requirement {pin} (from versions: none)\n"
        f"ERROR: No matching distribution found for {pin}",
        f"  error: subprocess-exited-with-error\n\n  x Building wheel for {name} (pyproject.toml) did not run "
        f"successfully.\n  | exit code: 1\n  > {name}/_ext.c:12:10: fatal error: {name}.h: No such file or directory\n"
        "      compilation terminated.\n      error: command '/usr/bin/gcc' failed with exit code 1",
    ))  # fmt: skip
    for command in itertools.cycle(variants):
        yield shell(command, error, rc=1)


LOOPS: dict[str, Callable[[Workspace], Iterator[Action] | tuple[Iterator[Action], int]]] = {
    "same_edit": loop_same_edit, "malformed": loop_malformed, "replay_block": loop_replay_block,
    "missing_term": loop_missing_term, "install_hole": loop_install_hole, "empty_queries": loop_empty_queries,
    "numbers_only": loop_numbers_only, "replay_once": loop_replay_once, "rejected_input": loop_rejected_input,
    "env_hole": loop_env_hole, "rerun_rhythm": loop_rerun_rhythm,
}  # fmt: skip


def retry_storm(ws: Workspace) -> Iterator[Action]:
    """The same failing call retried, by the agent (new calls) or by an executor (same call)."""
    r = ws.rng
    resource = f"https://api.{ws.pkg}.internal/v1/{ws.noun}s/{r.randint(1000, 9999)}"
    by_executor = r.random() < 0.5
    for attempt in itertools.count(1):
        if by_executor:
            error = f"TimeoutError: the attempt took longer than 10.00s (attempt {attempt}; retrying)"
            yield Action("", None, ok=False, error=error, tool="http_get", args={"url": resource},
                         think=attempt == 1, same_call=attempt > 1)  # fmt: skip
        else:
            took = f"3000{r.randint(0, 9)} milliseconds"
            yield shell(
                f"curl -sS -m 30 {resource}",
                f"curl: (28) Operation timed out after {took} with 0 bytes received",
                rc=28,
            )


def hidden_failures(ws: Workspace) -> Iterator[Action]:
    """Varied calls that "succeed" (exit 0, ok=true) with an error in the output."""
    r = ws.rng
    problems = (
        "connection refused (db:5432)",
        "permission denied: /var/lib/app/data",
        "invalid API token",
        f"schema validation failed: field '{ws.noun}' is required",
        "resource not found",
        "rate limited",
    )
    for i in itertools.count():
        problem = r.choice(problems)
        form = r.randrange(4)
        if form == 0:
            yield shell(f"python scripts/{r.choice(VERBS)}_{r.choice(NOUNS)}.py --env staging", f"Error: {problem}")
        elif form == 1:
            url = f"https://api.{ws.pkg}.internal/v1/{r.choice(NOUNS)}s?page={i}"
            yield shell(
                f"curl -s {url}", f'{{"ok": false, "error": "{problem}", "request_id": "{r.getrandbits(48):012x}"}}'
            )
        elif form == 2:
            yield Action("", "", tool=f"export_{r.choice(NOUNS)}_data", args={"since": f"2024-05-{1 + i % 28:02d}"})
        else:
            yield Action(
                "", f"Error: {problem}", tool=f"get_{ws.noun}_details", args={"id": f"{r.getrandbits(24):06X}"}
            )


def stall_call(ws: Workspace) -> Action:
    """A long call whose result never comes."""
    command = ws.rng.choice(("python -m pytest tests/ -x", "pip install -e .", f"python scripts/migrate_{ws.noun}s.py"))
    return replace(shell(command, ""), stall=True, onset=True)


__all__ = [
    "AGENTS", "ENDS_ITSELF", "HEALTHY", "HEALTHY_SHAPES", "LOOPS", "LOOP_SHAPES", "MIX_LOOP_SHAPES", "NEW_LOOP_SHAPES",
    "SHAPES", "hidden_failures", "loop_install_hole", "loop_malformed", "loop_missing_term",
    "loop_replay_block", "loop_same_edit", "retry_storm", "stall_call",
]  # fmt: skip
