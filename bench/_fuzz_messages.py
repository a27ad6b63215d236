"""The messages of ``bench.fuzz``: valid loop and healthy runs, and hostile input of every class.

Pure functions of a seeded ``random.Random``: the same seed sends the same bytes.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from bench.synth import SynthRun
from runvisor.protocols import codec, subjects
from runvisor.protocols.codec import DecodeError
from runvisor.protocols.messages import MAX_ARGS_CHARS, MAX_OBSERVATION_CHARS, StepEvent

#: Three identical find_file actions complete the loop (``repeat_threshold`` 3): the stop is on seq 8.
LOOP_REPEATS = 3
HEALTHY_ACTIONS = 10
NEST_DEPTH = 1_000
#: Runs whose payloads are hostile yet valid (unknown fields, gaps, duplicates) go to these.
VICTIMS = 200
#: Share of a phase over which one run's steps are spread; runs start one after another over the rest.
LOOP_SPAN, HEALTHY_SPAN = 0.1, 0.3
PACE_BATCH = 50
#: Hostile classes and their weights; ``ctl_*`` go to ``rv.ctl.<run>``, the others to ``rv.step.<run>``.
MIX: dict[str, float] = {
    "random_bytes": 14, "truncated_msgpack": 14, "wrong_types": 12, "unknown_fields": 5, "oversize": 0.3,
    "nested_1000": 1, "invalid_utf8": 8, "bad_numbers": 12, "bad_run_id": 8, "seq_gap": 4, "seq_duplicate": 4,
    "unknown_run": 4, "new_run_burst": 10, "ctl_wrong_shape": 1.5, "ctl_garbage": 1.5, "ctl_unknown_word": 1,
}  # fmt: skip
BURST = "new_run_burst"


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish; ``run_id`` and ``seq`` are set for valid steps (latency is measured on them)."""

    subject: str
    data: bytes
    kind: str
    run_id: str = ""
    seq: int = -1

    @property
    def is_command(self) -> bool:
        return self.subject.startswith(f"{subjects.PREFIX}.ctl.")


# --- valid traffic ---------------------------------------------------------------------------------------


def _valid(event: StepEvent) -> Message:
    return Message(subjects.step(event.run_id), codec.encode(event), "valid", event.run_id, event.seq)


def loop_run(run_id: str) -> list[Message]:
    """An agent searching again and again for a term that does not exist; its last step completes the loop."""
    events = []
    for i in range(LOOP_REPEATS):
        seq, call = 3 * i, f"c{3 * i}"
        events += [
            StepEvent(run_id=run_id, seq=seq, ts=1e9 + seq, kind="llm", tokens_in=900, tokens_out=40, cost_usd=0.001),
            StepEvent(run_id=run_id, seq=seq + 1, ts=1e9 + seq + 1, kind="tool_call", tool="find_file", call_id=call,
                      args={"command": "find_file JsonParser src/"}),
            StepEvent(run_id=run_id, seq=seq + 2, ts=1e9 + seq + 2, kind="tool_result", tool="find_file", call_id=call,
                      observation='No matches found for "JsonParser" in /repo/src', ok=True),
        ]  # fmt: skip
    return [_valid(e) for e in events]


def healthy_run(run_id: str, seed: int) -> list[Message]:
    """A synthetic healthy run (``bench.synth``): start, varied actions, final."""
    run = SynthRun(run_id, "healthy", HEALTHY_ACTIONS, seed, 1.7e9)
    events = []
    while run.pending is not None:
        events.append(run.pending)
        run.advance()
    return [_valid(e) for e in events]


def spread(runs: Sequence[Sequence[Message]], span: float) -> list[tuple[float, Message]]:
    """(position in [0, 1), message): run i starts at ``i / len(runs) * (1 - span)``, its steps spaced over ``span``."""
    placed = []
    for i, run in enumerate(runs):
        start = i / len(runs) * (1.0 - span)
        placed += [(start + span * k / len(run), msg) for k, msg in enumerate(run)]
    return placed


