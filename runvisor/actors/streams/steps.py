"""Stream ``RV_STEPS``: every step event of every run, stored by partition (DESIGN §2, §3).

Agents and tool executors publish steps (``agent/_steps.py``, ``tools/_attempt.py``); supervisors
follow partitions with ordered consumers (``supervisor/_follow.py``) and, for single steps,
use the direct gets here.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg

from runvisor.protocols import codec, subjects


async def direct_get_step(nc: Client, request: dict[str, str]) -> Msg | None:
    """The step of ``RV_STEPS`` that a direct get finds (``last_by_subj``, ``next_by_subj``,
    ``start_time``); None when there is none.

    Raises:
        RuntimeError: the server answered with an error other than "not found".
    """
    reply = await nc.request(subjects.direct_get(subjects.STEPS_STREAM), codec.json_bytes(request), timeout=5)
    headers = reply.headers or {}
    if headers.get("Nats-Sequence") is not None:
        return reply
    if headers.get("Status") == "404":
        return None
    raise RuntimeError(f"direct get {request} failed: {headers}")


__all__ = ["direct_get_step"]
