"""Synthetic agent traffic with labels, shaped like the real runs of DESIGN §4.

::

    python -m bench.synth --runs 1000 --steps 30 --mix healthy=0.7,loop=0.1,stall=0.05,\\
        retry_storm=0.05,hidden_failure=0.05,budget=0.05 --out synth.jsonl --seed 7
    python -m bench.synth --runs 600 --steps 40 --shapes empty_queries,rejected_input=2,paging \\
        --out shapes.jsonl --seed 3

writes ``synth.jsonl`` (step events, runs interleaved in time order like concurrent
production traffic) and ``synth.jsonl.labels.jsonl`` (one ``{"run_id", "label",
"onset_seq", "shape", "n_events"}`` per run, in the order the runs end).

``--mix`` weighs kinds of run (``loop`` runs take one of the first five loop shapes, ``healthy``
runs are ``varied``, as before new shapes were added, so its figures stay comparable);
``--shapes`` weighs shapes by name instead (a bare name weighs 1), each with its label: every
loop shape, every healthy shape (false stops seen in real runs) and the other kinds. Every label
names its run's shape. :func:`shape_run` makes one run of a shape, for tests of detectors.

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
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench._synth_shapes import (
    AGENTS,
    ENDS_ITSELF,
    HEALTHY,
    HEALTHY_SHAPES,
    LOOP_SHAPES,
    LOOPS,
    MIX_LOOP_SHAPES,
    NEW_LOOP_SHAPES,
    SHAPES,
    hidden_failures,
    retry_storm,
    stall_call,
)
from bench._synth_tokens import HEAVY, MODELS, Tokens, budget_limit
from bench._synth_workspace import Action, Workspace, clip
from bench.traffic import TrafficError, TrafficWriter, traffic_format
from runvisor.protocols import codec
from runvisor.protocols.messages import StepEvent

KINDS = ("healthy", "loop", "stall", "retry_storm", "hidden_failure", "budget")
DEFAULT_MIX = "healthy=0.7,loop=0.1,stall=0.05,retry_storm=0.05,hidden_failure=0.05,budget=0.05"
MIN_STEPS = 10


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
    """One run's events, generated lazily; ``pending`` is its next event, None when it is over.

    ``shape`` picks the run's shape (one of ``SHAPES``, with ``label`` its label); without it a
    loop run draws one of ``MIX_LOOP_SHAPES`` and a healthy run is ``varied``.
    """

    def __init__(
        self, run_id: str, label: str, actions: int, seed: int, start_ts: float, shape: str | None = None
    ) -> None:
        if shape is not None and SHAPES.get(shape) != label:
            raise ValueError(f"shape {shape!r} is not a shape of {label!r} runs")
        self.run_id = run_id
        self.label = label
        self.onset_seq: int | None = None
        self._named = shape is not None
        self.shape: str | None = shape if shape or label == "loop" else "varied" if label == "healthy" else label
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
        if self._named and self.shape in AGENTS:
            agent = rng.choice(AGENTS[self.shape])
        ws.agent = agent
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
            if action.message is not None:  # a response the agent's harness rejected: no call
                yield event("message", args={"text": action.message}, observation=action.observation, ok=action.ok,
                            error=action.error)  # fmt: skip
                continue
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
        if self.shape in HEALTHY:
            yield from HEALTHY[self.shape](ws, actions)
            return
        if self.label in ("healthy", "budget"):
            onset, failure, need = actions, None, 0
        elif self.label == "loop":
            if self.shape is None:
                self.shape = r.choice(MIX_LOOP_SHAPES)
            made = LOOPS[self.shape](ws)
            failure, need = made if isinstance(made, tuple) else (made, 6)
            onset = int(actions * r.uniform(0.15, 0.5))
            if self.shape in ENDS_ITSELF:  # it ends the run: it starts late enough to fill the rest
                onset = max(onset // 2, actions - need)
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
    shapes: dict[str, float] | None = None  # weights of shapes by name; when given, ``mix`` is not used


def _labels(config: SynthConfig, rng: random.Random) -> Iterator[str]:
    """Kinds (or shapes) in random order with exact counts (largest remainder), drawn without a list of N."""
    weights = config.shapes or config.mix
    total = sum(weights.values())
    quotas = {k: config.runs * w / total for k, w in weights.items()}
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
        drawn = next(labels)
        label, shape = (SHAPES[drawn], drawn) if config.shapes else (drawn, None)
        actions = max(MIN_STEPS, round(config.steps * rng.uniform(0.8, 1.2)))
        run = SynthRun(f"{config.prefix}-{started:0{width}d}", label, actions, rng.getrandbits(64), at, shape)
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


def shape_run(shape: str, seed: int = 0, actions: int = 40) -> tuple[list[StepEvent], RunLabel]:
    """One run of ``shape`` (its ``start`` event first, then its events in seq order) and its label.

    For tests of detectors: "this detector stops ``rejected_input`` and leaves ``paging`` alone".

    Raises:
        ValueError: an unknown shape, or fewer than ``MIN_STEPS`` actions.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    if actions < MIN_STEPS:
        raise ValueError(f"a run needs at least {MIN_STEPS} actions, got {actions}")
    run = SynthRun(f"{shape}-{seed}", SHAPES[shape], actions, seed, 1_700_000_000.0, shape)
    events: list[StepEvent] = []
    while run.pending is not None:
        events.append(run.pending)
        run.advance()
    return events, run.result()