def valid_traffic(phase: str, loops: int, seed: int) -> tuple[list[str], list[str], list[tuple[float, Message]]]:
    """A phase's loop run ids, healthy run ids, and their steps placed over the phase."""
    rng = random.Random(seed)
    loop_ids = [f"{phase}-loop-{i}" for i in range(loops)]
    ok_ids = [f"{phase}-ok-{i}" for i in range(loops)]
    placed = spread([loop_run(r) for r in loop_ids], LOOP_SPAN)
    placed += spread([healthy_run(r, rng.getrandbits(64)) for r in ok_ids], HEALTHY_SPAN)
    return loop_ids, ok_ids, placed


def interleave(valid: Sequence[tuple[float, Message]], hostile: Sequence[Message]) -> list[Message]:
    """One publishing order: valid steps at their positions, hostile message j at ``(j + 0.5) / len(hostile)``."""
    keyed = [(pos, 0, i, msg) for i, (pos, msg) in enumerate(valid)]
    keyed += [((j + 0.5) / len(hostile), 1, j, msg) for j, msg in enumerate(hostile)]
    return [msg for *_, msg in sorted(keyed, key=lambda k: k[:3])]


# --- hostile messages: pure functions of a seeded random.Random -------------------------------------------


def _pack(obj: Any, *, bin_type: bool = True) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=bin_type)
    return packed


def _step(run_id: Any, seq: int, kind: str = "llm", **fields: Any) -> dict[Any, Any]:
    return {"run_id": run_id, "seq": seq, "ts": 1.7e9 + seq % 10**6, "kind": kind, **fields}


def _result(run_id: Any, rng: random.Random, **fields: Any) -> dict[Any, Any]:
    text = "src/app.py:12: def handler(request): ...\n" * rng.randint(1, 20)
    base = {"tool": "grep", "call_id": "c1", "ok": True, "observation": text}
    return _step(run_id, rng.randint(1, 10**6), "tool_result", **(base | fields))


_WRONG_TYPES: tuple[dict[str, Any], ...] = (
    {"seq": "twelve"}, {"seq": None}, {"seq": 1.5}, {"kind": "teleport"}, {"kind": 7}, {"args": [1, 2, 3]},
    {"args": "rm -rf /"}, {"tokens_in": "lots"}, {"ts": "yesterday"}, {"run_id": 12345}, {"policy": "strict"},
    {"tool": {"name": "grep"}}, {"ok": [True]}, {"observation": 42},
)  # fmt: skip
_BAD_UTF8 = (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"ok \x80 then", b"\xf4\x90\x80\x80")
_BAD_NUMBERS: tuple[dict[str, Any], ...] = (
    {"tokens_in": 2**64 - 1}, {"tokens_out": 2**64 - 1}, {"cost_usd": 1e308}, {"cost_usd": math.inf},
    {"cost_usd": -math.inf}, {"cost_usd": math.nan}, {"tokens_in": -1}, {"cost_usd": -0.01}, {"seq": -1},
    {"seq": 2**64 - 1}, {"seq": -(2**63)}, {"ts": math.nan}, {"ts": -1.0}, {"progress": math.nan},
    {"tokens_in": 10**9 + 1},
)  # fmt: skip
_BAD_RUN_IDS = ("a.b", "has space", "*", ">", "", "x" * 129, "rv.step.x", "ünïcode", "tab\there", "new\nline",
                "a/b", "$JS", "run\x00id")  # fmt: skip
_WRONG_COMMANDS = (
    b'{"cmd": ["pause"]}', _pack({"cmd": ["pause"]}), b'{"cmd": 7}', b'{"cmd": {"a": 1}}', b'{"cmd": "stop"}',
    b'{"cmd": "pause", "reason": "NOPE"}', b'{"cmd": "pause"', b"[1, 2]", _pack({"cmd": "kill", "ts": math.nan}),
)  # fmt: skip
_UNKNOWN_WORDS = (b"paws", b"halt now", b"PAUSEX", b"resum", b"kil runaway costs", b"stopp LOOP_DETECTED",
                  "été".encode(), b"", b"   \n", b"\xff\xfe pause")  # fmt: skip


