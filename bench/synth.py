"""Synthetic agent traffic with labels, shaped like the real runs of DESIGN §4.

::

    python -m bench.synth --runs 1000 --steps 30 --mix healthy=0.7,loop=0.1,stall=0.05,\\
        retry_storm=0.05,hidden_failure=0.05,budget=0.05 --out synth.jsonl --seed 7

writes ``synth.jsonl`` (step events, runs interleaved in time order like concurrent
production traffic) and ``synth.jsonl.labels.jsonl`` (one ``{"run_id", "label",
"onset_seq", "shape", "n_events"}`` per run, in the order the runs end).

A run is a ``start`` event, then per action an ``llm`` event, a ``tool_call`` and a
``tool_result`` (shell commands in the mini-swe-agent style of the dev traces), and a
``final`` for runs that end normally. Runs are generated lazily in a sliding set of
``--concurrency`` active runs, so memory does not grow with ``--runs``. Every run has its
own random stream drawn from ``--seed``, so a run's content does not depend on how the
runs interleave. The text comes from a fake repository per run (:class:`Workspace`) and
one generator per failure shape.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.traffic import TrafficError, TrafficWriter, traffic_format
from protocols import codec
from protocols.messages import StepEvent

KINDS = ("healthy", "loop", "stall", "retry_storm", "hidden_failure", "budget")
LOOP_SHAPES = ("same_edit", "malformed", "replay_block", "missing_term", "install_hole")
DEFAULT_MIX = "healthy=0.7,loop=0.1,stall=0.05,retry_storm=0.05,hidden_failure=0.05,budget=0.05"
MIN_STEPS = 10
OBSERVATION_CHARS = 1000  # observations are cut like the dev traces' (`...[+N chars]`)
_DIGITS = re.compile(r"\d+")
_EMPTY_OUTPUT = "<returncode>0</returncode>\n<output>\n</output>"


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    """One agent action and what it observed; becomes a ``tool_call`` and a ``tool_result``."""

    command: str
    observation: str | None
    ok: bool = True
    error: str | None = None
    tool: str | None = None  # None: the first word of the shell command
    args: dict[str, Any] | None = None  # None: {"command": command}
    think: bool = True  # an llm call decides it; False for an executor's automatic retry
    same_call: bool = False  # a retry of the previous call (same call_id)
    onset: bool = False  # the first action of the run's failure
    stall: bool = False  # the call never returns: the run goes silent after its tool_call


def clip(text: str, limit: int = OBSERVATION_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...[+{len(text) - limit} chars]"


def shell(command: str, output: str, rc: int = 0) -> Action:
    """A shell action with mini-swe-agent's observation wrapper; non-zero exit codes fail."""
    body = f"{clip(output)}\n" if output else ""
    observation = f"<returncode>{rc}</returncode>\n<output>\n{body}</output>"
    return Action(command, observation, ok=rc == 0, error=f"returncode {rc}" if rc else None)


# --- a fake repository per run ------------------------------------------------------------------

_PACKAGES = ("parsekit", "tablio", "orbitals", "geomancer", "httpkit", "fluxdb", "quanta", "ledgerly",
             "chronos", "pixelforge", "docbuilder", "unitflow", "graphene_lite", "sigproc")  # fmt: skip
_MODULES = ("parser", "core", "utils", "io", "models", "config", "schema", "cli", "cache", "units",
            "fields", "formats", "validators", "registry", "compat", "writers")  # fmt: skip
_NOUNS = ("value", "field", "record", "token", "node", "unit", "column", "header", "frame", "entry", "path", "row")
_VERBS = ("parse", "load", "build", "resolve", "format", "validate", "merge", "render", "convert", "normalize")
_SUFFIXES = ("Parser", "Reader", "Builder", "Registry", "Encoder", "Table", "Spec")
_ERRORS = ("ValueError", "KeyError", "TypeError", "AttributeError", "IndexError")
_CODE = (
    "def {f}({a}, {b}=None):", '    """{V} the {n} from ``{a}``."""', "    if {a} is None:", "        return {b}",
    "    for {n} in {a}.{n}s:", "        {n} = {f}({n}, strict={t})", "    result = self._{n}_cache.get({a})",
    '    raise {E}(f"invalid {n}: {{{a}!r}}")', "class {C}({m}.Base{C}):", "    def __init__(self, {a}, **kwargs):",
    "        self.{a} = {a}", "        super().__init__(**kwargs)", "    return {a}", "", "from .{m} import {C}",
    "    # {V} nested {n}s before the {b} is built", "        yield {f}({a})", "    except {E} as exc:",
    "        raise {C}Error(str(exc)) from exc", "    {a} = [{f}(x) for x in {b} if x]",
)  # fmt: skip
_TASKS = (
    "{C}.{f}() raises {E} when the {n} is empty",
    "{f} drops trailing {n}s in nested input",
    "Regression: {C} ignores the `strict` option since 2.3",
    "{C} returns the wrong {n} for unicode input",
)


