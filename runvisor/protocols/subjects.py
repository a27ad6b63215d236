"""Subject, stream and bucket names (DESIGN §2) and their JetStream configurations.

Every actor builds names through these functions; no other module spells a subject.
"""

from __future__ import annotations

import re

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from runvisor.errors import ConfigError
from runvisor.protocols.messages import check_run_id

PREFIX = "rv"
DEFAULT_PARTITIONS = 32
DEFAULT_LEASE_TTL_S = 6.0
#: How long steps and commands are kept in their streams, and a finished run's state in ``rv_runs``
#: (a per-message TTL its supervisor sets on it: see ``streams/runs.py``): a week.
KEEP_FINISHED_S = 7 * 24 * 3600.0

STEPS_STREAM = "RV_STEPS"
CONTROL_STREAM = "RV_CONTROL"
RUNS_BUCKET = "rv_runs"
CHECKPOINTS_BUCKET = "rv_checkpoints"
LEASES_BUCKET = "rv_leases"
BREAKERS_BUCKET = "rv_breakers"
#: Recorded tool results by idempotency key; not in DESIGN §2's table, added so a repeated
#: request returns the recorded result (DESIGN §6) without giving tools access to checkpoints.
RESULTS_BUCKET = "rv_results"
#: Sub-agents' spending, keyed by their parent's partition: see ``supervisor/_family.py``.
FAMILY_BUCKET = "rv_family"

STEP_ALL = f"{PREFIX}.step.*"
CTL_ALL = f"{PREFIX}.ctl.*"
TOOL_ALL = f"{PREFIX}.tool.*"
EVENT_ALL = f"{PREFIX}.event.*"
STATUS_ALL = f"{PREFIX}.status.*"
STATS_ALL = f"{PREFIX}.stats.*"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def step(run_id: str) -> str:
    """Where an agent publishes its step events."""
    return f"{PREFIX}.step.{check_run_id(run_id)}"


def ctl(run_id: str) -> str:
    """Where commands for a run are published (and stored in ``RV_CONTROL``)."""
    return f"{PREFIX}.ctl.{check_run_id(run_id)}"


def event(run_id: str) -> str:
    """Where supervisors publish verdicts about a run."""
    return f"{PREFIX}.event.{check_run_id(run_id)}"


def status(run_id: str) -> str:
    """Request-reply subject answered with the run's ``RunState`` as JSON."""
    return f"{PREFIX}.status.{check_run_id(run_id)}"


def stats(worker_id: str) -> str:
    """Where a supervisor worker reports its throughput (JSON), for operators and the bench."""
    return f"{PREFIX}.stats.{check_token(worker_id, 'worker id')}"


def tool(name: str) -> str:
    """Request-reply subject of a tool; executors serve it in a queue group of the same name."""
    return f"{PREFIX}.tool.{check_token(name, 'tool name')}"


def tool_queue(name: str) -> str:
    return f"{PREFIX}-tool-{check_token(name, 'tool name')}"


def stored_step(partition: int, run_id: str) -> str:
    """The subject a step event is stored under in ``RV_STEPS`` after the partition transform."""
    return f"{PREFIX}.step.{partition}.{check_run_id(run_id)}"


def partition_filter(partition: int) -> str:
    """Consumer filter for one partition of ``RV_STEPS``."""
    return f"{PREFIX}.step.{partition}.*"


