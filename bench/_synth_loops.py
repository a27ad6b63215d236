"""Loops in which no action repeats, for ``bench.synth`` (DESIGN §4, "more patterns seen in weak models' runs"):
guesses that all come back empty, the same action apart from its numbers, a block replayed once or twice.

Each ``loop_*`` function takes the run's :class:`~bench._synth_workspace.Workspace` and returns the
actions from the loop's onset on and the fewest actions that show the loop; they go on until the run's
limit, except ``replay_once``, which ends after its last copy. They write in the style of the run's
agent (``ws.agent``): SWE-agent's tools (``goto``, ``search_dir``) or mini-swe-agent's shell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from bench._synth_workspace import (
    MODULES,
    NOUNS,
    SUFFIXES,
    SWE_AGENT,
    VERBS,
    Action,
    Workspace,
    clip,
    distinct,
    shell,
    swe_window,
)

_GUESS_SUFFIXES = ("Context", "Adapter", "Factory", "Visitor", "Mixin", "Handler", "Manager", "Base", "Impl",
                   "Wrapper", "Helper", "Proxy", "Resolver", "Loader", "Backend", "Plugin")  # fmt: skip
_GUESS_DIRS = ("handlers", "backends", "plugins", "helpers", "_internal", "ext", "contrib", "types", "impl", "_compat",
               "lib", "internals", "extensions", "drivers", "adapters")  # fmt: skip
_MISSING_TOOLS = ("rg", "ag", "ack", "fd", "tree", "locate", "ctags", "semgrep", "fdfind", "cscope", "pt", "sg")
_PHRASES = ("invalid {n}", "{n} must not be empty", "strict mode", "unsupported {n} type", "cannot {v} {n}",
            "expected a {n}", "{n} is required", "deprecated since", "{n}s were dropped", "empty {n}s")  # fmt: skip
EDIT_DONE = ("File updated. Please review the changes and make sure they are correct (correct indentation, no "
              "duplicate lines, etc). Edit the file again if necessary.")  # fmt: skip


# --- empty_queries ---------------------------------------------------------------------------------


def loop_empty_queries(ws: Workspace) -> tuple[Iterator[Action], int]:
    """Fresh guesses, each asked once, every answer negative.

    File, class and function names and phrases are guessed one after another: an empty ``grep``
    (exit 1) or ``find``, ``ls dir | grep X`` with no output, a directory or module that is not
    there, a search tool the image lacks (exit 127), SWE-agent's "No matches found".
    """
    r = ws.rng
    tools = list(_MISSING_TOOLS)
    r.shuffle(tools)
    have = {f.rsplit("/", 1)[1][:-3] for f in ws.files}
    modules = [m for m in MODULES + _GUESS_DIRS if m not in have]

    def cls() -> str:
        noun = r.choice((ws.noun, *NOUNS)).capitalize()
        return r.choice((f"{noun}{r.choice(_GUESS_SUFFIXES)}", f"{ws.cls}{r.choice(_GUESS_SUFFIXES)}",
                         f"Base{noun}{r.choice(SUFFIXES)}", f"{r.choice(VERBS).title()}{noun}"))  # fmt: skip

    def func() -> str:
        verb, noun = r.choice(VERBS), r.choice(NOUNS)
        return r.choice((f"{verb}_{noun}s", f"_{verb}_{noun}", f"{ws.func}_impl", f"{verb}_{noun}_strict"))

    def term() -> str:
        return r.choice((cls(), func(), r.choice(_PHRASES).format(n=r.choice(NOUNS), v=r.choice(VERBS))))

    def grep() -> Action:
        pattern = r.choice((f'grep -rn "{term()}" src/', f'grep -rn "{term()}" --include="*.py" .',
                            f'grep -rl "{term()}" src/ tests/', f'grep -rni "{term()}" src/{ws.pkg}/',
                            f'grep -rn "class {cls()}" .', f'grep -rn "def {func()}" src/'))  # fmt: skip
        return shell(pattern, "", rc=1)

    def find() -> Action:
        guess = r.choice(modules)
        command = r.choice((f'find . -name "{guess}*.py"', f'find . -iname "*{r.choice(NOUNS)}_{r.choice(VERBS)}*"',
                            f'find / -name "{guess}.py" -not -path "/proc/*" 2>/dev/null',
                            f'find src -type d -name "{guess}"'))  # fmt: skip
        return shell(command, "")

    def listing() -> Action:
        guess = r.choice(modules)
        if r.random() < 0.4:
            where = f"src/{ws.pkg}/{guess}"
            return shell(f"ls {where}", f"ls: cannot access '{where}': No such file or directory", rc=2)
        return shell(r.choice((f"ls src/{ws.pkg} | grep {guess}", f"ls -R src/ | grep -i {r.choice(NOUNS)}_{guess}")),
                     "", rc=1)  # fmt: skip

    def tool() -> Action:
        name = tools.pop() if tools else r.choice(_MISSING_TOOLS)
        return shell(f'{name} "{term()}" src/', f"bash: line 1: {name}: command not found", rc=127)

    def python_import() -> Action:
        guess, name = r.choice(modules), cls()
        if r.random() < 0.5:
            return shell(f'python -c "from {ws.pkg}.{guess} import {name}"',
                         'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
                         f"ModuleNotFoundError: No module named '{ws.pkg}.{guess}'", rc=1)  # fmt: skip
        return shell(f'python -c "from {ws.pkg} import {name}"',
                     'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
                     f"ImportError: cannot import name '{name}' from '{ws.pkg}' (/testbed/src/{ws.pkg}/__init__.py)",
                     rc=1)  # fmt: skip

    def swe_search() -> Action:
        form = r.randrange(3)
        if form == 0:
            what, where = term(), r.choice(("", " src", f" src/{ws.pkg}"))
            return Action(f'search_dir "{what}"{where}', f'No matches found for "{what}" in /testbed{where.strip()}')
        if form == 1:
            name = f"{r.choice(modules)}.py"
            return Action(f'find_file "{name}"', f'No matches found for "{name}" in /testbed')
        what, path = term(), r.choice(ws.files)
        return Action(f'search_file "{what}" {path}', f'No matches found for "{what}" in /testbed/{path}')

    makers: list[Callable[[], Action]] = [grep, find, listing, tool, python_import]
    weights = [7, 4, 3, 1, 1]
    if ws.agent == SWE_AGENT:
        makers.append(swe_search)
        weights.append(6)

    def query() -> Action:
        return r.choices(makers, weights)[0]()

    return distinct(query), 8


# --- numbers_only ----------------------------------------------------------------------------------


def loop_numbers_only(ws: Workspace) -> tuple[Iterator[Action], int]:
    """The same action apart from its numbers: ``goto N`` in a file that fits on one screen (the
    same lines each time, only the "more lines above/below" counts differ), or the same edit at a
    line number that shifts each time (the view differs in a few lines)."""
    return (_goto_small_file(ws) if ws.rng.random() < 0.5 else _edit_shifting_line(ws)), 8


def _goto_small_file(ws: Workspace) -> Iterator[Action]:
    r = ws.rng
    path = r.choice((f"src/{ws.pkg}/__init__.py", f"src/{ws.pkg}/_{ws.noun}s.py", "tests/conftest.py",
                     f"src/{ws.pkg}/exceptions.py"))  # fmt: skip
    total = r.randint(55, 95)
    lines = ws.code(total)
    unused = list(range(1, total + 1))
    r.shuffle(unused)
    while True:
        line = unused.pop() if unused else r.randint(1, total)
        yield Action(f"goto {line}", clip(swe_window(path, total, lines, 1, line)))


def _edit_shifting_line(ws: Workspace) -> Iterator[Action]:
    r = ws.rng
    path, total, center = ws.target, ws.sizes[ws.target], ws.bug_line
    first = center - 12
    content = ws.code(30)  # lines first .. first + 29
    snippet = ws.code(r.randint(1, 2))
    line = center
    while True:
        line = r.choice([n for n in (line - 2, line - 1, line + 1, line + 2) if abs(n - center) <= 5])  # nudged
        at = line - first
        content[at : at + len(snippet)] = snippet
        shown = content[at - 5 : at + len(snippet) + 5]
        view = "\n".join(f"{line - 5 + i}:{text}" for i, text in enumerate(shown))
        yield Action(
            f"edit {line}:{line + len(snippet) - 1}\n" + "\n".join(snippet) + "\nend_of_edit",
            f"[File: /testbed/{path} ({total} lines total)]\n({line - 6} more lines above)\n{view}\n"
            f"({total - line - len(snippet) - 4} more lines below)\n{EDIT_DONE}",
        )


# --- replay_once -------------------------------------------------------------------------------------


def loop_replay_once(ws: Workspace) -> tuple[Iterator[Action], int]:
    """A 5-10-action investigation replayed once or twice, with a few other actions between the
    copies, each copy seeing the same outputs; the run then ends (a cost limit), never starting
    another copy."""
    r = ws.rng
    makers = (ws.look, ws.grep, ws.read, ws.read, ws.cat, ws.run_repro, ws.run_tests)
    block: list[Action] = []
    size = r.randint(5, 10)
    for _ in range(100):
        action = r.choice(makers)()
        if all(action.command != b.command for b in block):
            block.append(action)
        if len(block) == size:
            break
    seen = {a.command for a in block}

    def other() -> Action:
        for _ in range(100):
            action = r.choice((ws.grep, ws.grep, ws.look, lambda: ws.read(fresh=True)))()
            if action.command not in seen:
                break
        seen.add(action.command)
        return action

    plan = list(block)
    for _ in range(r.choice((1, 2))):
        plan += [other() for _ in range(r.randint(2, 4))] + block
    plan += [other() for _ in range(r.randint(0, 2))]
    return iter(plan), len(plan)


__all__ = ["EDIT_DONE", "loop_empty_queries", "loop_numbers_only", "loop_replay_once"]