def random_bytes(rng: random.Random, run_id: str) -> bytes:
    del run_id
    return rng.randbytes(rng.randint(1, 512))


def truncated_msgpack(rng: random.Random, run_id: str) -> bytes:
    full = _pack(_result(run_id, rng))
    return full[: rng.randint(1, len(full) - 1)]


def wrong_types(rng: random.Random, run_id: str) -> bytes:
    if rng.random() < 0.1:
        return _pack([run_id, 1, "llm"])  # not even a map
    return _pack({**_step(run_id, rng.randint(1, 10**6)), **rng.choice(_WRONG_TYPES)})


def oversize(rng: random.Random, run_id: str) -> bytes:
    over = rng.randint(1, 2048)
    name = rng.choice(("observation", "error", "task", "args"))
    value: Any = {"blob": "x" * (MAX_ARGS_CHARS + over)} if name == "args" else "y" * (MAX_OBSERVATION_CHARS + over)
    return _pack(_result(run_id, rng, **{name: value}))


def nested_1000(rng: random.Random, run_id: str) -> bytes:
    args: dict[str, Any] = {}
    inner = args
    for _ in range(NEST_DEPTH):
        inner["a"] = {}
        inner = inner["a"]
    return _pack(_step(run_id, rng.randint(1, 10**6), "tool_call", tool="grep", call_id="c1", args=args))


def invalid_utf8(rng: random.Random, run_id: str) -> bytes:
    bad, where = rng.choice(_BAD_UTF8), rng.choice(("observation", "tool", "run_id", "a key"))
    step = _result(run_id, rng)
    if where == "a key":
        step[bad] = 1
    else:
        step[where] = bad
    return _pack(step, bin_type=False)  # bytes packed as msgpack str: invalid UTF-8 on the wire


def bad_numbers(rng: random.Random, run_id: str) -> bytes:
    return _pack({**_step(run_id, rng.randint(1, 10**6), tokens_in=900, cost_usd=0.001), **rng.choice(_BAD_NUMBERS)})


def bad_run_id(rng: random.Random, run_id: str) -> bytes:
    del run_id  # the subject stays a valid run's; only the payload lies
    return _pack(_step(rng.choice(_BAD_RUN_IDS), rng.randint(1, 10**6), tokens_in=900))


def ctl_wrong_shape(rng: random.Random) -> bytes:
    return rng.choice(_WRONG_COMMANDS)


def ctl_unknown_word(rng: random.Random) -> bytes:
    return rng.choice(_UNKNOWN_WORDS)


def ctl_garbage(rng: random.Random) -> bytes:
    """Random bytes that are not, by chance, a command runvisor would obey."""
    while True:
        data = rng.randbytes(rng.randint(1, 256))
        if rejected_here(Message(subjects.ctl("x"), data, "ctl_garbage")):
            return data


STEP_MAKERS: dict[str, Callable[[random.Random, str], bytes]] = {
    "random_bytes": random_bytes, "truncated_msgpack": truncated_msgpack, "wrong_types": wrong_types,
    "oversize": oversize, "nested_1000": nested_1000, "invalid_utf8": invalid_utf8, "bad_numbers": bad_numbers,
    "bad_run_id": bad_run_id,
}  # fmt: skip
CTL_MAKERS: dict[str, Callable[[random.Random], bytes]] = {
    "ctl_wrong_shape": ctl_wrong_shape, "ctl_garbage": ctl_garbage, "ctl_unknown_word": ctl_unknown_word,
}  # fmt: skip


