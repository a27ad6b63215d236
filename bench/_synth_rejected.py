"""The agent's own input rejected again and again, for ``bench.synth`` (DESIGN §4): prose sent to the
shell, an edit SWE-agent's syntax check refuses, a command's usage error, each time in a small variant."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from bench._synth_workspace import MODULES, NOUNS, SWE_AGENT, VERBS, Action, Workspace, clip, distinct, shell


def loop_rejected_input(ws: Workspace) -> tuple[Iterator[Action], int]:
    """The agent's own input rejected again and again, in small variants: prose sent to the shell
    (bash's "command not found" or syntax errors quoting the agent's words), an edit that
    SWE-agent's syntax check refuses, or a command's usage error. The tools work; the agent loops."""
    r = ws.rng
    build = r.choice((_rejected_edit, _usage_error) if ws.agent == SWE_AGENT else (_prose, _prose, _usage_error))
    return distinct(build(ws)), 8


_LEADS = ("I", "Now I", "Next, I", "First, I", "So I", "OK, I", "Okay, I", "THOUGHT: I", "Alright, I", "Good, I",
          "Hmm, I", "Looking at {m}.py, I", "Based on the traceback, I", "Now that the file is open, I")  # fmt: skip
_MIDDLES = (
    "will now look at {C} to see how it handles {n}s", "need to check the {F} implementation before editing it",
    "should run the tests again to confirm the fix", "think the problem is in {m}.py where the {n} is {a}",
    "can see that {F} ignores the strict flag", "want to view the rest of {m}.py around line {L}",
    "have to update {F} so that it raises {E} for empty input", "am going to search for {C} in the tests",
    "see that {n}s are not {a} before the {n2} is built", "will edit line {L} of {m}.py to handle the empty {n}",
)  # fmt: skip
_PAREN_MIDDLES = ("think {F}() is called before the {n} is {a}", "will look at the fix (in {m}.py around line {L})",
                  "see that {C}.__init__() never sets the {n}")  # fmt: skip
_QUOTE_MIDDLES = ("will check why {F} doesn't handle {n}s", "think it's the {n2} that is not {a}",
                  "'ll run the reproduction script for line {L} again")  # fmt: skip
_ADJECTIVES = ("normalized", "validated", "copied", "checked", "converted", "stripped", "cached")


def bash_says(text: str) -> tuple[str, int]:
    """What ``bash -c TEXT`` prints and its exit code, for the prose :func:`_prose` writes: an
    unmatched ``'`` or a ``(`` after a word are syntax errors, a backquoted word runs first, and
    every other line runs its first word."""
    quote, paren = text.find("'"), text.find("(")
    if quote >= 0 and (paren < 0 or quote < paren) and text.count("'") % 2:
        return "bash: -c: line 1: unexpected EOF while looking for matching `''", 2
    if paren > 0:
        return f"bash: -c: line 1: syntax error near unexpected token `('\nbash: -c: line 1: `{text}'", 2
    said = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            said += [f"bash: line {number}: {inner}: command not found" for inner in line.split("`")[1::2]]
            said.append(f"bash: line {number}: {line.split()[0]}: command not found")
    return "\n".join(said), 127


def _prose(ws: Workspace) -> Callable[[], Action]:
    r = ws.rng

    def sentence() -> str:
        kind = r.random()
        middles = _MIDDLES if kind < 0.6 else _PAREN_MIDDLES if kind < 0.8 else _QUOTE_MIDDLES
        middle = r.choice(middles).format(
            C=ws.cls, F=ws.func, E=ws.exc, n=ws.noun, n2=r.choice(NOUNS), a=r.choice(_ADJECTIVES),
            m=r.choice(ws.files).rsplit("/", 1)[1][:-3], L=r.randint(20, ws.sizes[ws.target]),
        )  # fmt: skip
        lead = r.choice(_LEADS).format(m=r.choice(ws.files).rsplit("/", 1)[1][:-3])
        text = lead + ("" if middle.startswith("'") else " ") + middle + "."
        if "'" in text or "(" in text:
            return text
        if r.random() < 0.2:
            text = text.replace(f" {ws.func} ", f" `{ws.func}` ", 1)
        if r.random() < 0.25:  # a second paragraph: bash runs each line
            then = r.choice(_MIDDLES).format(C=ws.cls, F=ws.func, E=ws.exc, n=ws.noun, n2=r.choice(NOUNS),
                                             a=r.choice(_ADJECTIVES), m=r.choice(MODULES),
                                             L=r.randint(20, 400))  # fmt: skip
            text += f"\n\nThen I {then}."
        return text

    def make() -> Action:
        text = sentence()
        output, rc = bash_says(text)
        return shell(text, output, rc)

    return make


_SYNTAX_HEADS = (
    "Your proposed edit has introduced new syntax error(s). Please read this error message carefully and then retry "
    "editing the file.",
    "Your proposed edit has introduced new syntax error(s). Please understand the fixes and retry your edit commmand.",
)
_SYNTAX_TAIL = (
    "Your changes have NOT been applied. Please fix your edit command and try again.\nYou either need to 1) Specify "
    "the correct start/end line arguments or 2) Correct your edit code.\nDO NOT re-run the same failed edit command. "
    "Running it again will lead to the same error."
)
_RULE = "-------------------------------------------------"


def _view(path: str, total: int, first: int, lines: list[str]) -> str:
    body = "\n".join(f"{first + i}:{line}" for i, line in enumerate(lines))
    below = total - first - len(lines) + 1
    head = f"[File: /testbed/{path} ({total} lines total)]\n({first - 1} more lines above)"
    return f"{head}\n{body}\n({below} more lines below)"


def _rejected_edit(ws: Workspace) -> Callable[[], Action]:
    """SWE-agent's editor refusing an edit, resubmitted with its indentation or a line changed."""
    r = ws.rng
    path, total, at = ws.target, ws.sizes[ws.target], ws.bug_line
    around = ws.code(22)  # the original lines at - 8 .. at + 13
    head = r.choice(_SYNTAX_HEADS)
    habit = r.choice(("indent", "dedent", "colon", "block"))  # the mistake this agent keeps making
    n = ws.noun

    def make() -> Action:
        mistake = habit if r.random() < 0.8 else r.choice(("indent", "dedent", "colon", "block"))
        start = at + r.randint(-1, 1)
        end = start + r.randint(0, 2)
        base = " " * r.choice((4, 8))
        cond = r.choice((f"if not {n}s:", f"if {n} is None:", f"if isinstance({n}, str):", f"if {n} == '':",
                         f"if {n} in self._{n}_cache:"))  # fmt: skip
        body = r.choice((f"return {r.choice(NOUNS)}", f'raise {ws.exc}(f"invalid {n}: {{{n}!r}}")',
                         f"{n} = {n}.strip()", "continue", f"{n} = self._{n}_cache[{n}]"))  # fmt: skip
        lines = [base + cond, base + "    " + body]
        if mistake == "indent":
            lines[0] = " " * r.choice((1, 2, 3, 5, 6)) + lines[0]
            error = "E999 IndentationError: unexpected indent"
        elif mistake == "dedent":
            lines.append(base[: -r.choice((1, 2, 3))] + f"{n} = {ws.func}({n})")
            error = "E999 IndentationError: unindent does not match any outer indentation level"
        elif mistake == "colon":
            lines[0] = lines[0].rstrip(":")
            error = "E999 SyntaxError: expected ':'"
        else:
            lines = [lines[0], base + body]
            error = f"E999 IndentationError: expected an indented block after 'if' statement on line {start}"
        old = around[start - at + 2 : end - at + 9]  # lines start - 6 .. end + 6
        proposed = around[start - at + 2 : start - at + 8] + lines + around[end - at + 9 : end - at + 15]
        observation = (
            f"{head}\n\nERRORS:\n- {error}\n\nThis is how your edit would have looked if applied\n{_RULE}\n"
            f"{_view(path, total + len(lines) - (end - start + 1), start - 6, proposed)}\n{_RULE}\n\n"
            f"This is the original code before your edit\n{_RULE}\n{_view(path, total, start - 6, old)}\n{_RULE}\n"
            f"{_SYNTAX_TAIL}"
        )
        command = f"edit {start}:{end}\n" + "\n".join(lines) + "\nend_of_edit"
        return Action(command, clip(observation), ok=False, error=f"edit_syntax_error: {head}")

    return make


