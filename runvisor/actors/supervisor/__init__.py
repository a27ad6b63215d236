"""The supervisor: workers that watch every run from outside, decide, and command (DESIGN §3, §4).

``detection/`` is the pure part (per-run windows, detectors, the ``Engine``: no NATS, no
clock). The NATS side: ``leases`` (who watches which partition, KV ``rv_leases``), ``_follow``
(reading a partition's steps), ``_decide`` (verdicts and commands out) and ``worker``, which
wires them together.
"""

from runvisor.actors.supervisor.worker import SupervisorWorker

__all__ = ["SupervisorWorker"]