# --- command line ------------------------------------------------------------------------------------------


def parse_shapes(text: str) -> dict[str, float]:
    """``empty_queries,paging=2,...`` as weights (a bare name weighs 1); raises ``ValueError`` saying why."""
    shapes: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = (s.strip() for s in part.partition("="))
        if name not in SHAPES:
            raise ValueError(f"unknown shape {name!r} in --shapes; expected some of {', '.join(SHAPES)}")
        if name in shapes:
            raise ValueError(f"{name} appears twice in --shapes")
        try:
            weight = float(value) if eq else 1.0
        except ValueError:
            weight = float("nan")
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"--shapes {name}: expected a weight >= 0 like {name}=2, got {part!r}")
        shapes[name] = weight
    if not shapes or sum(shapes.values()) <= 0:
        raise ValueError("--shapes needs at least one shape with a weight > 0, like empty_queries,paging")
    return shapes


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

shapes (--shapes NAME[=W],...; instead of --mix): the five loops above, the other kinds by their names, and
  loops in which no action repeats, from the onset to the end:
  empty_queries   guessed names and phrases, each searched once, every answer empty or "not found"
  numbers_only    goto N in a file that fits on one screen, or the same edit at a shifting line number
  replay_once     a 5-10-action block replayed once or twice with other actions between; the run then ends
  rejected_input  the agent's input rejected in small variants: prose to the shell, edits the syntax check
                  refuses, usage errors
  env_hole        environment set-up, every command new (mirrors, flags, JAVA_HOME), the same error each time
  rerun_rhythm    new edits that succeed, and a stand-in script re-run every 2-4 actions with the same error
  healthy runs (label healthy, each ends with final) that naive detectors stop:
  varied          what --mix healthy makes
  rerun_after_edits  the same failing test or script output 4-5 times between real edits, then the fix
  format_recovered   2-3 format errors (message events, ok=false), each followed by a proper action
  paging          sed -n 1,50p f, sed -n 51,100p f, ... or scroll_down: the same action, a new page each time
  test_by_test    pytest f::test_a, f::test_b, ...: each passes with near-identical output

labels (OUT.labels.jsonl, or --labels): one object per run, in the order the runs end:
  {"run_id", "label", "onset_seq", "shape", "n_events"}: onset_seq is the seq of the first event of the
  failure (null for healthy runs); shape is the run's shape (a kind other than loop and healthy: its name).
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
        metavar="KIND=W,...",
        help=f"weights of the kinds of run below, normalised to sum 1 (default: {DEFAULT_MIX})",
    )
    add(
        "--shapes",
        metavar="SHAPE[=W],...",
        help="weights of shapes by name instead of --mix (a bare name weighs 1), e.g. empty_queries,paging=2",
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
        if args.mix is not None and args.shapes is not None:
            raise ValueError("give --mix or --shapes, not both")
        mix = parse_mix(args.mix if args.mix is not None else DEFAULT_MIX)
        shapes = parse_shapes(args.shapes) if args.shapes is not None else None
        if args.runs < 1 or args.steps < MIN_STEPS or args.concurrency < 1:
            raise ValueError(f"--runs and --concurrency must be >= 1 and --steps >= {MIN_STEPS}")
        if not args.prefix.replace("-", "").replace("_", "").isalnum():
            raise ValueError("--prefix must be letters, digits, '-' or '_'")
        traffic_format(args.out)
    except (ValueError, TrafficError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    config = SynthConfig(args.runs, args.steps, mix, seed, args.concurrency, args.start_ts, args.prefix, shapes)
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
    "DEFAULT_MIX", "HEALTHY_SHAPES", "KINDS", "LOOP_SHAPES", "MIN_STEPS", "MIX_LOOP_SHAPES", "NEW_LOOP_SHAPES",
    "SHAPES", "Action", "RunLabel", "SynthConfig", "SynthRun", "Workspace", "generate", "main", "parse_mix",
    "parse_shapes", "shape_run",
]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
