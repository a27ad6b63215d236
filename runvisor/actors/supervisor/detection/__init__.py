"""The supervisor's pure detection logic: per-run windows, detectors, grading (DESIGN §4).

No NATS and no clock here: the worker feeds :class:`Engine` step events with its own
``now`` and publishes the verdicts it returns; ``Engine.tick(now)`` finds silent stalls.
"""

from runvisor.actors.supervisor.detection.classify import error_text, is_hidden_failure
from runvisor.actors.supervisor.detection.detectors import (
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
from runvisor.actors.supervisor.detection.engine import Engine, action_severity
from runvisor.actors.supervisor.detection.fingerprint import (
    action_digest,
    hamming,
    normalize,
    normalize_loose,
    observation_digest,
    simhash,
)
from runvisor.actors.supervisor.detection.stall import StallTimers, check_stall, next_deadline
from runvisor.actors.supervisor.detection.window import RunWindow

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