class _Victims:
    """Valid steps with a hostile twist for a pool of runs: unknown fields, sequence gaps, duplicates."""

    def __init__(self, rng: random.Random, phase: str) -> None:
        self.rng = rng
        self.names = [f"{phase}-v{i}" for i in range(VICTIMS)]
        self.seqs = dict.fromkeys(self.names, 0)
        self.last: dict[str, bytes] = {}

    def make(self, kind: str) -> Message:
        run_id = self.rng.choice(self.names)
        if kind == "seq_duplicate" and run_id in self.last:
            return Message(subjects.step(run_id), self.last[run_id], kind)
        self.seqs[run_id] += self.rng.randint(2, 10**6) if kind == "seq_gap" else 1
        step = _step(run_id, self.seqs[run_id], tokens_in=self.rng.randint(100, 5000), cost_usd=0.002)
        if kind == "unknown_fields":
            step |= {f"x_{self.rng.getrandbits(32):08x}": self.rng.random(), "__class__": "StepEvent",
                     "model_config": {"extra": "allow"}, "meta": {"k": [1, 2, {"z": None}]}}  # fmt: skip
            if self.rng.random() < 0.02:
                step["blob"] = "z" * 200_000  # ignored, so never measured against a size limit
        self.last[run_id] = data = _pack(step)
        return Message(subjects.step(run_id), data, kind)


def class_counts(total: int) -> dict[str, int]:
    """How many messages of each class make ``total`` (the remainder goes to ``random_bytes``)."""
    weight = sum(MIX.values())
    counts = {kind: int(total * w / weight) for kind, w in MIX.items()}
    counts["random_bytes"] += total - sum(counts.values())
    return counts


def hostile_messages(total: int, seed: int, phase: str, targets: Sequence[str]) -> list[Message]:
    """``total`` hostile messages, deterministic in ``seed``; malformed ones go to ``targets``' subjects.

    The new run ids come as one burst, somewhere in the middle; the other classes are shuffled.
    """
    rng = random.Random(seed)
    victims = _Victims(random.Random(rng.getrandbits(64)), phase)
    counts = class_counts(total)
    order = [kind for kind, n in counts.items() if kind != BURST for _ in range(n)]
    rng.shuffle(order)
    out: list[Message] = []
    for n, kind in enumerate(order):
        target = rng.choice(targets)
        if kind in STEP_MAKERS:
            out.append(Message(subjects.step(target), STEP_MAKERS[kind](rng, target), kind))
        elif kind in CTL_MAKERS:
            out.append(Message(subjects.ctl(target), CTL_MAKERS[kind](rng), kind))
        elif kind == "unknown_run":  # seen mid-way (seq > 1): the worker recalls it from the stream and rv_runs
            run_id = f"{phase}-u{n}"
            out.append(Message(subjects.step(run_id), _pack(_step(run_id, rng.randint(2, 10**6))), kind))
        else:
            out.append(victims.make(kind))
    burst = [Message(subjects.step(f"{phase}-b{i}"), _pack(_step(f"{phase}-b{i}", 0, "start", task="burst")), BURST)
             for i in range(counts[BURST])]  # fmt: skip
    at = rng.randint(len(out) // 4, 3 * len(out) // 4)
    return out[:at] + burst + out[at:]


def rejected_here(msg: Message) -> bool:
    """Whether runvisor's own codec refuses ``msg``: what the worker should count as rejected."""
    try:
        if msg.is_command:
            codec.decode_command(msg.data)
        else:
            codec.decode(StepEvent, msg.data)
    except DecodeError:
        return True
    return False


_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) \S+: (.*)$")


def log_summary(text: str) -> dict[str, Any]:
    """WARNING/ERROR lines in a worker's stderr; its own stop decisions (a WARNING each) counted apart."""
    levels: Counter[str] = Counter()
    heads: Counter[str] = Counter()
    decisions = tracebacks = 0
    for line in text.splitlines():
        tracebacks += line.startswith("Traceback")
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        levels[match.group(1)] += 1
        if match.group(2).startswith(("stop: ", "pause: ")):
            decisions += 1
        else:
            heads[re.sub(r"\d+", "N", match.group(2))[:70]] += 1
    return {"warning": levels["WARNING"], "error": levels["ERROR"] + levels["CRITICAL"], "decision_lines": decisions,
            "tracebacks": tracebacks, "other_lines": dict(heads.most_common(5))}  # fmt: skip
