"""A fake repository per run, and the actions an agent takes in it, for ``bench.synth``.

:class:`Action` is one agent action and what it observed; :class:`Workspace` holds one run's
made-up package (files, names, the bug to fix) and makes the healthy actions of a run going
well. The failure shapes in ``bench._synth_shapes`` draw on the same workspace and words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

OBSERVATION_CHARS = 1000  # observations are cut like the dev traces' (`...[+N chars]`)
SWE_AGENT = "swe-agent"  # runs of this agent use its tools (goto, search_dir, edit); others use the shell
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
    message: str | None = None  # not a call: the agent's text, rejected by its harness (a ``message`` event)


def clip(text: str, limit: int = OBSERVATION_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...[+{len(text) - limit} chars]"


def shell(command: str, output: str, rc: int = 0) -> Action:
    """A shell action with mini-swe-agent's observation wrapper; non-zero exit codes fail."""
    body = f"{clip(output)}\n" if output else ""
    observation = f"<returncode>{rc}</returncode>\n<output>\n{body}</output>"
    return Action(command, observation, ok=rc == 0, error=f"returncode {rc}" if rc else None)


def distinct(make: Callable[[], Action]) -> Iterator[Action]:
    """Actions from ``make``, never the same command twice (callers draw from thousands of variants)."""
    used: set[str] = set()
    while True:
        for _ in range(200):
            action = make()
            if action.command not in used:
                break
        used.add(action.command)
        yield action


def swe_window(path: str, total: int, lines: list[str], first: int, current: int, window: int = 100) -> str:
    """SWE-agent's windowed view of ``lines`` (numbered from ``first``), as its ``_print`` writes it.

    The counts above and below come from the current line and the window, not from what is shown: a
    file that fits on one screen is shown whole, yet ``goto 70`` still says "(20 more lines above)".
    """
    above, below = max(0, current - window // 2), max(0, total - current - window // 2)
    body = "\n".join(f"{first + i}:{line}" for i, line in enumerate(lines))
    head = f"[File: /testbed/{path} ({total} lines total)]\n" + (f"({above} more lines above)\n" if above else "")
    return head + body + (f"\n({below} more lines below)" if below else "")


# --- a fake repository per run ------------------------------------------------------------------

PACKAGES = ("parsekit", "tablio", "orbitals", "geomancer", "httpkit", "fluxdb", "quanta", "ledgerly",
             "chronos", "pixelforge", "docbuilder", "unitflow", "graphene_lite", "sigproc")  # fmt: skip
MODULES = ("parser", "core", "utils", "io", "models", "config", "schema", "cli", "cache", "units",
            "fields", "formats", "validators", "registry", "compat", "writers")  # fmt: skip
NOUNS = ("value", "field", "record", "token", "node", "unit", "column", "header", "frame", "entry", "path", "row")
VERBS = ("parse", "load", "build", "resolve", "format", "validate", "merge", "render", "convert", "normalize")
SUFFIXES = ("Parser", "Reader", "Builder", "Registry", "Encoder", "Table", "Spec")
ERRORS = ("ValueError", "KeyError", "TypeError", "AttributeError", "IndexError")
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
        func = "@f" if r.random() < 0.2 else f"{r.choice(VERBS)}_{r.choice(NOUNS)}"
        a, b, n = r.choice(NOUNS), r.choice(NOUNS), r.choice(NOUNS)
        lines.append(r.choice(_CODE).format(f=func, a=a, b=b, n=n, V=r.choice(VERBS).title(), C="@C", m="@m",
                                            E=r.choice(ERRORS), t=r.random() < 0.5))  # fmt: skip
    return tuple(lines)


_POOL = _code_pool()


class Workspace:
    """The fake repository of one run and the healthy actions an agent takes in it.

    State (edits made, the page being read, tests failing) changes the observations, so
    re-running a test between edits or paging through a file is realistic, not a loop.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pkg = rng.choice(PACKAGES)
        mods = rng.sample(MODULES, 5)
        self.files = [f"src/{self.pkg}/{m}.py" for m in mods]
        self.tests = [f"tests/test_{m}.py" for m in mods[:3]]
        self.sizes = {f: rng.randint(150, 900) for f in self.files + self.tests}
        self.mtimes = {
            f: f"Nov {rng.randint(1, 28):2d} {rng.randint(8, 18):02d}:{rng.randint(0, 59):02d}" for f in self.files
        }
        self.noun = rng.choice(NOUNS)
        self.func = f"{rng.choice(VERBS)}_{self.noun}"
        self.cls = self.noun.capitalize() + rng.choice(SUFFIXES)
        self.exc = rng.choice(ERRORS)
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
        self.agent = "mini-swe-agent"  # the run's agent, set by the run; shapes write in its style
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


__all__ = [
    "ERRORS", "MODULES", "NOUNS", "OBSERVATION_CHARS", "SUFFIXES", "SWE_AGENT", "VERBS", "Action", "Workspace", "clip",
    "distinct", "shell", "swe_window",
]  # fmt: skip
