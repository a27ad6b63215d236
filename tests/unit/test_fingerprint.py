"""Normalization, digests and SimHash of actions and observations."""

from __future__ import annotations

from hashlib import blake2b

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runvisor.actors.supervisor.detection import (
    action_digest,
    fingerprint,
    hamming,
    normalize,
    normalize_loose,
    observation_digest,
    simhash,
)
from runvisor.actors.supervisor.detection.fingerprint import _normalize, digest, observation_fingerprint, short

_VOLATILE = st.text(alphabet="0123456789abcdefx:-./ tmpline\n\tTZ", max_size=80)


def test_normalize_masks_volatile_parts() -> None:
    text = (
        "at 0x7ffde12a at 2024-01-02T10:11:12Z took 3.5s in /tmp/tmpab12cd/x.py line 42, "
        "id 550e8400-e29b-41d4-a716-446655440000 commit 3f9a2c1d"
    )
    out = normalize(text)
    for volatile in ("0x7ffde12a", "2024-01-02", "3.5s", "/tmp/tmpab12cd", "42", "550e8400", "3f9a2c1d"):
        assert volatile not in out
    assert "<hex>" in out
    assert "<ts>" in out
    assert "<dur>" in out
    assert "<tmp>" in out
    assert "<uuid>" in out


def test_normalize_keeps_ordinary_numbers() -> None:
    # "3 failed" and "2 failed" are different outcomes; only the loose form masks them.
    assert normalize("3 failed, 5 passed") != normalize("2 failed, 6 passed")
    assert normalize_loose("3 failed, 5 passed") == normalize_loose("2 failed, 6 passed")


def test_normalize_collapses_whitespace() -> None:
    assert normalize("  a \n\n b\t c  ") == "a b c"


def test_long_text_changes_anywhere_change_the_digest() -> None:
    base = "x " * 5000
    changed = base[:4000] + "y" + base[4001:]
    assert observation_digest(base) != observation_digest(changed)


@given(_VOLATILE)
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once


@given(st.text(max_size=200))
def test_normalize_loose_is_idempotent(text: str) -> None:
    once = normalize_loose(text)
    assert normalize_loose(once) == once


def test_digest_is_blake2b_and_stable_across_processes() -> None:
    expected = int.from_bytes(blake2b(b"hello", digest_size=8).digest(), "little")
    assert digest("hello") == expected


def test_action_digest_ignores_volatile_args_only() -> None:
    a = action_digest("bash", {"command": "cat /tmp/tmpa1b2c3/log.txt"})
    b = action_digest("bash", {"command": "cat /tmp/tmpzz9y8x/log.txt"})
    c = action_digest("bash", {"command": "sed -n '1,50p' f.py"})
    d = action_digest("bash", {"command": "sed -n '51,100p' f.py"})
    assert a == b
    assert c != d  # paging is a different action each time


def test_action_digest_is_independent_of_key_order() -> None:
    assert action_digest("t", {"a": 1, "b": 2}) == action_digest("t", {"b": 2, "a": 1})


def test_simhash_equal_when_only_numbers_differ() -> None:
    one = "File edited. The file now has 120 lines. Lines 98-104 were changed. " * 5
    two = "File edited. The file now has 127 lines. Lines 105-111 were changed. " * 5
    assert hamming(simhash(one), simhash(two)) == 0


def test_simhash_far_for_different_texts() -> None:
    one = "Traceback (most recent call last): File foo.py in bar ValueError: bad input for parser"
    two = "collected 12 items tests/test_parser.py ............ all passed without warnings today"
    assert hamming(simhash(one), simhash(two)) > 8


def test_simhash_close_for_small_edits() -> None:
    words = [f"token{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(150)]
    one = " ".join(words)
    two = " ".join([*words[:75], "changed", *words[76:]])
    assert hamming(simhash(one), simhash(two)) <= 8


def test_observation_fingerprint_matches_parts() -> None:
    text = "No matches found for JsonParser in /repo"
    assert observation_fingerprint(text) == (observation_digest(text), simhash(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", 0x40F89E395B66422F),
        ("hello world", 0x03BDB85AB6EBACB7),
        ('Traceback (most recent call last):\n  File "x.py", line 3\nValueError: bad value 42', 0x90AEDE20A5087026),
        ("été déjà vu 3 fois", 0x6275D5931FCC3EDF),
        (" ".join(f"tok{i % 37}" for i in range(400)), 0x1B1E9363DB957E2D),
    ],
)
def test_simhash_values_do_not_change_between_versions(text: str, expected: int) -> None:
    # A new owner rebuilds windows from the stream, possibly while an older worker still runs:
    # every version must fingerprint a text the same way.
    assert simhash(text) == expected


def test_empty_observation_has_zero_simhash() -> None:
    assert simhash("") == 0
    assert observation_digest(None) == observation_digest("")


# ASCII made to hit every pattern, and a few non-ASCII characters among them: "µ" (a unit),
# a non-ASCII digit and letters that must not change what the ASCII patterns match.
_MIXED_VOLATILE = st.text(alphabet="0123456789abcdefABCDEFx:-./ =_,tmpvarlinenoLsecmuh\n\tµé٣—", max_size=120)


def _every_pattern(text: str) -> str:
    """Normalization with every pass applied, no prechecks: what the prechecks must agree with."""
    text = " ".join(text.split())
    for pattern, placeholder in (
        (fingerprint._UUID, "<uuid>"),
        (fingerprint._TIMESTAMP, "<ts>"),
        (fingerprint._HEX, "<hex>"),
        (fingerprint._TMP_PATH, "<tmp>"),
        (fingerprint._DURATION, "<dur>"),
        (fingerprint._LINE_NO, "<n>"),
    ):
        text = pattern.sub(placeholder, text)
    return text


@given(_MIXED_VOLATILE)
def test_prechecks_never_skip_a_match(text: str) -> None:
    # The class prechecks only skip passes that could not match anyway, ASCII or not.
    assert _normalize(text) == _every_pattern(text)


def test_non_ascii_text_is_normalized_too() -> None:
    assert normalize("résumé took 3µs at 2024-01-02 — id 0x7ffde12a") == "résumé took <dur> at <ts> — id <hex>"


@given(st.text(max_size=400), st.integers(min_value=4, max_value=80))
def test_short_is_one_collapsed_line_cut_to_limit(text: str, limit: int) -> None:
    flat = " ".join(text.split())
    expected = flat if len(flat) <= limit else flat[: limit - 3] + "..."
    assert short(text, limit) == expected


def test_repeated_observations_get_the_same_fingerprint() -> None:
    text = "collected 3 items\ntests/test_a.py ... 3 passed in 0.12s"
    assert observation_fingerprint(text) == observation_fingerprint(text[:-1] + "s")
