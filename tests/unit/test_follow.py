"""Reading a JetStream delivery's position from its reply subject."""

from __future__ import annotations

from runvisor.actors.supervisor._follow import stream_position


def test_the_classic_reply_subject() -> None:
    reply = "$JS.ACK.RV_STEPS.OrdC1.1.4182.17.1764000000123456789.250"
    assert stream_position(reply) == (4182, 1764000000.1234567)


def test_the_reply_subject_with_domain_and_account_hash() -> None:
    reply = "$JS.ACK.hub.ACCHASH.RV_STEPS.OrdC1.1.4182.17.1764000000123456789.250.r4nd0m"
    assert stream_position(reply) == (4182, 1764000000.1234567)


def test_anything_else_has_no_position() -> None:
    assert stream_position(None) is None
    assert stream_position("") is None
    assert stream_position("_INBOX.abc") is None
    assert stream_position("$JS.ACK.too.short") is None
