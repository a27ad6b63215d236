"""Reading a whole KV bucket: each key's latest value, in one pass.

nats-py's ``KeyValue.keys()`` and ``watch()`` decide that the initial values are all in from
the consumer's info, asked right after subscribing. Under load the server has often pushed
every value by then, none processed yet, so the watcher says "done" before the first value:
``keys()`` then finds no keys (seen as an empty ``runvisor ps`` under CPU load). Here the read
ends at the message the server sent with nothing more pending, which it stamps on each one.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from runvisor.protocols import subjects

#: How long a read waits for the next value before giving up (a server gone meanwhile).
READ_TIMEOUT_S = 5.0


async def latest_values(js: JetStreamContext, bucket: str, keys: str = ">") -> dict[str, bytes]:
    """The latest value of each key of ``bucket`` matching ``keys``; deleted and purged keys left out.

    Raises:
        nats.js.errors.NotFoundError: there is no such bucket.
        nats.errors.TimeoutError: the server stopped answering in the middle.
    """
    prefix = subjects.kv_subject(bucket, "")
    sub = await js.subscribe(
        subjects.kv_subject(bucket, keys), stream=f"KV_{bucket}", ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )  # fmt: skip
    values: dict[str, bytes] = {}
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return values  # nothing sent and nothing to send: no such keys
        while True:
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            key = msg.subject[len(prefix) :]
            if msg.data and not (msg.headers or {}).get("KV-Operation"):  # not a delete or purge marker
                values[key] = msg.data
            else:
                values.pop(key, None)
            if msg.metadata.num_pending == 0:
                return values
    finally:
        await sub.unsubscribe()


__all__ = ["READ_TIMEOUT_S", "latest_values"]