_PYTEST_FLAGS = ("--test", "--case", "--only", "--filter", "--testname", "--select", "--run", "--match", "--name",
                 "--test-case", "--function", "--tests")  # fmt: skip
_CASES = ("empty", "nested", "unicode", "strict", "none", "roundtrip", "default", "large", "invalid", "trailing")


def _usage_error(ws: Workspace) -> Callable[[], Action]:
    """A command called with arguments it does not take, tried again with other ones."""
    r = ws.rng
    test = ws.tests[0]
    subcommands = sorted(r.sample(("check", "convert", "show", "build", "validate", "dump"), 3))
    family = r.choice(("pytest", "cli", "swe") if ws.agent == SWE_AGENT else ("pytest", "cli"))

    def make() -> Action:
        case = f"test_{ws.func}_{r.choice(_CASES)}"
        if family == "pytest":
            flag = f"{r.choice(_PYTEST_FLAGS)}={r.choice((case, case.removeprefix('test_'), f'{test}::{case}'))}"
            return shell(f"python -m pytest {test} {flag}" + r.choice(("", " -q", " -v", " -x")),
                         "ERROR: usage: __main__.py [options] [file_or_dir] [file_or_dir] [...]\n"
                         f"__main__.py: error: unrecognized arguments: {flag}\n  inifile: /testbed/setup.cfg\n"
                         "  rootdir: /testbed", rc=4)  # fmt: skip
        if family == "cli":
            verb = r.choice([v for v in VERBS if v not in subcommands])
            extra = r.choice(("", f" --{r.choice(NOUNS)}={r.choice(_CASES)}", " --strict", " -v"))
            usage = f"usage: {ws.pkg} [-h] [--version] {{{','.join(subcommands)}}} ..."
            error = f"argument command: invalid choice: '{verb}' (choose from {', '.join(map(repr, subcommands))})"
            return shell(
                f"python -m {ws.pkg} {verb} {r.choice(ws.tests)}{extra}", f"{usage}\n{ws.pkg}: error: {error}", rc=2
            )
        form = r.randrange(4)
        if form == 0:
            name = f"{r.choice(MODULES)}.py"
            return Action(f"find_file {name} src {r.choice(ws.files)}", "Usage: find_file <file_name> [<dir>]")
        if form == 1:
            return Action(f"search_dir {ws.func} src {r.choice(_CASES)}", "Usage: search_dir <search_term> [<dir>]")
        if form == 2:
            return Action(f"open {r.choice(ws.files)} {r.randint(1, 300)} {r.randint(1, 300)}",
                          'Usage: open "<file>" [<line_number>]')  # fmt: skip
        return Action(f"edit {r.randint(20, 400)}\n    {r.choice(ws.code(3)).strip()}\nend_of_edit",
                      "Usage: edit <start_line>:<end_line>")  # fmt: skip

    return make


__all__ = ["bash_says", "loop_rejected_input"]
