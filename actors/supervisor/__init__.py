"""The supervisor's pure detection logic: per-run windows, detectors, grading (DESIGN §4).

No NATS and no clock here: the worker feeds :class:`Engine` step events with its own
``now`` and publishes the verdicts it returns; ``Engine.tick(now)`` finds silent stalls.
"""

from actors.supervisor.classify import error_text, is_hidden_failure
from actors.supervisor.detectors import (
    ACTION_DETECTORS,
    Budget,
    ConsecutiveFailures,
    Cycle,
    Detector,
    ExactRepeat,
    FruitlessSearch,
    NearDuplicate,
    NoProgress,
    RetryStorm,
    SameError,
)
from actors.supervisor.engine import Engine, action_severity
from actors.supervisor.fingerprint import (
    action_digest,
    hamming,
    normalize,
    normalize_loose,
    observation_digest,
    simhash,
)
from actors.supervisor.stall import StallTimers, check_stall, next_deadline
from actors.supervisor.window import RunWindow

__all__ = [
    "ACTION_DETECTORS",
    "Budget",
    "ConsecutiveFailures",
    "Cycle",
    "Detector",
    "Engine",
    "ExactRepeat",
    "FruitlessSearch",
    "NearDuplicate",
    "NoProgress",
    "RetryStorm",
    "RunWindow",
    "SameError",
    "StallTimers",
    "action_digest",
    "action_severity",
    "check_stall",
    "error_text",
    "hamming",
    "is_hidden_failure",
    "next_deadline",
    "normalize",
    "normalize_loose",
    "observation_digest",
    "simhash",
]