def partition_of(run_id: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """The partition the server's ``partition(P,1)`` transform puts a run in (FNV-1a 32 mod P)."""
    h = _FNV_OFFSET
    for byte in run_id.encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h % partitions


def run_id_of(subject: str) -> str:
    """The run id of any per-run subject: it is always the last token."""
    return subject.rpartition(".")[2]


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV put publishes to, for pipelined writes with ``publish_async``."""
    return f"$KV.{bucket}.{key}"


def direct_get(stream: str) -> str:
    """The JetStream API subject of a direct get on ``stream`` (by start time, or a subject's last message)."""
    return f"$JS.API.DIRECT.GET.{stream}"


#: The reply subjects of the nats CLI and of nats-py by default; runvisor's roles each use their own.
DEFAULT_INBOX = "_INBOX"


def inbox_prefix(role: str) -> str:
    """Where a role's connection takes its replies: ``_INBOX_<role>``, the one inbox its user may
    subscribe to (``roles.conf``), so no role reads another's replies."""
    return f"{DEFAULT_INBOX}_{check_token(role, 'role')}"


def is_inbox(subject: str) -> bool:
    """Whether ``subject`` is a reply inbox (``_INBOX.``, ``_INBOX_<role>.``), not a subject with a
    meaning of its own: a responder answers only there, never on ``$KV...`` or ``rv.ctl...`` named as
    a reply by a caller who may not publish there itself."""
    return subject.startswith(DEFAULT_INBOX) and "." in subject


def family_key(parent_run_id: str, run_id: str, partitions: int = DEFAULT_PARTITIONS) -> str:
    """The ``rv_family`` key of a sub-agent: ``p<N>.<parent>.<run>``, N its parent's partition, so the
    parent's supervisor follows only the keys of the partitions it holds (:func:`family_filter`)."""
    partition = partition_of(check_run_id(parent_run_id), partitions)
    return f"p{partition}.{parent_run_id}.{check_run_id(run_id)}"


def family_filter(partition: int) -> str:
    """The ``rv_family`` keys of the sub-agents of the runs in one partition."""
    return f"p{partition}.>"


def lease_key(partition: int) -> str:
    return f"p{partition}"


def member_key(worker_id: str) -> str:
    return f"m.{check_token(worker_id, 'worker id')}"


def check_token(value: str, what: str) -> str:
    """Reject anything that is not one subject token, with a message naming ``what``."""
    if not value or any(ch in value for ch in ". *>\t\r\n") or len(value) > 128:
        raise ConfigError(f"{what} must be one subject token (no spaces, '.', '*' or '>'), got {value!r}")
    return value


def steps_stream_config(
    partitions: int = DEFAULT_PARTITIONS,
    max_age_s: float = KEEP_FINISHED_S,
    max_bytes: int = 8 * 1024**3,
) -> StreamConfig:
    """``RV_STEPS``: every step, stored under its partition so each supervisor reads only its own."""
    return StreamConfig(
        name=STEPS_STREAM,
        description="runvisor step events, stored as rv.step.<partition>.<run_id>",
        subjects=[STEP_ALL],
        subject_transform=SubjectTransform(
            src=STEP_ALL, dest=f"{PREFIX}.step.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"
        ),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=max_bytes,
        duplicate_window=120.0,
        # Direct gets let an agent resuming after a crash read its own last step (last_by_subj).
        allow_direct=True,
    )


def partitions_in(config: StreamConfig) -> int | None:
    """The P of ``RV_STEPS``'s ``partition(P,1)`` transform, as the server has it."""
    dest = config.subject_transform.dest if config.subject_transform else None
    match = re.search(r"partition\((\d+),", dest or "")
    return int(match.group(1)) if match else None


def control_stream_config(max_age_s: float = KEEP_FINISHED_S) -> StreamConfig:
    """``RV_CONTROL``: durable commands, so one sent while an agent is away is applied on return."""
    return StreamConfig(
        name=CONTROL_STREAM,
        description="runvisor control commands per run",
        subjects=[CTL_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        max_msgs_per_subject=256,
        duplicate_window=600.0,
        allow_direct=True,
    )


def bucket_configs(lease_ttl_s: float = DEFAULT_LEASE_TTL_S) -> list[KeyValueConfig]:
    """Every KV bucket runvisor uses, with its settings."""
    return [
        KeyValueConfig(bucket=RUNS_BUCKET, description="live RunState per run", history=1),
        KeyValueConfig(bucket=CHECKPOINTS_BUCKET, description="agent checkpoints and intents", history=5),
        KeyValueConfig(bucket=LEASES_BUCKET, description="supervisor partition leases", ttl=lease_ttl_s),
        KeyValueConfig(bucket=BREAKERS_BUCKET, description="shared circuit breakers per tool", history=1),
        KeyValueConfig(bucket=RESULTS_BUCKET, description="tool results by idempotency key", ttl=86400.0),
        KeyValueConfig(bucket=FAMILY_BUCKET, description="sub-agents' spending by parent partition", history=1),
    ]