def _code_pool(size: int = 4096) -> tuple[str, ...]:
    """Source-like lines, made once (formatting them per page was most of the run time); runs
    draw from them and put in their own class, package and function names (@C, @m, @f)."""
    r = random.Random(0)
    lines = []
    for _ in range(size):
        func = "@f" if r.random() < 0.2 else f"{r.choice(_VERBS)}_{r.choice(_NOUNS)}"
        a, b, n = r.choice(_NOUNS), r.choice(_NOUNS), r.choice(_NOUNS)
        lines.append(r.choice(_CODE).format(f=func, a=a, b=b, n=n, V=r.choice(_VERBS).title(), C="@C", m="@m",
                                            E=r.choice(_ERRORS), t=r.random() < 0.5))  # fmt: skip
    return tuple(lines)


_POOL = _code_pool()


class Workspace:
    """The fake repository of one run and the healthy actions an agent takes in it.

    State (edits made, the page being read, tests failing) changes the observations, so
    re-running a test between edits or paging through a file is realistic, not a loop.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pkg = rng.choice(_PACKAGES)
        mods = rng.sample(_MODULES, 5)
        self.files = [f"src/{self.pkg}/{m}.py" for m in mods]
        self.tests = [f"tests/test_{m}.py" for m in mods[:3]]
        self.sizes = {f: rng.randint(150, 900) for f in self.files + self.tests}
        self.mtimes = {
            f: f"Nov {rng.randint(1, 28):2d} {rng.randint(8, 18):02d}:{rng.randint(0, 59):02d}" for f in self.files
        }
        self.noun = rng.choice(_NOUNS)
        self.func = f"{rng.choice(_VERBS)}_{self.noun}"
        self.cls = self.noun.capitalize() + rng.choice(_SUFFIXES)
        self.exc = rng.choice(_ERRORS)
        self.target = self.files[0]
        self.bug_line = rng.randint(40, self.sizes[self.target] - 30)
        self.arg = rng.choice(("[1, [2, 3],]", "''", "'\\u00e9t\\u00e9'", "{'a': None}", "b'\\x00'"))
        self.task = f"{self.pkg}: " + rng.choice(_TASKS).format(C=self.cls, f=self.func, E=self.exc, n=self.noun)
        self.fix_at = rng.randint(1, 3)  # edits needed before the reproduction passes
        self.failing_tests = rng.sample(range(8 + len(self.func)), 3)
        self.edits = 0
        self.page_size = rng.choice((40, 50, 60))
        self.numbered = rng.random() < 0.5  # `nl -ba FILE | sed -n` or plain `sed -n`
        self.paging: tuple[str, int] | None = None
        self.wrote_repro = False
        self._pages: dict[tuple[str, int, bool], str] = {}
        self._seen: dict[tuple[str, str], int] = {}  # (action, observation with digits masked) -> times
        self._failing = 0  # failed actions in a row

    # -- text ----------------------------------------------------------------------------------

    def code(self, lines: int) -> list[str]:
        """Source-like lines in this run's names."""
        text = "\n".join(self.rng.choices(_POOL, k=lines))
        return text.replace("@C", self.cls).replace("@m", self.pkg).replace("@f", self.func).split("\n")

    def page(self, path: str, start: int, numbered: bool) -> str:
        # Memoized: the same lines read twice show the same text.
        key = (path, start, numbered)
        if key not in self._pages:
            end = min(start + self.page_size - 1, self.sizes[path])
            lines = self.code(end - start + 1)
            self._pages[key] = "\n".join(
                f"{start + i:6d}\t{line}" if numbered else line for i, line in enumerate(lines)
            )
        return self._pages[key]

    # -- healthy actions -----------------------------------------------------------------------

    def healthy(self, progress: float) -> Action:
        """The next action of a run going well, about ``progress`` (0-1) through it."""
        if progress < 0.25:
            weights = (4, 3, 4, 1, 0, 0, 0, 0, 0)
        elif progress < 0.5:
            weights = (1, 2, 4, 1, 3, 2, 1, 1, 0)
        elif progress < 0.85:
            weights = (1, 1, 2, 1, 1, 3, 3, 3, 1)
        else:
            weights = (1, 0, 1, 0, 0, 2, 1, 4, 2)
        makers = (self.look, self.grep, self.read, self.cat, self.write_repro, self.run_repro, self.edit,
                  self.run_tests, self.diff_action)  # fmt: skip
        for _ in range(12):
            action = self.rng.choices(makers, weights)[0]()
            key = (action.command, _DIGITS.sub("0", action.observation or ""))
            if self._fresh_enough(action, key):
                break
        else:
            action = self.grep()  # random hits: never seen before
            key = (action.command, _DIGITS.sub("0", action.observation or ""))
        self._seen[key] = self._seen.get(key, 0) + 1
        self._failing = 0 if action.ok else self._failing + 1
        return action

    def _fresh_enough(self, action: Action, key: tuple[str, str]) -> bool:
        """Whether a run going well would do this now.

        It does not repeat an action with the same result (``key``: numbers masked, as detectors
        mask them) more than twice in the run, three times for an empty ``cd``/``ls``: it re-runs
        a test after an edit changed the outcome, not to see the same failure again. After three
        failures in a row it does something that works.
        """
        trivial = action.command.startswith(("cd ", "ls ")) and action.observation == _EMPTY_OUTPUT
        if self._seen.get(key, 0) >= (3 if trivial else 2):
            return False
        return action.ok or self._failing < 3

    def look(self) -> Action:
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:  # navigation with empty output: healthy, though naive detectors flag it
            return shell(r.choice(("cd /testbed", "cd /testbed && ls build 2>/dev/null", "ls dist 2>/dev/null")), "")
        if choice == 1:
            return shell(f"ls -la src/{self.pkg}", "\n".join(
                f"-rw-r--r-- 1 root root {self.sizes[f] * 31:6d} {self.mtimes[f]} {f.rsplit('/', 1)[1]}"
                for f in self.files))  # fmt: skip
        if choice == 2:
            return shell(
                f"find . -name '*.py' -path '*{self.pkg}*' | head -20", "\n".join(f"./{f}" for f in self.files)
            )
        return shell("ls", "CHANGES.rst\nLICENSE\nREADME.rst\ndocs\npyproject.toml\nsetup.cfg\nsrc\ntests\ntox.ini")

    def grep(self) -> Action:
        r = self.rng
        term = r.choice((self.func, self.cls, f"def {self.func}", f"{self.noun}s"))
        hits = [
            f"{r.choice(self.files + self.tests)}:{r.randint(1, 800)}:{line}" for line in self.code(r.randint(2, 9))
        ]
        return shell(f'grep -rn "{term}" src/ tests/', "\n".join(hits))

    def read(self, fresh: bool = False) -> Action:
        r = self.rng
        if self.paging is None or fresh or r.random() < 0.3:
            path = r.choice(self.files + self.tests)
            start = 1 if r.random() < 0.5 else r.randint(1, self.sizes[path] // 10) * 10 + 1
        else:
            path, start = self.paging
        if start > self.sizes[path]:
            start = 1
        end = start + self.page_size - 1
        self.paging = (path, end + 1)  # scrolling on reads the next page, never the same one
        cmd = f"nl -ba {path} | sed -n '{start},{end}p'" if self.numbered else f"sed -n '{start},{end}p' {path}"
        return shell(cmd, self.page(path, start, self.numbered))

    def cat(self) -> Action:
        path = self.rng.choice(self.tests)
        return shell(f"cat {path}", self.page(path, 1, numbered=False))

    def write_repro(self) -> Action:
        if self.wrote_repro:  # written once; later the agent runs it
            return self.run_repro()
        self.wrote_repro = True
        script = (
            f"from {self.pkg}.{self.target.rsplit('/', 1)[1][:-3]} import {self.func}\n\nprint({self.func}({self.arg}))"
        )
        return shell(f"cat <<'EOF' > reproduce.py\n{script}\nEOF", "")

    def run_repro(self) -> Action:
        if not self.wrote_repro:
            return self.write_repro()
        if self.edits >= self.fix_at:
            return shell("python reproduce.py", f"{self.func}({self.arg}) -> {self.noun}(ok, edits={self.edits})\nOK")
        line = self.bug_line + 2 * self.edits  # each failed attempt moves the failing line
        trace = (
            f'Traceback (most recent call last):\n  File "/testbed/reproduce.py", line 3, in <module>\n'
            f"    print({self.func}({self.arg}))\n"
            f'  File "/testbed/{self.target}", line {line}, in {self.func}\n'
            f'    raise {self.exc}(f"invalid {self.noun}: {{value!r}}")\n{self.exc}: invalid {self.noun}: {self.arg}'
        )
        return shell("python reproduce.py", trace, rc=1)

    def edit(self) -> Action:
        self.edits += 1
        self._pages.clear()  # the file changed
        old, new = self.rng.sample(self.code(6), 2)
        old = old.strip().replace("/", r"\/") or "pass"
        return shell(f"sed -i '{self.bug_line + self.edits}s/{old}/{new.strip()}/' {self.target}", "")

    def run_tests(self) -> Action:
        r = self.rng
        path = self.tests[0]
        total = 8 + len(self.func)
        failing = max(0, 3 - self.edits) if self.edits < self.fix_at else 0
        dots = "".join("F" if i in self.failing_tests[:failing] else "." for i in range(total))
        took = f"in {r.uniform(0.2, 3.0):.2f}s"
        if not failing:
            return shell(f"python -m pytest {path} -q", f"{dots} [100%]\n{total} passed {took}")
        got = f"{self.noun}({self.edits})"
        out = (
            f"{dots} [100%]\n{'=' * 30} FAILURES {'=' * 30}\n___ test_{self.func}_edge ___\n\n"
            f"    def test_{self.func}_edge():\n>       assert {self.func}({self.arg}) == expected\n"
            f"E       AssertionError: assert {got} == expected\n\n{path}:{40 + self.edits}: AssertionError\n"
            f"FAILED {path}::test_{self.func}_edge - AssertionError\n{failing} failed, {total - failing} passed {took}"
        )
        return shell(f"python -m pytest {path} -q", out, rc=1)

    def diff(self) -> str:
        lines = "\n".join(f"+{line}" for line in self.code(min(12, 2 + 2 * self.edits)))
        return (
            f"diff --git a/{self.target} b/{self.target}\n--- a/{self.target}\n+++ b/{self.target}\n"
            f"@@ -{self.bug_line},6 +{self.bug_line},{6 + self.edits} @@\n{lines}"
        )

    def diff_action(self) -> Action:
        return shell("git diff", self.diff() if self.edits else "")


# --- failure shapes -------------------------------------------------------------------------------


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
        where, mod = dirs[i % len(dirs)], _MODULES[i % len(_MODULES)]
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


_LOOPS: dict[str, Callable[[Workspace], Iterator[Action] | tuple[Iterator[Action], int]]] = {
    "same_edit": loop_same_edit, "malformed": loop_malformed, "replay_block": loop_replay_block,
    "missing_term": loop_missing_term, "install_hole": loop_install_hole,
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
            yield shell(f"python scripts/{r.choice(_VERBS)}_{r.choice(_NOUNS)}.py --env staging", f"Error: {problem}")
        elif form == 1:
            url = f"https://api.{ws.pkg}.internal/v1/{r.choice(_NOUNS)}s?page={i}"
            yield shell(
                f"curl -s {url}", f'{{"ok": false, "error": "{problem}", "request_id": "{r.getrandbits(48):012x}"}}'
            )
        elif form == 2:
            yield Action("", "", tool=f"export_{r.choice(_NOUNS)}_data", args={"since": f"2024-05-{1 + i % 28:02d}"})
        else:
            yield Action(
                "", f"Error: {problem}", tool=f"get_{ws.noun}_details", args={"id": f"{r.getrandbits(24):06X}"}
            )


def stall_call(ws: Workspace) -> Action:
    """A long call whose result never comes."""
    command = ws.rng.choice(("python -m pytest tests/ -x", "pip install -e .", f"python scripts/migrate_{ws.noun}s.py"))
    return replace(shell(command, ""), stall=True, onset=True)


# --- tokens and cost ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    name: str
    usd_in: float  # per input token
    usd_out: float  # per output token


MODELS = (Model("gemini-3-pro", 2e-6, 12e-6), Model("gpt-4o", 2.5e-6, 10e-6), Model("claude-sonnet", 3e-6, 15e-6))
HEAVY = Model("claude-opus", 15e-6, 75e-6)


class Tokens:
    """A run's token and cost schedule from its own random stream, so it can be replayed.

    Like real agents, each call sends the whole conversation: ``tokens_in`` grows by every
    reply and observation. A ``heavy`` run pastes long outputs into its context.
    """

    def __init__(self, seed: int, model: Model, heavy: bool) -> None:
        self._rng = random.Random(seed)
        self.model = model
        self.heavy = heavy
        self.context = self._rng.randint(1500, 3000)
        self.spent = 0.0

    def next(self) -> tuple[int, int, float]:
        """``tokens_in``, ``tokens_out`` and ``cost_usd`` of the next llm call."""
        tokens_in, tokens_out = self.context, self._rng.randint(30, 300)
        cost = round(tokens_in * self.model.usd_in + tokens_out * self.model.usd_out, 7)
        seen = self._rng.randint(2000, 9000) if self.heavy else int(self._rng.lognormvariate(5.3, 0.8))
        self.context += tokens_out + seen + 20
        self.spent += cost
        return tokens_in, tokens_out, cost


def budget_limit(seed: int, model: Model, actions: int, rng: random.Random) -> float:
    """A round ``max_cost_usd`` that the heavy schedule of ``seed`` crosses 40-70% into the run."""
    sim = Tokens(seed, model, heavy=True)
    totals = [sim.next() and sim.spent for _ in range(actions)]
    # Crossed 40-70% in, and at least three calls before the run ends: a runaway, not a last step.
    at = rng.randint(max(1, int(actions * 0.4)), max(1, min(int(actions * 0.7), actions - 4)))
    low, high = totals[at - 1], totals[at]
    limit = float(f"{high * 0.999:.2g}")  # people set round budgets
    return limit if low < limit < high else round((low + high) / 2, 6)


# --- runs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunLabel:
    """The truth about one synthetic run, for scoring detectors."""

    run_id: str
    label: str
    onset_seq: int | None
    shape: str | None
    n_events: int

    def to_json(self) -> bytes:
        return codec.json_bytes(
            {"run_id": self.run_id, "label": self.label, "onset_seq": self.onset_seq, "shape": self.shape,
             "n_events": self.n_events}
        )  # fmt: skip


class SynthRun:
    """One run's events, generated lazily; ``pending`` is its next event, None when it is over."""

    def __init__(self, run_id: str, label: str, actions: int, seed: int, start_ts: float) -> None:
        self.run_id = run_id
        self.label = label
        self.onset_seq: int | None = None
        self.shape: str | None = None
        self.n_events = 0
        self._events = self._generate(actions, seed, start_ts)
        self.pending: StepEvent | None = next(self._events)

    def advance(self) -> StepEvent | None:
        self.n_events += 1
        self.pending = next(self._events, None)
        return self.pending

    def result(self) -> RunLabel:
        return RunLabel(self.run_id, self.label, self.onset_seq, self.shape, self.n_events)

    def _generate(self, actions: int, seed: int, ts: float) -> Iterator[StepEvent]:
        rng = random.Random(seed)
        ws = Workspace(rng)
        heavy = self.label == "budget"
        model = HEAVY if heavy else rng.choice(MODELS)
        token_seed = rng.getrandbits(64)
        limit = budget_limit(token_seed, model, actions, rng) if heavy else None
        tokens = Tokens(token_seed, model, heavy)
        agent = rng.choice(("mini-swe-agent", "swe-agent", "ops-agent"))
        seq = 0

        def event(kind: str, **fields: Any) -> StepEvent:
            nonlocal seq, ts
            ev = StepEvent(run_id=self.run_id, seq=seq, ts=round(ts, 3), kind=kind, agent=agent, **fields)
            seq += 1
            ts += 1.0 + rng.random() * 0.5  # one second apart, plus jitter
            return ev

        yield event("start", task=ws.task, policy={"max_cost_usd": limit} if limit else None)
        call = 0
        for action in self._plan(ws, actions):
            first = seq
            if action.think:
                tokens_in, tokens_out, cost = tokens.next()
                yield event("llm", tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost)
                if limit is not None and self.onset_seq is None and tokens.spent > limit:
                    self.onset_seq = first
            if not action.same_call:
                call += 1
            if action.onset and self.onset_seq is None:
                self.onset_seq = seq if action.stall else first
            tool = action.tool or action.command.split(None, 1)[0]
            args = action.args if action.args is not None else {"command": action.command}
            yield event("tool_call", tool=tool, call_id=f"call-{call}", args=args)
            if action.stall:
                return
            yield event("tool_result", tool=tool, call_id=f"call-{call}", observation=action.observation,
                        ok=action.ok, error=action.error)  # fmt: skip
        if self.label == "healthy" or (self.label == "hidden_failure" and rng.random() < 0.5):
            yield event("final", observation=clip(ws.diff()), ok=True)

    def _plan(self, ws: Workspace, actions: int) -> Iterator[Action]:
        """The run's actions: healthy ones, then from the onset on, its failure's."""
        r = ws.rng
        if self.label in ("healthy", "budget"):
            onset, failure, need = actions, None, 0
        elif self.label == "loop":
            self.shape = r.choice(LOOP_SHAPES)
            made = _LOOPS[self.shape](ws)
            failure, need = made if isinstance(made, tuple) else (made, 6)
            onset = int(actions * r.uniform(0.15, 0.5))
        elif self.label == "stall":
            onset, failure, need = int(actions * r.uniform(0.2, 0.9)), None, 0
        elif self.label == "retry_storm":
            onset, failure, need = int(actions * r.uniform(0.2, 0.6)), retry_storm(ws), 8
        else:
            onset, failure, need = int(actions * r.uniform(0.2, 0.6)), hidden_failures(ws), 6
        for i in range(onset):
            yield ws.healthy(i / actions)
        if self.label == "stall":
            yield stall_call(ws)
        elif failure is not None:
            # A failing run goes on failing until a limit ends it, and long enough to be seen.
            yield replace(next(failure), onset=True)
            yield from itertools.islice(failure, max(actions - onset, need) - 1)


# --- traffic: many runs, interleaved -------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; see ``--help``."""

    runs: int
    steps: int
    mix: dict[str, float]
    seed: int
    concurrency: int = 64
    start_ts: float = 1_700_000_000.0
    prefix: str = "syn"


def _labels(config: SynthConfig, rng: random.Random) -> Iterator[str]:
    """Labels in random order with exact counts (largest remainder), drawn without a list of N."""
    total = sum(config.mix.values())
    quotas = {k: config.runs * w / total for k, w in config.mix.items()}
    left = {k: int(q) for k, q in quotas.items()}
    for k in sorted(quotas, key=lambda k: int(quotas[k]) - quotas[k])[: config.runs - sum(left.values())]:
        left[k] += 1
    for remaining in range(config.runs, 0, -1):
        pick = rng.randrange(remaining)
        for kind, count in left.items():
            if pick < count:
                left[kind] -= 1
                yield kind
                break
            pick -= count


def generate(config: SynthConfig) -> Iterator[StepEvent | RunLabel]:
    """Every event in time order, and each run's label as the run ends.

    At most ``concurrency`` runs are active; when one ends, the next starts, so memory
    stays flat however many runs are asked for.
    """
    rng = random.Random(config.seed)
    labels = _labels(config, random.Random(rng.getrandbits(64)))
    width = len(str(config.runs - 1))
    heap: list[tuple[float, int, SynthRun]] = []
    started = 0

    def start(at: float) -> None:
        nonlocal started
        label = next(labels)
        actions = max(MIN_STEPS, round(config.steps * rng.uniform(0.8, 1.2)))
        run = SynthRun(f"{config.prefix}-{started:0{width}d}", label, actions, rng.getrandbits(64), at)
        assert run.pending is not None
        heapq.heappush(heap, (run.pending.ts, started, run))
        started += 1

    for _ in range(min(config.concurrency, config.runs)):
        start(config.start_ts + rng.uniform(0, 5))
    while heap:
        _, order, run = heapq.heappop(heap)
        assert run.pending is not None
        now = run.pending.ts
        yield run.pending
        following = run.advance()
        if following is not None:
            heapq.heappush(heap, (following.ts, order, run))
            continue
        yield run.result()
        if started < config.runs:
            start(now + rng.uniform(0, 2))


# --- command line ------------------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """``healthy=0.7,loop=0.1,...`` as weights (normalised later); raises ``ValueError`` saying why."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise ValueError(f"unknown run kind {name!r} in --mix; expected some of {', '.join(KINDS)}")
        if name in mix:
            raise ValueError(f"{name} appears twice in --mix")
        try:
            weight = float(value) if eq else float("nan")
        except ValueError:
            weight = float("nan")
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"--mix {name}: expected a weight >= 0 like {name}=0.1, got {part!r}")
        mix[name] = weight
    if not mix or sum(mix.values()) <= 0:
        raise ValueError(f"--mix needs at least one kind with a weight > 0, like {DEFAULT_MIX}")
    return mix


_EPILOG = """\
kinds of run (--mix):
  healthy         varied work: tests re-run between edits, paging through files, empty cd/ls; ends with final
  loop            from the onset to the end, one of: same_edit (the file grows, only line counts change),
                  malformed (prose sent to the shell), replay_block (8-10 actions replayed verbatim),
                  missing_term (file after file searched for nothing), install_hole (same error, each variant)
  stall           events stop after a tool_call whose tool_result never comes
  retry_storm     the same failing call retried many times, by the agent or by a tool executor
  hidden_failure  ok=true results that are errors: "Error: ...", {"ok": false, ...}, empty
  budget          the start event's policy has a max_cost_usd that the run's growing cost passes

labels (OUT.labels.jsonl, or --labels): one object per run, in the order the runs end:
  {"run_id", "label", "onset_seq", "shape", "n_events"}: onset_seq is the seq of the first event of the
  failure (null for healthy runs); shape is the loop's shape (null for other kinds).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.synth",
        description="Generate labelled synthetic agent traffic (step events, DESIGN §10), runs interleaved in time.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--runs", type=int, required=True, metavar="N", help="number of runs to generate")
    add(
        "--steps",
        type=int,
        required=True,
        metavar="M",
        help=f"actions per run, +-20%% (at least {MIN_STEPS}); each an llm event, a tool_call, a tool_result",
    )
    add(
        "--mix",
        default=DEFAULT_MIX,
        metavar="KIND=W,...",
        help=f"weights of the kinds of run below, normalised to sum 1 (default: {DEFAULT_MIX})",
    )
    add("--out", type=Path, required=True, metavar="FILE", help="output: .jsonl, .jsonl.gz, .msgpack or .msgpack.gz")
    add("--labels", type=Path, metavar="FILE", help="labels output (default: OUT.labels.jsonl)")
    add("--seed", type=int, metavar="S", help="random seed: the same seed gives the same files (default: random)")
    add("--concurrency", type=int, default=64, metavar="C", help="runs active at once, interleaved (default: 64)")
    add("--start-ts", type=float, default=1_700_000_000.0, metavar="TS", help="ts of the first event (default: 1.7e9)")
    add("--prefix", default="syn", help="run_id prefix (default: syn)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, print a summary line; exit 2 on bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        mix = parse_mix(args.mix)
        if args.runs < 1 or args.steps < MIN_STEPS or args.concurrency < 1:
            raise ValueError(f"--runs and --concurrency must be >= 1 and --steps >= {MIN_STEPS}")
        if not args.prefix.replace("-", "").replace("_", "").isalnum():
            raise ValueError("--prefix must be letters, digits, '-' or '_'")
        traffic_format(args.out)
    except (ValueError, TrafficError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    config = SynthConfig(args.runs, args.steps, mix, seed, args.concurrency, args.start_ts, args.prefix)
    labels_path = args.labels or args.out.with_name(args.out.name + ".labels.jsonl")
    report = args.runs >= 10_000 or sys.stderr.isatty()
    began, done, step = time.perf_counter(), 0, max(1, args.runs // 10)
    with TrafficWriter(args.out) as out, labels_path.open("wb") as labels:
        for item in generate(config):
            if isinstance(item, StepEvent):
                out.write(item)
                continue
            labels.write(item.to_json() + b"\n")
            done += 1
            if report and done % step == 0:
                rate = out.count / (time.perf_counter() - began)
                print(f"synth: {done * 100 // args.runs}% ({done}/{args.runs} runs, {out.count} events, "
                      f"{rate:,.0f} events/s)", file=sys.stderr, flush=True)  # fmt: skip
        events = out.count
    took = time.perf_counter() - began
    print(f"wrote {events} events of {args.runs} runs to {args.out} (labels {labels_path}) in {took:.1f}s, "
          f"{events / took:,.0f} events/s, seed {seed}")  # fmt: skip
    return 0


__all__ = [
    "DEFAULT_MIX", "KINDS", "LOOP_SHAPES", "Action", "RunLabel", "SynthConfig", "SynthRun", "Workspace",
    "generate", "main", "parse_mix",
]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
